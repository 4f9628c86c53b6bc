"""A NaN or infinite action is refused by `FrankaEnv.step` before anything reaches the robot
(docs/hardware.md, "Safety model"): one `ActionError`, the arm untouched, the episode intact."""

import numpy as np
import pytest

import sim
from robot_env import ActionError
from robot_env.errors import UserError


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("index", [0, 5])
def test_non_finite_action_never_reaches_the_twin(bad, index):
    env = sim.make_env(state_only=True, max_episode_steps=3)
    env.reset(seed=0)
    world = sim.sim_world(env)
    robot = env.unwrapped.robot
    targets = []
    set_target = robot.set_target
    robot.set_target = lambda position, quat: (targets.append(position), set_target(position, quat))[1]
    time_before, qpos_before = world.data.time, world.data.qpos.copy()

    action = np.zeros(6)
    action[index] = bad
    with pytest.raises(ActionError, match=rf"non-finite components at \[{index}\]") as info:
        env.step(action)
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)
    assert targets == []  # nothing was commanded
    assert world.data.time == time_before  # no control period ran
    np.testing.assert_array_equal(world.data.qpos, qpos_before)

    # The refused step does not count: the episode still has all its steps, and they work.
    for step in range(3):
        observation, _, _, truncated, _ = env.step(np.zeros(6))
        assert np.all(np.isfinite(observation["state"])) and truncated == (step == 2)
    assert len(targets) == 3


def test_wrong_shape_is_an_action_error_too():
    env = sim.make_env(state_only=True, fixed_gripper_closed=False)
    env.reset(seed=0)
    with pytest.raises(ActionError, match=r"shape \(7,\)"):
        env.step(np.zeros(6))
