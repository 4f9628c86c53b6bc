"""Metrics a person can read: one JSON object per line, the same scalars in TensorBoard, and
optionally Weights & Biases.

Every long-running command (train-gym, pretrain, learner, train-classifier) writes through a
`MetricsWriter`, so a run folder always holds `metrics.jsonl` (for scripts and plots) and a
`tensorboard/` event directory (for `tensorboard --logdir`). The root config's `metrics.wandb`
section (`WandbConfig`: mode disabled | online | offline, project, entity) also sends the same
scalars to Weights & Biases; wandb is an optional dependency, imported only when a mode other
than "disabled" asks for it. An offline run writes `<run_dir>/wandb/offline-run-*/`, which
`wandb sync` uploads later.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robot_env.errors import ConfigError, UserError

WANDB_MODES = ("disabled", "online", "offline")


@dataclass
class WandbConfig:
    """Weights & Biases, beside JSONL and TensorBoard (which stay on)."""

    # "disabled" (default: nothing is imported or sent), "online" (needs `wandb login` or
    # WANDB_API_KEY), "offline" (written under <run_dir>/wandb/, uploaded later by `wandb sync`).
    mode: str = "disabled"
    project: str = "franka-rl"
    # The W&B user or team; "" = your default entity.
    entity: str = ""


@dataclass
class MetricsConfig:
    """Where every command's metrics go besides `metrics.jsonl` and `tensorboard/`."""

    wandb: WandbConfig = field(default_factory=WandbConfig)


def validate_metrics_config(cfg: MetricsConfig) -> None:
    """Raise ConfigError naming the first `metrics.*` value that cannot work."""
    if cfg.wandb.mode not in WANDB_MODES:
        raise ConfigError(f"metrics.wandb.mode must be one of {WANDB_MODES}, got '{cfg.wandb.mode}'")
    if cfg.wandb.mode != "disabled" and not cfg.wandb.project.strip():
        raise ConfigError("metrics.wandb.project must not be empty when metrics.wandb.mode is "
                          f"'{cfg.wandb.mode}' (e.g. metrics.wandb.project=franka-rl)")


class WandbMissingError(UserError, RuntimeError):
    """metrics.wandb.mode asks for wandb, which is not installed."""


def _start_wandb(wandb_cfg: WandbConfig, run_dir: Path, config: Mapping[str, Any] | None, job_type: str):
    """A wandb run for `wandb_cfg`, or None when disabled. Imported here only: wandb is optional."""
    if wandb_cfg.mode == "disabled":
        return None
    try:
        import wandb
    except ImportError:
        raise WandbMissingError(
            f"metrics.wandb.mode={wandb_cfg.mode} needs wandb, which is not installed: pip install wandb "
            "(or set metrics.wandb.mode=disabled; JSONL and TensorBoard are written either way)") from None
    return wandb.init(project=wandb_cfg.project, entity=wandb_cfg.entity or None, mode=wandb_cfg.mode,
                      dir=str(run_dir), job_type=job_type or None, config=dict(config or {}),
                      name=f"{job_type}-{run_dir.name}" if job_type else None)


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

    `wandb` (the config's `metrics.wandb`) also logs every row to a Weights & Biases run in
    `<run_dir>/wandb/`, with `config` as its run config and `job_type` naming the command.
    """

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True, wandb: WandbConfig | None = None,
                 config: Mapping[str, Any] | None = None, job_type: str = ""):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._file = self.path.open("a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        self._wandb = None
        if wandb is not None:
            try:
                self._wandb = _start_wandb(wandb, self.run_dir, config, job_type)
            except BaseException:
                self._close_local()
                raise

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
            # Non-finite values (None in the row) are left out, as in TensorBoard.
            self._wandb.log({k: v for k, v in row.items() if k not in ("step", "time") and v is not None},
                            step=int(step))
        return row

    def _close_local(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()

    def close(self) -> None:
        if self._file.closed:
            return
        self._close_local()
        if self._wandb is not None:
            self._wandb.finish()
            # finish() returns before wandb's service has written the run out; teardown waits for it,
            # so the offline files are complete (ready for `wandb sync`) when close() returns.
            teardown = getattr(sys.modules.get("wandb"), "teardown", None)
            if teardown is not None:
                teardown()

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
