"""Recipes, grouped by what a user does:

* :mod:`~ptobj.recipes.engine`: the training engine (config tree, data wiring, loop, optimizer,
  schedule, checkpoints, distributed setup, losses, logging, held-out evaluation); the floor
  the rest stands on, importing none of it;
* :mod:`~ptobj.recipes.evaluation`: the objectives' declared evaluations (infilling) and
  re-evaluating a run;
* :mod:`~ptobj.recipes.export`: a run to a Hugging Face folder;
* :mod:`~ptobj.recipes.posttrain`: RL with the pretraining mix, DPO;
* :mod:`~ptobj.recipes.experiments`: ablation sweeps and paper reproductions;
* :mod:`~ptobj.recipes.train`: the training command, wiring the engine and the evaluations;
* ``configs/`` (bundled recipes), ``launch/`` (torchrun, SLURM).

Needs the ``[train]`` extra.
"""

from ptobj.extras import require

require("train", "torch", "megatron", "yaml", "tqdm", "transformers", by=__name__)

import warnings as _warnings

# megatron-core announces at import time that Apex / Transformer Engine are absent;
# the recipes use neither, so those lines are noise in every log.
_warnings.filterwarnings("ignore", message=r".*(Apex|Transformer Engine) (is|are) not installed.*")
_warnings.filterwarnings("ignore", message=r"full scope is deprecated.*")
