"""teach-pose: the config-file update (pure) and the command end to end against franky-sim, with
the operator's Enter presses coming from stdin."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from franka_rl.config import CONFIG_DIR, REPO_ROOT, load_config
from robot_env.geometry import pose6_to_pos_quat
from robot_env.safety import SafetyBox
from robot_env.teach_pose import suggest_bounds, update_task_section, write_task_values

REAL_CONFIG = CONFIG_DIR / "peg_insertion_real.yaml"
# The installed entry point, as a user runs it.
FRANKA_RL = str(Path(sys.executable).parent / "franka-rl")
# A loopback address of this file's own, so another franky-sim on 127.0.0.1 does not collide.
PEER_HOST = "127.0.0.31"


def test_update_keeps_comments_and_other_values():
    text = REAL_CONFIG.read_text()
    target = [0.5123, -0.0211, 0.0932, -3.14, 0.01, 0.00001]
    updated = update_task_section(text, {"target_pose": target})
    changed = [(old, new) for old, new in zip(text.splitlines(), updated.splitlines(), strict=True) if old != new]
    assert len(changed) == 1 and changed[0][1].strip().startswith("target_pose:")
    assert yaml.safe_load(updated)["task"]["target_pose"] == target  # 1e-05 stays a number


def test_update_replaces_block_lists_adds_missing_keys_and_sections():
    text = "mode: real\ntask:\n  target_pose:  # taught\n    - 1.0\n    - 2.0\n  name: peg\nenv:\n  control_hz: 5.0\n"
    updated = update_task_section(text, {"target_pose": [3.0, 4.0], "reset_pose": [5.0, 6.0]})
    assert "# taught" in updated
    loaded = yaml.safe_load(updated)
    assert loaded["task"] == {"target_pose": [3.0, 4.0], "name": "peg", "reset_pose": [5.0, 6.0]}
    assert loaded["env"] == {"control_hz": 5.0}
    assert yaml.safe_load(update_task_section("mode: real\n", {"reset_pose": [1.0]})) == {
        "mode": "real", "task": {"reset_pose": [1.0]}
    }


def test_suggested_bounds_enclose_the_poses_and_their_randomisation():
    # The twin's hand-made box is exactly what the rule gives for its poses.
    cfg = load_config(REAL_CONFIG)
    low, high = suggest_bounds(cfg.task.target_pose, cfg.task.reset_pose, cfg.task.reset_position_noise)
    assert np.allclose(low, cfg.task.position_low) and np.allclose(high, cfg.task.position_high)
    target = [0.41, 0.12, 0.03, np.pi, 0.0, 0.0]
    reset = [0.45, 0.10, 0.09, np.pi, 0.0, 0.2]
    low, high = suggest_bounds(target, reset, [0.02, 0.02, 0.0])
    for pose in (target, reset):
        assert np.all(np.asarray(pose[:3]) > low) and np.all(np.asarray(pose[:3]) < high)
    assert np.isclose(low[2], target[2] - 0.01)


def test_written_file_loads_and_a_failed_write_leaves_nothing(tmp_path):
    out = tmp_path / "cell.yaml"
    write_task_values(REAL_CONFIG, out, {"reset_pose": [0.5, 0.0, 0.15, np.pi, 0.0, 0.0]})
    assert load_config(out).task.reset_pose == pytest.approx([0.5, 0.0, 0.15, np.pi, 0.0, 0.0], abs=1e-5)
    with pytest.raises(FileNotFoundError):
        write_task_values(tmp_path / "missing.yaml", tmp_path / "other.yaml", {"reset_pose": [0.0]})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cell.yaml"]


# ---------------------------------------------------------------- against franky-sim


@pytest.fixture(scope="module")
def peer():
    from franky_sim_peer import start_or_skip

    server = start_or_skip(PEER_HOST)
    yield server
    server.close()


def teach_pose(out: Path, stdin: str, *args: str) -> subprocess.CompletedProcess:
    command = [
        FRANKA_RL, "teach-pose", "--config", str(REAL_CONFIG), "--out", str(out),
        "--free-axes", "keep",  # franky-sim does not implement the guiding-axes command
        *args, f"real.robot_ip={PEER_HOST}", "real.realtime=false",
    ]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)


def measured_pose6() -> np.ndarray:
    from robot_env.franky_backend import FrankyRobot
    from robot_env.real_config import RealConfig
    from robot_env.teach_pose import read_pose6

    with FrankyRobot(RealConfig(robot_ip=PEER_HOST, realtime=False, gripper=False)) as robot:
        return read_pose6(robot)


def test_teach_pose_writes_the_pose_it_read(peer, tmp_path):
    out = tmp_path / "my_cell.yaml"
    result = teach_pose(out, "\n", "--reset-above", "0.05", "--set-bounds")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "target_pose: xyz" in result.stdout and "wrote task.target_pose" in result.stdout
    cfg = load_config(out)
    # The arm idles where franky-sim put it: the written target is the TCP pose read from it.
    measured = measured_pose6()
    target_position, target_quat = pose6_to_pos_quat(cfg.task.target_pose)
    measured_position, measured_quat = pose6_to_pos_quat(measured)
    assert np.allclose(target_position, measured_position, atol=1e-4)
    assert np.allclose(abs(np.dot(target_quat, measured_quat)), 1.0, atol=1e-6)
    assert cfg.task.reset_pose[2] == pytest.approx(cfg.task.target_pose[2] + 0.05, abs=1e-5)
    box = SafetyBox.from_task(cfg.task)
    assert box.contains(*pose6_to_pos_quat(cfg.task.target_pose))
    assert box.contains(*pose6_to_pos_quat(cfg.task.reset_pose))
    # Everything else came over from the config it started from, comments included.
    assert cfg.real == load_config(REAL_CONFIG).real
    assert "# Soft wrench limit" in out.read_text()

    # A second run updates the same file in place: only the reset pose changes.
    before = out.read_text()
    result = teach_pose(out, "\n", "--only", "reset")
    assert result.returncode == 0, result.stdout + result.stderr
    after = load_config(out)
    assert after.task.target_pose == cfg.task.target_pose
    assert after.task.reset_pose == pytest.approx(measured.tolist(), abs=1e-3)  # the idle arm jitters
    assert sum(a != b for a, b in zip(before.splitlines(), out.read_text().splitlines(), strict=True)) == 1


def test_teach_pose_abort_or_closed_input_writes_nothing(peer, tmp_path):
    out = tmp_path / "my_cell.yaml"
    started = time.monotonic()
    for stdin, reason in (("q\n", "aborted"), ("\n", "input ended before the reset")):
        result = teach_pose(out, stdin)
        assert result.returncode == 2
        assert reason in result.stderr and "nothing was written" in result.stderr
        assert "Traceback" not in result.stderr
        assert not out.exists()
    # Two CLI starts, connects and reads: seconds (a hang would meet the 60 s timeout first); the
    # bound leaves room for a loaded machine.
    assert time.monotonic() - started < 45


def test_refused_guiding_setting_is_one_line_and_writes_nothing(tmp_path):
    # franky-sim does not implement the guiding-axes command (and stops serving after it), as an
    # arm without that feature would: the command must end within its timeout, with what to do.
    from franky_sim_peer import start_or_skip

    host = "127.0.0.35"
    peer = start_or_skip(host)
    out = tmp_path / "my_cell.yaml"
    try:
        started = time.monotonic()
        result = subprocess.run(
            [FRANKA_RL, "teach-pose", "--config", str(REAL_CONFIG), "--out", str(out),
             f"real.robot_ip={host}", "real.realtime=false"],
            input="\n", capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
        )
        elapsed = time.monotonic() - started
    finally:
        peer.close(wait_s=1.0)  # it no longer answers its own quit command either
    assert result.returncode == 2
    # The setting gets 3 s; the rest is the CLI's start and connect (4.5 s in all on an idle
    # machine, 14 s beside three busy loops). Without the timeout libfranka waits forever.
    assert elapsed < 30
    assert "guiding-mode setting" in result.stderr and "--free-axes keep" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not out.exists()
