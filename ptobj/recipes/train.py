"""Train a recipe: ``ptobj train RECIPE [dotted.key=value ...]`` (or ``python -m ptobj.recipes.train``).

RECIPE is a bundled recipe's name (``gpt_fim_tiny``; ``ptobj train --list`` names them all)
or a YAML file. Launched by ``torchrun`` / ``srun`` too: RANK / WORLD_SIZE / LOCAL_RANK
come from the environment. The loop is :mod:`ptobj.recipes.engine.trainer`; this command
hands it the evaluations the objective declares (FIM: infilling, :mod:`ptobj.recipes.evaluation`).

Exit status: 0 done, 2 a bad config / corpus / checkpoint (one line naming it),
3 a non-finite loss or gradient (stopped before its optimizer step), 4 stopped early on
purpose and saved (SIGTERM / SIGUSR1, or ``schedule.time_limit_minutes`` / SLURM's end time):
run the same command again to continue (the SLURM launcher requeues the job).
"""

from __future__ import annotations

import sys
from typing import Sequence

from ptobj.data_pipeline.corpus import CorpusError
from ptobj.recipes.engine import checkpoint as ckpt
from ptobj.recipes.engine.config import ConfigError
from ptobj.recipes.engine.distributed import shutdown
from ptobj.recipes.engine.stopping import EXIT_REQUEUE
from ptobj.recipes.engine.train_config import bundled_recipes, load_train_config
from ptobj.recipes.engine.trainer import NonFiniteLoss, RunResult, Session  # noqa: F401  (the run's API)
from ptobj.recipes.engine.trainer import run as run_loop
from ptobj.recipes.evaluation.declared import run_declared

EXIT_NON_FINITE = 3


def run(cfg, **kwargs) -> RunResult:
    """Train per ``cfg`` with the objective's declared evaluations at the end."""
    return run_loop(cfg, evaluations=run_declared, **kwargs)


def parse_args(argv: Sequence[str] | None = None, prog: str = "ptobj train"):
    import argparse

    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", nargs="?", help="a bundled recipe's name (see --list) or a YAML file")
    p.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. optim.lr=3e-4 schedule.train_steps=100")
    p.add_argument("--list", action="store_true", help="name the bundled recipes and exit")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (parameters, tokens, steps, epochs, memory per GPU, time) and exit; "
                        "touches no GPU")
    p.add_argument("--gpus", type=int, default=None,
                   help="--dry-run: GPUs in all (default: WORLD_SIZE, else 8 x the tensor-parallel size)")
    p.add_argument("--mfu", type=float, default=0.4, help="--dry-run: model FLOP utilisation for the time (0.4)")
    p.add_argument("--json", action="store_true", help="--dry-run: also print the plan as one JSON line")
    a = p.parse_args(argv)
    if not a.list and a.recipe is None:
        p.error("the following arguments are required: recipe")
    return a


def main(argv: Sequence[str] | None = None, prog: str = "ptobj train") -> int:
    a = parse_args(argv, prog)
    if a.list:
        print("\n".join(bundled_recipes()))
        return 0
    try:
        cfg = load_train_config(a.recipe, a.overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if a.dry_run:
        return dry_run(cfg, a.gpus, a.mfu, a.json)
    try:
        result = run(cfg)
        if result.stopped:          # saved on a signal or before the time limit: run again to continue
            return EXIT_REQUEUE
    except NonFiniteLoss as exc:
        print(f"[recipes] {exc}", file=sys.stderr)
        return EXIT_NON_FINITE
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except CorpusError as exc:
        print(f"corpus error: {exc}", file=sys.stderr)
        return 2
    except ckpt.DamagedCheckpoint as exc:  # checkpoints exist and none verifies
        print(f"checkpoint error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutdown()
    return 0


def dry_run(cfg, gpus: int | None, mfu: float, as_json: bool) -> int:
    import os

    from ptobj.recipes.engine.plan import plan_run

    gpus = gpus or int(os.environ.get("WORLD_SIZE", "0")) or 8 * cfg.parallel.tensor_parallel
    try:
        plan = plan_run(cfg, gpus=gpus, mfu=mfu)
    except ValueError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    print(plan.text())
    if as_json:
        print(plan.json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
