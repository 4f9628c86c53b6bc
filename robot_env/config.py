"""Typed configuration of the task and the env. Values are loaded from YAML by `franka_rl.config`.

Poses in config are 6 numbers: position (m) in the robot base frame, then a rotation vector (rad)
in the base frame. Defaults are the twin's peg-insertion cell (`configs/peg_insertion_sim.yaml`
repeats them so that a user sees every value in one place).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from robot_env.interfaces import ImpedanceParams


@dataclass
class TaskConfig:
    """Peg insertion: where the hole is, where episodes start, and what the arm may do."""

    name: str = "peg_insertion"
    # TCP pose at full insertion. Orientation is the nominal one (peg pointing down).
    target_pose: list[float] = field(default_factory=lambda: [0.55, 0.0, 0.085, math.pi, 0.0, 0.0])
    # Nominal reset pose; each episode starts at this plus the randomisation below.
    reset_pose: list[float] = field(default_factory=lambda: [0.55, 0.0, 0.16, math.pi, 0.0, 0.0])
    # Uniform half-ranges of the reset randomisation (SERL's peg insertion: xy ±5 cm, yaw ±π/6).
    reset_position_noise: list[float] = field(default_factory=lambda: [0.05, 0.05, 0.0])
    reset_yaw_noise: float = math.pi / 6
    # Action scaling: metres and radians per step at |action| = 1.
    action_scale_translation: float = 0.02
    action_scale_rotation: float = 0.1
    # Safety box. Position bounds are absolute (base frame); rotation bounds are per component of
    # the rotation vector of R_target⁻¹·R, i.e. relative to the nominal orientation, where the
    # rotation vector has no wrap (a peg pointing down sits at roll ≈ π in base-frame Euler angles).
    position_low: list[float] = field(default_factory=lambda: [0.47, -0.08, 0.075])
    position_high: list[float] = field(default_factory=lambda: [0.63, 0.08, 0.22])
    rotation_low: list[float] = field(default_factory=lambda: [-0.15, -0.15, -0.6])
    rotation_high: list[float] = field(default_factory=lambda: [0.15, 0.15, 0.6])
    # Success on hardware without a classifier: TCP within this distance of the target pose.
    success_position_tolerance: float = 0.005
    max_episode_steps: int = 100
    # Peg insertion holds the peg: the gripper stays closed and the policy sees a 6-D action.
    fixed_gripper_closed: bool = True


@dataclass
class EnvConfig:
    """How the env runs: rate, images, frames, controller gains."""

    control_hz: float = 10.0
    # Camera names, in observation order. Empty for a state-only env.
    cameras: list[str] = field(default_factory=lambda: ["wrist_1", "wrist_2"])
    image_height: int = 128
    image_width: int = 128
    # Sleep to wall-clock deadlines in the twin as well (hardware always runs in real time).
    real_time: bool = False
    # Frame of the translation/rotation deltas: "ee" (end effector) or "base".
    action_frame: str = "ee"
    # Frame of the pose in `state`: "nominal_reset" (the task's reset pose: the same frame every
    # episode, so the state says where the hole is) or "episode_reset" (the pose this episode
    # started at: SERL's relative frame, which leaves finding the hole to the cameras).
    state_frame: str = "nominal_reset"
    # Observation history length; 1 leaves observations as they are.
    history_horizon: int = 1
    # An observation older than this at the end of a step is reported in `info` as stale.
    max_observation_age_s: float = 0.05
    compliant: ImpedanceParams = field(
        default_factory=lambda: ImpedanceParams(
            translational_stiffness=2000.0,
            rotational_stiffness=150.0,
            damping_ratio=1.0,
            max_reference_offset_m=0.0075,
            max_reference_offset_rad=0.05,
        )
    )
    stiff: ImpedanceParams = field(
        default_factory=lambda: ImpedanceParams(
            translational_stiffness=3000.0,
            rotational_stiffness=300.0,
            damping_ratio=1.0,
            max_reference_offset_m=0.05,
            max_reference_offset_rad=0.3,
        )
    )
