"""Cut a document into "sentences": the units SOP/NSP pair up and that each
become one megatron sequence. Pieces concatenate back to the exact document.

Prose: a regex split after ``.!?`` (or a blank line), whitespace going to the
start of the next sentence. Code: blocks of lines separated by blank lines.
"""

from __future__ import annotations

import re

# split before the whitespace that follows a sentence end, or before a blank line
_PROSE_BOUNDARY = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))(?=\s+[\"'(\[]?[A-Z0-9])|(?=\n\s*\n)")
_CODE_BLANK_RUN = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)*")


def split_prose(text: str) -> list[str]:
    """Sentences whose concatenation is ``text``; whitespace leads the next sentence."""
    pieces, last = [], 0
    for m in _PROSE_BOUNDARY.finditer(text):
        if m.start() > last:
            pieces.append(text[last : m.start()])
            last = m.start()
    if last < len(text):
        pieces.append(text[last:])
    return _merge_blank(pieces)


def split_code(text: str) -> list[str]:
    """Blocks of non-blank lines; each block carries the blank lines that end it."""
    pieces, last = [], 0
    for m in _CODE_BLANK_RUN.finditer(text):
        end = m.end()
        if end > last:
            pieces.append(text[last:end])
            last = end
    if last < len(text):
        pieces.append(text[last:])
    return _merge_blank(pieces)


def _merge_blank(pieces: list[str]) -> list[str]:
    """Whitespace-only pieces join their neighbour so no sentence is empty of content."""
    out: list[str] = []
    for p in pieces:
        if out and not p.strip():
            out[-1] += p
        elif out and not out[-1].strip():
            out[-1] += p
        else:
            out.append(p)
    return out


def split_sentences(text: str, mode: str) -> list[str]:
    if mode == "code":
        return split_code(text)
    if mode == "prose":
        return split_prose(text)
    raise ValueError(f"sentence mode must be 'prose' or 'code', got {mode!r}")
