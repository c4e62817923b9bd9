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

import functools
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

    def loaded(self, items: dict, layout) -> None:
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

    # -- checkpoints: per parameter, in any data- and tensor-parallel layout ---------------------
    # megatron shards its fp32 main weights and Adam moments over the data-parallel group by
    # flat ranges of its gradient buckets, which move with the data-parallel size. A checkpoint
    # holds instead, per model parameter, the whole (tensor-parallel-local) main weight and
    # moments, sharded like the parameter by TensorLayout: the keys of TorchAdamW plus
    # ``main_param``, plain tensors (no pickled state), loadable at any DP and TP size. The first
    # rank of each data-parallel group gathers them (save) and hands each rank its slice (load).

    def _optimizers(self) -> list:
        return list(getattr(self.optimizer, "chained_optimizers", [self.optimizer]))

    @functools.cached_property
    def _shards(self) -> dict:
        """model parameter -> (its distributed optimizer, (start, end) of this rank's flat slice)."""
        out = {}
        for opt in self._optimizers():
            for buffer_ranges in opt.gbuf_ranges:
                for buckets in buffer_ranges.values():
                    for bucket in buckets:
                        for param, ranges in bucket["param_map"].items():
                            out[param] = (opt, (ranges["param"].start, ranges["param"].end))
        return out

    @functools.cached_property
    def _dp_group(self):
        groups = {tuple(dist.get_process_group_ranks(o.data_parallel_group)): o.data_parallel_group
                  for o in self._optimizers()}
        if len(groups) != 1:
            raise NotImplementedError(f"distributed optimizers over several data-parallel groups: {sorted(groups)}")
        return next(iter(groups.values()))

    def _named_params(self):
        return [(n, p) for n, p in self.model.module.named_parameters() if p.requires_grad]

    def _adam_step(self) -> int:
        """Adam's step count: per parameter (torch Adam) or per group (TE / apex FusedAdam)."""
        for opt in self._optimizers():
            for group in opt.optimizer.param_groups:
                if "step" in group:
                    return int(group["step"])
            for state in opt.optimizer.state.values():
                if "step" in state:
                    return int(state["step"])
        return 0

    def checkpoint_items(self, layout) -> dict:
        """On the first rank of each data-parallel group: ``optimizer/{name}/main_param``,
        ``exp_avg``, ``exp_avg_sq`` (fp32, whole, sharded like the parameter) and ``step``;
        nothing on the other ranks (DCP takes each rank's own keys). Collective over the
        data-parallel group."""
        group = self._dp_group
        first = group.rank() == 0
        step = torch.tensor(float(self._adam_step()), dtype=torch.float64)
        out = {}
        for name, p in self._named_params():
            opt, part = self._shards.get(p, (None, None))
            local = opt._get_main_param_and_optimizer_states(p) if opt is not None else {}
            for key, source in STATE_KEYS.items():
                piece = local.get(source)
                if part is not None and piece is None:  # Adam has not stepped yet
                    piece = torch.zeros(part[1] - part[0], dtype=torch.float32, device=p.device)
                whole = gather_flat_slices(p.shape, part, piece, group, p.device)
                if first:
                    out.update(layout.items(f"optimizer/{name}/{key}", whole, p))
            if first:
                out[f"optimizer/{name}/step"] = step.clone()
        return out

    def loaded(self, items: dict, layout) -> None:
        """Hand each rank its slices of the loaded items (held by each group's first rank)."""
        group = self._dp_group
        first = group.rank() == 0
        params = self._named_params()
        device = params[0][1].device  # NCCL broadcasts device tensors only
        step = (items[f"optimizer/{params[0][0]}/step"].to(device, torch.float64) if first
                else torch.zeros((), dtype=torch.float64, device=device))
        dist.broadcast(step, src=dist.get_global_rank(group, 0), group=group)
        self._set_adam_step(int(step))
        for name, p in params:
            opt, part = self._shards.get(p, (None, None))
            pieces = {key: scatter_flat_slices(layout.local(items, f"optimizer/{name}/{key}", p) if first else None,
                                               p.numel(), part, group, p.device)
                      for key in STATE_KEYS}
            if opt is None:
                continue
            main = opt._get_main_param_and_optimizer_states(p)["param"]
            state = opt.optimizer.state[main]
            main.data.copy_(pieces["main_param"])
            for key in ("exp_avg", "exp_avg_sq"):
                if key not in state:
                    state[key] = torch.zeros_like(main, dtype=torch.float32)
                state[key].copy_(pieces[key])
            if isinstance(opt.optimizer, (torch.optim.Adam, torch.optim.AdamW)):
                state["step"] = torch.tensor(float(int(step)), dtype=torch.float32)

    def _set_adam_step(self, step: int) -> None:
        for opt in self._optimizers():
            if not isinstance(opt.optimizer, (torch.optim.Adam, torch.optim.AdamW)):
                for group in opt.optimizer.param_groups:
                    group["step"] = step


# checkpoint key -> megatron's name for the tensor
STATE_KEYS = {"main_param": "param", "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}


def gather_flat_slices(shape, part: tuple[int, int] | None, piece: torch.Tensor | None, group,
                       device) -> torch.Tensor | None:
    """The whole tensor of ``shape`` from the disjoint slices of its flattened form that the
    ranks of ``group`` hold (``part`` = (start, end) of this rank's ``piece``, None for no
    slice): returned on the group's first rank, None elsewhere. Exact: the slices are summed
    into zeros. Collective over ``group``."""
    whole = torch.zeros(math.prod(shape), dtype=torch.float32, device=device)
    if part is not None:
        whole[part[0]:part[1]] = piece.reshape(-1)
    if dist.get_world_size(group) > 1:
        dist.reduce(whole, dst=dist.get_global_rank(group, 0), group=group)
    return whole.view(shape) if group.rank() == 0 else None


def scatter_flat_slices(whole: torch.Tensor | None, numel: int, part: tuple[int, int] | None, group,
                        device) -> torch.Tensor | None:
    """This rank's slice ``part`` of the flattened ``whole`` held by the group's first rank
    (None elsewhere): the inverse of :func:`gather_flat_slices` for any other slicing.
    Collective over ``group``."""
    if group.rank() == 0:
        flat = whole.reshape(-1).to(device=device, dtype=torch.float32)
    else:
        flat = torch.empty(numel, dtype=torch.float32, device=device)
    if dist.get_world_size(group) > 1:
        dist.broadcast(flat, src=dist.get_global_rank(group, 0), group=group)
    return None if part is None else flat[part[0]:part[1]]


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, info: DistInfo):
    use_dist = cfg.distributed_optimizer == "on" or (cfg.distributed_optimizer == "auto" and info.device.type == "cuda")
    if use_dist:
        if info.device.type != "cuda":
            raise ValueError("optim.distributed_optimizer=on needs a GPU (megatron's optimizer is CUDA-only)")
        return MegatronDistributedAdam(model, cfg, info)
    return TorchAdamW(model, cfg, info)
