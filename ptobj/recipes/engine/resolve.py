"""What a training config resolves to on a device: the precision, whether megatron's
distributed optimizer runs, and the model config as built. Training, export and the
infilling command line build their models from it."""

from __future__ import annotations

import dataclasses
import math

import torch

from ptobj.recipes.engine.config import ConfigError
from ptobj.recipes.engine.train_config import TrainConfig


def resolve_precision(cfg: TrainConfig, device: torch.device) -> str:
    p = cfg.parallel.precision
    if p == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if p == "bf16" and device.type != "cuda":
        raise ConfigError("parallel.precision: bf16 is for GPUs; use fp32 (or auto) on CPU")
    return p


def uses_distributed_optimizer(cfg: TrainConfig, device: torch.device) -> bool:
    d = cfg.optim.distributed_optimizer
    return d == "on" or (d == "auto" and device.type == "cuda")


def padded(n: int, multiple: int) -> int:
    return -(-int(n) // multiple) * multiple


def resolve_model_config(cfg: TrainConfig, vocab_size: int, device: torch.device):
    """The model config as built: ``vocab_size`` ids (the tokenizer's and the objective's
    sentinels) padded to a multiple of ``data.vocab_multiple`` that the tensor-parallel
    size divides (the same for every TP size dividing it, so checkpoints move between TP
    sizes), seq_length from data,
    params dtype from the precision policy (bf16 weights only under megatron's
    distributed optimizer, which keeps fp32 main weights; otherwise fp32 weights
    and bf16 autocast)."""
    precision = resolve_precision(cfg, device)
    bf16_params = precision == "bf16" and uses_distributed_optimizer(cfg, device)
    try:
        return dataclasses.replace(
            cfg.model, vocab_size=padded(vocab_size, math.lcm(cfg.data.vocab_multiple, cfg.parallel.tensor_parallel)),
            seq_length=cfg.data.seq_length, params_dtype="bfloat16" if bf16_params else "float32")
    except ValueError as exc:
        raise ConfigError(f"model: {exc}") from exc
