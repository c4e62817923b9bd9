"""Paper reproductions (ptobj.recipes.experiments.reproduce): every experiment file loads and compares like with like."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ptobj.recipes.experiments.reproduce import Check, ExperimentError, check_comparable, load, main, metric, names


def test_every_experiment_loads_and_compares_like_with_like(tmp_path):
    assert {"fim_for_free", "fim_variants", "albert_sop_nsp", "spanbert_masking", "macbert_correction",
            "unilm_modes"} <= set(names())
    for name in names():
        exp = load(name)
        assert set(exp.sizes) == {"cpu", "gpu"} and exp.checks and exp.table, name
        shared = check_comparable(exp.points("cpu", tmp_path))
        assert shared["training tokens"] > 0 and shared["eval.seed"] == 0, name


def test_runs_that_would_not_compare_like_with_like_are_refused(tmp_path):
    text = Path(load("fim_for_free").path).read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace('set: [objective.config.fim_rate=0.9]',
                                'set: [objective.config.fim_rate=0.9, schedule.train_steps=50]'))
    with pytest.raises(ExperimentError, match="training tokens"):
        check_comparable(load(str(bad)).points("cpu", tmp_path))
    bad.write_text(text.replace("set: [eval.seed=0, ", "set: ["))
    with pytest.raises(ExperimentError, match="eval.seed"):
        check_comparable(load(str(bad)).points("cpu", tmp_path))
    bad.write_text(text.replace("table:", "tables:"))
    with pytest.raises(ExperimentError, match="tables: unknown key"):
        load(str(bad))
    assert main([str(bad), "--dry-run"]) == 2


def test_paired_verdicts_and_metric_alternatives():
    from ptobj.recipes.experiments.paired import describe, paired, t975, verdict

    # arms far apart per arm (seed spread 0.33) but consistent seed by seed: resolved
    a = {1: 4.10, 2: 4.45, 3: 4.20, 4: 4.43}
    b = {s: v - 0.1 + d for (s, v), d in zip(a.items(), (0.01, -0.02, 0.015, -0.005))}
    p = paired(a, b)
    assert p.seeds == (1, 2, 3, 4) and p.mean == pytest.approx(0.1)
    diffs = [a[s] - b[s] for s in a]
    sd = float(np.std(diffs, ddof=1))
    assert p.sd == pytest.approx(sd) and p.high - p.mean == pytest.approx(t975(3) * sd / 2)
    assert verdict(p, ">") == "holds" and verdict(p, "<") == "opposite"
    assert verdict(p, "~", 0.05) == "opposite" and verdict(p, "~", 0.2) == "holds"
    noisy = paired({1: 1.0, 2: 1.2, 3: 0.9}, {1: 1.1, 2: 1.0, 3: 1.0})
    assert noisy.low < 0 < noisy.high and verdict(noisy, ">") == "unresolved" == verdict(noisy, "<")
    assert verdict(noisy, "~", 0.05) == "unresolved"
    assert paired({1: 1.0}, {1: 0.5}) is None and verdict(None, ">") == "unresolved"
    assert paired({1: 1.0, 2: 2.0}, {2: 1.0, 3: 1.0}) is None           # one seed in common only
    text = describe(p, ">")
    assert text.startswith("holds: a - b = +0.1") and "95% interval [" in text and "resolves differences beyond" in text
    assert t975(1) == 12.706 and t975(1000) == 1.96
    assert metric({"nsp_task/sop_acc": 0.7}, "nsp_task/nsp_acc|nsp_task/sop_acc") == 0.7


def test_held_out_suites_of_another_objective_are_checked_when_the_config_loads():
    from ptobj.recipes.engine.config import ConfigError
    from ptobj.recipes.engine.train_config import load_train_config

    root = Path(__file__).resolve().parents[1] / "ptobj/recipes/configs"
    cfg = load_train_config(root / "albert_sop_tiny.yaml",
                            ["eval.suites={nsp_task: {name: nsp, fields: {nsp_label: sop_label}}}"])
    assert cfg.eval.suites["nsp_task"]["fields"] == {"nsp_label": "sop_label"}
    with pytest.raises(ConfigError, match="eval.suites.x: a decoder objective cannot evaluate this encoder"):
        load_train_config(root / "albert_sop_tiny.yaml", ["eval.suites={x: {name: fim}}"])
    with pytest.raises(ConfigError, match="eval.suites.x.config.bogus: unknown key"):
        load_train_config(root / "albert_sop_tiny.yaml", ["eval.suites={x: {name: nsp, config: {bogus: 1}}}"])
