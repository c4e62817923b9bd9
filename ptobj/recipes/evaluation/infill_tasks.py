"""Infilling tasks cut deterministically from held-out documents (Bavarian et al. 2022, section 4).

Three kinds, as in the paper's infilling benchmarks:

* ``single_line``: one whole non-blank line (with its newline) is the middle;
* ``multi_line``: 2 to 4 consecutive lines, at least two of them non-blank;
* ``random_span``: a span of characters at a random place, 1 to ``4 * max tokens`` characters.

A middle must encode to at most ``max_middle_tokens`` tokens, so the model has
room to write it and the EOT. Task ``k`` of a kind is drawn from
``numpy.random.default_rng([seed, kind, k])`` over the documents (in their
order), so the same held-out files always give the same tasks. The model is
shown the end of the prefix and the start of the suffix that fit its context;
whether the infilled *file* parses (``ast.parse`` of prefix + middle + suffix)
is reported for documents that parse as they are.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ptobj.recipes.engine.infill_config import KINDS

TRIES = 64


@dataclass(frozen=True)
class InfillTask:
    kind: str
    document: int          # index into the documents the tasks were cut from
    start: int             # the middle is text[start:end]
    end: int
    prefix: str
    middle: str
    suffix: str
    parses: bool           # the document parses as Python (so the infilled file's parse is meaningful)

    def filled(self, middle: str) -> str:
        return self.prefix + middle + self.suffix


def parses(text: str) -> bool:
    try:
        ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def _line_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every line, the newline included."""
    spans, a = [], 0
    for line in text.splitlines(keepends=True):
        spans.append((a, a + len(line)))
        a += len(line)
    return spans


def _pick(kind: str, text: str, rng: np.random.Generator, max_chars: int) -> tuple[int, int] | None:
    if kind == "random_span":
        if len(text) < 2:
            return None
        n = int(rng.integers(1, min(max_chars, len(text)) + 1))
        a = int(rng.integers(0, len(text) - n + 1))
        return a, a + n
    lines = _line_spans(text)
    width = 1 if kind == "single_line" else int(rng.integers(2, 5))
    starts = [i for i in range(len(lines) - width + 1)
              if sum(bool(text[a:b].strip()) for a, b in lines[i:i + width]) >= min(width, 2)]
    if not starts:
        return None
    i = starts[int(rng.integers(len(starts)))]
    return lines[i][0], lines[i + width - 1][1]


def build_tasks(texts: Sequence[str], tokenizer, *, kinds: Sequence[str] = KINDS, per_kind: int,
                max_middle_tokens: int, seed: int = 0) -> list[InfillTask]:
    """``per_kind`` tasks of each kind (fewer when the documents cannot give them)."""
    usable = [i for i, t in enumerate(texts) if t.strip()]
    if not usable:
        return []
    parse_ok: dict[int, bool] = {}
    tasks = []
    for kind in kinds:
        kind_id = KINDS.index(kind)
        for k in range(per_kind):
            rng = np.random.default_rng([seed, kind_id, k])
            for _ in range(TRIES):
                d = usable[int(rng.integers(len(usable)))]
                text = texts[d]
                span = _pick(kind, text, rng, 4 * max_middle_tokens)
                if span is None:
                    continue
                a, b = span
                middle = text[a:b]
                if not middle.strip() or len(tokenizer.encode(middle)) > max_middle_tokens:
                    continue
                if d not in parse_ok:
                    parse_ok[d] = parses(text)
                tasks.append(InfillTask(kind, d, a, b, text[:a], middle, text[b:], parse_ok[d]))
                break
    return tasks
