"""Real camera classes against a real capture source that needs no hardware: OpenCV reading a
video file written here, paced like a camera."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from robot_env.cameras import (
    OpenCVCamera,
    RealSenseCamera,
    crop_and_resize,
    open_camera,
    open_cameras,
)
from robot_env.interfaces import Camera, CameraError
from robot_env.real_config import CameraDeviceConfig

WIDTH, HEIGHT = 160, 120


def write_video(path: Path, frames: int, fps: float = 30.0) -> Path:
    """Frames whose left half is red and right half blue, with the frame index in green."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for index in range(frames):
        bgr = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        bgr[:, : WIDTH // 2] = (0, 0, 255)  # red in BGR
        bgr[:, WIDTH // 2 :] = (255, 0, 0)  # blue in BGR
        bgr[:8, :8, 1] = index % 256
        writer.write(bgr)
    writer.release()
    return path


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "long.avi", frames=300)


def camera_config(path: Path, **overrides) -> CameraDeviceConfig:
    values = dict(name="wrist_1", kind="opencv", device=str(path), fps=30, max_frame_age_s=0.2, open_timeout_s=5.0)
    values.update(overrides)
    return CameraDeviceConfig(**values)


def test_reads_fresh_rgb_frames_resized_per_config(long_video):
    camera = OpenCVCamera(camera_config(long_video), height=32, width=48)
    try:
        assert isinstance(camera, Camera)
        frame, stamp = camera.read()
        assert frame.shape == (32, 48, 3) and frame.dtype == np.uint8
        assert 0.0 <= time.monotonic() - stamp < 0.2
        # RGB order: the left half is red, the right half blue.
        left, right = frame[16, 4], frame[16, 44]
        assert left[0] > 200 and left[2] < 60
        assert right[2] > 200 and right[0] < 60
        # The capture thread keeps delivering newer frames at about the configured rate.
        count = camera.frames_captured
        time.sleep(0.5)
        rate = (camera.frames_captured - count) / 0.5
        assert 15 <= rate <= 45
        _, later = camera.read()
        assert later > stamp
    finally:
        camera.close()


def test_crop_selects_the_configured_region(long_video):
    # Crop the right (blue) half only: the whole output is blue.
    camera = OpenCVCamera(camera_config(long_video, crop=[WIDTH // 2 + 4, 10, WIDTH, HEIGHT]), 16, 16)
    try:
        frame, _ = camera.read()
        assert np.all(frame[..., 2] > 200) and np.all(frame[..., 0] < 60)
    finally:
        camera.close()


def test_crop_outside_the_frame_is_a_clear_error(long_video):
    with pytest.raises(CameraError, match="does not fit the 160×120 frames"):
        OpenCVCamera(camera_config(long_video, crop=[0, 0, 400, 100]), 16, 16)


def test_a_late_frame_is_waited_for_not_used_stale_nor_fatal(long_video):
    # A source delivering 2 frames/s cannot meet a 0.1 s age limit between frames: each read that
    # finds the newest frame too old waits for the next one (a late control step, not a lost run).
    camera = OpenCVCamera(camera_config(long_video, fps=2, max_frame_age_s=0.1, stall_timeout_s=1.0), 16, 16)
    try:
        stamps, waited = [], []
        for _ in range(4):
            asked = time.monotonic()
            _, stamp = camera.read()
            returned = time.monotonic()
            assert returned - stamp <= 0.1 + 0.05, "a frame older than max_frame_age_s was returned"
            stamps.append(stamp)
            waited.append(returned - asked)
            time.sleep(0.15)  # past the limit again before the next read
        assert stamps == sorted(set(stamps))
        assert max(waited) > 0.1, f"no read had to wait: {waited}"
    finally:
        camera.close()


def test_a_source_with_no_fresh_frame_within_the_stall_timeout_is_an_error(long_video):
    camera = OpenCVCamera(camera_config(long_video, fps=2, max_frame_age_s=0.1, stall_timeout_s=0.2), 16, 16)
    try:
        deadline = time.monotonic() + 3.0
        with pytest.raises(CameraError, match=r"no new frame within 0\.20 s \(stall_timeout_s\); the newest is "
                                              r"\d+\.\d+ s old .*the device stalled"):
            while time.monotonic() < deadline:
                camera.read()
                time.sleep(0.15)
    finally:
        camera.close()


def test_source_that_ends_is_reported_gone(tmp_path):
    video = write_video(tmp_path / "short.avi", frames=6)
    camera = OpenCVCamera(camera_config(video), 16, 16)
    try:
        time.sleep(0.5)  # 6 frames at 30 fps last 0.2 s
        with pytest.raises(CameraError, match="is gone: the video file ended"):
            camera.read()
    finally:
        camera.close()


def test_missing_device_is_a_clear_error(tmp_path):
    with pytest.raises(CameraError, match="OpenCV cannot open"):
        OpenCVCamera(camera_config(tmp_path / "no_such_video.avi"), 16, 16)


def test_realsense_without_its_library_or_device_is_a_clear_error():
    cfg = CameraDeviceConfig(name="wrist_2", kind="realsense", device="123456789", open_timeout_s=1.0)
    expected = "pyrealsense2 is not installed" if importlib.util.find_spec("pyrealsense2") is None else "RealSense"
    with pytest.raises(CameraError, match=expected):
        RealSenseCamera(cfg, 16, 16)


class _FakeRealSense:
    """pyrealsense2's pipeline API as RealSenseCamera uses it (no software peer exists for a
    RealSense): colour frames at about 50 Hz, except for one gap of `gap_s` after the third frame."""

    class stream:  # noqa: N801 (pyrealsense2's names)
        color = "color"

    class format:  # noqa: N801
        rgb8 = "rgb8"

    def __init__(self, gap_s: float):
        self.gap_s = gap_s
        self.frames_served = 0
        self.gap_ends = 0.0
        fake = self

        class config:  # noqa: N801
            def enable_device(self, serial): pass
            def enable_stream(self, *args): pass

        class pipeline:  # noqa: N801
            def start(self, cfg): pass
            def stop(self): pass

            def try_wait_for_frames(self, timeout_ms):
                if fake.frames_served == 3 and not fake.gap_ends:
                    fake.gap_ends = time.monotonic() + fake.gap_s
                wait = max(fake.gap_ends - time.monotonic(), 0.0)
                if wait > timeout_ms / 1000:
                    time.sleep(timeout_ms / 1000)
                    return False, None  # what the library returns when no frame came in time
                time.sleep(max(wait, 0.02))
                fake.frames_served += 1
                return True, _FakeFrames()

            def wait_for_frames(self, timeout_ms):
                arrived, frames = self.try_wait_for_frames(timeout_ms)
                if not arrived:
                    raise RuntimeError(f"Frame didn't arrive within {timeout_ms}")
                return frames

        self.config, self.pipeline = config, pipeline


class _FakeFrames:
    def get_color_frame(self):
        return self

    def __bool__(self):
        return True

    def get_data(self):
        return np.full((HEIGHT, WIDTH, 3), 128, np.uint8)


def test_a_realsense_frame_late_by_more_than_the_age_limit_does_not_end_the_stream(monkeypatch):
    fake = _FakeRealSense(gap_s=0.6)
    monkeypatch.setitem(sys.modules, "pyrealsense2", fake)
    cfg = CameraDeviceConfig(name="wrist_2", kind="realsense", device="", max_frame_age_s=0.2, stall_timeout_s=0.3)
    camera = RealSenseCamera(cfg, 16, 16)
    try:
        while not fake.gap_ends:
            time.sleep(0.01)
        with pytest.raises(CameraError, match="the device stalled"):
            while True:  # within the gap: no fresh frame within stall_timeout_s
                camera.read()
                time.sleep(0.02)
        time.sleep(max(fake.gap_ends - time.monotonic(), 0.0) + 0.1)
        frame, stamp = camera.read()  # the stream goes on after the gap
        assert frame.shape == (16, 16, 3) and stamp > fake.gap_ends - 0.05
    finally:
        camera.close()


def test_open_cameras_matches_env_names_and_rejects_unknown_kinds(long_video):
    with pytest.raises(CameraError, match="real.cameras has no device for them"):
        open_cameras([camera_config(long_video)], ["wrist_1", "wrist_2"], 16, 16)
    with pytest.raises(CameraError, match="kind must be one of"):
        open_camera(camera_config(long_video, kind="gige"), 16, 16)
    cameras = open_cameras(
        [camera_config(long_video, name="wrist_2"), camera_config(long_video, name="wrist_1")],
        ["wrist_1", "wrist_2"],
        16,
        16,
    )
    try:
        assert [camera.name for camera in cameras] == ["wrist_1", "wrist_2"]
    finally:
        for camera in cameras:
            camera.close()


def test_crop_and_resize_is_exact_for_an_identity_size():
    frame = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    assert np.array_equal(crop_and_resize(frame, [1, 1, 5, 3], 2, 4), frame[1:3, 1:5])
