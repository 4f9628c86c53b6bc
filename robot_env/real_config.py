"""Configuration of the real cell: the arm's address and limits, and the camera devices."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CameraDeviceConfig:
    """One physical camera, bound to an observation key (`wrist_1`, `wrist_2`)."""

    name: str = "wrist_1"
    # "opencv" (V4L2 / any OpenCV source, incl. a video file) or "realsense".
    kind: str = "opencv"
    # OpenCV: device index or path (e.g. "/dev/video0"); RealSense: serial number.
    device: str = "0"
    # Capture size and rate requested from the device.
    capture_width: int = 640
    capture_height: int = 480
    fps: int = 30
    # Crop in capture pixels (x0, y0, x1, y1) before resizing; empty keeps the full frame.
    crop: list[int] = field(default_factory=list)


@dataclass
class RealConfig:
    robot_ip: str = "172.16.0.2"
    # Fraction of the robot's velocity/acceleration/jerk limits used by blocking moves.
    relative_dynamics_factor: float = 0.1
    cameras: list[CameraDeviceConfig] = field(
        default_factory=lambda: [
            CameraDeviceConfig(name="wrist_1", kind="realsense", device=""),
            CameraDeviceConfig(name="wrist_2", kind="realsense", device=""),
        ]
    )
