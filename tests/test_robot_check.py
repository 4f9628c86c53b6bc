"""`franka-rl robot-check` as a user runs it: against franky-sim (a simulated FR3 with the Franka
Hand behind the libfranka protocol) with an OpenCV camera reading a generated video file, and
against addresses where no arm answers."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from franka_rl.config import CONFIG_DIR, REPO_ROOT

pytest.importorskip("franky", reason="franky-control is not installed")

from test_cameras import write_video  # noqa: E402

REAL_CONFIG = CONFIG_DIR / "peg_insertion_real.yaml"
FRANKA_RL = str(Path(sys.executable).parent / "franka-rl")
# Loopback addresses of this file's own, so another franky-sim on 127.0.0.1 does not collide.
PEER_HOST = "127.0.0.32"
SILENT_HOST = "127.0.0.33"
NOBODY_HOST = "127.0.0.34"
SIM_OVERRIDES = ["real.realtime=false", "real.relative_dynamics_factor=0.5"]


def robot_check(*args: str, timeout_s: float = 90) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run(
        [FRANKA_RL, "robot-check", "--config", str(REAL_CONFIG), *args],
        capture_output=True, text=True, timeout=timeout_s, cwd=REPO_ROOT,
    )
    return result, time.monotonic() - started


def lines_with(output: str, status: str) -> dict[str, str]:
    """{item: detail} of the checklist lines with this status."""
    found = {}
    for line in output.splitlines():
        if line.startswith(status + "  "):
            rest = line[len(status) + 2 :]
            item = rest[:14].strip()
            found[item] = rest[15:]
    return found


def camera_overrides(path: Path | str) -> list[str]:
    return ["env.cameras=[wrist_1]", f"real.cameras=[{{name: wrist_1, kind: opencv, device: '{path}', fps: 30}}]"]


@pytest.fixture(scope="module")
def peer():
    from franky_sim_peer import start_or_skip

    server = start_or_skip(PEER_HOST)
    yield server
    server.close()


def test_unreachable_arm_is_one_clear_failure_within_seconds_and_the_cameras_are_still_checked(tmp_path):
    video = write_video(tmp_path / "wrist.avi", frames=300)
    result, elapsed = robot_check(f"real.robot_ip={NOBODY_HOST}", *camera_overrides(video), timeout_s=30)
    assert result.returncode == 1
    assert elapsed < 10
    assert "Traceback" not in result.stdout + result.stderr
    failed = lines_with(result.stdout, "FAIL")
    assert list(failed) == ["connection"]
    assert NOBODY_HOST in failed["connection"] and "FCI" in failed["connection"]
    # Nothing that needs the arm is attempted, but a cell can set up its cameras before the arm.
    assert "state" not in result.stdout
    assert "camera wrist_1" in lines_with(result.stdout, "PASS")
    assert lines_with(result.stdout, "SKIP")["reset move"] == "no connection to the arm"
    assert "1 failed" in result.stdout and "fix the FAIL items" in result.stdout


def test_an_address_that_never_answers_times_out():
    # Accepts the TCP connection (the kernel's backlog) but never speaks the protocol: libfranka
    # on its own would wait a minute.
    with socket.socket() as silent:
        silent.bind((SILENT_HOST, 1337))
        silent.listen(4)
        result, elapsed = robot_check(
            f"real.robot_ip={SILENT_HOST}", "real.connect_timeout_s=1", "real.realtime=false", timeout_s=30
        )
    assert result.returncode == 1
    assert elapsed < 8
    assert "did not answer within 1 s" in lines_with(result.stdout, "FAIL")["connection"]
    assert "Traceback" not in result.stderr


def test_arm_family_follows_the_libfranka_version():
    from robot_env.robot_check import arm_family

    assert arm_family("0.21.2").startswith("for an FR3")
    assert arm_family("0.9.2").startswith("for a Panda")
    assert arm_family("unknown").startswith("unknown libfranka version")


def test_sim_mode_config_is_refused_in_one_line(capsys):
    from franka_rl.cli import main

    assert main(["robot-check", "--config", str(REAL_CONFIG), "mode=sim"]) == 2
    stderr = capsys.readouterr().err
    assert "mode: sim" in stderr and len(stderr.strip().splitlines()) == 1


def test_robot_check_passes_end_to_end_on_franky_sim_with_a_video_camera(peer, tmp_path):
    video = write_video(tmp_path / "wrist.avi", frames=600)
    snapshots = tmp_path / "snapshots"
    result, elapsed = robot_check(
        "--steps", "20", "--snapshots", str(snapshots),
        f"real.robot_ip={peer.host}", *SIM_OVERRIDES, *camera_overrides(video),
    )
    print(result.stdout, result.stderr, f"took {elapsed:.1f} s", sep="\n")
    assert result.returncode == 0, result.stdout + result.stderr
    passed = lines_with(result.stdout, "PASS")
    assert list(passed) == [
        "config", "software", "connection", "state", "gripper", "camera wrist_1", "reset move", "control loop",
        "compliant move",
    ]
    assert not lines_with(result.stdout, "FAIL") and not lines_with(result.stdout, "SKIP")
    assert "libfranka 0." in passed["software"] and "FR3" in passed["software"]
    assert "mode Idle" in passed["state"] and "hand protocol" in passed["state"]
    assert "closed on nothing" in passed["gripper"]  # franky-sim's hand holds no peg
    assert "20 steps at 10 Hz" in passed["control loop"] and "p99" in passed["control loop"]
    assert passed["compliant move"].startswith("1 cm")
    snapshot = cv2.imread(str(snapshots / "wrist_1.png"))
    assert snapshot is not None and snapshot.shape == (128, 128, 3)
    assert "9 passed, 0 failed, 0 skipped" in result.stdout


def test_missing_camera_fails_by_name_and_no_motion_only_reads(peer, tmp_path):
    missing = tmp_path / "no-such-camera.avi"
    result, _ = robot_check("--no-motion", "--no-gripper", f"real.robot_ip={peer.host}", *SIM_OVERRIDES, *camera_overrides(missing))
    assert result.returncode == 1
    failed = lines_with(result.stdout, "FAIL")
    assert list(failed) == ["camera wrist_1"] and str(missing) in failed["camera wrist_1"]
    skipped = lines_with(result.stdout, "SKIP")
    assert skipped["gripper"] == "--no-gripper"
    assert skipped["reset move"] == skipped["control loop"] == skipped["compliant move"] == "--no-motion"
    assert "Traceback" not in result.stderr
