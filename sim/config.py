"""Configuration of the MuJoCo twin."""

from __future__ import annotations

from dataclasses import dataclass, field


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
