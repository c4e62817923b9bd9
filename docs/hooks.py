"""mkdocs hooks: pages written from the code, so they cannot drift from it.

In a page, a line
    <!-- config: ptobj.objectives.fim.FIMConfig -->      a table of that config's keys
    <!-- config-tree: ptobj.recipes.engine.train_config.TrainConfig -->   every key of the tree
    <!-- cli: train -->                                   ``ptobj train --help``
is replaced at build time by what the code says: each key's type, default and the comment
written beside (or above) its field.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import io
import re
import textwrap
import tokenize
import typing

MARK = re.compile(r"^<!-- (config|config-tree|cli): ([\w.]+) -->$", re.M)


def _obj(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def field_comments(cls) -> dict[str, str]:
    """The comment on each field's line, or the comment lines just above it, in the class source."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    out = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for i, line in enumerate(lines, 1):
        m = re.match(r"\s+(\w+)\s*:", line)
        if not m or m.group(1) not in names or m.group(1) in out:
            continue
        above, j = [], i - 1
        while j in comments and lines[j - 1].strip().startswith("#"):
            above.insert(0, comments[j])
            j -= 1
        text = " ".join(above + ([comments[i]] if i in comments else []))
        out[m.group(1)] = text
    return out


def _type(tp) -> str:
    text = getattr(tp, "__name__", None) if not typing.get_args(tp) else None
    text = text or str(tp).replace("typing.", "")
    return re.sub(r"\b(ptobj\.[\w.]+\.)", "", text)


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return "(section)" if dataclasses.is_dataclass(value) else repr(value)
    return "(required)"


def rows(cls, prefix: str = "", recurse: bool = False) -> list[tuple[str, str, str, str]]:
    hints = typing.get_type_hints(cls)
    notes = field_comments(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        if recurse and dataclasses.is_dataclass(tp):
            out += rows(tp, f"{prefix}{f.name}.", recurse)
            continue
        out.append((prefix + f.name, _type(tp), _default(f), notes.get(f.name, "")))
    return out


def table(cls, recurse: bool = False) -> str:
    head = "| key | type | default | what it does |\n| --- | --- | --- | --- |\n"
    cell = lambda s: s.replace("|", "\\|")
    return head + "\n".join(f"| `{k}` | `{cell(t)}` | `{cell(d)}` | {cell(n)} |" for k, t, d, n in rows(cls, "", recurse))


def cli_help(name: str) -> str:
    from ptobj import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        cli.main([name, "--help"])
    return "```text\n" + out.getvalue().rstrip() + "\n```"


def on_page_markdown(markdown: str, page, config, files) -> str:
    def replace(m: re.Match) -> str:
        kind, target = m.group(1), m.group(2)
        if kind == "cli":
            return cli_help(target)
        return table(_obj(target), recurse=kind == "config-tree")

    return MARK.sub(replace, markdown)
