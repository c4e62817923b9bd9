"""Optimizers: plain torch AdamW (CPU, or GPU without sharding) or megatron-core's
distributed optimizer (GPU), behind one small interface the loop uses.

Both sum gradients over the data-parallel group (losses are already divided
by the global target count), compute the gradient norm over the model-parallel
group counting tensor-parallel duplicates once, clip, and step. The interface
is two calls: ``prepare_step()`` returns the gradient norm before anything is
updated (the same value on every rank; never a placeholder), and ``step()``
applies the update, refusing a non-finite norm.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from ptobj.recipes.engine.distributed import DistInfo
from ptobj.recipes.engine.train_config import OptimConfig


def _no_decay(name: str, param: torch.Tensor) -> bool:
    return param.dim() < 2 or name.endswith(".bias") or "norm" in name.lower()


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if _no_decay(name, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class TorchAdamW:
    """torch.optim.AdamW + explicit DP gradient all-reduce + megatron-aware grad norm."""

    kind = "torch_adamw"

    def __init__(self, model: torch.nn.Module, cfg: OptimConfig, info: DistInfo):
        self.model, self.cfg, self.info = model, cfg, info
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                           betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
        self.loss_scale = 1.0  # gradients are summed, not averaged, over DP

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def _sync_grads(self) -> None:
        if self.info.tp_size > 1 and getattr(getattr(self.model, "cfg", None), "sequence_parallel", False):
            from ptobj.models.parallel import allreduce_sequence_parallel_grads

            allreduce_sequence_parallel_grads(self.model, self.info.pg_collection.tp)
        if not (self.info.initialized and self.info.dp_size > 1):
            return
        grads = [p.grad for p in self.params if p.grad is not None]
        flat = torch._utils._flatten_dense_tensors(grads)
        dist.all_reduce(flat, group=self.info.dp_group)
        for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            g.copy_(synced)

    def grad_norm(self) -> float:
        from megatron.core import parallel_state
        from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate

        sq = torch.zeros((), dtype=torch.float64, device=self.params[0].device)
        for p in self.params:
            if p.grad is not None and param_is_not_tensor_parallel_duplicate(p):
                sq += p.grad.detach().double().pow(2).sum()
        if self.info.initialized and self.info.tp_size > 1:
            dist.all_reduce(sq, group=parallel_state.get_model_parallel_group())
        return math.sqrt(float(sq))

    def prepare_step(self) -> float:
        """All-reduce, measure (and return) the grad norm; clipping happens in ``step``."""
        self._sync_grads()
        self._norm = self.grad_norm()
        return self._norm

    def step(self) -> None:
        if not math.isfinite(self._norm):
            raise FloatingPointError(f"refusing an optimizer step with gradient norm {self._norm}")
        clip = self.cfg.clip_grad
        if clip > 0 and self._norm > clip:
            scale = clip / (self._norm + 1e-6)
            for p in self.params:
                if p.grad is not None:
                    p.grad.mul_(scale)
        self.optimizer.step()

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def checkpoint_items(self, layout) -> dict:
        """Adam's moments sharded like their parameters, keyed by parameter name, so
        they load into any parallel layout; the step count once. Created as zeros
        before the first step, so the items can also be loaded into."""
        out = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            state = self.optimizer.state[p]
            if not state:
                state.update(step=torch.zeros((), dtype=torch.float32), exp_avg=torch.zeros_like(p),
                             exp_avg_sq=torch.zeros_like(p))
            out.update(layout.items(f"optimizer/{name}/exp_avg", state["exp_avg"], p))
            out.update(layout.items(f"optimizer/{name}/exp_avg_sq", state["exp_avg_sq"], p))
            out[f"optimizer/{name}/step"] = state["step"]
        return out

    def loaded(self, items: dict) -> None:
        """Nothing to do: the items were views of the optimizer's own tensors."""


class MegatronDistributedAdam:
    """megatron-core DDP (grad buckets, reduce-scatter) + DistributedOptimizer (sharded
    fp32 main weights and Adam state) for bf16 models on GPU."""

    kind = "megatron_distributed"

    def __init__(self, model: torch.nn.Module, cfg: OptimConfig, info: DistInfo):
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        self.cfg, self.info = cfg, info
        tconfig = model.config
        ddp_cfg = DistributedDataParallelConfig(grad_reduce_in_fp32=True, use_distributed_optimizer=True,
                                                overlap_grad_reduce=False)
        self.model = DistributedDataParallel(config=tconfig, ddp_config=ddp_cfg, module=model)
        opt_cfg = OptimizerConfig(optimizer="adam", lr=cfg.lr, min_lr=cfg.min_lr, weight_decay=cfg.weight_decay,
                                  adam_beta1=cfg.beta1, adam_beta2=cfg.beta2, adam_eps=cfg.eps,
                                  bf16=tconfig.bf16, params_dtype=tconfig.params_dtype,
                                  use_distributed_optimizer=True, clip_grad=cfg.clip_grad)
        self.optimizer = get_megatron_optimizer(opt_cfg, [self.model])
        # megatron's DDP averages over DP; our losses are already global means
        self.loss_scale = float(info.dp_size)

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def zero_grad(self) -> None:
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()

    def prepare_step(self) -> float:
        """Reduce-scatter the gradients and return their global norm, before any update.

        megatron's own ``optimizer.step()`` cannot be used as is: with bf16 (no loss
        scaler) it applies a step whose gradient norm is NaN (its clip coefficient
        ``clip / (nan + eps) < 1`` is False, so nothing stops it) and reports the norm
        only afterwards; its only "unknown" norm is ``None``, returned when an fp16
        loss scaler found inf/NaN and the step was skipped. So the step is taken
        apart here: ``prepare_grads`` (the scaler's inf/NaN check), ``get_grad_norm``
        (over the whole grad-stats group, so every rank sees the same value), and
        :meth:`step` clips by that norm and applies ``step_with_ready_grads``.
        """
        from megatron.core.distributed import finalize_model_grads

        finalize_model_grads([self.model])
        if self.optimizer.prepare_grads():  # the loss scaler saw inf/NaN gradients
            self._norm = math.inf
        else:
            self._norm = float(self.optimizer.get_grad_norm())
        return self._norm

    def step(self) -> None:
        from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

        if not math.isfinite(self._norm):
            raise FloatingPointError(f"refusing an optimizer step with gradient norm {self._norm}")
        if self.cfg.clip_grad > 0:
            for opt in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
                params = opt.get_parameters()
                if params:
                    clip_grad_by_total_norm_fp32(params, self.cfg.clip_grad, self._norm,
                                                 opt.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8)
        self.optimizer.step_with_ready_grads()

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(),
                "param_state": self.optimizer.get_parameter_state_dp_zero()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.optimizer.load_parameter_state_from_dp_zero(state["param_state"])

    def _item_key(self) -> str:
        # megatron's sharded fp32 main weights and moments, gathered per data-parallel group:
        # they reload only into the layout that saved them (the model weights reshard)
        return f"optimizer@tp{self.info.tp_size}-dp{self.info.dp_size}-rank{self.info.rank:05d}"

    def checkpoint_items(self, layout) -> dict:
        from ptobj.recipes.engine.checkpoint import blob

        return {self._item_key(): blob(self.state_dict())}

    def loaded(self, items: dict) -> None:
        self.load_state_dict(items[self._item_key()])


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, info: DistInfo):
    use_dist = cfg.distributed_optimizer == "on" or (cfg.distributed_optimizer == "auto" and info.device.type == "cuda")
    if use_dist:
        if info.device.type != "cuda":
            raise ValueError("optim.distributed_optimizer=on needs a GPU (megatron's optimizer is CUDA-only)")
        return MegatronDistributedAdam(model, cfg, info)
    return TorchAdamW(model, cfg, info)
