"""megatron-core decoders/encoders with our interval attention, objective heads, HF export.

Needs the ``[train]`` extra (torch, megatron-core).
"""

from ptobj.extras import lazy_exports, require

require("train", "torch", "megatron", "transformers", "safetensors", "tokenizers", "sentencepiece", by=__name__)

from ptobj.models.config import PRESETS, ModelConfig, preset

__all__ = ["ModelConfig", "PRESETS", "preset", "build_model", "init_parallel", "destroy_parallel"]


# lazy: keep `import ptobj.models` cheap
__getattr__, __dir__ = lazy_exports(__name__, {"build_model": "ptobj.models.model",
                                               "init_parallel": "ptobj.models.parallel",
                                               "destroy_parallel": "ptobj.models.parallel"}, globals())
