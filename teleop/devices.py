"""One interface for every teleop device: a 6-D twist, a gripper command and buttons.

A device's `read(observation)` returns the operator's command for the coming step. Twists are in
the env's action units ([-1, 1] per axis, before the task's action scale) and in the env's action
frame; human devices get there through an `AxisMapping` from their own device frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from robot_env.errors import UserError
from teleop.config import TeleopConfig


class DeviceError(UserError, RuntimeError):
    """A teleop device is missing, unreadable or misconfigured."""


@dataclass(frozen=True)
class TeleopCommand:
    """What the operator asks for this step."""

    twist: np.ndarray = field(default_factory=lambda: np.zeros(6, np.float32))
    # -1 close, +1 open, None: no gripper command.
    gripper: float | None = None
    buttons: tuple[bool, ...] = ()
    # The operator marks the episode as a success / a failure (a key or a button).
    success: bool = False
    failure: bool = False
    # A device that is in control even while it asks for no motion (a scripted expert).
    engaged: bool = False

    @property
    def active(self) -> bool:
        """Whether the operator is driving the arm (overrides the policy)."""
        return self.engaged or bool(np.any(self.twist != 0.0)) or self.gripper is not None


IDLE = TeleopCommand()


@runtime_checkable
class TeleopDevice(Protocol):
    def read(self, observation: Mapping[str, np.ndarray] | None = None) -> TeleopCommand: ...

    def reset(self) -> None:
        """Called at the start of each episode."""

    def close(self) -> None: ...


def default_axis_mapping(action_frame: str) -> tuple[list[int], list[float]]:
    """Device frame (x right, y forward, z up; operator behind the robot facing base +x) to the
    env's action frame.

    Base frame: base x = forward, base y = left = -right, base z = up. End-effector frame of the
    peg-down nominal pose (a half turn about base x): ee x = base x, ee y = -base y, ee z = -base z.
    Both are proper rotations, so rotation axes map like translation axes."""
    if action_frame == "base":
        return [1, 0, 2, 4, 3, 5], [1.0, -1.0, 1.0, 1.0, -1.0, 1.0]
    if action_frame == "ee":
        return [1, 0, 2, 4, 3, 5], [1.0, 1.0, -1.0, 1.0, 1.0, -1.0]
    raise ValueError(f"no default axis mapping for action frame '{action_frame}'")


@dataclass(frozen=True)
class AxisMapping:
    """action[i] = signs[i] * gain_i * device[index[i]], clipped to [-1, 1]."""

    index: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    signs: tuple[float, ...] = (1.0,) * 6
    translation_gain: float = 1.0
    rotation_gain: float = 1.0

    def __post_init__(self):
        if sorted(self.index) != list(range(6)):
            raise ValueError(f"axis_map must be a permutation of 0..5, got {list(self.index)}")
        if len(self.signs) != 6:
            raise ValueError(f"axis_signs needs 6 entries, got {len(self.signs)}")

    @classmethod
    def from_config(cls, cfg: TeleopConfig, action_frame: str = "ee") -> AxisMapping:
        index, signs = default_axis_mapping(action_frame)
        if cfg.axis_map:
            index = list(cfg.axis_map)
        if cfg.axis_signs:
            signs = list(cfg.axis_signs)
        return cls(tuple(int(i) for i in index), tuple(float(s) for s in signs),
                   cfg.translation_gain, cfg.rotation_gain)

    def apply(self, device_twist: Sequence[float]) -> np.ndarray:
        device_twist = np.asarray(device_twist, np.float32)
        gains = np.array([self.translation_gain] * 3 + [self.rotation_gain] * 3, np.float32)
        mapped = np.asarray(self.signs, np.float32) * device_twist[list(self.index)] * gains
        return np.clip(mapped, -1.0, 1.0).astype(np.float32)


def apply_dead_zone(values: np.ndarray, dead_zone: float) -> np.ndarray:
    """Zero below the dead zone, rescaled above it so output still spans [-1, 1] continuously."""
    values = np.clip(np.asarray(values, np.float32), -1.0, 1.0)
    if dead_zone <= 0:
        return values
    magnitude = np.maximum(np.abs(values) - dead_zone, 0.0) / (1.0 - dead_zone)
    return (np.sign(values) * magnitude).astype(np.float32)


def roles_to_command(twist: np.ndarray, pressed_roles: set[str], buttons: tuple[bool, ...] = ()) -> TeleopCommand:
    """Turn the roles of the pressed buttons/keys into a command (close wins over open)."""
    gripper = -1.0 if "gripper_close" in pressed_roles else 1.0 if "gripper_open" in pressed_roles else None
    return TeleopCommand(
        twist=np.asarray(twist, np.float32), gripper=gripper, buttons=buttons,
        success="success" in pressed_roles, failure="failure" in pressed_roles,
    )


class NullDevice:
    """No operator: every command is idle (the policy always acts)."""

    def read(self, observation: Mapping[str, np.ndarray] | None = None) -> TeleopCommand:
        return IDLE

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass
