"""Resuming is exact: an interrupted and resumed run logs the losses and ends with the
weights of an uninterrupted one, bit for bit, with dropout on, for a decoder and an
encoder recipe, with 0 and 2 DataLoader workers."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_CORPUS, TINY_TOKENIZER
from ptobj.recipes.engine import checkpoint as ckpt
from ptobj.recipes.train import run
from ptobj.recipes.engine.train_config import load_train_config
from test_recipes_train import CONFIGS, shrink


def _cfg(recipe, tiny_corpus, run_dir, *, workers=0, **schedule):
    cfg = shrink(load_train_config(CONFIGS / recipe), tiny_corpus, run_dir, steps=6, every=1, mb=2, accum=2,
                 **schedule)
    R = dataclasses.replace
    return R(cfg, model=R(cfg.model, hidden_dropout=0.1), data=R(cfg.data, loader_workers=workers),
             eval=R(cfg.eval, at_end=False, infill=R(cfg.eval.infill, enabled=False)))


def assert_only_tensors(step_dir) -> None:
    """Every stored item is a tensor: loading the checkpoint unpickles nothing."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    stored = dcp.FileSystemReader(step_dir).read_metadata().state_dict_metadata
    assert stored and all(isinstance(md, TensorStorageMetadata) for md in stored.values()), \
        [k for k, md in stored.items() if not isinstance(md, TensorStorageMetadata)]


def assert_same_checkpoint(a, b):
    assert_only_tensors(a)
    assert_only_tensors(b)
    (meta_a, items_a), (meta_b, items_b) = ckpt.read_items(a), ckpt.read_items(b)
    assert meta_a["step"] == meta_b["step"] and items_a.keys() == items_b.keys()
    for k, v in items_a.items():
        assert torch.equal(v, items_b[k]) if isinstance(v, torch.Tensor) else v == items_b[k], k


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["gpt_fim_tiny.yaml", "spanbert_tiny.yaml"])
def test_resume_with_dropout_is_bitwise_exact(recipe, tiny_corpus, tmp_path):
    full = run(_cfg(recipe, tiny_corpus, tmp_path / "full"), progress=False)
    assert sorted(full.losses) == [1, 2, 3, 4, 5, 6]
    for workers, stop in ((0, 2), (2, 4)):
        run_dir = tmp_path / f"workers{workers}"
        first = run(_cfg(recipe, tiny_corpus, run_dir, workers=workers, stop_after_steps=stop), progress=False)
        second = run(_cfg(recipe, tiny_corpus, run_dir, workers=workers), progress=False)
        assert second.start_step == stop
        losses = {**first.losses, **second.losses}
        assert losses == full.losses, (workers, stop, losses, full.losses)  # exact, not approximate
        assert_same_checkpoint(second.checkpoint, full.checkpoint)


@pytest.mark.parametrize("damage", ["truncated", "emptied", "meta.json"])
def test_resume_skips_a_damaged_checkpoint_naming_the_file(damage, tiny_corpus, tmp_path, capsys):
    """The newest checkpoint damaged on disk (its data file cut in half or to 0 bytes, or its
    meta.json cut): resume names the file, falls back to the previous one, repoints `latest`, and
    finishes with the weights of an undamaged run."""
    cfg = shrink(load_train_config(CONFIGS / "gpt_fim_tiny.yaml"), tiny_corpus, tmp_path / "run", steps=4, every=1,
                 stop_after_steps=3)
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, at_end=False, infill=dataclasses.replace(
        cfg.eval.infill, enabled=False)))
    run(cfg, progress=False)
    newest = tmp_path / "run" / "checkpoints" / "step_00000003"
    victim = newest / "meta.json" if damage == "meta.json" else next(newest.glob("*.distcp"))
    victim.write_bytes(b"" if damage == "emptied" else victim.read_bytes()[: victim.stat().st_size // 2])
    capsys.readouterr()
    resumed = run(dataclasses.replace(cfg, schedule=dataclasses.replace(cfg.schedule, stop_after_steps=0)),
                  progress=False)
    out = capsys.readouterr().out
    assert resumed.start_step == 2 and sorted(resumed.losses) == [3, 4]
    assert f"skipped checkpoint {newest}: {victim}: " in out, out
    assert "resumed from" in out and "step_00000002 at step 2" in out
    reference = run(dataclasses.replace(cfg, logging=dataclasses.replace(cfg.logging, run_dir=str(tmp_path / "ref")),
                                        schedule=dataclasses.replace(cfg.schedule, stop_after_steps=0)),
                    progress=False)
    assert resumed.losses[4] == reference.losses[4]
    assert_same_checkpoint(resumed.checkpoint, reference.checkpoint)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (megatron's distributed optimizer)")
def test_distributed_optimizer_state_survives_a_resume(tiny_corpus, tmp_path):
    """bf16 weights under megatron's distributed optimizer: its state is saved per parameter
    (fp32 main weight, moments, step; plain tensors) and a resumed run continues the losses."""
    def cfg(run_dir, **schedule):
        c = shrink(load_train_config(CONFIGS / "gpt_fim_tiny.yaml"), tiny_corpus, run_dir, steps=4, every=2,
                   **schedule)
        R = dataclasses.replace
        return R(c, parallel=R(c.parallel, device="cuda", precision="bf16"),
                 optim=R(c.optim, distributed_optimizer="on"),
                 eval=R(c.eval, at_end=False, infill=R(c.eval.infill, enabled=False)))

    full = run(cfg(tmp_path / "full"), progress=False)
    run(cfg(tmp_path / "split", stop_after_steps=2), progress=False)
    second = run(cfg(tmp_path / "split"), progress=False)
    assert second.start_step == 2
    for step in (3, 4):
        assert second.losses[step] == pytest.approx(full.losses[step], rel=1e-3), (step, second.losses, full.losses)
    step_dir = tmp_path / "split" / "checkpoints" / "step_00000002"
    assert_only_tensors(step_dir)
    _, items = ckpt.read_items(step_dir)
    for key in ("main_param", "exp_avg", "exp_avg_sq"):
        weight = items["model/lm.decoder.final_layernorm.weight"]
        state = items[f"optimizer/lm.decoder.final_layernorm.weight/{key}"]
        assert state.dtype == torch.float32 and state.shape == weight.shape
    assert float(items["optimizer/lm.decoder.final_layernorm.weight/step"]) == 2


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (data parallel 2, NCCL)")
def test_distributed_optimizer_state_moves_between_data_parallel_sizes(tiny_corpus, tmp_path):
    """megatron's distributed optimizer at data parallel 2 saves; data parallel 1 resumes (and
    back), with the losses of an uninterrupted run at the same global batch."""
    cache = tiny_corpus[2]
    gpu = ["parallel.device=cuda", "parallel.precision=bf16", "optim.distributed_optimizer=on",
           "schedule.train_steps=6", "checkpoint.every_steps=2"]
    _train(_cli(tmp_path / "ref", cache, *gpu, "schedule.micro_batch_size=4"))
    run_dir = tmp_path / "resized"
    for i, (nproc, mb) in enumerate([(2, 2), (1, 4), (2, 2)]):
        _train(_cli(run_dir, cache, *gpu, f"schedule.micro_batch_size={mb}", f"schedule.stop_after_steps={2 * i + 2}"),
               nproc)
    ref = {r["step"]: r["loss"] for r in _train_records(tmp_path / "ref")}
    got = {r["step"]: r["loss"] for r in _train_records(run_dir)}
    assert sorted(got) == sorted(ref)
    for step in ref:  # bf16 and another reduction order: close, not equal
        assert got[step] == pytest.approx(ref[step], rel=2e-2), (step, got, ref)


# ----------------------------------------------------------------------------- other layouts and kills

ROOT = Path(__file__).resolve().parents[1]


def _cli(run_dir: Path, cache: str, *extra: str) -> list[str]:
    out = [str(CONFIGS / "gpt_fim_tiny.yaml"), f"data.cache_dir={cache}", "data.seq_length=64",
           "schedule.warmup_steps=1", f"logging.run_dir={run_dir}", "logging.every_steps=1",
           "logging.progress_bar=false", "logging.tensorboard=false", "eval.at_end=false",
           "eval.infill.enabled=false", "parallel.device=cpu", "checkpoint.keep=0",
           # the test size (the recipe is sized for the main job)
           "model.num_layers=2", "model.hidden_size=64", "model.num_attention_heads=4", "model.ffn_hidden_size=192"]
    out += [f"data.corpus.{k}={v}" for k, v in TINY_CORPUS.items()]
    out += [f"data.tokenizer.{k}={v}" for k, v in TINY_TOKENIZER.items()]
    return out + list(extra)


def _env() -> dict:
    from ptobj.recipes.experiments.sweep import run_env  # without the rendezvous settings of this (pytest) process

    return {**run_env(), "OMP_NUM_THREADS": "1"}


def _train(args: list[str], nproc: int = 1, *, script: Path | None = None, **kw) -> subprocess.CompletedProcess:
    """``ptobj train`` (or ``script``) in ``nproc`` local processes."""
    entry = [str(script)] if script else ["-m", "ptobj.recipes.train"]
    launch = [sys.executable, *entry]
    if nproc > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *entry]
    done = subprocess.run(launch + args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900, **kw)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _train_records(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"]


@pytest.mark.slow
def test_checkpoints_move_between_parallel_layouts(tiny_corpus, tmp_path):
    """One run resized between allocations: 1 process -> TP 2 -> DP 2 -> 1 process (TP 1->2, TP 2->1,
    DP 1->2, DP 2->1), each leg resuming the previous leg's sharded checkpoint, logs the losses of an
    uninterrupted single-process run (same global batch of 4)."""
    cache = tiny_corpus[2]
    steps = ["schedule.train_steps=8", "checkpoint.every_steps=2"]
    _train(_cli(tmp_path / "ref", cache, *steps, "schedule.micro_batch_size=4"))
    legs = [(1, ["schedule.micro_batch_size=4"]),
            (2, ["schedule.micro_batch_size=4", "parallel.tensor_parallel=2"]),
            (2, ["schedule.micro_batch_size=2"]),
            (1, ["schedule.micro_batch_size=4"])]
    run_dir = tmp_path / "resized"
    for i, (nproc, layout) in enumerate(legs):
        done = _train(_cli(run_dir, cache, *steps, *layout, f"schedule.stop_after_steps={2 * i + 2}"), nproc)
        if i:
            assert f"at step {2 * i}" in done.stdout, done.stdout
    meta = ckpt.read_meta(run_dir / "checkpoints" / "step_00000006")
    assert meta["layout"] == {"world": 2, "tp": 1, "dp": 2}
    ref = {r["step"]: r["loss"] for r in _train_records(tmp_path / "ref")}
    got = {r["step"]: r["loss"] for r in _train_records(run_dir)}
    assert sorted(got) == sorted(ref) == list(range(1, 9))
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-5), (step, got, ref)


@pytest.mark.slow
def test_distributed_optimizer_state_moves_between_data_parallel_sizes_on_cpu(tiny_corpus, tmp_path):
    """megatron's distributed optimizer, forced onto CPU (tests/megatron_on_cpu.py), moved
    TP 2 -> DP 2 -> 1 process -> DP 2 (each leg resuming the previous leg's checkpoint) logs the
    losses of an uninterrupted run. Its state is sharded by flat ranges that change with the
    data-parallel size; without it (Adam's moments reset on resume) the losses part after a
    resume."""
    cache, script = tiny_corpus[2], ROOT / "tests" / "megatron_on_cpu.py"
    common = ["parallel.precision=fp32", "schedule.train_steps=8", "checkpoint.every_steps=2"]
    _train(_cli(tmp_path / "ref", cache, *common, "schedule.micro_batch_size=4"), script=script)
    run_dir = tmp_path / "resized"
    legs = [(2, ["schedule.micro_batch_size=4", "parallel.tensor_parallel=2"]),
            (2, ["schedule.micro_batch_size=2"]), (1, ["schedule.micro_batch_size=4"]),
            (2, ["schedule.micro_batch_size=2"])]
    for i, (nproc, layout) in enumerate(legs):
        done = _train(_cli(run_dir, cache, *common, *layout, f"schedule.stop_after_steps={2 * i + 2}"), nproc,
                      script=script)
        if i:
            assert f"at step {2 * i}" in done.stdout, done.stdout
    saved = run_dir / "checkpoints" / "step_00000004"
    meta = ckpt.read_meta(saved)
    assert meta["optimizer"] == "megatron_distributed" and meta["layout"] == {"world": 2, "tp": 1, "dp": 2}
    assert_only_tensors(saved)
    _, items = ckpt.read_items(saved)
    assert float(items["optimizer/lm.decoder.final_layernorm.weight/step"]) == 4
    ref = {r["step"]: r["loss"] for r in _train_records(tmp_path / "ref")}
    got = {r["step"]: r["loss"] for r in _train_records(run_dir)}
    assert sorted(got) == sorted(ref) == list(range(1, 9))
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-5), (step, got, ref)


def _newest_step(ckpt_dir: Path) -> int:
    found = ckpt.step_dirs(ckpt_dir)
    return int(found[0].name[5:]) if found else 0


def _kill_when(proc: subprocess.Popen, ready, delay: float):
    """SIGKILL ``proc`` ``delay`` seconds after ``ready()`` returns something true (polled
    continuously); returns that value."""
    while not (found := ready()):
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before the kill point: "
                                 f"{proc.stderr.read()[-3000:]}")
        time.sleep(0.0002)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return found


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_matches_an_uninterrupted_run(tiny_corpus, tmp_path):
    """A run with dropout is killed (SIGKILL) five times at points drawn from a seeded generator,
    during steps and during checkpoint saves, and resumed each time: every metrics line it logged
    and its final weights equal an uninterrupted run's, bit for bit."""
    cache, total = tiny_corpus[2], 12
    extra = [f"schedule.train_steps={total}", "checkpoint.every_steps=1", "schedule.micro_batch_size=4",
             "model.hidden_dropout=0.1"]
    _train(_cli(tmp_path / "ref", cache, *extra))
    run_dir = tmp_path / "killed"
    cdir = run_dir / "checkpoints"
    launch = [sys.executable, "-m", "ptobj.recipes.train", *_cli(run_dir, cache, *extra)]
    rng = np.random.default_rng(20240611)
    kinds = list(rng.permutation(["save", "save", "save", "step", "step"]))
    partial = 0
    for kind in kinds:
        base = _newest_step(cdir)
        target = base + int(rng.integers(1, 3))
        assert target < total
        proc = subprocess.Popen(launch, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        if kind == "save":  # the first save seen in progress from `target` on (a busy poller may miss one)
            tmp = _kill_when(proc, lambda: [p for p in cdir.glob(".tmp-step_*") if int(p.name[10:]) >= target], 0.0)
            partial += tmp[0].exists()  # killed before it was published
        else:  # somewhere in the step after `target` was published
            _kill_when(proc, lambda: (cdir / f"step_{target:08d}").exists(), float(rng.uniform(0, 0.05)))
    assert partial >= 1  # at least one kill left a half-written save behind
    _train(launch[3:])  # the last resume runs to the end
    assert_same_checkpoint(cdir / f"step_{total:08d}", tmp_path / "ref" / "checkpoints" / f"step_{total:08d}")
    ref = {r["step"]: r for r in _train_records(tmp_path / "ref")}
    timing = {"tokens_per_s", "mfu"}
    logged = _train_records(run_dir)  # a step redone after a kill is logged again
    assert {r["step"] for r in logged} == set(ref) and len(logged) > total
    for r in logged:
        same = {k: v for k, v in r.items() if k not in timing}
        assert same == {k: v for k, v in ref[r["step"]].items() if k not in timing}, (r, ref[r["step"]])


def _last_step(run_dir: Path) -> int:
    """The last training step ``metrics.jsonl`` logged so far (0 before the first; a line being
    written is skipped)."""
    try:
        text = (run_dir / "metrics.jsonl").read_text()
    except FileNotFoundError:
        return 0
    steps = [0]
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("kind") == "train":
            steps.append(row["step"])
    return max(steps)


def _signal_when(proc: subprocess.Popen, ready, sig: int) -> None:
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before the signal: {proc.stderr.read()[-3000:]}")
        time.sleep(0.001)
    proc.send_signal(sig)


@pytest.mark.slow
def test_a_signal_saves_and_stops_and_the_resumed_run_matches_an_uninterrupted_one(tiny_corpus, tmp_path):
    """SIGTERM / SIGUSR1 at points drawn from a seeded generator, during steps and during a periodic
    save: each time the run finishes its step, saves, writes stopped.json and exits with status 4;
    resumed each time, its metrics and final weights equal an uninterrupted run's, bit for bit."""
    from ptobj.recipes.engine.stopping import EXIT_REQUEUE, STOPPED_FILE

    cache, total = tiny_corpus[2], 12
    extra = [f"schedule.train_steps={total}", "checkpoint.every_steps=4", "schedule.micro_batch_size=4",
             "model.hidden_dropout=0.1"]
    _train(_cli(tmp_path / "ref", cache, *extra))
    run_dir = tmp_path / "signalled"
    cdir = run_dir / "checkpoints"
    launch = [sys.executable, "-m", "ptobj.recipes.train", *_cli(run_dir, cache, *extra)]
    rng = np.random.default_rng(20261207)
    plan = [("step", signal.SIGTERM), ("save", signal.SIGTERM), ("step", signal.SIGUSR1)]
    stops = []
    for kind, sig in plan:
        done_steps = _last_step(run_dir)
        proc = subprocess.Popen(launch, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        if kind == "save":   # while the periodic save after step 8 is being written
            _signal_when(proc, lambda: list(cdir.glob(".tmp-step_00000008*")), sig)
        else:                # a random number of steps into this leg
            target = done_steps + int(rng.integers(1, 3))
            _signal_when(proc, lambda: _last_step(run_dir) >= target, sig)
        assert proc.wait(timeout=600) == EXIT_REQUEUE, proc.stderr.read()[-3000:]
        stopped = json.loads((run_dir / STOPPED_FILE).read_text())
        assert stopped["reason"] == f"{signal.Signals(sig).name} received"
        assert ckpt.read_meta(Path(stopped["checkpoint"]))["step"] == stopped["step"] < total
        stops.append(stopped["step"])
    assert stops == sorted(stops) and 8 in stops          # the save in flight was the one kept
    _train(launch[3:])                                      # the last resume runs to the end
    assert not (run_dir / STOPPED_FILE).exists()
    assert_same_checkpoint(cdir / f"step_{total:08d}", tmp_path / "ref" / "checkpoints" / f"step_{total:08d}")
    ref = {r["step"]: r for r in _train_records(tmp_path / "ref")}
    timing = {"tokens_per_s", "mfu"}
    for r in _train_records(run_dir):
        assert {k: v for k, v in r.items() if k not in timing} == \
            {k: v for k, v in ref[r["step"]].items() if k not in timing}, (r, ref[r["step"]])


def test_the_time_limit_saves_and_stops_before_the_end(tiny_corpus, tmp_path):
    from ptobj.recipes.engine.stopping import EXIT_REQUEUE, STOPPED_FILE

    run_dir = tmp_path / "limited"
    args = _cli(run_dir, tiny_corpus[2], "schedule.train_steps=500", "schedule.micro_batch_size=4",
                "schedule.time_limit_minutes=0.1", "schedule.exit_margin_minutes=0")
    done = subprocess.run([sys.executable, "-m", "ptobj.recipes.train", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == EXIT_REQUEUE, done.stderr[-3000:]
    stopped = json.loads((run_dir / STOPPED_FILE).read_text())
    assert stopped["reason"].startswith("time limit") and 0 < stopped["step"] < 500
    assert ckpt.latest_checkpoint(run_dir / "checkpoints").name == f"step_{stopped['step']:08d}"
    assert "run the same command again to continue" in done.stdout + done.stderr


def test_the_slurm_launcher_requeues_a_run_that_stopped_early(tiny_corpus, tmp_path):
    """slurm.sbatch under a stand-in srun / scontrol: a run stopped by its time limit (status 4) is
    requeued; a run that finishes is not."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text('#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
                               'SLURM_PROCID=0 SLURM_NTASKS=1 SLURM_LOCALID=0 exec "$@"\n')
    (fake / "scontrol").write_text('#!/usr/bin/env bash\nif [ "$1" = show ]; then echo localhost; '
                                   'else echo "$@" >> "$REQUEUED"; fi\n')
    for f in fake.iterdir():
        f.chmod(0o755)
    env = {**_env(), "PATH": f"{fake}:{Path(sys.executable).parent}:/usr/bin:/bin", "SLURM_JOB_ID": "77",
           "SLURM_JOB_NODELIST": "localhost", "SLURM_NNODES": "1", "SLURM_NTASKS_PER_NODE": "1",
           "MASTER_PORT": "29561", "REQUEUED": str(tmp_path / "requeued"),
           "PTOBJ": str(Path(sys.executable).parent / "ptobj")}
    if not Path(env["PTOBJ"]).exists():
        pytest.skip("the ptobj console script is not installed in this environment")
    sbatch = ROOT / "ptobj" / "recipes" / "launch" / "slurm.sbatch"
    limited = _cli(tmp_path / "run", tiny_corpus[2], "schedule.train_steps=500", "schedule.micro_batch_size=4",
                   "schedule.time_limit_minutes=0.05", "schedule.exit_margin_minutes=0")
    done = subprocess.run(["bash", str(sbatch), *limited], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "requeued").read_text().split() == ["requeue", "77"]
    assert "requeueing job 77" in done.stdout
    (tmp_path / "requeued").unlink()
    finished = _cli(tmp_path / "run2", tiny_corpus[2], "schedule.train_steps=2", "schedule.micro_batch_size=4")
    done = subprocess.run(["bash", str(sbatch), *finished], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "requeued").exists()
