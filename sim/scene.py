"""The peg-insertion cell as MJCF, generated from the task and sim configs.

Coordinates are the robot base frame (table top at z = 0, base at the origin). The Panda's links
follow Franka's published modified-DH parameters; each link body sits at its DH frame, so joint
angles mean what they mean on the real arm. The hand hangs 0.107 m below joint 7's frame, turned
-π/4 about the flange axis, and the TCP (fingertip centre) is 0.1034 m further along it.

Collision bits: the table and fixture collide only with the peg and fingers; the arm links have
no collision at all (the task keeps the arm far from everything but the fixture).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from robot_env.config import TaskConfig
from sim.config import SimConfig

# (a, d, alpha) of joints 1..7 in Craig's modified DH convention, then the flange offset.
PANDA_DH: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.333, 0.0),
    (0.0, 0.0, -math.pi / 2),
    (0.0, 0.316, math.pi / 2),
    (0.0825, 0.0, math.pi / 2),
    (-0.0825, 0.384, -math.pi / 2),
    (0.0, 0.0, math.pi / 2),
    (0.088, 0.0, math.pi / 2),
)
FLANGE_D = 0.107
TCP_BELOW_FLANGE = 0.1034
HAND_YAW = -math.pi / 4
JOINT_LIMITS: tuple[tuple[float, float], ...] = (
    (-2.8973, 2.8973),
    (-1.7628, 1.7628),
    (-2.8973, 2.8973),
    (-3.0718, -0.0698),
    (-2.8973, 2.8973),
    (-0.0175, 3.7525),
    (-2.8973, 2.8973),
)
TORQUE_LIMITS: tuple[float, ...] = (87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0)
# Link masses (kg) and centres of mass (m, link frame), close to Franka's published dynamic model;
# inertias come from a cylinder of the link's size (plausible, not identified).
LINK_MASSES: tuple[float, ...] = (4.97, 0.65, 3.23, 3.59, 1.23, 1.67, 0.74)
LINK_COMS: tuple[tuple[float, float, float], ...] = (
    (0.004, 0.002, -0.048),
    (-0.003, -0.029, 0.003),
    (0.028, 0.039, -0.067),
    (-0.053, 0.104, 0.027),
    (-0.012, 0.041, -0.038),
    (0.060, -0.014, -0.011),
    (0.011, -0.004, 0.062),
)
LINK_LENGTHS: tuple[float, ...] = (0.25, 0.15, 0.25, 0.15, 0.3, 0.12, 0.1)
LINK_RADIUS = 0.06
# Reflected rotor inertia per joint (kg·m²); also what keeps the explicit Cartesian damping stable.
ARMATURE = 0.1
HAND_MASS = 0.73
PEG_MASS = 0.03
FINGER_MASS = 0.05
FINGER_OPEN = 0.04  # per finger, m
# Hand-frame height of the finger bodies' origin (where the fingers leave the hand).
FINGER_BASE = 0.0584

# Collision bits: world geoms have conaffinity 1, the peg and fingers contype 1; nothing else.
_ENV_COLLISION = 'contype="0" conaffinity="1"'
_TOOL_COLLISION = 'contype="1" conaffinity="0"'
_NO_COLLISION = 'contype="0" conaffinity="0"'

WRIST_CAMERAS = ("wrist_1", "wrist_2")
OVERVIEW_CAMERA = "overview"


@dataclass(frozen=True)
class FixtureGeometry:
    """Where the hole is, derived from the task's target pose and the sim's peg geometry."""

    position: np.ndarray  # fixture body origin on the table (m)
    yaw: float  # rad, about the base z axis
    top_height: float  # fixture top / hole rim above the table (m)
    hole_half_width: float  # m


def fixture_geometry(task: TaskConfig, sim: SimConfig) -> FixtureGeometry:
    """Place the hole under the target pose: with the TCP at the target, the peg tip touches the
    hole's floor. Raises ValueError when the numbers do not make a buildable cell."""
    target = np.asarray(task.target_pose, dtype=np.float64)
    top = target[2] - sim.peg_length_below_tcp + sim.hole_depth
    if sim.hole_clearance <= 0 or sim.peg_side <= 0:
        raise ValueError("sim.hole_clearance and sim.peg_side must be positive")
    if top - sim.hole_depth < 0.005:
        raise ValueError(
            f"task.target_pose z={target[2]:.3f} puts the hole floor {top - sim.hole_depth:.3f} m above "
            "the table; raise the target or shorten sim.hole_depth / sim.peg_length_below_tcp"
        )
    if sim.fixture_half_width < sim.peg_side / 2 + sim.hole_clearance + sim.hole_chamfer + 0.01:
        raise ValueError("sim.fixture_half_width leaves less than 1 cm of wall around the hole")
    if not 0 <= sim.hole_chamfer < sim.hole_depth:
        raise ValueError("sim.hole_chamfer must be in [0, sim.hole_depth)")
    # Yaw of the nominal TCP orientation about the base vertical: the square hole is aligned with
    # the peg (the hand's x and y axes) when the TCP is at the target orientation.
    tcp_x = Rotation.from_rotvec(target[3:]).apply([1.0, 0.0, 0.0])
    yaw = math.atan2(tcp_x[1], tcp_x[0])
    return FixtureGeometry(
        position=np.array([target[0], target[1], 0.0]),
        yaw=yaw,
        top_height=top,
        hole_half_width=sim.peg_side / 2 + sim.hole_clearance,
    )


def _vec(values) -> str:
    return " ".join(f"{float(v):.17g}" for v in values)


def _axis_angle_quat(axis, angle: float) -> str:
    """MuJoCo's w, x, y, z order."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    return _vec([math.cos(angle / 2), *(math.sin(angle / 2) * axis)])


def _cylinder_inertia(mass: float, length: float, radius: float = LINK_RADIUS) -> str:
    radial = mass * (3 * radius**2 + length**2) / 12
    return _vec([radial, radial, mass * radius**2 / 2])


def _look_at_xyaxes(position: np.ndarray, target: np.ndarray, up: np.ndarray) -> str:
    """A MuJoCo camera looks along its -z with +y up in the image."""
    forward = target - position
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    image_up = np.cross(right, forward)
    return _vec([*right, *image_up])


def _arm_xml(hand_xml: str) -> str:
    """Nested link bodies 1..7 with the hand inside link 7."""
    inner = hand_xml
    for index in range(7, 0, -1):
        a, d, alpha = PANDA_DH[index - 1]
        low, high = JOINT_LIMITS[index - 1]
        pos = (a, -d * math.sin(alpha), d * math.cos(alpha))
        # Visual link: a capsule from this joint towards the next joint's origin.
        if index < 7:
            a_n, d_n, alpha_n = PANDA_DH[index]
            nxt = np.array([a_n, -d_n * math.sin(alpha_n), d_n * math.cos(alpha_n)])
        else:
            nxt = np.array([0.0, 0.0, FLANGE_D])
        link_visual = (
            f'<geom type="capsule" fromto="0 0 0 {_vec(nxt)}" size="0.045" {_NO_COLLISION} '
            f'material="arm" group="1"/>'
            if np.linalg.norm(nxt) > 1e-9
            else ""
        )
        inner = f"""
<body name="link{index}" pos="{_vec(pos)}" quat="{_axis_angle_quat([1, 0, 0], alpha)}">
  <inertial pos="{_vec(LINK_COMS[index - 1])}" mass="{LINK_MASSES[index - 1]}"
            diaginertia="{_cylinder_inertia(LINK_MASSES[index - 1], LINK_LENGTHS[index - 1])}"/>
  <joint name="joint{index}" axis="0 0 1" range="{low} {high}" armature="{ARMATURE}"/>
  <geom type="cylinder" size="0.055 0.06" {_NO_COLLISION} material="arm" group="1"/>
  {link_visual}
  {inner}
</body>"""
    return inner


def _hand_xml(sim: SimConfig) -> str:
    half = sim.peg_side / 2
    tcp = TCP_BELOW_FLANGE
    tip = tcp + sim.peg_length_below_tcp
    peg_top = FINGER_BASE + 0.01
    finger_half = (0.008, 0.006, (tcp - FINGER_BASE) / 2)
    cameras = []
    # The two wrist cameras sit on either side of the hand, across the fingers' closing axis so the
    # fingers do not hide the peg, and look at a point just below the peg tip.
    look_at = np.array([0.0, 0.0, tip + 0.02])
    for name, side in zip(WRIST_CAMERAS, (1.0, -1.0), strict=True):
        position = np.array([side * 0.075, 0.0, 0.035])
        xyaxes = _look_at_xyaxes(position, look_at, up=np.array([0.0, 0.0, -1.0]))
        cameras.append(
            f'<camera name="{name}" pos="{_vec(position)}" xyaxes="{xyaxes}" fovy="{sim.camera_fovy}"/>'
            f'<geom type="box" size="0.012 0.045 0.012" pos="{_vec(position + [side * 0.008, 0, -0.01])}" '
            f'{_NO_COLLISION} material="camera" group="1"/>'
        )
    fingers = []
    for name, sign in (("left", 1.0), ("right", -1.0)):
        fingers.append(f"""
<body name="finger_{name}" pos="0 0 {FINGER_BASE}">
  <inertial pos="0 {sign * 0.01} {finger_half[2]}" mass="{FINGER_MASS}" diaginertia="2e-5 2e-5 1e-5"/>
  <joint name="finger_{name}" type="slide" axis="0 {sign} 0" range="{half} {FINGER_OPEN}"
         armature="0.05" damping="5"/>
  <geom name="finger_{name}_pad" type="box" size="{_vec(finger_half)}"
        pos="0 {sign * finger_half[1]} {finger_half[2]}" {_TOOL_COLLISION} friction="{sim.friction}"
        material="finger"/>
</body>""")
    return f"""
<body name="hand" pos="0 0 {FLANGE_D}" quat="{_axis_angle_quat([0, 0, 1], HAND_YAW)}">
  <inertial pos="0 0 0.04" mass="{HAND_MASS + PEG_MASS}" diaginertia="0.0025 0.0005 0.0025"/>
  <geom type="box" size="0.03 0.1 0.029" pos="0 0 0.029" {_NO_COLLISION} material="hand"/>
  <geom name="peg" type="box" size="{half} {half} {(tip - peg_top) / 2}"
        pos="0 0 {(tip + peg_top) / 2}" {_TOOL_COLLISION} friction="{sim.friction}" material="peg"/>
  <site name="tcp" pos="0 0 {tcp}" size="0.002" group="4"/>
  <site name="peg_tip" pos="0 0 {tip}" size="0.002" group="4"/>
  {"".join(cameras)}
  {"".join(fingers)}
</body>"""


def _fixture_xml(fixture: FixtureGeometry, sim: SimConfig) -> str:
    """A square block with a square hole: a floor, four walls, and a chamfer of 45° prisms."""
    b = fixture.hole_half_width
    w = sim.fixture_half_width
    top = fixture.top_height
    floor = top - sim.hole_depth
    c = sim.hole_chamfer
    wall_top = top - c  # without a chamfer the walls reach the top
    geoms = [
        f'<geom name="fixture_base" type="box" size="{w} {w} {floor / 2}" pos="0 0 {floor / 2}" '
        f'{_ENV_COLLISION} material="fixture"/>',
        f'<geom name="hole_floor" type="box" size="{b} {b} 0.0005" pos="0 0 {floor - 0.0005 + 1e-4}" '
        f'{_NO_COLLISION} material="hole"/>',
    ]
    wall_height = (wall_top - floor) / 2
    wall_z = (wall_top + floor) / 2
    top_z = top - c / 2
    for index, angle in enumerate((0.0, math.pi / 2, math.pi, -math.pi / 2)):
        rot = Rotation.from_rotvec([0.0, 0.0, angle])
        quat = _axis_angle_quat([0, 0, 1], angle) if angle != 0.0 else "1 0 0 0"
        # In the wall's own frame the hole is at x < b. Walls at 0 and π span the whole side;
        # walls at ±π/2 fit between them.
        span = w if index % 2 == 0 else b
        thick = (w - b) / 2
        center = rot.apply([b + thick, 0.0, 0.0])
        geoms.append(
            f'<geom type="box" size="{thick} {span} {wall_height}" pos="{_vec(center[:2])} {wall_z}" '
            f'quat="{quat}" {_ENV_COLLISION} material="hole"/>'
        )
        if c > 0:
            top_thick = (w - b - c) / 2
            top_span = w if index % 2 == 0 else b + c
            top_center = rot.apply([b + c + top_thick, 0.0, 0.0])
            geoms.append(
                f'<geom type="box" size="{top_thick} {top_span} {c / 2}" pos="{_vec(top_center[:2])} {top_z}" '
                f'quat="{quat}" {_ENV_COLLISION} material="fixture"/>'
            )
            # A square prism turned 45° about the edge: its upper inner face is the chamfer.
            chamfer_center = rot.apply([b + c, 0.0, 0.0])
            chamfer_quat = (rot * Rotation.from_rotvec([0.0, math.pi / 4, 0.0])).as_quat()
            geoms.append(
                f'<geom type="box" size="{c / math.sqrt(2)} {b + c} {c / math.sqrt(2)}" '
                f'pos="{_vec(chamfer_center[:2])} {wall_top}" '
                f'quat="{_vec([chamfer_quat[3], *chamfer_quat[:3]])}" {_ENV_COLLISION} material="fixture"/>'
            )
    return f"""
<body name="fixture" pos="{_vec(fixture.position)}" quat="{_axis_angle_quat([0, 0, 1], fixture.yaw)}">
  {"".join(geoms)}
  <site name="hole_top" pos="0 0 {top}" size="0.002" group="4"/>
  <site name="hole_bottom" pos="0 0 {floor}" size="0.002" group="4"/>
</body>"""


def scene_xml(
    task: TaskConfig, sim: SimConfig, offscreen_size: tuple[int, int] = (640, 480)
) -> str:
    """The cell's MJCF. `offscreen_size` (width, height) must cover every renderer's image size."""
    if sim.physics_dt <= 0 or sim.physics_dt > 0.002:
        raise ValueError(f"sim.physics_dt must be in (0, 0.002] s (≥ 500 Hz), got {sim.physics_dt}")
    fixture = fixture_geometry(task, sim)
    width, height = offscreen_size
    hand = _hand_xml(sim)
    return f"""
<mujoco model="franka_peg_insertion">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{sim.physics_dt}" integrator="Euler" cone="pyramidal"/>
  <visual>
    <global offwidth="{width}" offheight="{height}"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.45 0.45 0.45" specular="0.05 0.05 0.05"/>
    <quality shadowsize="2048"/>
  </visual>
  <default>
    <geom solref="0.008 1" solimp="0.95 0.99 0.001" condim="3"/>
  </default>
  <asset>
    <texture name="grid" type="2d" builtin="checker" rgb1="0.55 0.45 0.35" rgb2="0.5 0.41 0.32"
             width="256" height="256"/>
    <material name="table" texture="grid" texrepeat="8 8" rgba="0.55 0.45 0.35 1"/>
    <material name="arm" rgba="0.92 0.92 0.92 1"/>
    <material name="hand" rgba="0.85 0.85 0.88 1"/>
    <material name="camera" rgba="0.1 0.1 0.1 1"/>
    <material name="finger" rgba="0.25 0.25 0.28 1"/>
    <material name="peg" rgba="0.95 0.45 0.1 1"/>
    <material name="fixture" rgba="0.25 0.5 0.85 1"/>
    <material name="hole" rgba="0.08 0.12 0.25 1"/>
  </asset>
  <worldbody>
    <light name="ceiling" pos="0.5 0 1.5" dir="0 0 -1" diffuse="0.6 0.6 0.6" castshadow="true"/>
    <light name="side" pos="1.2 0.8 0.8" dir="-0.6 -0.5 -0.5" diffuse="0.25 0.25 0.25" castshadow="false"/>
    <geom name="table" type="box" size="0.7 0.6 0.02" pos="0.45 0 -0.02" {_ENV_COLLISION} material="table"/>
    <camera name="{OVERVIEW_CAMERA}" pos="1.25 -0.75 0.65" xyaxes="{_look_at_xyaxes(np.array([1.25, -0.75, 0.65]), np.array([0.45, 0.0, 0.15]), np.array([0.0, 0.0, 1.0]))}" fovy="45"/>
    <body name="base">
      <geom type="cylinder" size="0.07 0.05" pos="0 0 0.05" {_NO_COLLISION} material="arm" group="1"/>
      <geom type="capsule" fromto="0 0 0.05 0 0 {PANDA_DH[0][1]}" size="0.055" {_NO_COLLISION} material="arm" group="1"/>
      {_arm_xml(hand)}
    </body>
    {_fixture_xml(fixture, sim)}
  </worldbody>
  <actuator>
    {"".join(f'<motor name="torque{i + 1}" joint="joint{i + 1}" ctrlrange="{-t} {t}"/>' for i, t in enumerate(TORQUE_LIMITS))}
    <position name="finger_left" joint="finger_left" kp="100" ctrlrange="0 {FINGER_OPEN}"/>
    <position name="finger_right" joint="finger_right" kp="100" ctrlrange="0 {FINGER_OPEN}"/>
  </actuator>
</mujoco>"""
