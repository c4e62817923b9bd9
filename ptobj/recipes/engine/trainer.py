"""The training loop: a :class:`Session` (process groups, data, model, optimizer) and :func:`run`.

The command that starts it is :mod:`ptobj.recipes.train` (``ptobj train``), which also
hands in the objective's declared evaluations; launched by ``torchrun`` too
(RANK / WORLD_SIZE / LOCAL_RANK are read from the environment; gloo on CPU, nccl
on GPU). One step:

1. the step's micro-batches are read by global sample position (a pure
   function of the step, see :mod:`ptobj.recipes.engine.batches`);
2. each objective's valid targets are counted over the step and all-reduced
   over the data-parallel group;
3. per micro-batch, loss = sum_k weight_k * loss_sum_k / count_k; a
   non-finite loss stops the run here, before any optimizer step;
4. gradients are summed over DP and their global norm is measured; a
   non-finite norm stops the run before any update; otherwise they are clipped
   by it and AdamW steps with the warmup + cosine learning rate.

Every ``logging.every_steps`` a line is logged (loss per objective, tokens/s,
MFU on GPU, learning rate, grad norm); held-out evaluation and atomic
checkpoints run on their own periods and at the end. The resolved config is
written to ``<run_dir>/config.yaml``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ptobj.recipes.engine import checkpoint as ckpt
from ptobj.recipes.engine.batches import samples_per_step, split_rows, step_indices
from ptobj.recipes.engine.config import save_config, to_dict
from ptobj.recipes.engine.distributed import DistInfo, init_distributed
from ptobj.recipes.engine.losses import check_counts, step_counts, weighted_loss
from ptobj.recipes.engine.resolve import resolve_model_config, resolve_precision, uses_distributed_optimizer
from ptobj.recipes.engine.schedule import WarmupCosine, set_lr
from ptobj.recipes.engine.stopping import EXIT_REQUEUE, STOPPED_FILE, StopRequest, allocation_end
from ptobj.recipes.engine.train_config import TrainConfig

class NonFiniteLoss(RuntimeError):
    """Raised before the optimizer step whose loss (or gradient norm) is not finite."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


@dataclass
class Report:
    """What one evaluation beyond held-out losses found: metrics (merged into
    ``final_metrics.json``), a short text for the end of the run, and the full result for
    callers that want more."""

    name: str
    metrics: dict[str, float] = field(default_factory=dict)
    text: str = ""
    result: Any = None


Evaluations = Callable[["Session"], "list[Report]"]


@dataclass
class RunResult:
    run_dir: Path
    start_step: int
    final_step: int
    losses: dict[int, float] = field(default_factory=dict)  # step (1-based) -> total loss, this process
    eval_metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    reports: list[Report] = field(default_factory=list)  # each evaluation handed to run() (the objective's own)
    stopped: str | None = None  # why the run stopped early on purpose (a signal, the time limit), saved
    loss_plot: Path | None = None


# ----------------------------------------------------------------------------- setup


class Session:
    """Everything a run holds: process groups, data, model, optimizer, schedule."""

    def __init__(self, cfg: TrainConfig, *, progress: bool = True):
        from ptobj.models.model import build_model

        self.cfg = cfg
        p = cfg.parallel
        self.info: DistInfo = init_distributed(p.device, p.backend, p.tensor_parallel, p.pipeline_parallel,
                                               seed=cfg.schedule.seed)
        from ptobj.recipes.engine.data import build_run_data

        self.data = build_run_data(cfg, self.info, progress=progress and self.info.is_main)
        self.tokenizer = self.data.tokenizer
        self.model_cfg = resolve_model_config(cfg, self.data.vocab_size, self.info.device)
        self.precision = resolve_precision(cfg, self.info.device)
        self.model = build_model(self.model_cfg, self.info.pg_collection, device=self.info.device)
        self.init_checkpoint = None
        if cfg.init_from:  # the weights only, before the optimizer takes them (a resume overrides them)
            from ptobj.recipes.engine.init import load_init

            self.init_checkpoint = load_init(self.model, self.model_cfg, cfg.init_from, cfg.init_step, self.info)
        from ptobj.recipes.engine.optim import build_optimizer

        self.optimizer = build_optimizer(self.model, cfg.optim, self.info)
        self.wrapped = self.optimizer.model  # megatron's DDP wrapper, or the model itself
        self.schedule = WarmupCosine(cfg.optim.lr, cfg.schedule.warmup_steps, cfg.schedule.train_steps,
                                     cfg.optim.min_lr)
        self.per_step = samples_per_step(grad_accum=cfg.schedule.grad_accum_steps, dp_size=self.info.dp_size,
                                         micro_batch_size=cfg.schedule.micro_batch_size)
        self._checked_counts = False
        self.num_params = sum(p.numel() for p in self.model.parameters())
        if self.info.initialized and self.info.tp_size > 1:
            t = torch.tensor([float(self.num_params)], dtype=torch.float64, device=self.info.device)
            from megatron.core import parallel_state

            torch.distributed.all_reduce(t, group=parallel_state.get_tensor_model_parallel_group())
            self.num_params = int(t.item())  # approximate: replicated norms counted tp times

    # -- helpers ---------------------------------------------------------------------------------
    def autocast(self):
        if self.precision == "bf16" and not uses_distributed_optimizer(self.cfg, self.info.device):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return None

    def to_device(self, batch: dict) -> dict:
        out = {}
        for k, v in batch.items():
            if k == "loss_mask":
                v = v.float()
            out[k] = v.to(self.info.device, non_blocking=True)
        return out

    def micro_batches(self, step: int) -> list[dict]:
        """The step's micro-batches, read in this process (one ``read`` for the step)."""
        from ptobj.data_pipeline.collate import collate

        s = self.cfg.schedule
        idx = step_indices(step, grad_accum=s.grad_accum_steps, dp_rank=self.info.dp_rank,
                           dp_size=self.info.dp_size, micro_batch_size=s.micro_batch_size)
        return [self.to_device(mb) for mb in split_rows(collate(self.data.train.read(idx)), s.micro_batch_size)]

    def batch_stream(self, start_step: int):
        """Micro-batches from ``start_step`` on (on the device); each step is read whole by one
        of ``data.loader_workers`` DataLoader workers; same content as :meth:`micro_batches`."""
        from ptobj.data_pipeline.collate import collate
        from ptobj.recipes.engine.batches import StepBatchSampler

        s = self.cfg.schedule
        sampler = StepBatchSampler(start_step, s.train_steps, grad_accum=s.grad_accum_steps,
                                   dp_rank=self.info.dp_rank, dp_size=self.info.dp_size,
                                   micro_batch_size=s.micro_batch_size)
        workers = self.cfg.data.loader_workers
        # its own generator: starting the iterator draws a base seed, which must not come from
        # (and shift) the global stream (the samples themselves are keyed by position)
        loader = torch.utils.data.DataLoader(
            self.data.train, sampler=sampler, batch_size=None, collate_fn=collate, num_workers=workers,
            prefetch_factor=4 if workers else None, pin_memory=self.info.device.type == "cuda",
            generator=torch.Generator().manual_seed(s.seed))
        for batch in loader:
            for mb in split_rows(batch, s.micro_batch_size):
                yield self.to_device(mb)

    def evaluate(self) -> dict[str, float]:
        from ptobj.recipes.engine.heldout import evaluate

        return evaluate(self.model, self.data.evals, info=self.info, batches=self.cfg.eval.batches,
                        micro_batch_size=self.cfg.eval.micro_batch_size, to_device=self.to_device, autocast=self.autocast if self.autocast() is not None else None)

    def train_step(self, step: int, mbs: list[dict], *, loss_hook=None) -> tuple[float, dict, float]:
        """Forward/backward every micro-batch, then one optimizer step. Returns this
        rank's (loss, per-objective losses, grad norm); raises :class:`NonFiniteLoss`
        before the optimizer step when a loss or the gradient norm is not finite."""
        from ptobj.models.parallel import seed_everything

        info = self.info
        seed_everything(step_seed(self.cfg.schedule.seed, step))
        heads = self.model_cfg.head_kinds
        weights = {k: self.cfg.objective.weight(k) for k in heads}
        counts = step_counts(mbs, heads, lambda t: info.all_reduce_dp(t.to(info.device)).cpu())
        self.optimizer.zero_grad()
        parts_sum: dict[str, float] = {}
        loss_sum = 0.0
        for mb in mbs:
            ac = self.autocast()
            if ac is not None:
                with ac:
                    out = self.wrapped(mb)
            else:
                out = self.wrapped(mb)
            if not self._checked_counts:
                check_counts(out, mb, heads)
            loss, parts = weighted_loss(out, counts, weights)
            if loss_hook is not None:
                loss = loss_hook(step + 1, loss)
            bad = torch.tensor([0.0 if bool(torch.isfinite(loss.detach())) else 1.0], device=info.device)
            info.all_reduce_world(bad, op=torch.distributed.ReduceOp.MAX)
            if bad.item() > 0:
                raise NonFiniteLoss(f"non-finite loss at step {step + 1} (objective losses {_fmt(parts)}); "
                                    "stopped before its optimizer step", step + 1)
            (loss * self.optimizer.loss_scale).backward()
            loss_sum += float(loss.detach())
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + float(v)
        self._checked_counts = True
        grad_norm = self.optimizer.prepare_step()  # the same on every rank
        if not math.isfinite(grad_norm):
            raise NonFiniteLoss(f"non-finite gradient norm ({grad_norm}) at step {step + 1}; stopped before its "
                                "optimizer step", step + 1)
        self.optimizer.step()
        return loss_sum, parts_sum, grad_norm

    # -- checkpoints -----------------------------------------------------------------------------
    @functools.cached_property
    def layout(self) -> ckpt.TensorLayout:
        return ckpt.TensorLayout(self.info.pg_collection.tp, self.info.device.type)

    def state(self, step: int = 0, *, model_only: bool = False) -> dict:
        """This rank's checkpoint items (views of the live tensors, in the layout-independent
        form of :class:`ptobj.recipes.engine.checkpoint.TensorLayout`), plus the data position after
        ``step`` steps. No RNG state: every random stream is keyed by the step
        (:func:`step_seed`) or by the sample (the data)."""
        items = self.layout.model_items(self.model)
        if not model_only:
            items.update(self.optimizer.checkpoint_items(self.layout))
            # as int64 tensors: a checkpoint holds tensors only, so loading one unpickles nothing
            items["data"] = {k: torch.tensor(v, dtype=torch.int64)
                             for k, v in self.data.train.position_state(step * self.per_step).items()}
        return items

    def save(self, step: int, **hooks) -> Path:
        info = self.info
        meta = {"layout": {"world": info.world_size, "tp": info.tp_size, "dp": info.dp_size},
                "optimizer": self.optimizer.kind, "model_dtype": self.model_cfg.params_dtype,
                "samples_per_step": self.per_step, "config": to_dict(self.cfg)}
        try:
            return ckpt.save_checkpoint(self.cfg.checkpoint_dir, step, self.state(step), extra_meta=meta,
                                        keep=self.cfg.checkpoint.keep or None, **hooks)
        except ckpt.NonFiniteState as exc:
            raise NonFiniteLoss(str(exc), step) from None

    def resume(self, *, model_only: bool = False, on_skip=None) -> tuple[Path, int] | None:
        """Load the newest checkpoint of ``checkpoint_dir`` that verifies (damaged ones are
        reported to ``on_skip``, naming the file): (its directory, its step), or None."""
        found = ckpt.load_newest(self.cfg.checkpoint_dir, lambda: self.state(model_only=model_only), on_skip)
        if found is None:
            return None
        step_dir, meta, items = found
        step = int(meta["step"])
        if model_only:
            return step_dir, step
        self.optimizer.loaded(items, self.layout)
        position = self.data.train.position_of({k: int(v) for k, v in items["data"].items()})
        if position != step * self.per_step:
            raise RuntimeError(
                f"{step_dir}: data position {position} != step {step} x {self.per_step} samples "
                "per step; the batch geometry (micro_batch_size, grad_accum_steps, data-parallel size) changed")
        return step_dir, step


# ----------------------------------------------------------------------------- the loop


def run(cfg: TrainConfig, *, progress: bool | None = None,
        loss_hook: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
        save_hooks: dict | None = None, evaluations: Evaluations | None = None) -> RunResult:
    """Train per ``cfg``. ``evaluations(session) -> [Report]`` runs at the end, after the
    held-out losses (the objective's declared evaluations, handed in by the command).
    ``loss_hook(step, loss) -> loss`` and ``save_hooks`` (passed to
    :func:`ptobj.recipes.engine.checkpoint.save_checkpoint`) exist for fault-injection tests."""
    from ptobj.data_pipeline.build import TOKENIZER_FILE
    from ptobj.recipes.engine.logger import RunLogger, flops_per_token, format_line, peak_flops

    started = time.time()
    sess = Session(cfg, progress=cfg.logging.progress_bar if progress is None else progress)
    info = sess.info
    run_dir = cfg.run_dir
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / STOPPED_FILE).unlink(missing_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        sess.tokenizer.save(run_dir / TOKENIZER_FILE)  # the run keeps its tokenizer (ptobj.recipes.export reads it)
        for name, text in sess.data.run_files.items():  # what the data writes down (an instruction mixture's shares)
            (run_dir / name).write_text(text)
        (run_dir / "model_config.json").write_text(json.dumps(dataclasses.asdict(sess.model_cfg), indent=1))
        ckpt.remove_partial_saves(cfg.checkpoint_dir)
    info.barrier()

    start = 0
    last_good = None
    skipped: list[str] = []
    if cfg.checkpoint.resume:
        found = sess.resume(on_skip=skipped.append)
        if found is not None:
            last_good, start = found
    total = cfg.schedule.train_steps
    wandb = None
    if info.is_main and cfg.logging.wandb.enabled:
        from ptobj.recipes.engine.wandb_log import WandbRun

        wandb = WandbRun(cfg.logging.wandb, run_dir, cfg.name, to_dict(cfg))
    log = RunLogger(run_dir, enabled=info.is_main, total_steps=total, start_step=start,
                    every=cfg.logging.every_steps, tensorboard=cfg.logging.tensorboard,
                    progress_bar=(cfg.logging.progress_bar if progress is None else progress), wandb=wandb)
    if not sess.data.evals:
        log.info("[recipes] the corpus has no held-out documents: evaluation is skipped "
                 "(raise data.corpus.valid_fraction)")
    for line in skipped:
        log.info(f"[recipes] {line}")
    for line in sess.data.notes:
        log.info(line)
    cut = getattr(sess.data.train.sampler, "truncated", 0)   # records (SFT) longer than a context
    if cut:
        log.info(f"[recipes] {cut} training record(s) longer than a context ({cfg.data.seq_length + 1} ids) "
                 "were cut to it")
    if start:
        log.info(f"[recipes] resumed from {last_good} at step {start}")
    elif sess.init_checkpoint is not None:
        log.info(f"[recipes] weights from {sess.init_checkpoint} (init_from), fresh optimizer")
    log.info(f"[recipes] {cfg.name}: {sess.model_cfg.kind} {sess.num_params / 1e6:.2f}M params, "
             f"vocab {sess.model_cfg.vocab_size}, seq {cfg.data.seq_length}, world {info.world_size} "
             f"(dp {info.dp_size}, tp {info.tp_size}), {info.device.type}/{sess.precision}, "
             f"optimizer {sess.optimizer.kind}, {sess.per_step} samples/step")

    causal = sess.model_cfg.kind == "decoder"
    fpt = flops_per_token(sess.num_params, sess.model_cfg.num_layers, sess.model_cfg.hidden_size,
                          cfg.data.seq_length, causal)
    peak = peak_flops(info.device, cfg.logging.peak_flops)
    result = RunResult(run_dir=run_dir, start_step=start, final_step=start, checkpoint=last_good)
    window = {"tokens": 0.0, "time": 0.0, "n": 0, "sums": {}}
    stop_after = cfg.schedule.stop_after_steps
    sched = cfg.schedule
    stop = StopRequest(sched.stop_signals, allocation_end(sched.time_limit_minutes, started),
                       60.0 * sched.exit_margin_minutes).install()
    step_seconds = 0.0
    stream = sess.batch_stream(start)
    try:
        for step in range(start, total):
            if stop_after and step >= stop_after:
                break
            t0 = time.perf_counter()
            lr = sess.schedule(step)
            set_lr(sess.optimizer, lr)
            mbs = [next(stream) for _ in range(cfg.schedule.grad_accum_steps)]
            try:
                loss_sum, parts_sum, grad_norm = sess.train_step(step, mbs, loss_hook=loss_hook)
            except NonFiniteLoss as exc:
                raise NonFiniteLoss(f"{exc}. Last good checkpoint: {last_good or 'none'}", exc.step) from None
            done = step + 1
            # the loss each rank holds is its share of the global mean: sum over DP
            names = sorted(parts_sum)
            vec = torch.tensor([loss_sum] + [parts_sum[n] for n in names], dtype=torch.float64, device=info.device)
            info.all_reduce_dp(vec)
            vals = vec.tolist()
            result.losses[done] = vals[0]
            if info.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            tokens = float(sum(mb["tokens"].numel() for mb in mbs)) * info.dp_size
            window["tokens"] += tokens
            window["time"] += dt
            window["n"] += 1
            for n, v in zip(["loss"] + [f"{n}_loss" for n in names], vals):
                window["sums"][n] = window["sums"].get(n, 0.0) + v
            log.step(done, vals[0])
            if done % log.every == 0 or done == total:
                tps = window["tokens"] / max(window["time"], 1e-9)
                line = {k: v / window["n"] for k, v in window["sums"].items()}
                line.update({"lr": lr, "grad_norm": grad_norm, "tokens_per_s": tps})
                if peak > 0:
                    line["mfu"] = tps * fpt / (peak * info.world_size)
                log.info(format_line(done, total, line))
                log.record(done, line)
                window = {"tokens": 0.0, "time": 0.0, "n": 0, "sums": {}}
            ev = cfg.eval.every_steps
            if ev and done % ev == 0 and done != total and sess.data.evals:
                metrics = sess.evaluate()
                log.info(format_line(done, total, metrics))
                log.record(done, metrics, kind="eval")
            every = cfg.checkpoint.every_steps
            if every and done % every == 0 and done != total:
                last_good = _save(sess, done, last_good, save_hooks)
                result.checkpoint = last_good
            result.final_step = done
            step_seconds = max(step_seconds, time.perf_counter() - t0)
            if done < total and _agreed(info, stop.reason(step_seconds)):
                if last_good is None or ckpt.read_meta(last_good)["step"] != done:
                    last_good = _save(sess, done, last_good, save_hooks)
                    result.checkpoint = last_good
                result.stopped = stop.reason(step_seconds) or "another rank stopped"
                if info.is_main:
                    (run_dir / STOPPED_FILE).write_text(json.dumps(
                        {"step": done, "reason": result.stopped, "checkpoint": str(last_good)}, indent=1))
                log.info(f"[recipes] stopped at step {done} ({result.stopped}); checkpoint saved: {last_good}; "
                         f"run the same command again to continue (exit status {EXIT_REQUEUE})")
                break
        finished = result.final_step >= total
        if finished and cfg.checkpoint.save_final and result.final_step > start:
            last_good = _save(sess, result.final_step, last_good, save_hooks)
            result.checkpoint = last_good
            log.info(f"[recipes] checkpoint saved: {last_good}")
        if finished and cfg.eval.at_end and sess.data.evals:
            metrics = sess.evaluate()
            result.eval_metrics = metrics
            log.info(format_line(result.final_step, total, {f"eval/{k}": v for k, v in metrics.items()}))
            log.record(result.final_step, metrics, kind="eval")
        if finished and cfg.eval.at_end and evaluations is not None:  # beyond losses (FIM: infilling)
            result.reports = evaluations(sess)
        if finished and info.is_main:  # what a sweep collects
            extra = {k: v for r in result.reports for k, v in r.metrics.items()}
            final = {"step": result.final_step, "train_loss": result.losses.get(result.final_step),
                     **result.eval_metrics, **extra}
            (run_dir / "final_metrics.json").write_text(json.dumps(final, indent=1))
            if wandb is not None:
                wandb.final(final)
            result.loss_plot = _loss_plot(run_dir, cfg.name)
            log.info(_summary(result))
    finally:
        stop.restore()
        stream.close()
        log.close()
    return result


def _agreed(info: DistInfo, reason: str | None) -> bool:
    """Whether any rank has a reason to stop (every rank gets the same answer)."""
    if info.world_size == 1:
        return reason is not None
    flag = torch.tensor([0.0 if reason is None else 1.0], device=info.device)
    info.all_reduce_world(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item() > 0)


def _save(sess: Session, step: int, last_good: Path | None, hooks: dict | None) -> Path:
    try:
        return sess.save(step, **(hooks or {}))
    except NonFiniteLoss as exc:
        raise NonFiniteLoss(f"{exc}. Last good checkpoint: {last_good or 'none'}", exc.step) from None


def step_seed(seed: int, step: int) -> int:
    """The seed of step ``step``'s random streams (dropout): a function of (seed, step)
    alone, so a resumed run draws what an uninterrupted one draws, whatever ran before."""
    import numpy as np

    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def _fmt(parts: dict) -> str:
    return ", ".join(f"{k}={float(v):.4g}" for k, v in parts.items()) or "-"


def _loss_plot(run_dir: Path, name: str) -> Path | None:
    try:
        from ptobj.recipes.engine.plots import run_curves
    except ModuleNotFoundError:  # matplotlib comes with the [sweep] extra
        return None
    return run_curves(run_dir / "metrics.jsonl", run_dir / "loss.png", title=f"{name}: loss")


def _summary(result: RunResult) -> str:
    """The end of a run: held-out losses, the declared evaluations' tables, the loss plot."""
    bar = "-" * 72
    lines = [bar, f"held-out evaluation at step {result.final_step}"]
    for k, v in sorted(result.eval_metrics.items()):
        if k.endswith("_loss"):
            lines.append(f"  {k:<28} {v:.4f}")
    lines += [r.text for r in result.reports if r.text]
    lines.append(f"loss curve: {result.loss_plot}" if result.loss_plot else
                 "loss curve: not drawn (matplotlib comes with the [sweep] extra)")
    return "\n".join([*lines, bar])
