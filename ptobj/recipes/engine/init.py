"""Start a run from another run's weights (``init_from: RUN_DIR`` [+ ``init_step``]).

SFT starts from a pretrained decoder, a reward model from the SFT run. Only the
model's weights are loaded (the optimizer, schedule and data position start
fresh); the two model configs must describe the same network, field by field
(:data:`ARCHITECTURE`), or the error names the first field that differs. A head
this run has and the other lacks (a reward model's score) keeps its fresh
initialisation; every other tensor must be in the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from ptobj.recipes.engine import checkpoint as ckpt
from ptobj.recipes.engine.config import ConfigError

# the ModelConfig fields that decide the weights' shapes and meaning
ARCHITECTURE = ("kind", "num_layers", "hidden_size", "num_attention_heads", "query_groups", "ffn_size", "vocab_size",
                "max_position_embeddings", "norm_position", "embed_size", "share_layers", "num_segment_types",
                "rotary_base", "norm_epsilon")
FRESH_PREFIX = "model/heads."  # heads with parameters; the only items allowed to start fresh


def init_model_config(run_dir: Path):
    """The model config ``run_dir`` was trained with (``model_config.json``, written by ptobj.recipes.train)."""
    from ptobj.models.config import ModelConfig

    path = run_dir / "model_config.json"
    if not path.is_file():
        raise ConfigError(f"init_from: {path} not found; is {run_dir} a run directory written by ptobj.recipes.train?")
    return ModelConfig.from_dict(json.loads(path.read_text()))


def check_architecture(ours, theirs, run_dir: Path) -> None:
    for name in ARCHITECTURE:
        a, b = getattr(ours, name), getattr(theirs, name)
        if a != b:
            where = {"query_groups": "num_query_groups", "ffn_size": "ffn_hidden_size",
                     "embed_size": "embedding_size"}.get(name, name)
            hint = " (the vocabulary: tokenizer, sentinels, data.vocab_multiple)" if name == "vocab_size" else ""
            raise ConfigError(f"init_from: {run_dir} has model.{where}={b!r}, this run model.{where}={a!r}{hint}; "
                              "the weights cannot load")


def load_init(model, model_cfg, run_dir: str | Path, step: int, info) -> Path:
    """Load ``run_dir``'s checkpoint (newest complete one, or ``step``) into ``model`` in place;
    returns the checkpoint directory."""
    import torch.distributed.checkpoint as dcp

    from ptobj.recipes.engine.runs import find_checkpoint, load_run_config

    run_dir = Path(run_dir)
    check_architecture(model_cfg, init_model_config(run_dir), run_dir)
    step_dir = find_checkpoint(load_run_config(run_dir).checkpoint_dir, step or None)
    layout = ckpt.TensorLayout(info.pg_collection.tp, info.device.type)
    items = layout.model_items(model)
    saved = set(dcp.FileSystemReader(step_dir).read_metadata().state_dict_metadata)
    missing = sorted(k for k in items if k not in saved and not k.startswith(FRESH_PREFIX))
    if missing:
        raise ConfigError(f"init_from: {step_dir} lacks {missing[:3]}{' ...' if len(missing) > 3 else ''}: "
                          "not the same model")
    template = {k: v for k, v in items.items() if k in saved}
    try:
        ckpt.load_checkpoint(step_dir, template)
    except ckpt.CheckpointMismatch as exc:
        raise ConfigError(f"init_from: {exc}") from None
    return step_dir
