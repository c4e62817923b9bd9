"""megatron-core decoders/encoders with our interval attention, objective heads, HF export.

Needs the ``[train]`` extra (torch, megatron-core).
"""

from ptobj.extras import require

require("train", "torch", "megatron", "transformers", "safetensors", "tokenizers", "sentencepiece", by=__name__)

from ptobj.models.config import PRESETS, ModelConfig, preset

__all__ = ["ModelConfig", "PRESETS", "preset", "build_model", "init_parallel", "destroy_parallel"]


def __getattr__(name):  # lazy: keep `import ptobj.models` cheap
    if name == "build_model":
        from ptobj.models.model import build_model

        return build_model
    if name in ("init_parallel", "destroy_parallel"):
        from ptobj.models import parallel

        return getattr(parallel, name)
    raise AttributeError(name)
