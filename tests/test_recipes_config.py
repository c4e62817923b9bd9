"""Config system: strict YAML -> frozen dataclasses, typed dotted overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import pytest
from hypothesis import given, strategies as st

from ptobj.recipes.engine.config import ConfigError, apply_overrides, from_dict, load_config, save_config, to_dict


@dataclass(frozen=True)
class Inner:
    lr: float = 1e-3
    steps: int = 10
    flag: bool = False
    name: str = "x"
    kind: Literal["a", "b"] = "a"
    sizes: tuple[int, ...] = (1, 2)
    maybe: Optional[int] = None

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")


@dataclass(frozen=True)
class Outer:
    inner: Inner = field(default_factory=Inner)
    spec: dict[str, Any] = field(default_factory=dict)
    items: list[Inner] = field(default_factory=list)


def test_unknown_key_names_dotted_path():
    with pytest.raises(ConfigError, match=r"^inner\.lrr: unknown key"):
        from_dict(Outer, {"inner": {"lrr": 1.0}})
    with pytest.raises(ConfigError, match=r"^items\.1\.bogus: unknown key"):
        from_dict(Outer, {"items": [{}, {"bogus": 1}]})


def test_wrong_type_names_field():
    with pytest.raises(ConfigError, match=r"^inner\.steps: expected an int, got 'many'"):
        from_dict(Outer, {"inner": {"steps": "many"}})
    with pytest.raises(ConfigError, match=r"^inner\.kind: expected one of"):
        from_dict(Outer, {"inner": {"kind": "c"}})
    with pytest.raises(ConfigError, match=r"^inner\.flag: expected a bool"):
        from_dict(Outer, {"inner": {"flag": 3}})


def test_post_init_error_carries_path():
    with pytest.raises(ConfigError, match=r"^inner: steps must be >= 0"):
        from_dict(Outer, {"inner": {"steps": -1}})


def test_overrides_are_typed_per_field():
    raw = apply_overrides({}, ["inner.lr=3e-4", "inner.steps=7", "inner.flag=true", "inner.name=12",
                               "inner.sizes=4,5,6", "inner.maybe=null", "spec.rate=0.5", "spec.tags=[a, b]"])
    cfg = from_dict(Outer, raw)
    assert cfg.inner.lr == 3e-4 and isinstance(cfg.inner.lr, float)
    assert cfg.inner.steps == 7 and isinstance(cfg.inner.steps, int)
    assert cfg.inner.flag is True
    assert cfg.inner.name == "12" and isinstance(cfg.inner.name, str)  # a str field keeps the text
    assert cfg.inner.sizes == (4, 5, 6)
    assert cfg.inner.maybe is None
    assert cfg.spec == {"rate": 0.5, "tags": ["a", "b"]}  # free-form: parsed as YAML


def test_override_into_list_element_and_unknown_override():
    raw = {"items": [{"steps": 1}, {"steps": 2}]}
    cfg = from_dict(Outer, apply_overrides(raw, ["items.1.steps=9"]))
    assert [i.steps for i in cfg.items] == [1, 9]
    with pytest.raises(ConfigError, match=r"^inner\.nope: unknown key"):
        from_dict(Outer, apply_overrides({}, ["inner.nope=1"]))
    with pytest.raises(ConfigError, match=r"items\.5: index 5 out of range"):
        apply_overrides(raw, ["items.5.steps=1"])
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        apply_overrides(raw, ["items"])


def test_yaml_scientific_notation_string_is_a_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  lr: 1e-3\n")  # PyYAML reads this as the string '1e-3'
    assert load_config(Outer, path).inner.lr == pytest.approx(1e-3)


@given(lr=st.floats(1e-8, 10, allow_nan=False), steps=st.integers(0, 10**6), flag=st.booleans(),
       name=st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=8))
def test_save_load_round_trip(tmp_path_factory, lr, steps, flag, name):
    cfg = Outer(inner=Inner(lr=lr, steps=steps, flag=flag, name=name, sizes=(3,)), spec={"k": [1, 2]},
                items=[Inner(steps=steps)])
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    save_config(cfg, path)
    assert load_config(Outer, path) == cfg
    # an override given as text equals the typed value
    assert from_dict(Outer, apply_overrides(to_dict(cfg), [f"inner.lr={lr!r}", f"inner.steps={steps}"])) == cfg
