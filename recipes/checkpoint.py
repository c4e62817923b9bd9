"""Atomic checkpoints: a kill at any moment never leaves ``latest`` on a partial save.

Layout under a checkpoint directory::

    step_00000040/            one finished checkpoint
        rank_00000.pt         each rank's state (model shard, optimizer, RNG, data position)
        meta.json             written last, after every rank's file is fsynced
    latest                    text file holding "step_00000040"
    .tmp-step_00000060-*/     a save in progress (ignored, removed on the next start)

A save writes every rank's file into a temporary directory, fsyncs them, writes
``meta.json``, renames the directory to its final name (atomic on POSIX), fsyncs
the parent, and only then atomically replaces ``latest`` (write ``latest.tmp``,
fsync, ``os.replace``). Loading follows ``latest`` and refuses a directory
without ``meta.json``; with no usable ``latest`` it falls back to the newest
complete ``step_*`` directory.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

LATEST = "latest"
META = "meta.json"
TMP_PREFIX = ".tmp-"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def rank_file_name(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories
    finally:
        os.close(fd)


def is_complete(step_dir: Path) -> bool:
    meta = step_dir / META
    if not meta.is_file():
        return False
    try:
        info = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    ranks = int(info.get("world_size", 1))
    return all((step_dir / rank_file_name(r)).is_file() for r in range(ranks))


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The directory ``latest`` names if complete, else the newest complete ``step_*``."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    pointer = ckpt_dir / LATEST
    if pointer.is_file():
        name = pointer.read_text().strip()
        if name and (ckpt_dir / name).is_dir() and is_complete(ckpt_dir / name):
            return ckpt_dir / name
    candidates = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir() and is_complete(p))
    return candidates[-1] if candidates else None


def remove_partial_saves(ckpt_dir: str | Path) -> list[Path]:
    """Delete leftovers of interrupted saves; returns what was removed."""
    ckpt_dir = Path(ckpt_dir)
    removed = []
    if ckpt_dir.is_dir():
        for p in ckpt_dir.glob(TMP_PREFIX + "*"):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def save_checkpoint(
    ckpt_dir: str | Path,
    step: int,
    state: dict[str, Any],
    *,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] = lambda: None,
    keep: int | None = None,
    extra_meta: dict | None = None,
    _before_publish: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``state`` for this rank; rank 0 publishes the step atomically.

    ``barrier`` must synchronise all ranks (``torch.distributed.barrier``) when
    ``world_size > 1``; every rank writes into the same temporary directory, so
    the checkpoint directory must be on a filesystem all ranks share.
    ``_before_publish`` is a test hook called after the files are written and
    before the rename (a kill there must leave ``latest`` untouched).
    """
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / step_dir_name(step)
    tmp = ckpt_dir / f"{TMP_PREFIX}{step_dir_name(step)}"
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    barrier()
    rank_path = tmp / rank_file_name(rank)
    torch.save(state, rank_path)
    _fsync_file(rank_path)
    barrier()
    if rank == 0:
        meta = {"step": step, "world_size": world_size, "time": time.time(), **(extra_meta or {})}
        meta_path = tmp / META
        meta_path.write_text(json.dumps(meta, indent=1))
        _fsync_file(meta_path)
        _fsync_dir(tmp)
        if _before_publish is not None:
            _before_publish(tmp)
        if final.exists():  # re-saving the same step (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(ckpt_dir)
        pointer_tmp = ckpt_dir / (LATEST + ".tmp")
        pointer_tmp.write_text(final.name + "\n")
        _fsync_file(pointer_tmp)
        os.replace(pointer_tmp, ckpt_dir / LATEST)
        _fsync_dir(ckpt_dir)
        if keep is not None and keep > 0:
            _prune(ckpt_dir, keep, protect=final)
    barrier()
    return final


def _prune(ckpt_dir: Path, keep: int, protect: Path) -> None:
    done = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir() and is_complete(p))
    for old in done[:-keep]:
        if old != protect:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(step_dir: str | Path, *, rank: int = 0, map_location: Any = "cpu") -> dict[str, Any]:
    step_dir = Path(step_dir)
    if not is_complete(step_dir):
        raise FileNotFoundError(f"{step_dir}: not a complete checkpoint (no {META} or a rank file missing)")
    info = json.loads((step_dir / META).read_text())
    if rank >= int(info.get("world_size", 1)):
        raise ValueError(f"{step_dir}: saved with world_size={info.get('world_size')}, cannot load rank {rank}")
    return torch.load(step_dir / rank_file_name(rank), map_location=map_location, weights_only=False)


# ----------------------------------------------------------------------------- RNG state


def capture_rng_state() -> dict[str, Any]:
    import random

    import numpy as np

    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
        try:
            from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

            state["cuda_tracker"] = get_cuda_rng_tracker().get_states()
        except Exception:
            pass
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
        if "cuda_tracker" in state:
            from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

            get_cuda_rng_tracker().set_states(state["cuda_tracker"])
