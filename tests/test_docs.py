"""The documentation: the site builds with warnings as errors, and every Python and shell
snippet in it (and in the README) is either run here or marked with why it is not.

A fenced ``python`` / ``bash`` block is preceded by ``<!-- run -->`` (this test runs it, in a
fresh folder, with this environment's ``ptobj``) or ``<!-- not run: REASON -->``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(python|bash|sh|console)\s*$")
MARK = re.compile(r"^<!-- (run|not run: (.+)) -->$")


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if "results" not in p.parts)]


def snippets() -> list[tuple[str, int, str, str, str | None]]:
    """(page, line, language, code, reason it is not run or None) of every snippet."""
    out = []
    for page in pages():
        lines = page.read_text().splitlines()
        i = 0
        while i < len(lines):
            m = FENCE.match(lines[i])
            if not m:
                i += 1
                continue
            j = i + 1
            while j < len(lines) and lines[j].rstrip() != "```":
                j += 1
            prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            mark = MARK.match(prev.strip())
            reason = "UNMARKED" if mark is None else (None if mark.group(1) == "run" else mark.group(2))
            out.append((str(page.relative_to(ROOT)), i + 1, m.group(1), "\n".join(lines[i + 1: j]), reason))
            i = j + 1
    return out


SNIPPETS = snippets()
RUN = [s for s in SNIPPETS if s[4] is None]


def test_every_snippet_is_run_or_says_why_not():
    unmarked = [f"{page}:{line}" for page, line, _, _, reason in SNIPPETS if reason == "UNMARKED"]
    assert not unmarked, "snippets without <!-- run --> or <!-- not run: reason -->: " + ", ".join(unmarked)
    assert len(RUN) >= 8
    reasons = {}
    for *_, reason in SNIPPETS:
        if reason:
            reasons[reason] = reasons.get(reason, 0) + 1
    print(f"\n{len(RUN)} snippets run, {len(SNIPPETS) - len(RUN)} not run: {reasons}")


def _units() -> list[tuple[str, str, str]]:
    """(id, language, code): a page's runnable Python blocks run as one script, in order (a later
    block may use what an earlier one made); each shell block on its own."""
    python: dict[str, list[str]] = {}
    out = []
    for page, line, lang, code, _ in RUN:
        if lang == "python":
            python.setdefault(page, []).append(f"# {page}:{line}\n{code}")
        else:
            out.append((f"{page}:{line}", "bash", code))
    return [(page, "python", "\n\n".join(blocks)) for page, blocks in python.items()] + out


@pytest.mark.parametrize("where,lang,code", _units(), ids=[u[0] for u in _units()])
def test_snippets_run(where, lang, code, tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
           "PYTHONWARNINGS": "ignore", "WANDB_MODE": "offline", "NO_MKDOCS_2_WARNING": "1"}
    env.pop("PYTHONPATH", None)
    cmd = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{where}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    if not mkdocs.exists():
        pytest.skip("mkdocs is not installed (the [docs] extra)")
    t0 = time.perf_counter()
    done = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-5000:]
    built = list((tmp_path / "site").rglob("index.html"))
    print(f"\nmkdocs build --strict: {time.perf_counter() - t0:.1f} s, {len(built)} pages")
    assert len(built) >= 25
    config = (tmp_path / "site" / "reference" / "config" / "index.html").read_text()
    assert "schedule.time_limit_minutes" in config and "fim_rate" in config      # generated from the code
