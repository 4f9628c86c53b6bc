"""The safety box: every Cartesian target is clipped into it before it reaches the robot.

Positions are clipped per axis in the base frame. Orientations are clipped as the rotation vector
of R_nominal⁻¹·R, the rotation away from the task's nominal orientation. That vector is continuous
around the nominal pose, so the ±π wrap that breaks Euler-angle clipping for a peg pointing down
(roll ≈ π) cannot occur: the bounds are small compared to π and clipping maps any rotation,
however far off, to one inside them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from robot_env.config import TaskConfig

_ROUND_TRIP_TOLERANCE = 1e-9


@dataclass(frozen=True)
class SafetyBox:
    position_low: np.ndarray
    position_high: np.ndarray
    nominal_rotation: Rotation
    rotation_low: np.ndarray
    rotation_high: np.ndarray

    @classmethod
    def from_task(cls, task: TaskConfig) -> SafetyBox:
        position_low = np.asarray(task.position_low, dtype=np.float64)
        position_high = np.asarray(task.position_high, dtype=np.float64)
        rotation_low = np.asarray(task.rotation_low, dtype=np.float64)
        rotation_high = np.asarray(task.rotation_high, dtype=np.float64)
        if np.any(position_low > position_high) or np.any(rotation_low > rotation_high):
            raise ValueError("task safety box: every *_low must be ≤ the matching *_high")
        if np.any(np.abs(rotation_low) >= np.pi / 2) or np.any(np.abs(rotation_high) >= np.pi / 2):
            raise ValueError("task safety box: rotation bounds must lie within ±π/2 of the nominal orientation")
        return cls(
            position_low=position_low,
            position_high=position_high,
            nominal_rotation=Rotation.from_rotvec(task.target_pose[3:]),
            rotation_low=rotation_low,
            rotation_high=rotation_high,
        )

    def relative_rotvec(self, quat: np.ndarray) -> np.ndarray:
        return (self.nominal_rotation.inv() * Rotation.from_quat(quat)).as_rotvec()

    def clip(self, position: np.ndarray, quat: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """Clip a target into the box; returns (position, quat, whether anything was clipped)."""
        clipped_position = np.clip(position, self.position_low, self.position_high)
        rotvec = self.relative_rotvec(quat)
        # The quaternion → rotation-vector round trip is exact only to ~1e-15: a target on the
        # boundary must not count as outside it.
        rotation_outside = np.any(rotvec < self.rotation_low - _ROUND_TRIP_TOLERANCE) or np.any(
            rotvec > self.rotation_high + _ROUND_TRIP_TOLERANCE
        )
        if rotation_outside:
            clipped_rotvec = np.clip(rotvec, self.rotation_low, self.rotation_high)
            quat = (self.nominal_rotation * Rotation.from_rotvec(clipped_rotvec)).as_quat()
        was_clipped = bool(np.any(clipped_position != position) or rotation_outside)
        return clipped_position, np.asarray(quat, dtype=np.float64), was_clipped

    def contains(self, position: np.ndarray, quat: np.ndarray, tolerance: float = 1e-9) -> bool:
        rotvec = self.relative_rotvec(quat)
        return bool(
            np.all(position >= self.position_low - tolerance)
            and np.all(position <= self.position_high + tolerance)
            and np.all(rotvec >= self.rotation_low - tolerance)
            and np.all(rotvec <= self.rotation_high + tolerance)
        )
