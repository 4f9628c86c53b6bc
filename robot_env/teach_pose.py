"""Teaching the task's poses by hand-guiding: read the TCP pose when the operator says so, suggest a
safety box around the poses, and write them into a config file's `task:` section in place.

Poses are 6 numbers, the config's convention (robot_env/geometry.py): position (m) in the base
frame, then the base-frame rotation vector (rad).

The operator's "now" comes as lines of text (Enter on a terminal), read on a thread so the live
pose keeps updating; a test drives the same code through a pipe.
"""

from __future__ import annotations

import os
import queue
import re
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

import numpy as np
import yaml

from robot_env.errors import UserError
from robot_env.geometry import pos_quat_to_pose6
from robot_env.interfaces import Robot

# Rounding of written poses: 0.01 mm and 1e-5 rad are far below what hand-guiding reaches.
_DECIMALS = 5
_POLL_S = 0.1
_ABORT_WORDS = ("q", "quit", "abort")


class TeachAborted(UserError, RuntimeError):
    """The operator aborted, or the input ended before every pose was taught; nothing was written."""


def read_pose6(robot: Robot) -> np.ndarray:
    state = robot.read_state()
    return pos_quat_to_pose6(state.tcp_position, state.tcp_quat)


def format_pose6(pose6: np.ndarray) -> str:
    x, y, z, rx, ry, rz = (float(value) for value in pose6)
    return f"xyz ({x:+.4f}, {y:+.4f}, {z:+.4f}) m  rotvec ({rx:+.3f}, {ry:+.3f}, {rz:+.3f}) rad"


def pose_list(pose6: np.ndarray) -> list[float]:
    return [round(float(value), _DECIMALS) for value in pose6]


class LineReader:
    """Lines from a stream, collected on a daemon thread; `None` marks the end of input."""

    def __init__(self, stream: TextIO):
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), name="teach-pose-input", daemon=True).start()

    def _pump(self, stream: TextIO) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\r\n"))
        self._lines.put(None)

    def poll(self, timeout_s: float) -> str | None | bool:
        """The next line, None at end of input, or False when nothing came within `timeout_s`."""
        try:
            return self._lines.get(timeout=timeout_s)
        except queue.Empty:
            return False


def wait_and_read_pose(robot: Robot, lines: LineReader, what: str, show: Callable[[str], None]) -> np.ndarray:
    """Show the live TCP pose until a line arrives, then return the pose read at that moment."""
    while True:
        show(f"{what}: {format_pose6(read_pose6(robot))}")
        line = lines.poll(_POLL_S)
        if line is False:
            continue
        if line is None:
            raise TeachAborted(f"the input ended before the {what} was taught; nothing was written")
        if line.strip().lower() in _ABORT_WORDS:
            raise TeachAborted("aborted; nothing was written")
        return read_pose6(robot)


def suggest_bounds(
    target_pose: Sequence[float],
    reset_pose: Sequence[float],
    reset_position_noise: Sequence[float],
    side_margin_m: float = 0.03,
    floor_below_target_m: float = 0.01,
    headroom_above_reset_m: float = 0.06,
) -> tuple[list[float], list[float]]:
    """A position box (low, high) around the taught poses: the reset randomisation plus
    `side_margin_m` on each side, a floor just below full insertion (the peg can seat, not dig
    into the fixture), and room above the reset pose for recovery lifts."""
    target = np.asarray(target_pose[:3], dtype=np.float64)
    reset = np.asarray(reset_pose[:3], dtype=np.float64)
    noise = np.asarray(reset_position_noise, dtype=np.float64)
    low = np.minimum(target, reset - noise) - side_margin_m
    high = np.maximum(target, reset + noise) + side_margin_m
    low[2] = target[2] - floor_below_target_m
    high[2] = max(reset[2] + noise[2], target[2]) + headroom_above_reset_m
    return [round(float(v), 4) for v in low], [round(float(v), 4) for v in high]


def _flow(values: Sequence[float]) -> str:
    # Positional notation: YAML 1.1 (PyYAML) reads "1e-05" as a string.
    return "[" + ", ".join(np.format_float_positional(float(value), trim="0") for value in values) + "]"


def update_task_section(text: str, values: dict[str, Sequence[float]]) -> str:
    """Set `task.<key>` for each key in YAML `text`, keeping every other line (comments included).
    A key's old value (inline, or a block list under it) is replaced; a missing key is added at
    the end of the `task:` section; a missing section is appended."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"^task:\s*(#.*)?$", line)), None)
    if start is None:
        body = [f"  {key}: {_flow(value)}" for key, value in values.items()]
        prefix = text if not text or text.endswith("\n") else text + "\n"
        return prefix + "task:\n" + "\n".join(body) + "\n"
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith((" ", "\t", "#"))):
        end += 1
    section = lines[start + 1 : end]
    indents = [len(line) - len(line.lstrip()) for line in section if line.strip() and not line.lstrip().startswith("#")]
    indent = " " * (min(indents) if indents else 2)
    remaining = dict(values)
    updated: list[str] = []
    skipping_block_under = None
    for line in section:
        stripped = line.lstrip()
        depth = len(line) - len(stripped)
        if skipping_block_under is not None:
            if stripped and not stripped.startswith("#") and (depth > skipping_block_under or stripped.startswith("- ")):
                continue  # an item of the old block list
            skipping_block_under = None
        match = re.match(r"^(\w+):(.*)$", stripped) if depth == len(indent) else None
        if match and match.group(1) in remaining:
            key = match.group(1)
            old_value, _, comment = match.group(2).partition("#")
            tail = f"  #{comment.rstrip()}" if comment else ""
            updated.append(f"{indent}{key}: {_flow(remaining.pop(key))}{tail}")
            if not old_value.strip():
                skipping_block_under = depth
            continue
        updated.append(line)
    # New keys go after the section's last non-blank line, before the blank lines that end it.
    insert_at = len(updated)
    while insert_at > 0 and not updated[insert_at - 1].strip():
        insert_at -= 1
    updated[insert_at:insert_at] = [f"{indent}{key}: {_flow(value)}" for key, value in remaining.items()]
    result = lines[: start + 1] + updated + lines[end:]
    return "\n".join(result) + "\n"


def write_task_values(source: Path, out: Path, values: dict[str, Sequence[float]]) -> None:
    """Write `source`'s text with the task values set to `out`, atomically, and check that every
    value reads back as written (else raise ValueError and leave `out` untouched)."""
    text = update_task_section(source.read_text(), values)
    task = (yaml.safe_load(text) or {}).get("task") or {}
    for key, value in values.items():
        written = task.get(key)
        if not (isinstance(written, list) and all(isinstance(v, (int, float)) for v in written) and np.allclose(written, value)):
            raise ValueError(f"could not set task.{key} in {source} without breaking its layout; set it by hand")
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
