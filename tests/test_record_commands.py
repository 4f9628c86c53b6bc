"""record-demos and record-rewards: the recording loops on a tiny env, then the real CLI on the
MuJoCo twin with the scripted device (the issue's acceptance counts)."""

from __future__ import annotations

import io

import gymnasium as gym
import numpy as np
import pytest

from agent.data import EpisodeStore
from agent.data.reward_frames import load_reward_frames
from franka_rl.cli import main
from teleop import ScriptedDevice, TeleopCommand
from teleop.recording import StatusLine, record_demos, record_reward_frames


class LineEnv(gym.Env):
    """x moves by the action; success (terminated, reward 1) once x >= 3; 10-step limit."""

    def __init__(self):
        self.observation_space = gym.spaces.Dict({
            "state": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32),
            "wrist_1": gym.spaces.Box(0, 255, (4, 4, 3), np.uint8),
        })
        self.action_space = gym.spaces.Box(-1, 1, (6,), np.float32)

    def _obs(self):
        return {"state": np.array([self.x], np.float32), "wrist_1": np.full((4, 4, 3), int(self.x * 10) % 256, np.uint8)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.t = 0.0, 0
        return self._obs(), {"success": False}

    def step(self, action):
        self.x += float(action[0])
        self.t += 1
        success = self.x >= 3
        return self._obs(), float(success), success, self.t >= 10, {"success": success}


def quiet():
    return StatusLine(stream=io.StringIO())


def test_record_demos_keeps_failures_and_stores_executed_actions(tmp_path):
    # Episode 0: the operator pushes too weakly (fails at the time limit); later ones succeed.
    episode = {"n": -1}

    def script(observation, step):
        if step == 0:
            episode["n"] += 1
        return np.array([0.2 if episode["n"] == 0 else 1.0, 0, 0, 0, 0, 0], np.float32)

    store = EpisodeStore(tmp_path / "demos", create=True)
    stats = record_demos(LineEnv(), ScriptedDevice(script), store, num_successes=2,
                         metadata={"task": "line", "source": "teleop"}, status=quiet())
    assert (stats.episodes, stats.successes, stats.failures) == (3, 2, 1)
    episodes = list(store.episodes())
    assert [e.success for e in episodes] == [False, True, True]
    assert len(episodes[0]) == 10 and episodes[0].truncated[-1] and not episodes[0].terminated.any()
    np.testing.assert_allclose(episodes[0].actions[:, 0], 0.2)  # the device's action, not the policy's 0
    assert episodes[1].intervened.all() and len(episodes[1]) == 3
    assert [e.metadata["seed"] for e in episodes] == [0, 1, 2]


def test_operator_marks_success_and_failure(tmp_path):
    marks = {2: TeleopCommand(success=True)}

    class Marker(ScriptedDevice):
        def read(self, observation=None):
            command = marks.get(self._step, TeleopCommand(twist=np.array([0.1, 0, 0, 0, 0, 0], np.float32)))
            self._step += 1
            return command

    store = EpisodeStore(tmp_path, create=True)
    stats = record_demos(LineEnv(), Marker(lambda o, s: None), store, num_successes=1, success_from="operator",
                         hold_over_steps=0, metadata={"task": "line", "source": "teleop"}, status=quiet())
    assert stats.successes == 1
    (episode,) = store.episodes()
    assert len(episode) == 3 and episode.terminated[-1] and episode.rewards[-1] == 1.0 and episode.success
    assert not episode.intervened[-1]  # the mark alone did not move the arm


def test_interrupt_writes_the_episode_in_progress(tmp_path):
    def script(observation, step):
        if step == 4:
            raise KeyboardInterrupt
        return np.array([0.1, 0, 0, 0, 0, 0], np.float32)

    store = EpisodeStore(tmp_path, create=True)
    stats = record_demos(LineEnv(), ScriptedDevice(script), store, num_successes=5,
                         metadata={"task": "line", "source": "teleop"}, status=quiet())
    assert stats.interrupted
    (episode,) = store.episodes()
    assert len(episode) == 4 and episode.truncated[-1]


def test_reward_frames_are_labelled_per_observation(tmp_path):
    store = EpisodeStore(tmp_path, create=True)
    device = ScriptedDevice(lambda o, s: np.array([1.0, 0, 0, 0, 0, 0], np.float32))
    stats = record_reward_frames(LineEnv(), device, store, positives=5, negatives=6, steps_after_success=3,
                                 metadata={"task": "line", "source": "teleop"}, status=quiet())
    frames = load_reward_frames(tmp_path)
    labels = frames["labels"]
    assert labels.sum() == stats.positives >= 5 and (~labels).sum() == stats.negatives >= 6
    # The label is the ground truth of the frame it sits beside: x >= 3.
    np.testing.assert_array_equal(labels, frames["observations"]["state"][:, 0] >= 3)


def test_real_mode_refuses_the_scripted_device(tmp_path, capsys):
    code = main(["record-demos", "--out", str(tmp_path), "mode=real", "teleop.device=scripted"])
    assert code == 2 and "scripted replays the twin's expert" in capsys.readouterr().err


def test_record_demos_cli_in_the_twin(tmp_path, capsys):
    out = tmp_path / "demos"
    assert main(["record-demos", "--successes", "20", "--out", str(out)]) == 0
    episodes = list(EpisodeStore(out).episodes())
    successes = [e for e in episodes if e.success]
    assert len(successes) == 20
    first = successes[0]
    assert first.observations["wrist_1"].dtype == np.uint8 and first.observations["wrist_1"].shape[1:] == (128, 128, 3)
    assert first.actions.shape[1] == 6 and first.metadata["source"] == "teleop"
    assert first.metadata["device"] == "scripted" and first.metadata["config_hash"]
    assert "wrote" in capsys.readouterr().out
    assert main(["dataset", "info", str(out), "--no-sheet"]) == 0
    assert "successes          20" in capsys.readouterr().out


def test_record_rewards_cli_in_the_twin(tmp_path, capsys):
    out = tmp_path / "rewards"
    assert main(["record-rewards", "--out", str(out)]) == 0
    frames = load_reward_frames(out)
    assert frames["labels"].sum() >= 200 and (~frames["labels"]).sum() >= 500
    assert frames["observations"]["wrist_2"].shape[0] == frames["labels"].shape[0]
    assert "positive" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["teleop.device=joystick", "teleop.dead_zone=lots"])
def test_bad_teleop_config_is_one_line(tmp_path, capsys, bad):
    assert main(["record-demos", "--out", str(tmp_path), bad]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("teleop" in err)
