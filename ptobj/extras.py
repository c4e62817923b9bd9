"""Optional dependencies come in extras; a missing one is an error that names its extra.

``pip install ptobj`` brings numpy alone, which is all :mod:`ptobj.objectives`
needs. The extras (pyproject.toml) add the rest: ``[data]`` the sentencepiece
tokenizer, corpus readers and Chinese word boundaries; ``[train]`` (which includes
``[data]``) torch, megatron-core and triton for models, kernels, recipes and the
indexed datasets. A module that needs an extra calls :func:`require` before its
imports, so a user sees which extra to install instead of a bare
``ModuleNotFoundError`` from deep inside a stack. A package exports the names of its
modules lazily (:func:`lazy_exports`), so importing it needs none of their extras.
"""

from __future__ import annotations

import importlib.util
from importlib import import_module

DISTRIBUTION = "ptobj"


class MissingExtra(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def require(extra: str, *modules: str, by: str) -> None:
    """Fail with :class:`MissingExtra` unless every top-level module in ``modules`` is installed.

    ``require("train", "torch", "megatron", by=__name__)`` at the top of a module;
    nothing is imported here (``find_spec`` only looks).
    """
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        what = ", ".join(missing)
        raise MissingExtra(
            f"{by} needs {what}, not installed; it comes with the '{extra}' extra: "
            f"pip install '{DISTRIBUTION}[{extra}]'",
            name=missing[0],
        )


def lazy_exports(package: str, table: dict[str, str], eager: dict | None = None):
    """``(__getattr__, __dir__)`` for ``package``: ``table`` maps an exported name to the
    module holding it; a module named like the export is itself the export, as Python binds
    a package's submodules under their names once imported (so no attribute may share its
    module's name); ``eager`` is the package's ``globals()``, listed by ``__dir__`` too."""

    def __getattr__(name: str):
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        found = import_module(module)
        return found if module.endswith("." + name) else getattr(found, name)

    def __dir__() -> list[str]:
        return sorted({*(eager or {}), *table})

    return __getattr__, __dir__
