"""Sweep points as one ``submitit`` array job (SLURM, or submitit's local executor).

Each array task runs one point through the ``execute`` it is given
(:func:`ptobj.recipes.experiments.sweep.execute`: a ``ptobj.recipes.train`` subprocess, or ``torchrun``
with ``nproc`` processes). The job is ``Checkpointable``: at its time limit or
on preemption submitit requeues it, and the rerun resumes the run from its
newest checkpoint (a point already finished is skipped). Needs the ``[sweep]``
extra.
"""

from __future__ import annotations

from ptobj.extras import require

require("sweep", "submitit", by=__name__)

from pathlib import Path
from typing import Callable, Sequence

import submitit


class SweepJob(submitit.helpers.Checkpointable):
    """One sweep point; requeued (and resumed from its checkpoint) at a time limit."""

    def __init__(self, execute: Callable):
        self.execute = execute                           # pickled by name: ptobj.recipes.experiments.sweep.execute

    def __call__(self, run, nproc: int, force: bool):
        done = self.execute(run, nproc, force)
        if not done.ok:
            raise RuntimeError(f"{run.label}: {done.status}")
        return done.metrics


def submit(runs: Sequence, execute: Callable, *, nproc: int, force: bool, folder: Path, cluster: str, jobs: int,
           wait: bool, partition: str | None = None, account: str | None = None, timeout_min: int = 60,
           gpus_per_node: int = 0, cpus_per_task: int | None = None) -> list:
    """Submit ``runs`` as one array job, each task calling ``execute(run, nproc, force)``; with
    ``wait``, block until every task ends. Returns the jobs."""
    if not runs:
        return []
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params = {"timeout_min": timeout_min, "tasks_per_node": 1, "nodes": 1, "name": "sweep"}
    if cluster == "slurm":
        params.update(slurm_array_parallelism=max(1, jobs), gpus_per_node=gpus_per_node or None)
        if partition:
            params["slurm_partition"] = partition
        if account:
            params["slurm_account"] = account
        if cpus_per_task:
            params["cpus_per_task"] = cpus_per_task
        params = {k: v for k, v in params.items() if v is not None}
    executor.update_parameters(**params)
    submitted = executor.map_array(SweepJob(execute), list(runs), [nproc] * len(runs), [force] * len(runs))
    for run, job in zip(runs, submitted):
        print(f"[sweep] submitted {run.label}: job {job.job_id}", flush=True)
    if wait:
        for run, job in zip(runs, submitted):
            try:
                job.result()
            except Exception as exc:  # the task failed; its status.json and sweep.log say why
                print(f"[sweep] {run.label}: failed ({type(exc).__name__})", flush=True)
    return submitted
