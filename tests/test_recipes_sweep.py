"""Ablation sweeps: grid expansion, result table / CSV, and one real two-run sweep."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import TINY_CORPUS, TINY_TOKENIZER
from ptobj.recipes.experiments.sweep import SweepRun, main, parse_grid, plan, table, write_csv

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
             "eval.infill.enabled=false", "logging.tensorboard=false", "checkpoint.save_final=false"]
    fixed += [f"data.corpus.{k}={v}" for k, v in TINY_CORPUS.items()]
    fixed += [f"data.tokenizer.{k}={v}" for k, v in TINY_TOKENIZER.items()]
    args = ["--configs", str(ROOT / "ptobj/recipes/configs/gpt_fim_tiny.yaml"), "--grid", "optim.lr=[1e-3, 1e-2]",
            "--out", str(tmp_path / "sweep")]
    for f in fixed:
        args += ["--set", f]
    assert main(args) == 0
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "results.csv")))
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert all(float(r["ltr/lm_loss"]) > 0 and float(r["fim/lm_loss"]) > 0 for r in rows)
    assert "optim.lr=1e-2" in capsys.readouterr().out


def _fixed(tiny_corpus):
    fixed = [f"data.cache_dir={tiny_corpus[2]}", "data.seq_length=64", "schedule.train_steps=2",
             "schedule.warmup_steps=1", "schedule.micro_batch_size=2", "eval.batches=1", "eval.micro_batch_size=2",
             "eval.infill.enabled=false", "logging.tensorboard=false", "checkpoint.save_final=false"]
    fixed += [f"data.corpus.{k}={v}" for k, v in TINY_CORPUS.items()]
    return fixed + [f"data.tokenizer.{k}={v}" for k, v in TINY_TOKENIZER.items()]


@pytest.mark.slow
def test_submitit_array_job_skips_done_points_and_the_collector_marks_failures(tiny_corpus, tmp_path, capsys):
    """The SLURM code path (one submitit array job) through submitit's local executor: two seeds of
    one point and a point that fails; a rerun skips what finished; the collector averages seeds."""
    from ptobj.recipes.experiments.sweep import collect, launch, point_state, read_plan

    out = tmp_path / "sweep"
    runs = plan([str(ROOT / "ptobj/recipes/configs/gpt_fim_tiny.yaml")],
                [("schedule.seed", ["1", "2"]), ("optim.lr", ["1e-3", "-1"])], _fixed(tiny_corpus), out)
    got = launch(runs, launcher="submitit-local", jobs=4, out=out)
    ok = [r for r in got if r.ok]
    assert len(ok) == 2 and all("optim.lr=1e-3" in r.label for r in ok)
    bad = [r for r in got if not r.ok]
    assert len(bad) == 2 and all(r.status.startswith("failed") for r in bad)
    assert "lr must be > 0" in (bad[0].run_dir / "sweep.log").read_text()
    mtime = (ok[0].run_dir / "final_metrics.json").stat().st_mtime_ns
    again = launch(plan([str(ROOT / "ptobj/recipes/configs/gpt_fim_tiny.yaml")], [("schedule.seed", ["1"]),
                                                                              ("optim.lr", ["1e-3"])],
                        _fixed(tiny_corpus), out), launcher="serial", out=tmp_path / "sweep2")
    assert again[0].status == "cached" and (ok[0].run_dir / "final_metrics.json").stat().st_mtime_ns == mtime
    other = plan([str(ROOT / "ptobj/recipes/configs/gpt_fim_tiny.yaml")], [("schedule.seed", ["1"]), ("optim.lr", ["1e-3"])],
                 [*_fixed(tiny_corpus), "optim.min_lr=1e-5"], out)[0]
    other.run_dir = ok[0].run_dir                                  # the same folder, other settings
    assert launch([other], launcher="serial", out=tmp_path / "sweep3")[0].status.startswith("failed")
    assert "other settings" in other.status
    found = [point_state(r) for r in read_plan(out)]
    collect(found, out, quiet=True)
    md = (out / "results.md").read_text()
    row = next(line for line in md.splitlines() if "optim.lr=1e-3" in line)
    assert "| 2/2 |" in row and " ± " in row                       # two seeds: mean ± std
    assert "0/2 (failed" in next(line for line in md.splitlines() if "optim.lr=-1" in line)
    assert (out / "loss_curves.png").stat().st_size > 1000 and (out / "metrics.png").is_file()


@pytest.mark.slow
def test_local_launcher_runs_points_in_parallel(tiny_corpus, tmp_path):
    from ptobj.recipes.experiments.sweep import launch

    out = tmp_path / "sweep"
    runs = plan([str(ROOT / "ptobj/recipes/configs/causal_lm_tiny.yaml")], [("schedule.seed", ["1", "2"])],
                _fixed(tiny_corpus), out)
    got = launch(runs, launcher="local", jobs=2, out=out)
    assert all(r.status == "ok" for r in got)
    starts = [json.loads((r.run_dir / "status.json").read_text()) for r in got]
    assert starts[1]["started"] < starts[0]["ended"]              # the second started before the first ended
