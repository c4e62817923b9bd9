"""Stopping early on purpose: a signal (SLURM's preemption SIGTERM, or the SIGUSR1 a job asks for
with ``--signal=USR1@300``) or the end of the allocation (``schedule.time_limit_minutes``, or
SLURM's ``SLURM_JOB_END_TIME``) makes the run finish its step, save a verified checkpoint and
exit with :data:`EXIT_REQUEUE`, which the SLURM launcher turns into ``scontrol requeue``.

A handler only sets a flag; the loop looks at it between steps and every rank agrees (one
all-reduce of a flag per step), so all ranks save the same step.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Sequence

EXIT_REQUEUE = 4  # stopped early and saved: resubmit (or requeue) the same command to continue
STOPPED_FILE = "stopped.json"  # <run_dir>/stopped.json: why and where the run stopped early


def signal_number(name: str) -> int:
    sig = getattr(signal, name if name.startswith("SIG") else f"SIG{name}", None)
    if not isinstance(sig, signal.Signals):
        raise ValueError(f"unknown signal {name!r} (e.g. SIGTERM, SIGUSR1)")
    return int(sig)


def allocation_end(time_limit_minutes: float, started: float) -> float | None:
    """The wall-clock time (``time.time()``) by which the run must have stopped: the earlier of
    ``started + time_limit_minutes`` and SLURM's job end time; None when neither is set."""
    ends = []
    if time_limit_minutes > 0:
        ends.append(started + 60.0 * time_limit_minutes)
    slurm = os.environ.get("SLURM_JOB_END_TIME", "")
    if slurm.strip().isdigit() and int(slurm) > 0:
        ends.append(float(slurm))
    return min(ends) if ends else None


class StopRequest:
    """Why the run should save and stop now, if it should."""

    def __init__(self, signals: Sequence[str], end: float | None, margin_s: float):
        self.numbers = [signal_number(s) for s in signals]
        self.end, self.margin_s = end, margin_s
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():   # handlers live in the main thread
            for n in self.numbers:
                self._previous[n] = signal.signal(n, self._handle)
        return self

    def restore(self) -> None:
        for n, handler in self._previous.items():
            signal.signal(n, handler)
        self._previous.clear()

    def _handle(self, number, frame) -> None:
        self.received = signal.Signals(number).name

    def reason(self, step_seconds: float) -> str | None:
        """This process's reason to stop after the step just done (``step_seconds``: how long
        a step takes, so the next one and a save still fit before the end)."""
        if self.received:
            return f"{self.received} received"
        if self.end is not None and time.time() + self.margin_s + 2 * step_seconds >= self.end:
            left = max(0.0, self.end - time.time())
            return f"time limit: {left / 60:.1f} min left, {self.margin_s / 60:.1f} min kept to save"
        return None
