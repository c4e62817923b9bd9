"""Run output on the main rank: progress bar, a log line every N steps,
``metrics.jsonl`` (one JSON object per logged step / evaluation) and
TensorBoard event files under ``<run_dir>/tb``. Other ranks log nothing.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

# dense bf16 peak FLOP/s by device name fragment (for MFU)
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "V100": 125e12}


def peak_flops(device: torch.device, configured: float) -> float:
    if configured > 0:
        return configured
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_FLOPS.items():
        if key in name:
            return value
    return 0.0


def flops_per_token(num_params: int, num_layers: int, hidden: int, seq: int, causal: bool) -> float:
    """Training FLOPs per token: 6 * params + attention score/value matmuls (fwd + bwd)."""
    attn = 2 * 2 * num_layers * seq * hidden * (0.5 if causal else 1.0)
    return 6.0 * num_params + 3.0 * attn


class RunLogger:
    def __init__(self, run_dir: Path, *, enabled: bool, total_steps: int, start_step: int, every: int,
                 tensorboard: bool, progress_bar: bool, wandb=None):
        """``wandb``: a :class:`ptobj.recipes.engine.wandb_log.WandbRun` that gets every record too."""
        self.enabled = enabled
        self.every = max(1, every)
        self.bar = None
        self.tb = None
        self.jsonl = None
        self.wandb = wandb
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(run_dir / "metrics.jsonl", "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(run_dir / "tb"))
            except ImportError as exc:  # tensorboard missing: keep training
                print(f"[recipes] TensorBoard disabled: {exc}", file=sys.stderr)
        if progress_bar:
            from tqdm import tqdm

            # disable=None: no bar when stderr is not a terminal (CI logs stay readable)
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                            file=sys.stderr, disable=None)
        self._t = time.perf_counter()

    def info(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def record(self, step: int, values: dict[str, float], kind: str = "train") -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}" if kind == "train" else f"eval/{k}", v, step)
        if self.wandb is not None:
            self.wandb.log(step, values, kind)

    def step(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
        if self.jsonl is not None:
            self.jsonl.close()
        if self.wandb is not None:
            self.wandb.close()


def format_line(step: int, total: int, values: dict[str, float]) -> str:
    parts = [f"step {step}/{total}"]
    for k, v in values.items():
        if isinstance(v, float):
            parts.append(f"{k} {v:.4g}" if abs(v) < 1e4 else f"{k} {v:.3e}")
        else:
            parts.append(f"{k} {v}")
    return " | ".join(parts)
