"""Real cameras: OpenCV (V4L2 devices, or any source OpenCV opens, such as a video file) and
Intel RealSense (pyrealsense2, imported only when a RealSense camera is built).

Each camera runs a capture thread that keeps only the newest frame and the host monotonic time it
arrived, so `read()` never serves a frame from a queue. `read()` crops and resizes that frame per
config. It never returns a frame older than `max_frame_age_s`: when the newest one is older (a
capture thread that a loaded machine did not schedule, a USB hiccup) it waits for the next one,
and raises `CameraError` only when none arrives within `stall_timeout_s` (a stalled device) or
when the capture thread has stopped (an unplugged device, a video file that ended).
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from robot_env.interfaces import CameraError
from robot_env.real_config import CameraDeviceConfig

# Consecutive failed grabs after which a device counts as gone.
_MAX_FAILED_GRABS = 10
# How long close() waits for a grab in progress to return (a loaded machine can take seconds).
CLOSE_TIMEOUT_S = 10.0


def crop_and_resize(frame: np.ndarray, crop: Sequence[int], height: int, width: int) -> np.ndarray:
    """Crop (x0, y0, x1, y1) in frame pixels (empty: no crop), then resize to (height, width)."""
    if len(crop):
        x0, y0, x1, y1 = (int(value) for value in crop)
        frame = frame[y0:y1, x0:x1]
    if frame.shape[:2] != (height, width):
        frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(frame)


def _check_crop(name: str, crop: Sequence[int], frame_height: int, frame_width: int) -> None:
    if not len(crop):
        return
    if len(crop) != 4:
        raise CameraError(f"camera '{name}': crop must be [x0, y0, x1, y1], got {list(crop)}")
    x0, y0, x1, y1 = crop
    if not (0 <= x0 < x1 <= frame_width and 0 <= y0 < y1 <= frame_height):
        raise CameraError(
            f"camera '{name}': crop {list(crop)} does not fit the {frame_width}×{frame_height} frames "
            "the device delivers; fix real.cameras[].crop"
        )


class CaptureThreadCamera(ABC):
    """A `Camera` whose subclass supplies `_open`, `_grab` (an RGB frame or None) and `_release`."""

    def __init__(self, cfg: CameraDeviceConfig, height: int, width: int):
        self.name = cfg.name
        self.cfg = cfg
        self.height = height
        self.width = width
        self._lock = threading.Lock()
        self._new_frame = threading.Condition(self._lock)
        self._frame: np.ndarray | None = None
        self._stamp = 0.0
        self._frames_captured = 0
        self._failure: str | None = None
        self._stop = threading.Event()
        self._release_lock = threading.Lock()
        self._released = False
        self._open()
        self._thread = threading.Thread(target=self._capture_loop, name=f"camera-{self.name}", daemon=True)
        self._thread.start()
        self._wait_for_first_frame()

    # Subclass hooks ----------------------------------------------------------------------------

    @abstractmethod
    def _open(self) -> None:
        """Open the device; raise CameraError if it cannot be opened."""

    @abstractmethod
    def _grab(self) -> np.ndarray | None:
        """Block until the next frame; return it as RGB uint8, or None on a failed grab."""

    @abstractmethod
    def _release(self) -> None:
        """Free the device."""

    def _source(self) -> str:
        return self.cfg.device

    # Capture -----------------------------------------------------------------------------------

    def _capture_loop(self) -> None:
        try:
            self._capture_until_stopped()
        finally:
            with self._lock:
                self._new_frame.notify_all()  # a read waiting for a frame re-checks now
            self._release_once()  # here, after the last grab: never under a grab in progress

    def _release_once(self) -> None:
        with self._release_lock:
            if self._released:
                return
            self._released = True
        try:
            self._release()
        except Exception:
            pass  # the device may already be gone; nothing left to free

    def _capture_until_stopped(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                frame = self._grab()
            except Exception as exc:  # a driver error ends the stream like a vanished device
                frame = None
                failures = _MAX_FAILED_GRABS
                reason = str(exc)
            else:
                reason = "it stopped delivering frames"
            if frame is None:
                failures += 1
                if failures >= _MAX_FAILED_GRABS:
                    with self._lock:
                        self._failure = reason
                    return
                time.sleep(0.005)
                continue
            failures = 0
            stamp = time.monotonic()
            with self._lock:
                self._frame = frame
                self._stamp = stamp
                self._frames_captured += 1
                self._new_frame.notify_all()

    def _wait_for_first_frame(self) -> None:
        deadline = time.monotonic() + self.cfg.open_timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                frame, failure = self._frame, self._failure
            if frame is not None:
                try:
                    _check_crop(self.name, self.cfg.crop, frame.shape[0], frame.shape[1])
                except CameraError:
                    self.close()
                    raise
                return
            if failure is not None:
                break
            time.sleep(0.01)
        self.close()
        raise CameraError(
            f"camera '{self.name}' ({self.cfg.kind} {self._source()!r}) gave no frame within "
            f"{self.cfg.open_timeout_s:.1f} s: check the cable and that no other program uses it"
        )

    # Camera API --------------------------------------------------------------------------------

    @property
    def frames_captured(self) -> int:
        with self._lock:
            return self._frames_captured

    def read(self) -> tuple[np.ndarray, float]:
        """The newest frame (cropped, resized) and the monotonic time it arrived. A newest frame
        older than `max_frame_age_s` is not used: read waits for the next one, up to
        `stall_timeout_s`, so a moment's delay costs the caller a late step, not the run."""
        stall_deadline = None
        with self._lock:
            while True:
                frame, stamp, failure = self._frame, self._stamp, self._failure
                if failure is not None:
                    raise CameraError(
                        f"camera '{self.name}' ({self.cfg.kind} {self._source()!r}) is gone: {failure}. "
                        "Check the cable (use a powered USB 3 port), then restart"
                    )
                if frame is None:
                    raise CameraError(f"camera '{self.name}' has no frame yet")
                now = time.monotonic()
                if now - stamp <= self.cfg.max_frame_age_s:
                    break
                if stall_deadline is None:
                    stall_deadline = now + self.cfg.stall_timeout_s
                if now >= stall_deadline or self._stop.is_set():
                    raise CameraError(
                        f"camera '{self.name}' ({self.cfg.kind} {self._source()!r}): no new frame within "
                        f"{self.cfg.stall_timeout_s:.2f} s (stall_timeout_s); the newest is {now - stamp:.2f} s "
                        f"old and frames older than {self.cfg.max_frame_age_s:.2f} s (max_frame_age_s) are "
                        "not used: the device stalled"
                    )
                self._new_frame.wait(stall_deadline - now)
        return crop_and_resize(frame, self.cfg.crop, self.height, self.width), stamp

    def close(self) -> None:
        """Stop capturing and free the device. The capture thread frees it itself once its grab in
        progress returns (freeing a capture under a read crashes OpenCV); a device whose read never
        returns is left to that thread, which frees it when the read ends."""
        self._stop.set()
        thread = getattr(self, "_thread", None)
        if thread is None:
            self._release_once()
        elif thread.is_alive() and thread is not threading.current_thread():
            thread.join(CLOSE_TIMEOUT_S)


class OpenCVCamera(CaptureThreadCamera):
    """A V4L2 device (index or /dev/videoN) or anything else OpenCV opens.

    A video file is paced at `fps` (a device paces itself), so a file stands in for a camera.
    """

    def _open(self) -> None:
        device = self.cfg.device.strip()
        self._is_file = Path(device).is_file() and not device.startswith("/dev/")
        if device.isdigit():
            self._capture = cv2.VideoCapture(int(device), cv2.CAP_V4L2)
        elif device.startswith("/dev/"):
            self._capture = cv2.VideoCapture(device, cv2.CAP_V4L2)
        else:
            self._capture = cv2.VideoCapture(device)
        if not self._capture.isOpened():
            raise CameraError(
                f"camera '{self.name}': OpenCV cannot open {device!r}. List devices with "
                "`v4l2-ctl --list-devices`, check permissions (the video group) and real.cameras[].device"
            )
        if not self._is_file:
            self._capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.cfg.capture_width)
            self._capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.capture_height)
            self._capture.set(cv2.CAP_PROP_FPS, self.cfg.fps)
            # Keep the driver's queue short so the newest frame is fresh.
            self._capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self._next_due = time.monotonic()

    def _grab(self) -> np.ndarray | None:
        if self._is_file:
            delay = self._next_due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._next_due = max(self._next_due + 1.0 / self.cfg.fps, time.monotonic() - 1.0)
        ok, frame = self._capture.read()
        if not ok or frame is None:
            if self._is_file:
                raise EOFError("the video file ended")
            return None
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def _release(self) -> None:
        self._capture.release()


class RealSenseCamera(CaptureThreadCamera):
    """An Intel RealSense colour stream, chosen by serial number ("" takes the first found)."""

    def _open(self) -> None:
        try:
            import pyrealsense2 as rs
        except ImportError:
            raise CameraError(
                f"camera '{self.name}' is a RealSense but pyrealsense2 is not installed: "
                "pip install pyrealsense2 (x86_64), or build librealsense with Python bindings"
            ) from None
        self._rs: Any = rs
        self._pipeline = rs.pipeline()
        config = rs.config()
        if self.cfg.device:
            config.enable_device(self.cfg.device)
        config.enable_stream(
            rs.stream.color, self.cfg.capture_width, self.cfg.capture_height, rs.format.rgb8, self.cfg.fps
        )
        try:
            self._pipeline.start(config)
        except RuntimeError as exc:
            serial = self.cfg.device or "any"
            raise CameraError(
                f"camera '{self.name}': cannot start RealSense (serial {serial}): {exc}. "
                "List devices with `rs-enumerate-devices`; check the serial and the USB 3 link"
            ) from None

    def _grab(self) -> np.ndarray | None:
        # try_wait: a frame that is late is one failed grab, and read() decides when late is stalled.
        # (wait_for_frames raises on its timeout, which would end the stream on the first hiccup.)
        arrived, frames = self._pipeline.try_wait_for_frames(int(max(self.cfg.stall_timeout_s, 0.1) * 1000))
        if not arrived:
            return None
        color = frames.get_color_frame()
        if not color:
            return None
        return np.asanyarray(color.get_data()).copy()

    def _release(self) -> None:
        self._pipeline.stop()


_CAMERA_KINDS = {"opencv": OpenCVCamera, "realsense": RealSenseCamera}


def open_camera(cfg: CameraDeviceConfig, height: int, width: int) -> CaptureThreadCamera:
    kind = _CAMERA_KINDS.get(cfg.kind)
    if kind is None:
        raise CameraError(f"camera '{cfg.name}': kind must be one of {sorted(_CAMERA_KINDS)}, got '{cfg.kind}'")
    return kind(cfg, height, width)


def open_cameras(
    devices: Sequence[CameraDeviceConfig], names: Sequence[str], height: int, width: int
) -> list[CaptureThreadCamera]:
    """Open the cameras `names` (the env's observation keys, in order) from their device configs.
    On any failure the cameras opened so far are closed again."""
    by_name = {device.name: device for device in devices}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise CameraError(
            f"env.cameras lists {missing} but real.cameras has no device for them "
            f"(configured: {sorted(by_name)})"
        )
    cameras: list[CaptureThreadCamera] = []
    try:
        for name in names:
            cameras.append(open_camera(by_name[name], height, width))
    except BaseException:
        for camera in cameras:
            camera.close()
        raise
    return cameras
