"""Ablation sweeps: grid expansion, result table / CSV, and one real two-run sweep."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from conftest import TINY_CORPUS, TINY_TOKENIZER
from recipes.sweep import SweepRun, main, parse_grid, plan, table, write_csv

ROOT = Path(__file__).resolve().parents[1]


def test_grid_is_crossed_per_config(tmp_path):
    grid = parse_grid(["optim.lr=[1e-3, 3e-3]", "objective.config.fim_rate=[0.0, 0.5, 1.0]",
                       "model.num_layers=2"])
    assert grid[0] == ("optim.lr", ["1e-3", "3e-3"]) and grid[2] == ("model.num_layers", ["2"])
    runs = plan(["a.yaml", "b.yaml"], grid, ["schedule.train_steps=5"], tmp_path)
    assert len(runs) == 2 * 2 * 3 * 1
    assert len({r.run_dir for r in runs}) == len(runs)
    assert all(r.overrides[0] == "schedule.train_steps=5" for r in runs)
    assert runs[0].overrides[1:] == ["optim.lr=1e-3", "objective.config.fim_rate=0.0", "model.num_layers=2"]
    with pytest.raises(SystemExit, match="expected key="):
        parse_grid(["optim.lr"])


def test_table_and_csv_hold_every_metric(tmp_path):
    runs = [SweepRun("x.yaml", ["optim.lr=1"], tmp_path / "1", "ok", {"step": 4, "ltr/lm_loss": 2.5}),
            SweepRun("x.yaml", ["optim.lr=2"], tmp_path / "2", "ok", {"step": 4, "ltr/lm_loss": 2.0, "fim/lm_loss": 3.0}),
            SweepRun("y.yaml", [], tmp_path / "3", "failed (exit 3)", {})]
    text = table(runs)
    assert "ltr/lm_loss" in text and "fim/lm_loss" in text and "2.5000" in text and "failed" in text
    write_csv(runs, tmp_path / "r.csv")
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert [r["ltr/lm_loss"] for r in rows] == ["2.5", "2.0", ""]
    assert rows[1]["fim/lm_loss"] == "3.0" and rows[2]["status"].startswith("failed")


@pytest.mark.slow
def test_sweep_runs_the_grid_and_collects_eval_metrics(tiny_corpus, tmp_path, capsys):
    fixed = [f"data.cache_dir={tiny_corpus[2]}", "data.seq_length=64", "schedule.train_steps=2",
             "schedule.warmup_steps=1", "schedule.micro_batch_size=2", "eval.batches=1", "eval.micro_batch_size=2",
             "eval.infill_sample=false", "logging.tensorboard=false", "checkpoint.save_final=false"]
    fixed += [f"data.corpus.{k}={v}" for k, v in TINY_CORPUS.items()]
    fixed += [f"data.tokenizer.{k}={v}" for k, v in TINY_TOKENIZER.items()]
    args = ["--configs", str(ROOT / "recipes/configs/gpt_fim_tiny.yaml"), "--grid", "optim.lr=[1e-3, 1e-2]",
            "--out", str(tmp_path / "sweep")]
    for f in fixed:
        args += ["--set", f]
    assert main(args) == 0
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "results.csv")))
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert all(float(r["ltr/lm_loss"]) > 0 and float(r["fim/lm_loss"]) > 0 for r in rows)
    assert "optim.lr=1e-2" in capsys.readouterr().out
