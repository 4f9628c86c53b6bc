"""Typed configuration of the task and the env. Values are loaded from YAML by `franka_rl.config`.

Poses in config are 6 numbers: position (m) in the robot base frame, then a rotation vector (rad)
in the base frame. Defaults are the twin's peg-insertion cell (`configs/peg_insertion_sim.yaml`
repeats them so that a user sees every value in one place).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from robot_env.errors import ConfigError
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


_ACTION_FRAMES = ("ee", "base")
_STATE_FRAMES = ("nominal_reset", "episode_reset")


def _first_failure(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _lengths(section: str, values: dict[str, tuple[list, int]]) -> list[tuple[bool, str]]:
    return [(len(v) == n, f"{section}.{key} must have {n} values, got {len(v)}") for key, (v, n) in values.items()]


def validate_task_config(task: TaskConfig) -> None:
    """Raise ConfigError naming the first `task.*` value that cannot work."""
    _first_failure(_lengths("task", {
        "target_pose": (task.target_pose, 6), "reset_pose": (task.reset_pose, 6),
        "reset_position_noise": (task.reset_position_noise, 3),
        "position_low": (task.position_low, 3), "position_high": (task.position_high, 3),
        "rotation_low": (task.rotation_low, 3), "rotation_high": (task.rotation_high, 3),
    }))
    checks = [
        (all(v >= 0 for v in task.reset_position_noise),
         f"task.reset_position_noise must be >= 0 on every axis, got {list(task.reset_position_noise)}"),
        (task.reset_yaw_noise >= 0, f"task.reset_yaw_noise must be >= 0, got {task.reset_yaw_noise}"),
        (task.action_scale_translation > 0,
         f"task.action_scale_translation must be > 0, got {task.action_scale_translation}"),
        (task.action_scale_rotation > 0, f"task.action_scale_rotation must be > 0, got {task.action_scale_rotation}"),
        (task.success_position_tolerance > 0,
         f"task.success_position_tolerance must be > 0, got {task.success_position_tolerance}"),
        (task.max_episode_steps >= 1, f"task.max_episode_steps must be >= 1, got {task.max_episode_steps}"),
    ]
    # A box that is empty (or a single point) on some axis leaves the arm no room to move there;
    # the clip would silently pin it.
    for kind in ("position", "rotation"):
        low, high = getattr(task, f"{kind}_low"), getattr(task, f"{kind}_high")
        for axis, lo, hi in zip("xyz", low, high, strict=True):
            checks.append((lo < hi, f"task.{kind}_low must be < task.{kind}_high on every axis; "
                                    f"{axis}: {lo} >= {hi}"))
    # Beyond ±π/2 the relative rotation vector can wrap, and the box would clip the wrong way.
    for key in ("rotation_low", "rotation_high"):
        values = getattr(task, key)
        checks.append((all(abs(v) < math.pi / 2 for v in values),
                       f"task.{key} must lie within ±π/2 (rad) of the nominal orientation, got {list(values)}"))
    _first_failure(checks)


def _impedance_checks(key: str, params: ImpedanceParams) -> list[tuple[bool, str]]:
    return [
        (getattr(params, name) > 0, f"env.{key}.{name} must be > 0, got {getattr(params, name)}")
        for name in ("translational_stiffness", "rotational_stiffness", "damping_ratio",
                     "max_reference_offset_m", "max_reference_offset_rad")
    ]


def validate_env_config(env: EnvConfig) -> None:
    """Raise ConfigError naming the first `env.*` value that cannot work."""
    duplicates = sorted({name for name in env.cameras if env.cameras.count(name) > 1})
    _first_failure([
        (env.control_hz > 0, f"env.control_hz must be > 0, got {env.control_hz}"),
        (all(env.cameras), "env.cameras must not contain an empty name"),
        (not duplicates, f"env.cameras lists {duplicates} more than once"),
        (env.image_height >= 1, f"env.image_height must be >= 1, got {env.image_height}"),
        (env.image_width >= 1, f"env.image_width must be >= 1, got {env.image_width}"),
        (env.action_frame in _ACTION_FRAMES, f"env.action_frame must be one of {_ACTION_FRAMES}, got '{env.action_frame}'"),
        (env.state_frame in _STATE_FRAMES, f"env.state_frame must be one of {_STATE_FRAMES}, got '{env.state_frame}'"),
        (env.history_horizon >= 1, f"env.history_horizon must be >= 1, got {env.history_horizon}"),
        (env.max_observation_age_s > 0, f"env.max_observation_age_s must be > 0, got {env.max_observation_age_s}"),
        *_impedance_checks("compliant", env.compliant),
        *_impedance_checks("stiff", env.stiff),
    ])
