"""Sharded, checksummed, atomic checkpoints that load into any parallel layout.

Layout under a checkpoint directory::

    step_00000040/            one finished checkpoint
        .metadata             torch.distributed.checkpoint (DCP): what is where
        __0_0.distcp ...      DCP data, one file per rank that wrote something
        meta.json             written last: step, layout, byte size and sha256 of every other file
    latest                    text file naming the newest published step (for people and tools)
    .tmp-step_00000060/       a save in progress (ignored, removed on the next start)

Tensors are saved in a layout-independent form: a tensor-parallel shard is a
``DTensor`` shard of the full tensor (see :class:`TensorLayout`), replicated
tensors are saved once. So a checkpoint written with one (TP, DP) layout loads
into another, as users resize jobs between allocations.

Saving never keeps a bad state: nothing non-finite is written (checked over
all ranks first); the files go to a temporary directory and are fsynced; each
rank hashes a share of them; rank 0 writes ``meta.json``, renames the
directory into place (atomic on POSIX) and only then repoints ``latest``.
Loading verifies every file against ``meta.json`` before reading it, so a
truncated, emptied or altered file, or a damaged ``meta.json``, is named and
the checkpoint skipped (:func:`load_newest`); nothing non-finite is accepted.

Collectives (barriers, gathers) use the default process group when one is
initialised with more than one rank; in a single process there are none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

LATEST = "latest"
META = "meta.json"
TMP_PREFIX = ".tmp-"
FORMAT = "dcp-sha256-v1"


class DamagedCheckpoint(RuntimeError):
    """A checkpoint that does not verify; the message names the directory, the file and why."""


class CheckpointMismatch(ValueError):
    """A sound checkpoint that does not fit what it is loaded into (another model config)."""


class NonFiniteState(ValueError):
    """A state holding NaN/inf values: it is never written. The message names the tensors."""


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


# ----------------------------------------------------------------------------- collectives


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if _world()[1] > 1:
        dist.barrier()


def _gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, on every rank."""
    world = _world()[1]
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


@contextlib.contextmanager
def _single_process_quiet():
    """DCP warns that it assumes a single process when no process group is up: so do we."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


# ----------------------------------------------------------------------------- files


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _data_files(step_dir: Path) -> list[str]:
    """Every file of a checkpoint but meta.json, relative, sorted (the same list on every rank)."""
    return sorted(str(p.relative_to(step_dir)) for p in step_dir.rglob("*") if p.is_file() and p.name != META)


def _hash_files(step_dir: Path) -> dict[str, dict]:
    """Size and sha256 of every data file; each rank hashes every world-th file."""
    rank, world = _world()
    mine = {name: {"bytes": (step_dir / name).stat().st_size, "sha256": _sha256(step_dir / name)}
            for name in _data_files(step_dir)[rank::world]}
    return {k: v for part in _gather(mine) for k, v in part.items()}


def read_meta(step_dir: str | Path) -> dict:
    """``meta.json`` of a checkpoint; :class:`DamagedCheckpoint` when missing or unreadable."""
    path = Path(step_dir) / META
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DamagedCheckpoint(f"{path}: missing (the save never finished)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedCheckpoint(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict) or "step" not in meta:
        raise DamagedCheckpoint(f"{path}: no per-file checksums or step (damaged, or written by an older "
                                "version that saved rank_*.pt files)")
    return meta


def verify(step_dir: str | Path) -> dict:
    """Check every file of a checkpoint against ``meta.json`` (size, then sha256; ranks
    share the reading). Returns the meta; raises :class:`DamagedCheckpoint` naming the
    first bad file. The same outcome on every rank."""
    step_dir = Path(step_dir)
    meta = read_meta(step_dir)  # every rank reads it, so every rank raises alike
    problems = []
    rank, world = _world()
    for name, want in sorted(meta["files"].items())[rank::world]:
        path = step_dir / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != want.get("bytes"):
            problems.append(f"{path}: {path.stat().st_size} bytes, {META} records {want.get('bytes')} "
                            "(truncated or rewritten)")
        elif _sha256(path) != want.get("sha256"):
            problems.append(f"{path}: sha256 differs from {META} (corrupted)")
    extra = sorted(set(_data_files(step_dir)) - set(meta["files"]))
    if extra and rank == 0:
        problems.append(f"{step_dir / extra[0]}: not listed in {META}")
    problems = sorted(p for part in _gather(problems) for p in part)
    if problems:
        raise DamagedCheckpoint("; ".join(problems))
    return meta


def step_dirs(ckpt_dir: str | Path) -> list[Path]:
    """Published ``step_*`` directories, newest first (whether they verify or not)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.glob("step_*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]), reverse=True)


def latest_checkpoint(ckpt_dir: str | Path, on_skip: Callable[[str], None] | None = None) -> Path | None:
    """The newest checkpoint that verifies (None when there is none at all); each one
    skipped is reported to ``on_skip`` with the reason, naming the file. Raises
    :class:`DamagedCheckpoint` when checkpoints exist but none verifies."""
    found = _first_good(ckpt_dir, lambda d: verify(d), on_skip)
    return None if found is None else found[0]


def _first_good(ckpt_dir, attempt, on_skip):
    skipped = []
    candidates = step_dirs(ckpt_dir)
    for d in candidates:
        try:
            return d, attempt(d)
        except DamagedCheckpoint as exc:
            skipped.append(f"{d.name}: {exc}")
            if on_skip is not None:
                on_skip(f"skipped checkpoint {d}: {exc}")
    if candidates:
        raise DamagedCheckpoint(f"{ckpt_dir}: no checkpoint verifies ({'; '.join(skipped)})")
    return None


def remove_partial_saves(ckpt_dir: str | Path) -> list[Path]:
    """Delete leftovers of interrupted saves; returns what was removed."""
    ckpt_dir = Path(ckpt_dir)
    removed = []
    if ckpt_dir.is_dir():
        for p in ckpt_dir.glob(TMP_PREFIX + "*"):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def point_latest(ckpt_dir: str | Path, step_dir: Path) -> None:
    """Atomically make ``latest`` name ``step_dir`` (rank 0 writes)."""
    ckpt_dir = Path(ckpt_dir)
    if _world()[0] != 0:
        return
    pointer = ckpt_dir / LATEST
    if pointer.is_file() and pointer.read_text().strip() == step_dir.name:
        return
    tmp = ckpt_dir / (LATEST + ".tmp")
    tmp.write_text(step_dir.name + "\n")
    _fsync_file(tmp)
    os.replace(tmp, pointer)
    _fsync_dir(ckpt_dir)


# ----------------------------------------------------------------------------- finiteness


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def non_finite(state: dict[str, Any]) -> list[str]:
    """Keys of floating-point tensors holding NaN or inf (this rank's shards)."""
    bad = []
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            if not bool(torch.isfinite(_local(value)).all()):
                bad.append(key)
    return bad


def _check_finite(state: dict[str, Any], what: str) -> None:
    bad = sorted({k for part in _gather(non_finite(state)) for k in part})
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteState(f"{what}: {len(bad)} tensor(s) hold NaN/inf ({shown})")


# ----------------------------------------------------------------------------- save / load


def save_checkpoint(
    ckpt_dir: str | Path,
    step: int,
    state: dict[str, Any],
    *,
    keep: int | None = None,
    extra_meta: dict | None = None,
    _before_publish: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``state`` (a flat dict of tensors, DTensors and small objects, as built by
    :class:`TensorLayout`) as step ``step``; call on every rank. Raises
    :class:`NonFiniteState` (writing nothing) when a tensor holds NaN/inf.

    Every rank writes into the same temporary directory, so ``ckpt_dir`` must be on
    a filesystem all ranks share. ``_before_publish`` is a test hook called after the
    files and ``meta.json`` are written and before the rename (a kill there must
    leave ``latest`` untouched).
    """
    import torch.distributed.checkpoint as dcp

    _check_finite(state, f"step {step}: refusing to save a checkpoint")
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / step_dir_name(step)
    tmp = ckpt_dir / f"{TMP_PREFIX}{step_dir_name(step)}"
    rank, world = _world()
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    _barrier()
    with _single_process_quiet():
        dcp.save(state, storage_writer=dcp.FileSystemWriter(tmp, sync_files=True), no_dist=world == 1)
    _barrier()
    files = _hash_files(tmp)
    if rank == 0:
        meta = {"format": FORMAT, "step": step, "world_size": world, "time": time.time(), **(extra_meta or {}),
                "files": files}
        meta_path = tmp / META
        meta_path.write_text(json.dumps(meta, indent=1))
        _fsync_file(meta_path)
        _fsync_dir(tmp)
        if _before_publish is not None:
            _before_publish(tmp)
        if final.exists():  # re-saving the same step (after a resume, or over a damaged one): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(ckpt_dir)
        point_latest(ckpt_dir, final)
        if keep is not None and keep > 0:
            _prune(ckpt_dir, keep, newest=final)
    _barrier()
    return final


def _prune(ckpt_dir: Path, keep: int, newest: Path) -> None:
    """Keep ``newest`` and the ``keep - 1`` published steps before it. Steps after it
    (left from a run that resumed behind them) are not counted: they are replaced as
    the run passes them again."""
    step = int(newest.name[5:])
    older = [d for d in step_dirs(ckpt_dir) if int(d.name[5:]) <= step]
    for old in older[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(step_dir: str | Path, template: dict[str, Any]) -> dict[str, Any]:
    """Verify ``step_dir`` and load it into ``template`` (in place: tensors and
    DTensors are filled, objects replaced; keys missing from the template are not
    read). Returns (meta, template). Raises :class:`DamagedCheckpoint` naming the
    file when the checkpoint does not verify or holds non-finite values, and
    :class:`CheckpointMismatch` when it does not fit the template (another model)."""
    import torch.distributed.checkpoint as dcp

    from torch.distributed.checkpoint.api import CheckpointException

    step_dir = Path(step_dir)
    meta = verify(step_dir)
    try:
        with _single_process_quiet():
            dcp.load(template, storage_reader=dcp.FileSystemReader(step_dir), no_dist=_world()[1] == 1)
    except CheckpointException as exc:  # DCP wraps each rank's error; the first one says what differs
        first = next(iter(exc.failures.values()))[0]
        raise CheckpointMismatch(f"{step_dir}: does not fit what it is loaded into: "
                                 f"{type(first).__name__}: {first}") from None
    try:
        _check_finite(template, str(step_dir))
    except NonFiniteState as exc:
        raise DamagedCheckpoint(str(exc)) from None
    return meta, template


def read_items(step_dir: str | Path) -> tuple[dict, dict[str, Any]]:
    """(meta, every item at full size) of a verified checkpoint, in one process, without a
    model: for inspection and comparisons. A strided tensor-parallel parameter appears as
    its logical parts ``key#k`` (see :class:`TensorLayout`). Only tensors are read: this
    project writes nothing else, and DCP would unpickle anything else."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    step_dir = Path(step_dir)
    meta = verify(step_dir)
    reader = dcp.FileSystemReader(step_dir)
    items = {key: torch.empty(md.size, dtype=md.properties.dtype)
             for key, md in reader.read_metadata().state_dict_metadata.items()
             if isinstance(md, TensorStorageMetadata)}  # byte items would be unpickled: never read
    with _single_process_quiet():
        dcp.load(items, storage_reader=reader, no_dist=True)
    return meta, items


def load_newest(ckpt_dir: str | Path, template: Callable[[], dict[str, Any]],
                on_skip: Callable[[str], None] | None = None) -> tuple[Path, dict, dict] | None:
    """Load the newest checkpoint that verifies into ``template()``: (step_dir, meta,
    state), or None when ``ckpt_dir`` holds no checkpoint. Each damaged one is
    skipped and reported to ``on_skip`` naming the file and why; ``latest`` is made
    to name the one loaded. Raises :class:`DamagedCheckpoint` when none verifies."""
    found = _first_good(ckpt_dir, lambda d: load_checkpoint(d, template()), on_skip)
    if found is None:
        return None
    step_dir, (meta, state) = found
    point_latest(ckpt_dir, step_dir)
    return step_dir, meta, state


# ----------------------------------------------------------------------------- layout


class TensorLayout:
    """Turns this rank's tensors into checkpoint items that do not depend on the
    parallel layout, and back.

    megatron marks a tensor-parallel parameter with ``partition_dim`` and
    ``partition_stride``: with stride ``s`` the full tensor is cut into ``s * tp``
    chunks along that dimension and rank ``r`` holds chunks ``r, r + tp, ...``
    (SwiGLU's fused fc1 keeps [gate_r; up_r]). Seen as ``s`` logical tensors (the
    ``s`` equal parts of the full tensor), rank ``r`` holds the ``r``-th of ``tp``
    contiguous shards of each: exactly a ``DTensor`` ``Shard(dim)`` over the
    tensor-parallel group. Each logical part is one checkpoint item (``key`` for
    ``s == 1``, ``key#k`` otherwise); unmarked tensors are plain (replicated) items
    that DCP writes once. Items are views of the given tensors, so loading into them
    writes the tensors in place.
    """

    def __init__(self, tp_group=None, device_type: str = "cpu"):
        self.tp = 1 if tp_group is None else dist.get_world_size(tp_group)
        self.mesh = None
        if self.tp > 1:
            from torch.distributed.device_mesh import DeviceMesh

            self.mesh = DeviceMesh.from_group(tp_group, device_type)

    def items(self, key: str, tensor: torch.Tensor, like: torch.Tensor | None = None) -> dict[str, Any]:
        """Checkpoint items for ``tensor``, sharded like the parameter ``like`` (default: itself)."""
        like = tensor if like is None else like
        tensor = tensor.detach()
        if not getattr(like, "tensor_model_parallel", False):
            return {key: tensor}
        dim, stride = int(like.partition_dim), int(getattr(like, "partition_stride", 1))
        parts = torch.chunk(tensor, stride, dim=dim)  # the same keys at every TP size, TP 1 included
        keys = [key] if stride == 1 else [f"{key}#{k}" for k in range(stride)]
        if self.mesh is None:
            return dict(zip(keys, parts))
        from torch.distributed.tensor import DTensor, Shard

        out = {}
        for k, part in zip(keys, parts):
            shape = list(part.shape)
            shape[dim] *= self.tp
            out[k] = DTensor.from_local(part, self.mesh, [Shard(dim)], run_check=False, shape=torch.Size(shape),
                                        stride=torch.empty(shape, device="meta").stride())
        return out

    def local(self, items: dict[str, Any], key: str, like: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`items`: this rank's tensor, shaped like the parameter ``like``,
        from the items made for ``key`` (after a load, what was loaded)."""
        if not getattr(like, "tensor_model_parallel", False):
            return _local(items[key])
        dim, stride = int(like.partition_dim), int(getattr(like, "partition_stride", 1))
        if stride == 1:
            return _local(items[key])
        return torch.cat([_local(items[f"{key}#{k}"]) for k in range(stride)], dim=dim)

    def model_items(self, model: torch.nn.Module, prefix: str = "model/") -> dict[str, Any]:
        """Every tensor of ``model.state_dict()`` (parameters sharded by their marks)."""
        params = dict(model.named_parameters())
        out: dict[str, Any] = {}
        for name, value in model.state_dict(keep_vars=True).items():
            if isinstance(value, torch.Tensor):
                out.update(self.items(prefix + name, value, params.get(name, value)))
        return out
