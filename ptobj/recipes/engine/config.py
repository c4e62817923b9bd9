"""YAML <-> typed frozen dataclasses, with dotted command-line overrides.

A config file is a tree of plain mappings; :func:`from_dict` turns it into a
tree of frozen dataclasses, checking every key and value against the field
types and naming the dotted path of anything wrong (``optim.lr: expected float,
got 'fast'``; ``schedule.warmup: unknown key; known: ...``). Overrides such as
``optim.lr=3e-4`` or ``objective.transforms.0.config.fim_rate=1.0`` are applied
to the raw tree before conversion, so they get exactly the same checks; their
values are strings parsed per the field's type (int, float, bool, str, lists,
mappings), not guessed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key is wrong; the message starts with its dotted path."""


class _CommandLine(str):
    """A value typed on the command line: parsed per the target field's type."""


# ----------------------------------------------------------------------------- loading


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        data = yaml.safe_load(f)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """Return a copy of ``raw`` with ``dotted.key=value`` overrides applied.

    List elements are addressed by index (``objective.transforms.0.name=mlm``);
    a missing intermediate mapping is created, so the typed conversion later
    reports an unknown key by its full dotted path.
    """
    import copy

    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}: empty key segment")
        node: Any = out
        for depth, part in enumerate(parts[:-1]):
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                node = node[_list_index(node, part, where)]
            elif isinstance(node, dict):
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            else:
                raise ConfigError(f"{where}: cannot descend into a {type(node).__name__} value")
        last = parts[-1]
        if isinstance(node, list):
            node[_list_index(node, last, key)] = _CommandLine(value)
        elif isinstance(node, dict):
            node[last] = _CommandLine(value)
        else:
            raise ConfigError(f"{key}: cannot set a key inside a {type(node).__name__} value")
    return out


def _list_index(node: list, part: str, where: str) -> int:
    try:
        index = int(part)
    except ValueError:
        raise ConfigError(f"{where}: expected a list index, got {part!r}") from None
    if not -len(node) <= index < len(node):
        raise ConfigError(f"{where}: index {index} out of range for a list of {len(node)}")
    return index


def load_config(cls: type[T], path: str | Path, overrides: Sequence[str] = ()) -> T:
    """Read ``path``, apply overrides, convert to ``cls`` (checked)."""
    raw = apply_overrides(load_yaml(path), overrides)
    return from_dict(cls, raw)


# ----------------------------------------------------------------------------- conversion


def from_dict(cls: type[T], data: Mapping[str, Any] | None, path: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, recursively and strictly."""
    if data is None:
        data = {}
    if isinstance(data, _CommandLine):
        data = _parse_yaml_scalar(data, path)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or '<root>'}: expected a mapping for {cls.__name__}, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        where = _join(path, str(unknown[0]))
        raise ConfigError(f"{where}: unknown key; {cls.__name__} knows {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = convert(hints[name], value, _join(path, name))
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path or '<root>'}: {exc}") from exc


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _parse_yaml_scalar(text: str, path: str) -> Any:
    try:
        return yaml.safe_load(str(text))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: cannot parse {str(text)!r}: {exc}") from None


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def parse_value(tp: Any, text: str, path: str) -> Any:
    """A value typed on the command line (``key=value``'s value) as type ``tp``, parsed as the
    dotted overrides are (lists as ``[a, b]`` or ``a,b``); errors name ``path``."""
    return convert(tp, _CommandLine(text), path)


def _as_int(value: Any) -> int | None:
    """An int from a YAML int / integral float / command-line string, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        try:
            return int(value.strip().replace("_", ""))
        except ValueError:
            number = _as_float(value)
            return int(number) if number is not None and number.is_integer() else None
    return None


def _as_float(value: Any) -> float | None:
    """A float from a YAML number / command-line string (YAML reads 1e-3 as a string), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:                   # an int beyond any float
            return math.inf
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def convert(tp: Any, value: Any, path: str) -> Any:
    """``value`` (parsed YAML or a command-line string) as type ``tp``; errors name ``path``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return _plain(value, path)
    if origin in (Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, _CommandLine) and value.strip().lower() in ("none", "null", "~")):
            if len(non_none) < len(args):
                return None
            raise ConfigError(f"{path}: may not be null")
        errors = []
        for option in non_none:
            try:
                return convert(option, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: no type of {tp} fits {value!r}")
    if origin is Literal:
        if isinstance(value, _CommandLine):
            for choice in args:
                if str(choice) == str(value):
                    return choice
        elif value in args:
            return value
        raise ConfigError(f"{path}: expected one of {list(args)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, _CommandLine):
            value = _parse_list(value, path)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(convert(a, v, f"{path}.{i}") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [convert(item, v, f"{path}.{i}") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin in (dict, Mapping) or tp is dict:
        if isinstance(value, _CommandLine):
            value = _parse_yaml_scalar(value, path)
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        key_tp, val_tp = args if args else (str, Any)
        return {convert(key_tp, k, path): convert(val_tp, v, _join(path, str(k))) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{path}: expected a bool (true/false), got {value!r}")
    if tp is int:
        number = _as_int(value)
        if number is None:
            raise ConfigError(f"{path}: expected an int, got {value!r}")
        if not -(2**63) <= number < 2**63:
            raise ConfigError(f"{path}: {number} does not fit a 64-bit integer")
        return number
    if tp is float:
        number = _as_float(value)
        if number is None:
            raise ConfigError(f"{path}: expected a float, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"{path}: must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return str(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    raise ConfigError(f"{path}: unsupported field type {tp!r}")


def _parse_list(text: str, path: str) -> list:
    stripped = text.strip()
    if stripped.startswith("["):
        parsed = _parse_yaml_scalar(stripped, path)
        if not isinstance(parsed, list):
            raise ConfigError(f"{path}: expected a list, got {text!r}")
        return [_CommandLine(str(v)) if not isinstance(v, (dict, list)) else v for v in parsed]
    if not stripped:
        return []
    if stripped.startswith("{"):
        raise ConfigError(f"{path}: expected a list ([a, b] or a,b), got a mapping {text!r}")
    return [_CommandLine(v.strip()) for v in stripped.split(",")]


def _plain(value: Any, path: str) -> Any:
    """A free-form value: command-line text anywhere inside it is parsed as YAML."""
    if isinstance(value, _CommandLine):
        return _parse_yaml_scalar(value, path)
    if isinstance(value, dict):
        return {k: _plain(v, _join(path, str(k))) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{path}.{i}") for i, v in enumerate(value)]
    return value


# ----------------------------------------------------------------------------- saving


def to_dict(obj: Any) -> Any:
    """Plain-YAML form of a config tree (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_config(obj: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        yaml.safe_dump(to_dict(obj), f, sort_keys=False)
    tmp.replace(path)
