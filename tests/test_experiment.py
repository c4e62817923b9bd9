"""Paper reproductions (ptobj.recipes.experiments.reproduce): every experiment file loads and compares like with like."""

from __future__ import annotations

from pathlib import Path

import pytest

from ptobj.recipes.experiments.reproduce import Check, ExperimentError, _verdict, check_comparable, load, main, metric, names


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


def test_verdicts_and_metric_alternatives():
    c = Check("x", "m", "a", ">", "b")
    assert _verdict(c, {"a": [0.6], "b": [0.5]}).startswith("holds")
    assert _verdict(c, {"a": [0.4], "b": [0.5]}).startswith("does not hold")
    assert _verdict(c, {"a": [0.6, 0.4], "b": [0.5, 0.52]}).startswith("within noise")
    assert _verdict(Check("x", "m", "a", "~", "b", 0.05), {"a": [1.0], "b": [1.04]}).startswith("holds")
    assert _verdict(Check("x", "m", "a", "~", "b", 0.05), {"a": [1.0], "b": [1.1]}).startswith("does not hold")
    assert _verdict(Check("x", "m", "a", "~", "b", 0.05), {"a": [1.0, 1.2], "b": [1.2, 1.2]}).startswith("within")
    assert _verdict(c, {"a": [], "b": [0.5]}) == "not measured"
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
