"""Weights & Biases as an optional logger, offline (no network): the run's config, its logged
lines and the final table reach the W&B run files; a resumed run continues the same W&B run."""

from __future__ import annotations

import dataclasses
import os
import time

import pytest

from ptobj.recipes.engine.train_config import load_train_config
from ptobj.recipes.train import run
from test_recipes_train import CONFIGS, shrink

pytest.importorskip("wandb")


def test_an_offline_wandb_run_holds_the_config_lines_and_final_table_and_resumes(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run_dir = tmp_path / "run"
    cfg = shrink(load_train_config(CONFIGS / "causal_lm_tiny.yaml", [
        "logging.wandb.enabled=true", "logging.wandb.mode=offline", "logging.wandb.project=ptobj-tests",
        "logging.wandb.tags=[tiny, cpu]"]), tiny_corpus, run_dir, steps=4, every=2)
    cfg = dataclasses.replace(cfg, schedule=dataclasses.replace(cfg.schedule, stop_after_steps=2))
    run(cfg, progress=False)                                         # stopped after 2 of 4 steps
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    first = sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(first) == 1 and (first[0] / f"run-{run_id}.wandb").is_file()
    resumed = dataclasses.replace(cfg, schedule=dataclasses.replace(cfg.schedule, stop_after_steps=0))
    result = run(resumed, progress=False)                            # resumes at step 2, finishes
    assert result.start_step == 2 and result.final_step == 4
    assert (run_dir / "wandb_run_id").read_text().strip() == run_id   # the same W&B run continues
    needles = (b"ptobj-tests", b"train/loss", b"final/metrics", b"eval/", b"causal_lm_tiny", b"tiny")
    deadline = time.monotonic() + 60          # W&B's writer process may still be flushing under load
    while True:
        runs = sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
        data = b"".join((r / f"run-{run_id}.wandb").read_bytes() for r in runs)
        missing = [n for n in needles if n not in data]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert runs and not missing, missing
    assert os.path.getsize(runs[-1] / f"run-{run_id}.wandb") > 0
