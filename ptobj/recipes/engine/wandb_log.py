"""Weights & Biases as an optional logger (``logging.wandb``), beside TensorBoard and jsonl.

The run's resolved config goes up at the start, every logged line as it is written, and the
final held-out and declared-evaluation metrics as a table and the run summary at the end. The
W&B run id is kept in ``<run_dir>/wandb_run_id``, so a resumed (or requeued) run continues the
same W&B run. ``mode: offline`` writes everything under ``<run_dir>/wandb/`` for a later
``wandb sync`` (no network). Needs the ``[wandb]`` extra.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ID_FILE = "wandb_run_id"


@dataclass(frozen=True)
class WandbConfig:
    enabled: bool = False
    project: str = "ptobj"
    entity: str = ""            # "" -> your default entity
    name: str = ""              # "" -> the run's name
    tags: tuple[str, ...] = ()
    mode: Literal["online", "offline", "disabled"] = "online"

    def __post_init__(self):
        if self.enabled and not self.project:
            raise ValueError("project must name a W&B project")


class WandbRun:
    """One W&B run for one training run (main rank only)."""

    def __init__(self, cfg: WandbConfig, run_dir: Path, run_name: str, config: dict):
        from ptobj.extras import require

        require("wandb", "wandb", by=__name__)
        import wandb

        run_dir.mkdir(parents=True, exist_ok=True)
        id_file = run_dir / ID_FILE
        # our own id (8 lowercase letters and digits, as W&B's): stable across W&B versions
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        self.run = wandb.init(project=cfg.project, entity=cfg.entity or None, name=cfg.name or run_name,
                              tags=list(cfg.tags), mode=cfg.mode, id=run_id, resume="allow", dir=str(run_dir),
                              config=config, settings=wandb.Settings(console="off", silent=True))
        id_file.write_text(run_id)
        self.id = run_id

    def log(self, step: int, values: dict, kind: str) -> None:
        prefix = "train" if kind == "train" else "eval"
        self.run.log({f"{prefix}/{k}": v for k, v in values.items() if isinstance(v, (int, float))}, step=step)

    def final(self, metrics: dict) -> None:
        """The end of the run: its final metrics as a table and as the run summary."""
        import wandb

        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        self.run.log({"final/metrics": wandb.Table(columns=["metric", "value"],
                                                   data=[[k, float(v)] for k, v in sorted(numbers.items())])})
        self.run.summary.update({f"final/{k}": v for k, v in numbers.items()})

    def close(self) -> None:
        self.run.finish()
