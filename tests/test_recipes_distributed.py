"""Two gloo processes launched by torchrun (data parallel 2) train exactly like one
process reading the same samples: the loss is normalised over the whole DP group."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_CORPUS, TINY_TOKENIZER

ROOT = Path(__file__).resolve().parents[1]


def _overrides(cache: str, run_dir: Path, mb: int) -> list[str]:
    out = [f"data.cache_dir={cache}", "data.seq_length=64", "schedule.train_steps=3", "schedule.warmup_steps=1",
           f"schedule.micro_batch_size={mb}", f"logging.run_dir={run_dir}", "logging.every_steps=1",
           "logging.progress_bar=false", "logging.tensorboard=false", "eval.at_end=false", "eval.infill.enabled=false",
           "parallel.device=cpu"]
    out += [f"data.corpus.{k}={v}" for k, v in TINY_CORPUS.items()]
    out += [f"data.tokenizer.{k}={v}" for k, v in TINY_TOKENIZER.items()]
    return out


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


@pytest.mark.slow
def test_torchrun_two_process_data_parallel_matches_one_process(tiny_corpus, tmp_path):
    cache = tiny_corpus[2]
    cfg = str(ROOT / "ptobj" / "recipes" / "configs" / "gpt_fim_tiny.yaml")
    from ptobj.recipes.experiments.sweep import run_env  # without the rendezvous settings of this (pytest) process

    env = {**run_env(), "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          "-m", "ptobj.recipes.train", cfg, *_overrides(cache, tmp_path / "dp2", 2)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "world 2 (dp 2, tp 1)" in two.stdout
    one = subprocess.run([sys.executable, "-m", "ptobj.recipes.train", cfg, *_overrides(cache, tmp_path / "dp1", 4)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    l2, l1 = _losses(tmp_path / "dp2"), _losses(tmp_path / "dp1")
    assert sorted(l1) == sorted(l2) == [1, 2, 3]
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], rel=1e-4), (step, l1, l2)
    from ptobj.recipes.engine import checkpoint as ckpt

    meta = ckpt.verify(tmp_path / "dp2" / "checkpoints" / "step_00000003")
    assert meta["layout"] == {"world": 2, "tp": 1, "dp": 2}
