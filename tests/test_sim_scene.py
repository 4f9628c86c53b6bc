"""The twin's MJCF: Panda kinematics against Franka's DH parameters, limits, and the hole."""

import math

import mujoco
import numpy as np
import pytest

import sim  # noqa: F401  (picks the GL backend before mujoco is used)
from robot_env.config import TaskConfig
from sim.config import SimConfig
from sim.scene import (
    FLANGE_D,
    HAND_YAW,
    JOINT_LIMITS,
    PANDA_DH,
    TCP_BELOW_FLANGE,
    fixture_geometry,
    scene_xml,
)
from sim.world import SimWorld


def _dh_tcp(q: np.ndarray) -> np.ndarray:
    """Forward kinematics straight from the modified DH table (independent of the MJCF)."""

    def rot_x(a):
        c, s = math.cos(a), math.sin(a)
        return np.array([[1, 0, 0, 0], [0, c, -s, 0], [0, s, c, 0], [0, 0, 0, 1.0]])

    def rot_z(a):
        c, s = math.cos(a), math.sin(a)
        return np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])

    def trans(x, y, z):
        t = np.eye(4)
        t[:3, 3] = (x, y, z)
        return t

    pose = np.eye(4)
    for (a, d, alpha), angle in zip(PANDA_DH, q, strict=True):
        pose = pose @ rot_x(alpha) @ trans(a, 0, 0) @ rot_z(angle) @ trans(0, 0, d)
    return pose @ trans(0, 0, FLANGE_D) @ rot_z(HAND_YAW) @ trans(0, 0, TCP_BELOW_FLANGE)


@pytest.fixture(scope="module")
def model():
    return mujoco.MjModel.from_xml_string(scene_xml(TaskConfig(), SimConfig()))


def test_kinematics_match_dh_parameters(model):
    data = mujoco.MjData(model)
    site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "tcp")
    rng = np.random.default_rng(0)
    low, high = np.array(JOINT_LIMITS).T
    for q in [np.array([0, -math.pi / 4, 0, -3 * math.pi / 4, 0, math.pi / 2, math.pi / 4])] + [
        rng.uniform(low, high) for _ in range(5)
    ]:
        data.qpos[:7] = q
        mujoco.mj_kinematics(model, data)
        expected = _dh_tcp(q)
        np.testing.assert_allclose(data.site_xpos[site], expected[:3, 3], atol=1e-9)
        np.testing.assert_allclose(data.site_xmat[site].reshape(3, 3), expected[:3, :3], atol=1e-9)
    # Franka's home pose: the TCP 0.307 m ahead, 0.487 m up, pointing down.
    data.qpos[:7] = [0, -math.pi / 4, 0, -3 * math.pi / 4, 0, math.pi / 2, math.pi / 4]
    mujoco.mj_kinematics(model, data)
    np.testing.assert_allclose(data.site_xpos[site], [0.3069, 0.0, 0.4869], atol=1e-3)


def test_joint_limits_masses_and_collision_filter(model):
    np.testing.assert_allclose(model.jnt_range[:7], JOINT_LIMITS)
    assert np.all(model.jnt_limited[:7])
    link_masses = [model.body(f"link{i}").mass[0] for i in range(1, 8)]
    assert 15.0 < sum(link_masses) < 20.0  # the Panda's arm weighs about 18 kg
    assert np.all(model.body_inertia[1:] > 0)
    peg = model.geom("peg")
    table = model.geom("table")
    # Peg collides with the table; arm links collide with nothing.
    assert (peg.contype & table.conaffinity) != 0
    link_geoms = np.flatnonzero(
        np.isin(model.geom_bodyid, [model.body(f"link{i}").id for i in range(1, 8)])
    )
    assert np.all(model.geom_contype[link_geoms] == 0) and np.all(
        model.geom_conaffinity[link_geoms] == 0
    )
    assert model.opt.timestep <= 0.002
    for name in ("tcp", "peg_tip", "hole_top", "hole_bottom"):
        model.site(name)
    for name in ("wrist_1", "wrist_2"):
        model.camera(name)


@pytest.mark.parametrize("clearance", [0.0005, 0.001, 0.002])
def test_hole_clearance_comes_from_config(clearance):
    sim_cfg = SimConfig(hole_clearance=clearance)
    world = SimWorld(TaskConfig(), sim_cfg)
    # Push the peg sideways inside the hole: its tip can travel 2 × clearance across the hole.
    geometry = fixture_geometry(TaskConfig(), sim_cfg)
    assert geometry.hole_half_width == pytest.approx(sim_cfg.peg_side / 2 + clearance)
    # Walls facing the hole sit exactly at the half width: check with a ray from the hole axis.
    hole_top, _ = world.hole_pose()
    start = hole_top - [0, 0, sim_cfg.hole_depth / 2]
    geom_id = np.zeros(1, dtype=np.int32)
    distance = mujoco.mj_ray(
        world.model, world.data, start, np.array([1.0, 0, 0]), None, 1, -1, geom_id
    )
    assert distance == pytest.approx(geometry.hole_half_width, abs=1e-9)
    # Half-way up the 45° entry chamfer the opening is wider by half the chamfer, on every side.
    for direction in ([1.0, 0, 0], [0, -1.0, 0]):
        start = hole_top - [0, 0, sim_cfg.hole_chamfer / 2]
        distance = mujoco.mj_ray(world.model, world.data, start, np.array(direction), None, 1, -1, geom_id)
        assert distance == pytest.approx(geometry.hole_half_width + sim_cfg.hole_chamfer / 2, abs=1e-6)


def test_unbuildable_geometry_is_rejected():
    task = TaskConfig(target_pose=[0.55, 0.0, 0.02, math.pi, 0.0, 0.0])
    with pytest.raises(ValueError, match="hole floor"):
        fixture_geometry(task, SimConfig())
    with pytest.raises(ValueError, match="physics_dt"):
        scene_xml(TaskConfig(), SimConfig(physics_dt=0.01))
