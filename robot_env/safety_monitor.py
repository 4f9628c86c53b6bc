"""Backend-side safety checks, as pure functions: the per-step motion limit and the soft
external-wrench limit with its back-off.

The env clips every target into the safety box; these run inside the robot backend, which alone
sees the measured pose and wrench at the moment a command goes out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation, Slerp


def limit_step(
    measured_position: np.ndarray,
    measured_quat: np.ndarray,
    target_position: np.ndarray,
    target_quat: np.ndarray,
    max_translation: float,
    max_rotation: float,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Pull a target towards the measured pose so that it lies at most `max_translation` metres
    and `max_rotation` radians away. Returns (position, quat, whether it was limited).

    The translation is shortened along its own direction and the rotation along the geodesic, so
    a limited command still points where the original one did.
    """
    offset = np.asarray(target_position, dtype=np.float64) - measured_position
    distance = float(np.linalg.norm(offset))
    limited = False
    position = np.asarray(target_position, dtype=np.float64)
    if distance > max_translation:
        position = measured_position + offset * (max_translation / distance)
        limited = True

    measured_rotation = Rotation.from_quat(measured_quat)
    target_rotation = Rotation.from_quat(target_quat)
    angle = float((measured_rotation.inv() * target_rotation).magnitude())
    quat = target_rotation.as_quat()
    if angle > max_rotation:
        path = Slerp([0.0, 1.0], Rotation.concatenate([measured_rotation, target_rotation]))
        quat = path([max_rotation / angle]).as_quat()[0]
        limited = True
    return position, quat, limited


@dataclass(frozen=True)
class WrenchCheck:
    """The verdict on one wrench reading."""

    exceeded: bool
    force_norm: float
    torque_norm: float

    def describe(self, max_force: float, max_torque: float) -> str:
        return (
            f"external force {self.force_norm:.1f} N (limit {max_force:.1f} N), "
            f"torque {self.torque_norm:.2f} Nm (limit {max_torque:.2f} Nm)"
        )


def check_wrench(wrench: np.ndarray, max_force: float, max_torque: float) -> WrenchCheck:
    """Whether the external wrench (force, torque) on the TCP exceeds the soft limits."""
    force_norm = float(np.linalg.norm(wrench[:3]))
    torque_norm = float(np.linalg.norm(wrench[3:6]))
    return WrenchCheck(force_norm > max_force or torque_norm > max_torque, force_norm, torque_norm)


def backoff_position(position: np.ndarray, wrench: np.ndarray, distance: float) -> np.ndarray:
    """Where to retreat to when the contact force is too high: `distance` metres along the
    external force, i.e. in the direction the environment pushes the TCP, away from the contact.
    With a negligible force (a torque-only trip) the retreat is straight up."""
    force = np.asarray(wrench[:3], dtype=np.float64)
    norm = float(np.linalg.norm(force))
    direction = force / norm if norm > 1e-6 else np.array([0.0, 0.0, 1.0])
    return np.asarray(position, dtype=np.float64) + distance * direction
