"""The twin's Robot and Clock: impedance tracking, the force bound from reference clipping,
blocking moves, faults and recovery."""

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import sim  # noqa: F401
from robot_env.config import EnvConfig, TaskConfig
from robot_env.geometry import pose6_to_pos_quat
from robot_env.interfaces import Clock, Robot, RobotError
from sim.config import SimConfig
from sim.robot import SimClock, SimRobot
from sim.world import SimWorld

DOWN = Rotation.from_rotvec([math.pi, 0, 0]).as_quat()


def _cell(**sim_kwargs):
    world = SimWorld(TaskConfig(), SimConfig(**sim_kwargs))
    return world, SimRobot(world), SimClock(world)


def _run(clock: SimClock, seconds: float) -> None:
    clock.sleep_until(clock.now() + seconds)


def test_implements_the_interfaces_and_reads_a_consistent_state():
    world, robot, clock = _cell()
    assert isinstance(robot, Robot) and isinstance(clock, Clock)
    state = robot.read_state()
    reset_position, reset_quat = pose6_to_pos_quat(TaskConfig().reset_pose)
    np.testing.assert_allclose(state.tcp_position, reset_position, atol=1e-5)
    assert abs(np.dot(state.tcp_quat, reset_quat)) == pytest.approx(1.0, abs=1e-8)
    assert state.gripper_width == pytest.approx(SimConfig().peg_side)
    assert state.timestamp == clock.now()
    start = clock.now()
    _run(clock, 0.1)
    assert clock.now() == pytest.approx(start + 0.1)
    assert robot.read_state().timestamp == pytest.approx(start + 0.1)


def test_compliant_controller_tracks_a_target_in_free_space():
    world, robot, clock = _cell()
    robot.set_impedance(EnvConfig().compliant)
    goal = robot.read_state().tcp_position + [0.02, -0.01, 0.01]
    goal_quat = (Rotation.from_rotvec([0, 0, 0.1]) * Rotation.from_quat(DOWN)).as_quat()
    robot.set_target(goal, goal_quat)
    _run(clock, 1.0)
    state = robot.read_state()
    np.testing.assert_allclose(state.tcp_position, goal, atol=1e-3)
    assert (
        Rotation.from_quat(state.tcp_quat).inv() * Rotation.from_quat(goal_quat)
    ).magnitude() < 0.01
    assert np.linalg.norm(state.tcp_twist) < 0.01
    np.testing.assert_allclose(state.wrench, 0.0)  # nothing touched


def test_reference_clipping_bounds_the_contact_force():
    world, robot, clock = _cell()
    compliant = EnvConfig().compliant
    robot.set_impedance(EnvConfig().stiff)
    hole_top, _ = world.hole_pose()
    above_fixture = hole_top + [0.03, 0.0, world.sim.peg_length_below_tcp + 0.01]
    robot.move_to(above_fixture, DOWN)
    robot.set_impedance(compliant)
    # Ask for 10 cm into the fixture top: the force must stay at stiffness × max offset.
    robot.set_target(above_fixture - [0, 0, 0.1], DOWN)
    _run(clock, 1.5)
    state = robot.read_state()
    bound = compliant.translational_stiffness * compliant.max_reference_offset_m
    assert state.wrench[2] == pytest.approx(bound, rel=0.05)  # pushes up on the peg
    assert world.ground_truth().insertion_depth == pytest.approx(
        0.0, abs=1e-3
    )  # resting on the top


def test_move_to_arrives_and_times_out_with_robot_error():
    world, robot, clock = _cell()
    robot.set_impedance(EnvConfig().stiff)
    goal = np.array([0.6, -0.05, 0.18])
    goal_quat = (Rotation.from_rotvec([0, 0, -0.4]) * Rotation.from_quat(DOWN)).as_quat()
    robot.move_to(goal, goal_quat)
    state = robot.read_state()
    assert np.linalg.norm(state.tcp_position - goal) <= world.sim.move_tolerance_m
    hole_top, _ = world.hole_pose()
    # A goal 1 cm inside the fixture top cannot be reached.
    inside = hole_top + [0.03, 0.0, world.sim.peg_length_below_tcp - 0.01]
    with pytest.raises(RobotError, match="did not arrive"):
        robot.move_to(inside, DOWN, timeout_s=1.0)
    robot.set_target(goal, goal_quat)  # still usable: a timeout is not a fault


def test_reflex_fault_blocks_commands_until_recover():
    world, robot, clock = _cell(reflex_force=10.0)
    robot.set_impedance(EnvConfig().stiff)
    hole_top, _ = world.hole_pose()
    above_fixture = hole_top + [0.03, 0.0, world.sim.peg_length_below_tcp + 0.005]
    robot.move_to(above_fixture, DOWN)
    robot.set_impedance(EnvConfig().compliant)  # 15 N against the top > 10 N reflex
    robot.set_target(above_fixture - [0, 0, 0.05], DOWN)
    _run(clock, 1.0)
    with pytest.raises(RobotError, match="reflex"):
        robot.set_target(above_fixture, DOWN)
    robot.recover()
    robot.set_target(above_fixture + [0, 0, 0.02], DOWN)
    _run(clock, 0.5)
    assert robot.read_state().tcp_position[2] > above_fixture[2]


def test_joint_reset_returns_home_and_gripper_reports_width():
    world, robot, clock = _cell()
    robot.set_impedance(EnvConfig().stiff)
    robot.move_to(np.array([0.5, 0.06, 0.2]), DOWN)
    robot.joint_reset()
    np.testing.assert_allclose(robot.read_state().joint_positions, world.q_home, atol=0.01)
    robot.set_gripper(closed=False)
    _run(clock, 0.5)
    assert robot.read_state().gripper_width == pytest.approx(0.08, abs=1e-3)
    robot.set_gripper(closed=True)
    _run(clock, 0.5)
    assert robot.read_state().gripper_width == pytest.approx(world.sim.peg_side, abs=1e-3)
    robot.close()
    with pytest.raises(RobotError, match="closed"):
        robot.set_target(np.array([0.5, 0.0, 0.2]), DOWN)


def test_real_time_clock_paces_to_wall_time():
    import time

    world = SimWorld(TaskConfig(), SimConfig(), real_time=True)
    clock = SimClock(world)
    _run(clock, 0.05)  # anchors the schedule
    started = time.monotonic()
    for _ in range(3):
        _run(clock, 0.1)
    assert time.monotonic() - started >= 0.28
