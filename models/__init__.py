"""megatron-core decoders/encoders with our interval attention, objective heads, HF export.

Needs the ``[train]`` extra (torch, megatron-core).
"""

from objectives.extras import require

require("train", "torch", "megatron", "transformers", "safetensors", "tokenizers", "sentencepiece", by=__name__)

from models.config import PRESETS, ModelConfig, preset

__all__ = ["ModelConfig", "PRESETS", "preset", "build_model", "init_parallel", "destroy_parallel"]


def __getattr__(name):  # lazy: keep `import models` cheap
    if name == "build_model":
        from models.model import build_model

        return build_model
    if name in ("init_parallel", "destroy_parallel"):
        from models import parallel

        return getattr(parallel, name)
    raise AttributeError(name)
