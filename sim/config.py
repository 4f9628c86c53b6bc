"""Configuration of the MuJoCo twin."""

from __future__ import annotations

from dataclasses import dataclass, field

from robot_env.errors import ConfigError


@dataclass
class DomainRandomizationConfig:
    """Per-episode randomisation of the scene; every key is off (zero/false) by default."""

    # Uniform half-range of the fixture's xy offset (m) and yaw (rad) from its nominal pose.
    fixture_position_noise: float = 0.0
    fixture_yaw_noise: float = 0.0
    # Scale lights' intensity by a random factor in [1 - x, 1 + x].
    lighting: float = 0.0
    # Perturb RGB of the table, fixture and peg by up to this much (0..1).
    colors: float = 0.0
    # Uniform half-range of wrist-camera position (m) and orientation (rad) jitter.
    camera_position_jitter: float = 0.0
    camera_rotation_jitter: float = 0.0


@dataclass
class SimConfig:
    # Physics step (s): 500 Hz or faster, as the real impedance controller runs at 1 kHz.
    physics_dt: float = 0.002
    # Radial clearance between peg and hole (m).
    hole_clearance: float = 0.001
    # Peg tip depth below the hole's rim that counts as inserted (m).
    success_depth: float = 0.02
    # "auto" tries EGL, then OSMesa.
    render_backend: str = "auto"
    shadows: bool = False
    randomization: DomainRandomizationConfig = field(default_factory=DomainRandomizationConfig)

    # --- Peg and fixture geometry. The fixture sits on the table under `task.target_pose`, at the
    # height where the peg tip touches the hole's floor when the TCP is at the target pose.
    # Side of the square peg (m); the gripper closes on it, so this is also the closed width.
    peg_side: float = 0.02
    # How far the peg tip sticks out below the TCP (the fingertips), along the tool axis (m).
    peg_length_below_tcp: float = 0.045
    hole_depth: float = 0.03
    # 45° chamfer at the hole's entry, measured along the wall (m); 0 for a sharp edge.
    hole_chamfer: float = 0.002
    # Half of the fixture block's side (m).
    fixture_half_width: float = 0.06
    # Coulomb friction between the peg/fingers and the fixture/table.
    friction: float = 0.3

    # --- Robot emulation.
    # Null-space posture spring (Nm/rad) toward the home joint configuration; damping is critical
    # for unit inertia, as for the Cartesian gains.
    null_space_stiffness: float = 10.0
    # Blocking moves (resets): reference speed limits and arrival tolerances.
    move_speed: float = 0.15
    move_angular_speed: float = 1.0
    move_tolerance_m: float = 0.002
    move_tolerance_rad: float = 0.02
    # Joint-space home move (`joint_reset`): reference speed limit (rad/s).
    joint_reset_speed: float = 1.0
    # Contact force (N) above which the arm stops with a reflex error, as the real arm does.
    reflex_force: float = 150.0
    # Wrist cameras' vertical field of view (deg); the renderer's light and material setup is fixed.
    camera_fovy: float = 70.0


RENDER_BACKENDS = ("auto", "egl", "osmesa", "glfw")


def validate_sim_config(sim: SimConfig) -> None:
    """Raise ConfigError naming the first `sim.*` value that cannot work. How the geometry fits
    the task's target pose is checked where the scene is built (sim.scene.fixture_geometry)."""
    rnd = sim.randomization
    checks = [
        # The twin's impedance controller stands in for the arm's 1 kHz loop: slower is unstable.
        (0 < sim.physics_dt <= 0.002, f"sim.physics_dt must be in (0, 0.002] s (>= 500 Hz), got {sim.physics_dt}"),
        (sim.hole_clearance > 0, f"sim.hole_clearance must be > 0, got {sim.hole_clearance}"),
        (0 < sim.success_depth <= sim.hole_depth,
         f"sim.success_depth must be in (0, sim.hole_depth={sim.hole_depth}], got {sim.success_depth}"),
        (sim.render_backend in RENDER_BACKENDS,
         f"sim.render_backend must be one of {RENDER_BACKENDS}, got '{sim.render_backend}'"),
        (sim.peg_side > 0, f"sim.peg_side must be > 0, got {sim.peg_side}"),
        (sim.peg_length_below_tcp > 0, f"sim.peg_length_below_tcp must be > 0, got {sim.peg_length_below_tcp}"),
        (sim.hole_depth > 0, f"sim.hole_depth must be > 0, got {sim.hole_depth}"),
        (0 <= sim.hole_chamfer < sim.hole_depth,
         f"sim.hole_chamfer must be in [0, sim.hole_depth={sim.hole_depth}), got {sim.hole_chamfer}"),
        (sim.fixture_half_width > 0, f"sim.fixture_half_width must be > 0, got {sim.fixture_half_width}"),
        (sim.friction >= 0, f"sim.friction must be >= 0, got {sim.friction}"),
        (sim.null_space_stiffness >= 0, f"sim.null_space_stiffness must be >= 0, got {sim.null_space_stiffness}"),
        (0 < sim.camera_fovy < 180, f"sim.camera_fovy must be in (0, 180) degrees, got {sim.camera_fovy}"),
    ]
    for key in ("move_speed", "move_angular_speed", "move_tolerance_m", "move_tolerance_rad",
                "joint_reset_speed", "reflex_force"):
        checks.append((getattr(sim, key) > 0, f"sim.{key} must be > 0, got {getattr(sim, key)}"))
    for key in ("fixture_position_noise", "fixture_yaw_noise", "camera_position_jitter", "camera_rotation_jitter"):
        checks.append((getattr(rnd, key) >= 0, f"sim.randomization.{key} must be >= 0, got {getattr(rnd, key)}"))
    # A scale factor 1 ± x must stay positive, and a colour perturbation beyond 1 leaves RGB.
    checks.append((0 <= rnd.lighting < 1, f"sim.randomization.lighting must be in [0, 1), got {rnd.lighting}"))
    checks.append((0 <= rnd.colors <= 1, f"sim.randomization.colors must be in [0, 1], got {rnd.colors}"))
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
