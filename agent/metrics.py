"""Metrics a person can read: one JSON object per line, the same scalars in TensorBoard, and
optionally Weights & Biases.

Every long-running command (train-gym, pretrain, learner, train-classifier) writes through a
`MetricsWriter`, so a run folder always holds `metrics.jsonl` (for scripts and plots) and a
`tensorboard/` event directory (for `tensorboard --logdir`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def _scalar(value: Any) -> float | int | None:
    """A plain Python number for a scalar-like value (numpy/JAX 0-d arrays included), else None."""
    try:
        array = np.asarray(value)
    except Exception:
        return None
    if array.ndim != 0 or not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
        return None
    item = array.item()
    return int(item) if isinstance(item, (bool, np.bool_)) else item


class MetricsWriter:
    """Append scalars to `<run_dir>/metrics.jsonl` and to TensorBoard under `<run_dir>/tensorboard`.

    `log(step, {"critic_loss": ..., ...}, prefix="train")` writes one line
    `{"step": step, "time": unix_s, "train/critic_loss": ...}`. Non-finite values are written as
    null in JSON (JSON has no NaN) and skipped in TensorBoard. Lines are flushed as they are
    written, so a crash loses nothing already logged.
    """

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True,
                 wandb_project: str | None = None, config: Mapping[str, Any] | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._file = self.path.open("a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        self._wandb = None
        if wandb_project:
            try:
                import wandb
            except ImportError:
                raise RuntimeError(
                    "wandb_project is set but wandb is not installed: pip install wandb, "
                    "or leave the project empty to log to JSONL and TensorBoard only"
                ) from None
            self._wandb = wandb.init(project=wandb_project, dir=str(self.run_dir),
                                     config=dict(config or {}))

    def log(self, step: int, values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        row: dict[str, Any] = {"step": int(step), "time": time.time()}
        for name, value in values.items():
            number = _scalar(value)
            if number is None:
                continue
            key = f"{prefix}/{name}" if prefix else name
            finite = not isinstance(number, float) or math.isfinite(number)
            row[key] = number if finite else None
            if self._tb is not None and finite:
                self._tb.add_scalar(key, number, int(step))
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k not in ("step", "time")}, step=int(step))
        return row

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a `metrics.jsonl`, skipping a last line cut short by a crash."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
