"""A trained run's files, as the training engine writes them: its config, tokenizer and checkpoints,
and a model loaded from one of them. Export, evaluation, ``init_from`` and post-training read runs here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ptobj.recipes.engine import checkpoint as ckpt

def load_run_config(run_dir: Path):
    """The run's saved config, with its run directory where it is now (runs move)."""
    from ptobj.recipes.engine.train_config import load_train_config

    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {run_dir} a run directory written by ptobj.recipes.train?")
    cfg = load_train_config(path)
    return dataclasses.replace(cfg, logging=dataclasses.replace(cfg.logging, run_dir=str(run_dir)))


def find_tokenizer(run_dir: Path, given: str | Path | None = None) -> Path:
    from ptobj.data_pipeline.build import TOKENIZER_FILE

    path = Path(given) if given else run_dir / TOKENIZER_FILE
    if not path.is_file():
        hint = "" if given else (" (ptobj.recipes.train keeps the run's tokenizer there; for an older run pass "
                                 "--tokenizer with the prepared corpus's tokenizer.model under data.cache_dir)")
        raise FileNotFoundError(f"{path}: tokenizer not found{hint}")
    return path


def find_checkpoint(ckpt_dir: Path, step: int | None) -> Path:
    if step is None:
        found = ckpt.latest_checkpoint(ckpt_dir)
        if found is None:
            raise FileNotFoundError(f"{ckpt_dir}: no complete checkpoint")
        return found
    path = ckpt_dir / ckpt.step_dir_name(step)
    if not path.is_dir():
        have = sorted(int(p.name.removeprefix("step_")) for p in ckpt.step_dirs(ckpt_dir))
        raise FileNotFoundError(f"{path}: not a complete checkpoint; complete steps: {have or 'none'}")
    return path  # verified when loaded


def load_model(model_cfg, step_dir: Path, info, *, fits: str):
    """This rank's model with its part of the (verified) checkpoint: (model, step, dtype
    the weights were saved in)."""
    from ptobj.models.model import build_model

    model = build_model(model_cfg, info.pg_collection, device=info.device).eval()
    layout = ckpt.TensorLayout(info.pg_collection.tp, info.device.type)
    try:
        meta, _ = ckpt.load_checkpoint(step_dir, layout.model_items(model))
    except ckpt.CheckpointMismatch as exc:
        raise ValueError(f"{exc} (the model rebuilt from {fits}, vocabulary {model_cfg.vocab_size})") from None
    return model, int(meta["step"]), getattr(torch, meta.get("model_dtype", "float32"))
