"""Configuration of the real cell: the arm's address, controller limits and safety, the cameras.

Every value here is read by `robot_env.franky_backend.FrankyRobot` or `robot_env.cameras`; see
`docs/hardware.md` for how to choose them. Defaults are for a Franka (FR3 or Panda) with the
Franka Hand at the factory FCI address.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from robot_env.errors import ConfigError


@dataclass
class CameraDeviceConfig:
    """One physical camera, bound to an observation key (`wrist_1`, `wrist_2`)."""

    name: str = "wrist_1"
    # "opencv" (V4L2 / any OpenCV source, incl. a video file) or "realsense".
    kind: str = "opencv"
    # OpenCV: device index or path (e.g. "/dev/video0", or a video file for testing);
    # RealSense: serial number ("" takes the first RealSense found).
    device: str = "0"
    # Capture size and rate requested from the device.
    capture_width: int = 640
    capture_height: int = 480
    fps: int = 30
    # Crop in capture pixels (x0, y0, x1, y1) before resizing; empty keeps the full frame.
    crop: list[int] = field(default_factory=list)
    # `read()` never returns a frame older than this: it waits for a newer one instead.
    max_frame_age_s: float = 0.2
    # How long `read()` waits for a frame younger than max_frame_age_s before it raises
    # CameraError (a stalled device). Each wait delays that control step, nothing more.
    stall_timeout_s: float = 1.0
    # How long to wait for the first frame when the camera is opened.
    open_timeout_s: float = 5.0


@dataclass
class RealConfig:
    robot_ip: str = "172.16.0.2"
    # Require a real-time kernel (libfranka's RealtimeConfig.Enforce). Set false only to talk to
    # franky-sim or to try things on a non-RT machine: control over the network will jitter.
    realtime: bool = True
    # Fraction of the robot's velocity/acceleration/jerk limits used by blocking moves (resets).
    relative_dynamics_factor: float = 0.1
    # Joint configuration of `joint_reset` (rad). Default: the usual Franka "ready" pose.
    home_joints: list[float] = field(
        default_factory=lambda: [0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4]
    )
    # TCP offset (m) from the Franka Hand's nominal end-effector frame, in that frame (z points out
    # of the fingers). The peg tip is a good TCP: rotations then pivot about it. Zero keeps the hand's.
    tcp_offset_m: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    # Mass (kg) of what the hand holds, so the external-wrench estimate is not biased by it.
    load_mass_kg: float = 0.0
    # libfranka's collision reflex: above these joint torques (Nm) / Cartesian forces-torques
    # (N, Nm) the arm stops itself (a reflex error, cleared by `recover`).
    collision_torque_thresholds_nm: list[float] = field(default_factory=lambda: [25.0] * 7)
    collision_force_thresholds_n: list[float] = field(
        default_factory=lambda: [40.0, 40.0, 40.0, 30.0, 30.0, 30.0]
    )
    # Per-step limit on how far a compliant target may lie from the measured pose. The env's
    # action scale should stay below these; they catch a runaway command, not normal actions.
    max_step_translation_m: float = 0.03
    max_step_rotation_rad: float = 0.2
    # Soft external-wrench limit, below the collision reflex: the backend backs off and ends the
    # episode (RobotError) when the estimated force or torque on the TCP exceeds it.
    max_external_force_n: float = 25.0
    max_external_torque_nm: float = 4.0
    # How far to retreat along the measured external force when the soft limit trips.
    force_backoff_m: float = 0.01
    # After a fault is cleared, lift this far (base +z, capped at the safety box's top) before
    # handing back control, so a stuck peg is pulled out along its axis.
    recovery_lift_m: float = 0.02
    # A blocking move counts as arrived within these tolerances (else RobotError).
    arrival_tolerance_m: float = 0.003
    arrival_tolerance_rad: float = 0.03
    joint_arrival_tolerance_rad: float = 0.05
    # How long `recover` keeps trying to reconnect after the network link dropped.
    reconnect_timeout_s: float = 10.0
    # How long to wait for the arm (and the hand) to answer a connection. libfranka's own TCP
    # timeout is a minute when the address does not answer at all (wrong IP, cable out).
    connect_timeout_s: float = 10.0
    # The Franka Hand. With `gripper: false` (no hand, or another gripper) `set_gripper` does
    # nothing and the gripper width reads 0.
    gripper: bool = True
    gripper_speed_mps: float = 0.1
    gripper_force_n: float = 40.0
    gripper_open_width_m: float = 0.08
    cameras: list[CameraDeviceConfig] = field(
        default_factory=lambda: [
            CameraDeviceConfig(name="wrist_1", kind="realsense", device=""),
            CameraDeviceConfig(name="wrist_2", kind="realsense", device=""),
        ]
    )


# Matches robot_env.cameras' registry, which needs OpenCV to import; the config must not.
CAMERA_KINDS = ("opencv", "realsense")


class RealConfigError(ConfigError):
    """A `real.*` config value the backend cannot use."""


def _validate_camera(key: str, camera: CameraDeviceConfig) -> None:
    checks = [
        (bool(camera.name), f"{key}.name must not be empty"),
        (camera.kind in CAMERA_KINDS, f"{key}.kind must be one of {CAMERA_KINDS}, got '{camera.kind}'"),
        (camera.capture_width >= 1, f"{key}.capture_width must be >= 1, got {camera.capture_width}"),
        (camera.capture_height >= 1, f"{key}.capture_height must be >= 1, got {camera.capture_height}"),
        (camera.fps >= 1, f"{key}.fps must be >= 1, got {camera.fps}"),
        (camera.max_frame_age_s > 0, f"{key}.max_frame_age_s must be > 0, got {camera.max_frame_age_s}"),
        (camera.stall_timeout_s > 0, f"{key}.stall_timeout_s must be > 0, got {camera.stall_timeout_s}"),
        (camera.open_timeout_s > 0, f"{key}.open_timeout_s must be > 0, got {camera.open_timeout_s}"),
    ]
    # Only the crop's shape and order are checked here; whether it fits the frames the device
    # delivers is known once the camera is open (robot_env.cameras).
    if camera.crop:
        x0, y0, x1, y1 = (list(camera.crop) + [0, 0, 0, 0])[:4]
        checks.append((len(camera.crop) == 4 and 0 <= x0 < x1 and 0 <= y0 < y1,
                       f"{key}.crop must be [x0, y0, x1, y1] with 0 <= x0 < x1 and 0 <= y0 < y1, "
                       f"got {list(camera.crop)}"))
    for ok, message in checks:
        if not ok:
            raise RealConfigError(message)


def validate_real_config(cfg: RealConfig) -> None:
    """Raise RealConfigError naming the first `real.*` value that cannot work."""
    lengths = {
        "home_joints": (cfg.home_joints, 7),
        "tcp_offset_m": (cfg.tcp_offset_m, 3),
        "collision_torque_thresholds_nm": (cfg.collision_torque_thresholds_nm, 7),
        "collision_force_thresholds_n": (cfg.collision_force_thresholds_n, 6),
    }
    for key, (values, length) in lengths.items():
        if len(values) != length:
            raise RealConfigError(f"real.{key} must have {length} values, got {len(values)}")
    positive = {
        "relative_dynamics_factor": cfg.relative_dynamics_factor,
        "max_step_translation_m": cfg.max_step_translation_m,
        "max_step_rotation_rad": cfg.max_step_rotation_rad,
        "max_external_force_n": cfg.max_external_force_n,
        "max_external_torque_nm": cfg.max_external_torque_nm,
        "arrival_tolerance_m": cfg.arrival_tolerance_m,
        "arrival_tolerance_rad": cfg.arrival_tolerance_rad,
        "joint_arrival_tolerance_rad": cfg.joint_arrival_tolerance_rad,
        "reconnect_timeout_s": cfg.reconnect_timeout_s,
        "connect_timeout_s": cfg.connect_timeout_s,
        "gripper_speed_mps": cfg.gripper_speed_mps,
        "gripper_force_n": cfg.gripper_force_n,
    }
    for key, value in positive.items():
        if not value > 0:
            raise RealConfigError(f"real.{key} must be positive, got {value}")
    if cfg.relative_dynamics_factor > 1:
        raise RealConfigError(
            f"real.relative_dynamics_factor is a fraction of the robot's limits (0, 1], got {cfg.relative_dynamics_factor}"
        )
    for key in ("force_backoff_m", "recovery_lift_m", "load_mass_kg"):
        if getattr(cfg, key) < 0:
            raise RealConfigError(f"real.{key} must be ≥ 0, got {getattr(cfg, key)}")
    names = [camera.name for camera in cfg.cameras]
    for index, camera in enumerate(cfg.cameras):
        _validate_camera(f"real.cameras[{index}]", camera)
        if names.count(camera.name) > 1:
            raise RealConfigError(f"real.cameras[{index}].name '{camera.name}' is used by more than one camera")

