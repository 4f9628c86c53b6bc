"""The two hardware-facing interfaces the env is written against.

`FrankaEnv` sees the world only through a `Robot`, a set of `Camera`s and a `Clock`. The franky
backend (real arm) and the MuJoCo twin in `sim/` both implement them, so everything above the env
(wrappers, actor, learner) runs unchanged on either.

Frames and units: positions in metres in the robot base frame, orientations as unit quaternions in
scalar-last order (x, y, z, w: scipy's convention), twists as (linear m/s, angular rad/s) in the base
frame, wrenches as (force N, torque Nm) exerted by the environment on the end effector, expressed
in the base frame. Timestamps are seconds on the `Clock` of the same world.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from robot_env.errors import UserError


@dataclass(frozen=True)
class RobotState:
    """One timestamped reading of the arm."""

    timestamp: float
    tcp_position: np.ndarray  # (3,)
    tcp_quat: np.ndarray  # (4,) x, y, z, w
    tcp_twist: np.ndarray  # (6,) linear, angular; base frame
    wrench: np.ndarray  # (6,) external force, torque on the end effector; base frame
    joint_positions: np.ndarray  # (7,)
    joint_velocities: np.ndarray  # (7,)
    gripper_width: float  # metres between the fingers


@dataclass
class ImpedanceParams:
    """Cartesian impedance gains.

    Damping is given as a ratio of critical damping (`2·sqrt(k)` per axis for unit mass, franky's
    and the Franka examples' convention), so one number stays right when the stiffness changes.
    `max_reference_offset_*` bounds how far the reference may run ahead of the measured pose:
    with stiffness k this caps the static contact force at k·offset, which is what keeps the
    compliant controller safe in contact.
    """

    translational_stiffness: float  # N/m
    rotational_stiffness: float  # Nm/rad
    damping_ratio: float = 1.0
    max_reference_offset_m: float = 0.02
    max_reference_offset_rad: float = 0.15


class RobotError(UserError, RuntimeError):
    """A recoverable robot fault (reflex, communication, limit). Call `Robot.recover()`."""


class RecoveryRefused(RobotError):
    """The arm refused automatic recovery: a person has to act (release the user stop, clear the
    error in Desk). Retrying from software cannot help."""


@runtime_checkable
class Robot(Protocol):
    """An arm with a compliant Cartesian controller and a parallel gripper."""

    def read_state(self) -> RobotState: ...

    def set_target(self, position: np.ndarray, quat: np.ndarray) -> None:
        """Set the compliant controller's Cartesian reference; returns at once."""

    def set_impedance(self, params: ImpedanceParams) -> None: ...

    def move_to(self, position: np.ndarray, quat: np.ndarray, timeout_s: float = 10.0) -> None:
        """Blocking precise move (for resets); raises RobotError if it does not arrive."""

    def joint_reset(self) -> None:
        """Blocking joint-space move to the home configuration."""

    def set_gripper(self, closed: bool) -> None:
        """Command the gripper closed (grasp) or open; returns at once."""

    def recover(self) -> None:
        """Clear a fault so that commands are accepted again; raises RecoveryRefused when a person
        has to act, RobotError when the clearing motion itself failed."""

    def close(self) -> None: ...


@runtime_checkable
class Camera(Protocol):
    """A camera whose newest frame can be read at once."""

    name: str

    def read(self) -> tuple[np.ndarray, float]:
        """Return the newest `(rgb uint8 (H, W, 3), timestamp)`; raise CameraError if stale."""

    def close(self) -> None: ...


class CameraError(UserError, RuntimeError):
    """A camera is stale, gone or misconfigured."""


@runtime_checkable
class Clock(Protocol):
    """The time base of a world.

    The env keeps its control deadlines on this clock. On hardware it is the host's monotonic
    clock; in the twin, `sleep_until` advances the physics to the deadline, so simulated time moves
    exactly one control period per step and no wall time is spent unless the twin runs in real time.
    """

    def now(self) -> float: ...

    def sleep_until(self, deadline: float) -> None: ...


class MonotonicClock:
    """Host monotonic time; `sleep_until` sleeps, then spins the last half millisecond."""

    def now(self) -> float:
        return time.monotonic()

    def sleep_until(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining > 5e-4:
            time.sleep(remaining - 5e-4)
        while time.monotonic() < deadline:
            pass
