"""Optional dependencies come in extras; a missing one is an error that names its extra.

``pip install ptobj`` brings numpy alone, which is all :mod:`ptobj.objectives`
needs. The extras (pyproject.toml) add the rest: ``[data]`` the sentencepiece
tokenizer, corpus readers and Chinese word boundaries; ``[train]`` (which includes
``[data]``) torch, megatron-core and triton for models, kernels, recipes and the
indexed datasets. A module that needs an extra calls :func:`require` before its
imports, so a user sees which extra to install instead of a bare
``ModuleNotFoundError`` from deep inside a stack.
"""

from __future__ import annotations

import importlib.util

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
