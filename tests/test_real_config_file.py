"""configs/peg_insertion_real.yaml loads and describes a cell the backend can run safely."""

from __future__ import annotations

import numpy as np

from franka_rl.config import CONFIG_DIR, load_config
from robot_env.geometry import pose6_to_pos_quat
from robot_env.robot_check import config_problems
from robot_env.safety import SafetyBox

REAL_CONFIG = CONFIG_DIR / "peg_insertion_real.yaml"


def test_real_config_loads_in_real_mode_with_two_named_cameras():
    cfg = load_config(REAL_CONFIG)
    assert cfg.mode == "real"
    assert cfg.real.realtime
    assert cfg.env.real_time
    assert [device.name for device in cfg.real.cameras] == list(cfg.env.cameras) == ["wrist_1", "wrist_2"]
    assert all(device.kind in ("realsense", "opencv") for device in cfg.real.cameras)
    assert cfg.teleop.device in ("spacemouse", "keyboard")


def test_real_config_values_are_sane():
    cfg = load_config(REAL_CONFIG)
    assert config_problems(cfg) == []
    task, real = cfg.task, cfg.real
    box = SafetyBox.from_task(task)
    for pose in (task.target_pose, task.reset_pose):
        assert box.contains(*pose6_to_pos_quat(pose))
    # The peg points down, episodes start above the hole, and the box floor lets the peg seat.
    assert task.reset_pose[2] > task.target_pose[2] > task.position_low[2]
    down = pose6_to_pos_quat(task.target_pose)[1]
    assert np.isclose(abs(down[0]), 1.0, atol=0.05)  # a half-turn about x
    # Every randomised reset xy stays inside the box (the env would clip it otherwise).
    noise = np.asarray(task.reset_position_noise)
    assert np.all(np.asarray(task.reset_pose[:3]) - noise >= box.position_low)
    assert np.all(np.asarray(task.reset_pose[:3]) + noise <= box.position_high)
    # Force limits nest: compliant contact force < soft limit < collision reflex.
    contact = cfg.env.compliant.translational_stiffness * cfg.env.compliant.max_reference_offset_m
    assert contact < real.max_external_force_n < min(real.collision_force_thresholds_n[:3])
    assert task.action_scale_translation <= real.max_step_translation_m
    assert task.action_scale_rotation <= real.max_step_rotation_rad
    assert 0 < real.relative_dynamics_factor <= 0.2  # slow resets on hardware
    assert real.connect_timeout_s <= 15


def test_config_problems_name_what_is_wrong():
    cfg = load_config(
        REAL_CONFIG,
        [
            "task.reset_pose=[0.55, 0.0, 0.30, 3.141592653589793, 0.0, 0.0]",
            "task.action_scale_translation=0.05",
            "env.cameras=[wrist_1, wrist_3]",
        ],
    )
    problems = " | ".join(config_problems(cfg))
    assert "task.reset_pose" in problems and "outside the safety box" in problems
    assert "task.action_scale_translation" in problems
    assert "wrist_3" in problems
    low = load_config(REAL_CONFIG, ["task.reset_pose=[0.55, 0.0, 0.08, 3.141592653589793, 0.0, 0.0]"])
    assert any("above task.target_pose" in problem for problem in config_problems(low))
