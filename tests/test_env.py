"""FrankaEnv against its real peer, the state-only MuJoCo twin: safety box, clock, reset, wrappers."""

import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

import sim
from franka_rl.config import load_config
from robot_env import STATE_LAYOUT, FrankaEnv, ObservationHistoryWrapper


def make(*overrides):
    cfg = load_config(None, ["env.cameras=[]", *overrides])
    return sim.make_env(cfg)


@pytest.fixture(scope="module")
def env():
    environment = make("task.max_episode_steps=1000")
    yield environment
    environment.close()


actions = st.lists(
    st.lists(st.floats(-1.5, 1.5, allow_nan=False), min_size=7, max_size=7), min_size=1, max_size=25
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=actions, seed=st.integers(0, 2**16))
def test_no_commanded_target_leaves_the_safety_box(env, sequence, seed):
    base: FrankaEnv = env.unwrapped
    base.reset(seed=seed)
    for action in sequence:
        _, _, terminated, truncated, info = base.step(np.asarray(action, dtype=np.float32))
        assert base.safety_box.contains(info["commanded_position"], info["commanded_quat"], tolerance=1e-7)
        if terminated or truncated:
            break


def test_pushing_against_every_face_is_clipped(env):
    base: FrankaEnv = env.unwrapped
    base.reset(seed=1)
    # Not +z: the end-effector z axis points down the peg, and pushing down the fixture stops the
    # peg before the box floor (the floor is set for a peg inside the hole).
    faces = [(axis, sign) for axis in range(6) for sign in (-1.0, 1.0) if (axis, sign) != (2, 1.0)]
    for axis, sign in faces:
        action = np.zeros(7, dtype=np.float32)
        action[axis] = sign
        clipped = False
        # Rotation is slow with the compliant gains (the reference offset is clipped to 0.05 rad,
        # critically damped: ~0.03 rad per step), so give it time to reach the ±0.6 rad yaw bound.
        for _ in range(50):
            _, _, _, _, info = base.step(action)
            assert base.safety_box.contains(info["commanded_position"], info["commanded_quat"], 1e-7)
            clipped |= info["target_clipped"]
        assert clipped, f"pushing along axis {axis} sign {sign} never reached the box"
        base.reset(seed=1)


def test_simulated_time_advances_one_period_per_step_without_sleeping(env):
    base: FrankaEnv = env.unwrapped
    base.reset(seed=0)
    period = 1.0 / base.env_cfg.control_hz
    start_sim, start_wall = base.clock.now(), time.monotonic()
    for step in range(1, 11):
        _, _, _, _, info = base.step(np.zeros(7, dtype=np.float32))
        assert base.clock.now() - start_sim == pytest.approx(step * period, abs=1e-9)
        assert info["period_overrun_s"] == 0.0
        assert info["observation_age_s"] == pytest.approx(0.0, abs=1e-9)
    # Ten periods are one second of robot time; the twin must not have slept it away.
    assert time.monotonic() - start_wall < 0.5


def test_real_time_mode_paces_to_the_wall_clock():
    environment = make("env.real_time=true")
    environment.reset(seed=0)
    start = time.monotonic()
    for _ in range(5):
        environment.step(np.zeros(6, dtype=np.float32))
    assert time.monotonic() - start >= 0.45
    environment.close()


def test_reset_randomisation_stays_in_the_configured_ranges(env):
    base: FrankaEnv = env.unwrapped
    task = base.task
    offsets, yaws = [], []
    for seed in range(12):
        observation, _ = base.reset(seed=seed)
        state = observation["state"]
        offsets.append(state[STATE_LAYOUT["tcp_position"]])
        yaws.append(Rotation.from_rotvec(state[STATE_LAYOUT["tcp_rotvec"]]).as_euler("xyz")[2])
    offsets, yaws = np.array(offsets), np.abs(np.array(yaws))
    # The reset move lands within a few mm and a few hundredths of a radian of the sample.
    assert np.all(np.abs(offsets[:, :2]) <= np.array(task.reset_position_noise[:2]) + 0.005)
    assert np.all(np.abs(offsets[:, 2]) <= 0.005)
    assert np.all(np.abs(yaws) <= abs(task.reset_yaw_noise) + 0.03)
    # ... and actually spreads: not every episode starts in the same place.
    assert np.ptp(offsets[:, 0]) > 0.02 and np.ptp(yaws) > 0.1


def test_state_layout_and_dtype(env):
    observation, info = env.reset(seed=3)
    assert observation["state"].dtype == np.float32
    assert observation["state"].shape == (19,)
    assert observation["state"][STATE_LAYOUT["gripper_width"]][0] > 0.0
    assert env.observation_space.contains(observation)
    assert info["success"] is False


def test_same_seed_same_trajectory(env):
    def rollout(seed):
        observation, _ = env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        states = [observation["state"]]
        for _ in range(15):
            observation, *_ = env.step(rng.uniform(-1, 1, 6).astype(np.float32))
            states.append(observation["state"])
        return np.stack(states)

    np.testing.assert_array_equal(rollout(11), rollout(11))


def test_episode_truncates_at_the_task_length_and_reports_statistics():
    environment = make("task.max_episode_steps=5")
    environment.reset(seed=0)
    for step in range(5):
        _, _, terminated, truncated, info = environment.step(np.zeros(6, dtype=np.float32))
        assert not terminated
        assert truncated == (step == 4)
    assert info["episode"]["length"] == 5 and info["episode"]["success"] is False
    environment.close()


def test_fixed_gripper_and_history_wrappers():
    environment = make("env.history_horizon=3")
    assert environment.action_space.shape == (6,)
    history = next(
        wrapper for wrapper in _wrapper_chain(environment) if isinstance(wrapper, ObservationHistoryWrapper)
    )
    observation, _ = environment.reset(seed=0)
    assert observation["state"].shape == (3, 19)
    np.testing.assert_array_equal(observation["state"][0], observation["state"][2])
    next_observation, *_ = environment.step(np.ones(6, dtype=np.float32))
    np.testing.assert_array_equal(next_observation["state"][1], observation["state"][2])
    assert history.observation_space.contains(next_observation)
    environment.close()


def _wrapper_chain(environment):
    while hasattr(environment, "env"):
        yield environment
        environment = environment.env


def test_a_fault_during_the_reset_move_is_recovered_and_the_reset_retried(monkeypatch):
    """A transient fault in the blocking reset move (franky's planner refusing the arm's motion
    state, a reflex) is recovered and the reset retried from a joint-space move home; a recovery
    whose clearing lift fails is one more failed attempt, not the end; each retry waits for the arm
    to be still (at least 0.5 s, doubling); a fault on every attempt is one RobotError; a refused
    recovery (a person must act) ends the reset at once."""
    from robot_env.interfaces import RecoveryRefused, RobotError

    environment = make()
    base: FrankaEnv = environment.unwrapped
    robot = base.robot
    real_move, real_recover, real_joint_reset = robot.move_to, robot.recover, robot.joint_reset
    failures, recoveries, joint_resets = {"left": 1, "recover": None}, [], []

    failed_at, retried_at = [], []

    def flaky_move(position, quat, timeout_s=10.0):
        if failures["left"] > 0:
            failures["left"] -= 1
            failed_at.append(base.clock.now())
            raise RobotError("the move failed: Motion planner failed with error code -111")
        real_move(position, quat, timeout_s)

    def joint_reset():
        retried_at.append(base.clock.now())
        joint_resets.append(1)
        real_joint_reset()

    def recover():
        recoveries.append(1)
        real_recover()
        if failures["recover"] is not None:
            raise failures["recover"]

    monkeypatch.setattr(robot, "move_to", flaky_move)
    monkeypatch.setattr(robot, "recover", recover)
    monkeypatch.setattr(robot, "joint_reset", joint_reset)
    _, info = base.reset(seed=3)
    assert failures["left"] == 0 and len(recoveries) == 1 and len(joint_resets) == 1
    # Not tried again at once: the arm is given time to come to rest first.
    assert retried_at[0] - failed_at[0] >= 0.5
    assert np.max(np.abs(robot.read_state().joint_velocities)) < 0.05
    reset_position = robot.read_state().tcp_position
    assert np.linalg.norm(reset_position - base._reset_position) < 0.05  # it did reach the start

    # The recovery's own lift fails after the first attempt: the joint move home and the second
    # attempt still come.
    failures["left"], failures["recover"] = 1, RobotError("the move to (-0.176, -0.079, 0.035) m failed: -110")
    base.reset(seed=3)
    assert failures["left"] == 0 and len(recoveries) == 2 and len(joint_resets) == 2

    failures["left"], failures["recover"] = 10, None
    failed_at.clear()
    with pytest.raises(RobotError, match="failed 4 times in a row.*-111"):
        base.reset(seed=3)
    assert len(recoveries) == 5  # recovered between attempts, not after the last
    assert np.all(np.diff(failed_at) >= np.array([0.5, 1.0, 2.0]) - 1e-9)  # the pause doubles

    failures["left"], failures["recover"] = 10, RecoveryRefused("the arm refused automatic error recovery")
    with pytest.raises(RecoveryRefused):
        base.reset(seed=3)
    assert len(recoveries) == 6  # no retry once a person has to act
    environment.close()
