"""Training recipes: ``python -m recipes.train CONFIG.yaml [dotted.key=value ...]``.

Also ``recipes.sweep`` (ablation grids) and ``recipes.evaluate`` (re-evaluate a run).
Needs the ``[train]`` extra.
"""

from objectives.extras import require

require("train", "torch", "megatron", "yaml", "tqdm", "transformers", by=__name__)

import warnings as _warnings

# megatron-core announces at import time that Apex / Transformer Engine are absent;
# the recipes use neither, so those lines are noise in every log.
_warnings.filterwarnings("ignore", message=r".*(Apex|Transformer Engine) (is|are) not installed.*")
_warnings.filterwarnings("ignore", message=r"full scope is deprecated.*")
