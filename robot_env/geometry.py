"""Pose helpers. Quaternions are scalar-last (x, y, z, w), as scipy uses."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


def pose6_to_pos_quat(pose6: np.ndarray | list[float]) -> tuple[np.ndarray, np.ndarray]:
    """(x, y, z, rx, ry, rz) with a base-frame rotation vector → (position, quaternion)."""
    pose6 = np.asarray(pose6, dtype=np.float64)
    if pose6.shape != (6,):
        raise ValueError(f"a pose has 6 numbers (xyz + rotation vector), got shape {pose6.shape}")
    return pose6[:3].copy(), Rotation.from_rotvec(pose6[3:]).as_quat()


def pos_quat_to_pose6(position: np.ndarray, quat: np.ndarray) -> np.ndarray:
    return np.concatenate([position, Rotation.from_quat(quat).as_rotvec()])


def relative_pose(
    frame_position: np.ndarray, frame_rotation: Rotation, position: np.ndarray, rotation: Rotation
) -> tuple[np.ndarray, np.ndarray]:
    """Pose of (position, rotation) in a frame: position in frame coordinates and the rotation
    vector of R_frame⁻¹·R, which is continuous near the frame's own orientation."""
    inverse = frame_rotation.inv()
    return inverse.apply(position - frame_position), (inverse * rotation).as_rotvec()


def yaw_rotation(yaw: float) -> Rotation:
    """A rotation about the base frame's vertical axis."""
    return Rotation.from_rotvec([0.0, 0.0, yaw])
