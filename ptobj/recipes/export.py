"""Export a trained run to a Hugging Face folder:
``ptobj export RUN_DIR OUT_DIR [--step N] [--dtype bf16]``.

The run is rebuilt with the training recipe's own code (``RUN_DIR/config.yaml``
through :func:`ptobj.recipes.engine.train_config.load_train_config`, the model through
:func:`ptobj.recipes.engine.resolve.resolve_model_config` and ``build_model``), a checkpoint is
loaded (the newest complete one unless ``--step``), and
:func:`ptobj.models.hf_export.export` writes the weights, configs and the run's
tokenizer (``RUN_DIR/tokenizer.model``, kept there by ``ptobj.recipes.train``).
The folder is written under a temporary name, checked (transformers loads it
and its logits and token ids equal ours), and only then renamed to OUT_DIR.

A run trained with ``parallel.tensor_parallel=T`` exports under
``torchrun --nproc-per-node T -m ptobj.recipes.export ...``: each rank loads its
shard, the shards are gathered, rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ptobj.recipes.engine import checkpoint as ckpt
from ptobj.recipes.engine.config import ConfigError
from ptobj.recipes.engine.runs import find_checkpoint, find_tokenizer, load_model, load_run_config

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROBE_SHAPE = (2, 64)  # token ids the check runs through both models (length capped at seq_length)
PROBE_TEXT = "def add(a, b):\n    return a + b  # sum\n\nThe quick brown fox, 2024."
# largest |logit difference| / max(1, largest |logit|) the check accepts. Both sides compute in fp32
# from the weights the folder holds (rounded to bf16 / fp16 for such an export), so the one bound
# holds for every --dtype; measured differences are about 1e-6. How far a bf16 folder run in bf16
# drifts from the fp32 model is a property of bf16, not of the export, and is not checked here.
TOLERANCE = 1e-4


class CheckFailed(RuntimeError):
    """The written folder does not reproduce our model; it is removed, never renamed into place."""


@dataclass
class Exported:
    run_dir: Path
    out_dir: Path
    checkpoint: Path
    step: int
    hf: Any  # ptobj.models.hf_export.HFFormat
    dtype: str
    probe_shape: tuple[int, int] | None = None  # token ids [b, s] the check compared logits on
    max_abs_diff: float | None = None  # |transformers logits - ours|, fp32, on the probe tokens (all heads)
    max_abs_logit: float | None = None
    diffs: dict | None = None  # head kind ("token", "sequence") -> max |transformers logits - ours|
    dropped: tuple = ()  # our heads the folder does not carry (SBO)


# ----------------------------------------------------------------------------- the export


def export_run(run_dir: str | Path, out_dir: str | Path, *, step: int | None = None, dtype: str = "auto",
               tokenizer: str | Path | None = None, device: str = "cpu", check: bool = True) -> Exported:
    """Export ``run_dir``'s checkpoint to ``out_dir`` (which must not exist or be empty).
    Call on every rank of a ``torchrun`` launch of ``tensor_parallel`` processes."""
    from ptobj.data_pipeline.tokenizer import SentencePieceTokenizer
    from ptobj.models.hf_export import dropped_heads, export, hf_format
    from ptobj.models.sharding import full_state_dict
    from ptobj.recipes.engine.distributed import init_distributed
    from ptobj.recipes.engine.resolve import resolve_model_config

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if dtype != "auto" and dtype not in DTYPES:
        raise ValueError(f"dtype: expected auto or one of {sorted(DTYPES)}, got {dtype!r}")
    cfg = load_run_config(run_dir)
    tok_path = find_tokenizer(run_dir, tokenizer)
    tok = SentencePieceTokenizer.load(tok_path)
    # fp32 weights on the export device whatever the run trained in: bf16 checkpoints load exactly
    cfg = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, device=device, backend="auto",
                                                                precision="fp32"))
    special = tok.special.with_sentinels(tok.vocab_size, cfg.plan.sentinels)   # the run's reserved ids
    model_cfg = resolve_model_config(cfg, tok.vocab_size + cfg.plan.sentinels, torch.device(device))
    fmt = hf_format(model_cfg)  # a model with no Hugging Face twin stops here
    step_dir = find_checkpoint(cfg.checkpoint_dir, step)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir}: exists and is not an empty folder; choose a new one")
    tp = cfg.parallel.tensor_parallel
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != tp:
        raise ValueError(f"{run_dir} was trained with parallel.tensor_parallel={tp}, this launch has {world} "
                         f"process(es): run `torchrun --nproc-per-node {tp} -m ptobj.recipes.export ...`")

    info = init_distributed(device, "auto", tp, 1, seed=cfg.schedule.seed)
    say = print if info.is_main else (lambda *a, **k: None)
    say(f"[export] {run_dir}: {model_cfg.kind}, loading {step_dir}")
    model, step_done, saved_dtype = load_model(model_cfg, step_dir, info,
                                               fits=f"{run_dir / 'config.yaml'} and tokenizer {tok_path}")
    out_dtype = saved_dtype if dtype == "auto" else DTYPES[dtype]
    result = Exported(run_dir=run_dir, out_dir=out_dir, checkpoint=step_dir, step=step_done, hf=fmt,
                      dtype=str(out_dtype).removeprefix("torch."), dropped=tuple(dropped_heads(model_cfg)))
    full = full_state_dict(model, info.pg_collection.tp)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    try:
        if info.is_main:
            say(f"[export] writing {fmt.architecture} ({result.dtype})")
            if result.dropped:
                say(f"[export] dropping head(s) {list(result.dropped)}: no {fmt.architecture} twin")
            shutil.rmtree(tmp, ignore_errors=True)
            export(full, model_cfg, tmp, tokenizer_model=tok_path, special=special, dtype=out_dtype,
                   chat="chat_user" in cfg.plan.special)
        del full
        info.barrier()
        if check:
            say("[export] checking: transformers loads the folder and gives our logits")
            _check(model, fmt, tmp, tok, cfg.data.seq_length, out_dtype, info, result)
        if info.is_main:  # only a checked folder gets its name
            if out_dir.is_dir():
                out_dir.rmdir()  # empty, checked above
            os.rename(tmp, out_dir)
    finally:
        if info.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
    info.barrier()
    return result


@torch.no_grad()
def _check(model, fmt, folder: Path, tok, seq_length: int, dtype: torch.dtype, info, result: Exported) -> None:
    """transformers' logits for the folder vs ours on random tokens, both in fp32 from the
    same (``dtype``-rounded) weights, for every head the folder carries (LM; SOP / NSP);
    and the folder's tokenizer vs ours on a text."""
    for p in model.parameters():  # what the folder holds; the model is not used afterwards
        p.copy_(p.to(dtype))
    gen = torch.Generator().manual_seed(0)
    b, s = PROBE_SHAPE
    tokens = torch.randint(tok.special.first_regular, tok.vocab_size, (b, min(s, seq_length)), generator=gen)
    probe = fmt.probe_batch(tokens, model.cfg)
    batch = {k: v.to(info.device) for k, v in probe.items()}
    if fmt.scores:  # a reward model: the score at each row's last token that is not padding
        from ptobj.models.hf_export import last_real_token

        scores = next(iter(model.scalar_scores(batch).values())).float().cpu()
        last = last_real_token(probe["tokens"], tok.special.pad)
        ours = {"scalar": scores[torch.arange(scores.shape[0]), last]}
    else:
        ours = {"token": _gathered_logits(model, batch, info.pg_collection.tp)}  # every TP rank takes part
    for logits in model.sequence_logits(batch).values():  # at most one: hf_format checked it
        ours["sequence"] = logits.float().cpu()
    if not info.is_main:
        return
    import transformers

    hf = getattr(transformers, fmt.auto_class).from_pretrained(folder, dtype=torch.float32).eval()
    theirs = {k: v.float() for k, v in fmt.hf_logits(hf(**fmt.hf_inputs(probe))).items()}
    if set(theirs) != set(ours):
        raise CheckFailed(f"{folder}: transformers gives {sorted(theirs)} logits, our model {sorted(ours)}")
    for kind, logits in ours.items():
        if theirs[kind].shape != logits.shape:
            raise CheckFailed(f"{folder}: transformers {kind} logits have shape {tuple(theirs[kind].shape)}, "
                              f"ours {tuple(logits.shape)}")
    result.probe_shape = tuple(tokens.shape)
    result.diffs = {kind: float((theirs[kind] - logits).abs().max()) for kind, logits in ours.items()}
    result.max_abs_diff = max(result.diffs.values())
    result.max_abs_logit = max(float(logits.abs().max()) for logits in ours.values())
    if not result.max_abs_diff <= TOLERANCE * max(1.0, result.max_abs_logit):
        raise CheckFailed(f"transformers logits differ from ours by up to {result.max_abs_diff:.3g} "
                          f"({result.diffs}; largest |logit| {result.max_abs_logit:.3g}); "
                          "the export is not written")
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    ids = hf_tok(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    if ids != tok.encode(PROBE_TEXT):
        raise CheckFailed(f"{folder}: AutoTokenizer ids {ids} differ from ours {tok.encode(PROBE_TEXT)}")


def _gathered_logits(model, batch: dict, tp_group) -> torch.Tensor:
    """``model.logits`` over the whole vocabulary. megatron's own gather allocates on CUDA,
    so the vocabulary slices are gathered here (on any device)."""
    from ptobj.models.sharding import unshard_tensors

    local = model.logits(batch, gather=False).float().contiguous()
    size = torch.distributed.get_world_size(tp_group)
    if size == 1:
        return local.cpu()
    shards = [torch.empty_like(local) for _ in range(size)]
    torch.distributed.all_gather(shards, local, group=tp_group)
    return unshard_tensors([s.cpu() for s in shards], dim=-1, stride=1)


def how_to_load(result: Exported) -> str:
    fmt, where = result.hf, str(result.out_dir)
    lines = [f"[export] step {result.step} of {result.run_dir} -> {where}: {fmt.architecture}, {result.dtype}"]
    if result.max_abs_diff is not None:
        b, s = result.probe_shape
        heads = ", ".join(f"{kind} {diff:.2g}" for kind, diff in result.diffs.items())
        lines.append(f"[export] checked: transformers logits match ours to {result.max_abs_diff:.2g} "
                     f"({heads}; largest |logit| {result.max_abs_logit:.3g}, fp32, {b}x{s} tokens); "
                     "tokenizer ids equal ours")
    if result.dropped:
        lines.append(f"[export] not exported (no {fmt.architecture} twin): head(s) {list(result.dropped)}")
    lines += ["Load it with:",
              f"    from transformers import {fmt.auto_class}, AutoTokenizer",
              f"    model = {fmt.auto_class}.from_pretrained({where!r})",
              f"    tokenizer = AutoTokenizer.from_pretrained({where!r})",
              f"or: transformers.pipeline({fmt.pipeline_task!r}, model={where!r})"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None, prog: str = "ptobj export") -> int:
    import argparse

    from ptobj.recipes.engine.distributed import shutdown

    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run directory written by ptobj.recipes.train (config.yaml, checkpoints/)")
    p.add_argument("out_dir", help="the Hugging Face folder to write (must not exist, or be empty)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest complete one)")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                   help="weights' dtype on disk (default: as the checkpoint holds them)")
    p.add_argument("--tokenizer", default=None, help="sentencepiece model (default: the run's own, RUN_DIR/tokenizer.model)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to rebuild the model")
    p.add_argument("--no-check", action="store_true", help="skip loading the folder back with transformers")
    a = p.parse_args(argv)
    try:
        result = export_run(a.run_dir, a.out_dir, step=a.step, dtype=a.dtype, tokenizer=a.tokenizer,
                            device=a.device, check=not a.no_check)
    except (FileNotFoundError, FileExistsError, NotImplementedError, ConfigError, ValueError) as exc:
        print(f"export error: {exc}", file=sys.stderr)
        return 2
    except CheckFailed as exc:
        print(f"export check failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutdown()
    if int(os.environ.get("RANK", "0")) == 0:
        print(how_to_load(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
