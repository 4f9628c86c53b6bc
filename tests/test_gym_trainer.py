"""train-gym: the env adapter, buffer->agent batches, RLPD mixing, and short real runs on Pendulum-v1
(online SAC through the CLI; offline Cal-QL then WSRL fine-tuning through the library)."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

from agent.checkpoint import AgentCheckpointer, restore_agent
from agent.config import AgentConfig
from agent.core import create_agent
from agent.data import EpisodeStore, ReplayBuffer
from agent.data.episodes import Episode, make_metadata
from agent.gym_env import GymEnvError, agent_observations, make_gym_env, normalize_actions
from agent.gym_trainer import GymRun, TrainGymError, reward_kind_warning, train_gym
from agent.metrics import read_metrics
from agent.returns import RewardShaping
from agent.sampling import sample_batches
from franka_rl.assemble import buffer_factory
from franka_rl.cli import main

TINY = ["agent.network.critic_hidden_dims=[32,32]", "agent.network.actor_hidden_dims=[32,32]",
        "agent.sac.batch_size=32", "agent.sac.utd=2"]


def tiny_config(**sections) -> AgentConfig:
    cfg = AgentConfig()
    cfg.network.critic_hidden_dims = [32, 32]
    cfg.network.actor_hidden_dims = [32, 32]
    cfg.network.num_critics = 2
    cfg.sac.batch_size = 32
    cfg.sac.utd = 2
    cfg.sac.discount = 0.99
    cfg.reward.scale, cfg.reward.bias, cfg.reward.sparse = 1.0, 0.0, False
    cfg.encoder.proprio_dim = 0
    for section, values in sections.items():
        for key, value in values.items():
            setattr(getattr(cfg, section), key, value)
    return cfg


def test_pendulum_actions_are_rescaled_to_the_env_bounds():
    env = make_gym_env("Pendulum-v1", seed=0)
    assert env.action_space.low.tolist() == [-1.0] and env.action_space.high.tolist() == [1.0]
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"state"} and obs["state"].shape == (3,) and obs["state"].dtype == np.float32
    env.step(np.array([1.0], np.float32))
    assert env.unwrapped.last_u == pytest.approx(2.0)  # Pendulum's torque limit
    env.step(np.array([-0.5], np.float32))
    assert env.unwrapped.last_u == pytest.approx(-1.0)
    assert normalize_actions(np.array([[2.0], [-1.0], [0.0]]), env.unwrapped.action_space).ravel().tolist() == \
        [1.0, -0.5, 0.0]


def test_dict_observations_keep_images_and_concatenate_the_rest_in_key_order():
    space = gym.spaces.Dict({
        "velocity": gym.spaces.Box(-1, 1, (2,), np.float32),
        "camera": gym.spaces.Box(0, 255, (8, 8, 3), np.uint8),
        "angle": gym.spaces.Box(-1, 1, (1, 1), np.float64),
    })
    obs = {"velocity": np.array([[1.0, 2.0]]), "camera": np.zeros((1, 8, 8, 3), np.uint8), "angle": np.array([[[3.0]]])}
    out = agent_observations(obs, space, batch_dims=1)
    assert set(out) == {"state", "camera"}
    np.testing.assert_array_equal(out["state"], [[3.0, 1.0, 2.0]])  # angle before velocity
    assert out["state"].dtype == np.float32 and out["camera"].dtype == np.uint8


def test_discrete_actions_are_refused_with_one_line():
    with pytest.raises(GymEnvError, match="continuous actions"):
        make_gym_env("CartPole-v1")


def _buffer_with(reward: float, episodes: int = 2, steps: int = 5) -> ReplayBuffer:
    buffer = ReplayBuffer({"state": ((2,), np.float32)}, 1, 64,
                          shaping=RewardShaping(scale=2.0, bias=-1.0, discount=0.9, sparse=False))
    for _ in range(episodes):
        buffer.add_episode({"state": np.zeros((steps + 1, 2), np.float32)}, np.zeros((steps, 1)),
                           np.full(steps, reward), np.zeros(steps), np.eye(1, steps, steps - 1)[0])
    return buffer


def test_utd_batches_carry_raw_rewards_so_the_update_shapes_them_once():
    buffer = _buffer_with(reward=3.0)
    batches = sample_batches(buffer, None, np.random.default_rng(0), batch_size=4, groups=2, offline_ratio=0.0)
    np.testing.assert_array_equal(batches["rewards"], np.full((2, 4), 3.0))  # raw, not 2 * 3 - 1
    assert set(batches) == {"observations", "next_observations", "actions", "rewards", "masks", "mc_returns"}
    # The last step of each episode is a time limit: bootstrapped by default, terminal on request.
    assert np.all(batches["masks"] == 1.0)
    terminal = sample_batches(buffer, None, np.random.default_rng(0), 64, 1, 0.0, bootstrap_on_truncation=False)
    assert 0.0 in terminal["masks"] and 1.0 in terminal["masks"]


def test_rlpd_mixing_takes_the_offline_share_of_every_utd_batch():
    online, offline = _buffer_with(reward=0.0), _buffer_with(reward=1.0)
    rng = np.random.default_rng(0)
    batches = sample_batches(online, offline, rng, batch_size=8, groups=3, offline_ratio=0.25)
    assert batches["rewards"].shape == (3, 8) and batches["observations"]["state"].shape == (3, 8, 2)
    np.testing.assert_array_equal(batches["rewards"], np.tile([1, 1, 0, 0, 0, 0, 0, 0], (3, 1)))
    only_online = sample_batches(online, offline, rng, batch_size=8, groups=2, offline_ratio=0.0)
    assert np.all(only_online["rewards"] == 0.0)
    empty_online = ReplayBuffer({"state": ((2,), np.float32)}, 1, 16,
                                shaping=RewardShaping(scale=2.0, bias=-1.0, discount=0.9, sparse=False))
    assert np.all(sample_batches(empty_online, offline, rng, 8, 1, 0.5)["rewards"] == 1.0)


def test_reward_kind_warning_for_dense_rewards_under_the_sparse_rule():
    assert reward_kind_warning(np.array([-3.2, -0.1]), sparse=True) is not None
    assert reward_kind_warning(np.array([0.0, 1.0]), sparse=True) is None
    assert reward_kind_warning(np.array([-3.2, -0.1]), sparse=False) is None


def test_train_gym_cli_on_pendulum_writes_metrics_checkpoint_and_curve(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train-gym", "--env", "Pendulum-v1", "--max-episode-steps", "50", "--steps", "150",
                 "--random-steps", "50", "--eval-every", "75", "--eval-episodes", "1", "--log-every", "50",
                 "--no-progress", "--out", str(out), *TINY])
    assert code == 0
    assert "final evaluation return" in capsys.readouterr().out
    rows = read_metrics(out / "metrics.jsonl")
    evals = [r for r in rows if "eval/return_mean" in r]
    assert [r["step"] for r in evals] == [75, 150]
    assert all(np.isfinite(r["eval/return_mean"]) and -1000 < r["eval/return_mean"] <= 0 for r in evals)
    train = [r for r in rows if "train/critic_loss" in r]
    assert [r["step"] for r in train] == [50, 100, 150] and all(np.isfinite(r["train/critic_loss"]) for r in train)
    assert any("train_episode/return" in r for r in rows)
    png = (out / "learning_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["env_steps"] == 150 and summary["final_eval"]["step"] == 150
    assert "agent.sac.discount" not in (out / "config.yaml").read_text()
    assert "discount: 0.99" in (out / "config.yaml").read_text()

    # The checkpoint restores into an agent built from the run's settings (2 critics, 32-wide).
    assert AgentCheckpointer(out / "checkpoints").all_steps() == [150]
    template = create_agent(tiny_config(), {"state": np.zeros(3, np.float32)}, 1, seed=5)
    restored, extra = restore_agent(out / "checkpoints", template)
    assert extra["env_steps"] == 150 and extra["algo"] == "sac"
    assert not np.array_equal(np.asarray(restored.actor.params["mean"]["kernel"]),
                              np.asarray(template.actor.params["mean"]["kernel"]))

    # Running again into the same directory would overwrite the run: refused.
    assert main(["train-gym", "--env", "Pendulum-v1", "--steps", "10", "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_bad_env_id_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["train-gym", "--env", "NoSuchEnv-v9", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "NoSuchEnv-v9" in err and "Traceback" not in err
    assert not out.exists()
    assert main(["train-gym", "--env", "Pendulum-v1", "--out", str(out), "agent.sac.no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert not out.exists()


def _random_pendulum_episodes(directory, episodes: int, seed: int = 0) -> None:
    """Episodes in Pendulum's own units (actions in [-2, 2]), as a recorder would store them."""
    env = gym.make("Pendulum-v1")
    store = EpisodeStore(directory, create=True)
    rng = np.random.default_rng(seed)
    for index in range(episodes):
        obs, _ = env.reset(seed=seed + index)
        observations, actions, rewards = [obs], [], []
        done = False
        while not done:
            action = rng.uniform(-2, 2, 1).astype(np.float32)
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            done = terminated or truncated
        steps = len(actions)
        store.write(Episode(
            observations={"state": np.asarray(observations, np.float32)}, actions=np.asarray(actions),
            rewards=np.asarray(rewards, np.float32), terminated=np.zeros(steps, bool),
            truncated=np.eye(1, steps, steps - 1, dtype=bool)[0], intervened=np.zeros(steps, bool),
            metadata=make_metadata(task="Pendulum-v1", source="policy"),
        ))


def test_offline_calql_then_wsrl_fine_tuning(tmp_path):
    data = tmp_path / "episodes"
    _random_pendulum_episodes(data, episodes=2)
    cfg = tiny_config(cql={"enabled": True, "calql_bound": True, "n_actions": 2}, online={"warmup_steps": 50},
                      sac={"utd": 1})
    run = GymRun(env_id="Pendulum-v1", run_dir=tmp_path / "run", algo="calql", env_steps=100,
                 offline_data=str(data), offline_steps=40, eval_every=20, eval_episodes=1, log_every=20,
                 max_episode_steps=20, progress=False)
    summary = train_gym(run, cfg, buffer_factory(cfg), seed=0, log=lambda message: None)
    rows = read_metrics(run.run_dir / "metrics.jsonl")
    offline = [r for r in rows if "offline/critic_loss" in r]
    assert [r["step"] for r in offline] == [20, 40]
    # Cal-QL ran with its bound on the offline data's (dense) MC returns.
    assert all(np.isfinite(r["offline/cql_penalty"]) and 0 <= r["offline/calql_bound_rate"] <= 1 for r in offline)
    assert all(r["offline/mc_return"] < -10 for r in offline)  # a real dense return, not the 0 failure value
    assert [r["step"] for r in rows if "offline_eval/return_mean" in r] == [20, 40]
    # WSRL: no updates during the 50 warm-up steps, then SAC without the CQL term.
    train = [r for r in rows if "train/critic_loss" in r]
    assert [r["step"] for r in train] == [60, 80, 100]
    assert not any("train/cql_penalty" in r for r in train)
    assert all(r["train/drift_kl"] > -1e-5 and "train/drift_action_mse" in r for r in train)  # forgetting diagnostics
    assert summary["offline_steps"] == 40 and summary["env_steps"] == 100
    steps = AgentCheckpointer(run.run_dir / "checkpoints").all_steps()
    assert steps == [40, 140]
    assert (run.run_dir / "learning_curve.png").stat().st_size > 5000


def test_offline_data_that_does_not_fit_the_env_is_refused(tmp_path):
    data = tmp_path / "episodes"
    _random_pendulum_episodes(data, episodes=1)
    cfg = tiny_config(cql={"enabled": True})
    run = GymRun(env_id="MountainCarContinuous-v0", run_dir=tmp_path / "run", algo="calql", env_steps=0,
                 offline_data=str(data), offline_steps=5, progress=False)
    with pytest.raises(TrainGymError, match="another env"):
        train_gym(run, cfg, buffer_factory(cfg), log=lambda message: None)
    missing = GymRun(env_id="Pendulum-v1", run_dir=tmp_path / "run2", algo="calql", env_steps=0,
                     offline_data="nobody/nothing-v0", offline_steps=5, progress=False)
    with pytest.raises(TrainGymError, match="Minari"):
        train_gym(missing, cfg, buffer_factory(cfg), log=lambda message: None)
    rlpd_without_ratio = GymRun(env_id="Pendulum-v1", run_dir=tmp_path / "run3", algo="sac",
                                offline_data=str(data), progress=False)
    with pytest.raises(TrainGymError, match="offline_ratio"):
        train_gym(rlpd_without_ratio, tiny_config(), buffer_factory(tiny_config()), log=lambda message: None)


def test_rlpd_preset_mixes_offline_data_from_the_first_step(tmp_path):
    data = tmp_path / "episodes"
    _random_pendulum_episodes(data, episodes=1)
    out = tmp_path / "run"
    code = main(["train-gym", "--env", "Pendulum-v1", "--preset", "rlpd", "--algo", "sac", "--offline-data",
                 str(data), "--steps", "60", "--random-steps", "0", "--max-episode-steps", "20", "--eval-every",
                 "60", "--eval-episodes", "1", "--log-every", "20", "--no-progress", "--out", str(out), *TINY])
    assert code == 0
    assert "offline_ratio: 0.5" in (out / "config.yaml").read_text()
    rows = read_metrics(out / "metrics.jsonl")
    # Updates run before the first online episode ends: the offline half fills the batch.
    assert [r["step"] for r in rows if "train/critic_loss" in r] == [20, 40, 60]
    assert all(r["train/mc_return"] < -10 for r in rows if "train/mc_return" in r)


class _InterruptedPendulum(gym.Wrapper):
    """Pendulum whose 30th step raises KeyboardInterrupt, as Ctrl-C would."""

    def __init__(self, **kwargs):
        super().__init__(gym.make("Pendulum-v1", **kwargs))
        self.steps = 0

    def step(self, action):
        self.steps += 1
        if self.steps == 30:
            raise KeyboardInterrupt
        return self.env.step(action)


def test_ctrl_c_keeps_a_checkpoint_and_the_metrics(tmp_path):
    gym.register("InterruptedPendulumTest-v0", entry_point=_InterruptedPendulum)
    run = GymRun(env_id="InterruptedPendulumTest-v0", run_dir=tmp_path / "run", env_steps=100, random_steps=100,
                 max_episode_steps=10, progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_gym(run, tiny_config(), buffer_factory(tiny_config()), log=lambda message: None)
    assert AgentCheckpointer(run.run_dir / "checkpoints").all_steps() == [29]
    # The summary and the learning curve are written too, and say the run was interrupted.
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["env_steps"] == 29
    assert (run.run_dir / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    rows = read_metrics(run.run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows if "train_episode/return" in r] == [10, 20]


class _CameraEnv(gym.Env):
    """A tiny image env: a 16x16 camera, a 2-vector `pos`; reward -|pos|; `success` when |pos| < 0.5.
    `observation_space` may nest the vector in a sub-Dict (`nested=True`)."""

    def __init__(self, nested: bool = False, success_key: str = "is_success", interrupt_after: int = 0,
                 camera: bool = True):
        camera_space = gym.spaces.Box(0, 255, (16, 16, 3), np.uint8) if camera else gym.spaces.Box(-1, 1, (1,))
        pos = gym.spaces.Box(-5, 5, (2,), np.float32)
        self.nested = nested
        self.observation_space = gym.spaces.Dict(
            {"camera": camera_space, "observation": gym.spaces.Dict({"robot": pos})} if nested
            else {"camera": camera_space, "pos": pos})
        self.camera = camera
        self.action_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        self.success_key, self.interrupt_after, self.steps = success_key, interrupt_after, 0
        self.pos = np.zeros(2, np.float32)

    def _obs(self):
        camera = np.full((16, 16, 3), int(np.clip(128 + 20 * self.pos[0], 0, 255)), np.uint8) if self.camera \
            else np.zeros(1, np.float32)
        return {"camera": camera, "observation": {"robot": self.pos.copy()}} if self.nested \
            else {"camera": camera, "pos": self.pos.copy()}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-2, 2, 2).astype(np.float32)
        return self._obs(), {}

    def step(self, action):
        self.steps += 1
        if self.interrupt_after and self.steps > self.interrupt_after:
            raise KeyboardInterrupt
        self.pos = np.clip(self.pos + 0.5 * np.asarray(action, np.float32), -5, 5)
        distance = float(np.linalg.norm(self.pos))
        return self._obs(), -distance, False, False, {self.success_key: distance < 0.5}


gym.register("CameraTest-v0", entry_point=_CameraEnv, max_episode_steps=10)


def _camera_config() -> AgentConfig:
    cfg = tiny_config()
    cfg.encoder.image_keys = ["camera"]
    cfg.encoder.image_head_dim = 16
    cfg.encoder.spatial_features = 4
    cfg.sac.batch_size = 8
    return cfg


def test_image_env_updates_read_cached_features_and_never_the_backbone(tmp_path, monkeypatch):
    import agent.gym_trainer as trainer

    encoded, update_inputs = [], []
    real_feature_fn, real_step = trainer.frozen_feature_fn, trainer.learner_step

    def counting_feature_fn(get_agent):
        inner = real_feature_fn(get_agent)

        def fn(frames):
            encoded.append(len(frames))
            return inner(frames)
        return fn

    def recording_step(agent, batches):
        update_inputs.append({k: (v.shape, v.dtype) for k, v in batches["observations"].items()})
        return real_step(agent, batches)

    monkeypatch.setattr(trainer, "frozen_feature_fn", counting_feature_fn)
    monkeypatch.setattr(trainer, "learner_step", recording_step)
    cfg = _camera_config()
    run = GymRun(env_id="CameraTest-v0", run_dir=tmp_path / "run", env_steps=30, random_steps=10, eval_every=30,
                 eval_episodes=1, log_every=10, progress=False)
    summary = train_gym(run, cfg, buffer_factory(cfg), seed=0, log=lambda message: None)
    assert len(update_inputs) == 21  # one learner step per env step from the last random one on
    # The update sees the camera as cached backbone features (float16 maps, as the buffer stores
    # them), never as uint8 frames.
    shape, dtype = update_inputs[0]["camera"]
    assert dtype == np.float16 and shape[-1] == 512 and shape[-3:] != (16, 16, 3)
    # The backbone ran only while storing frames (each stored frame once), never inside an update.
    frames_encoded = sum(encoded)
    assert 0 < frames_encoded <= 2 * 30 + 10
    rows = read_metrics(run.run_dir / "metrics.jsonl")
    losses = [r["train/critic_loss"] for r in rows if "train/critic_loss" in r]
    assert losses and all(np.isfinite(losses))
    assert summary["final_eval"]["step"] == 30


def test_env_kwargs_as_json_or_key_value_pairs_and_a_bad_value_is_one_line(tmp_path, capsys):
    from franka_rl.commands.train_gym import parse_env_kwargs

    assert parse_env_kwargs(['{"max_episode_steps": 50, "g": 9.5}']) == {"max_episode_steps": 50, "g": 9.5}
    assert parse_env_kwargs(["a=1", "b=true", "c=name", "d=[1, 2]", "e=null"]) == \
        {"a": 1, "b": True, "c": "name", "d": [1, 2], "e": None}
    assert parse_env_kwargs(None) == {}
    # key=value pairs reach gymnasium.make: episodes end at the given time limit.
    out = tmp_path / "run"
    assert main(["train-gym", "--env", "Pendulum-v1", "--steps", "20", "--random-steps", "20", "--eval-every", "20",
                 "--eval-episodes", "1", "--no-progress", "--out", str(out), *TINY,
                 "--env-kwargs", "max_episode_steps=10", "g=9.0"]) == 0
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["train_episode/length"] for r in rows if "train_episode/length" in r] == [10, 10]
    capsys.readouterr()
    for bad in (['{"g": 9.0'], ["[1, 2]"], ["novalue"], ["g=9", "=3"], ["no_such_kwarg=1"]):
        assert main(["train-gym", "--env", "Pendulum-v1", "--out", str(tmp_path / "never"), "--env-kwargs", *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert "--env-kwargs" in err, err
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("key", ["is_success", "success"])
def test_evaluations_report_the_success_rate_the_env_gives(tmp_path, capsys, key):
    gym.register(f"SuccessTest-{key}-v0", entry_point=_CameraEnv, max_episode_steps=5,
                 kwargs={"camera": False, "success_key": key})
    cfg = tiny_config()
    run = GymRun(env_id=f"SuccessTest-{key}-v0", run_dir=tmp_path / "run", env_steps=10, random_steps=10,
                 eval_every=5, eval_episodes=2, progress=False)
    summary = train_gym(run, cfg, buffer_factory(cfg), seed=0)
    rates = [r["eval/success_rate"] for r in read_metrics(run.run_dir / "metrics.jsonl") if "eval/success_rate" in r]
    assert len(rates) == 2 and all(r in (0.0, 0.5, 1.0) for r in rates)
    assert summary["final_success_rate"] == rates[-1] and summary["evaluations"][-1]["success_rate"] == rates[-1]
    assert summary["interrupted"] is False
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("eval at env step")]
    assert len(printed) == 2 and "success rate" in printed[-1]
    assert json.loads((run.run_dir / "summary.json").read_text())["final_success_rate"] == rates[-1]


def test_nested_dict_observations_are_flattened_with_joined_key_names(tmp_path):
    gym.register("NestedCameraTest-v0", entry_point=_CameraEnv, max_episode_steps=5, kwargs={"nested": True})
    env = make_gym_env("NestedCameraTest-v0", seed=0)
    assert set(env.observation_space.spaces) == {"camera", "state"}
    obs, _ = env.reset(seed=0)
    assert obs["camera"].shape == (16, 16, 3) and obs["camera"].dtype == np.uint8
    np.testing.assert_array_equal(obs["state"], env.unwrapped.pos)
    # Two levels deep, images kept under their joined name, vectors concatenated in joined-key order.
    space = gym.spaces.Dict({"b": gym.spaces.Box(-1, 1, (1,)), "a": gym.spaces.Dict({
        "cam": gym.spaces.Box(0, 255, (8, 8, 3), np.uint8),
        "inner": gym.spaces.Dict({"x": gym.spaces.Box(-1, 1, (2,))})})})
    nested = {"b": np.array([3.0]), "a": {"cam": np.ones((8, 8, 3), np.uint8), "inner": {"x": np.array([1.0, 2.0])}}}
    out = agent_observations(nested, space)
    assert set(out) == {"a/cam", "state"} and out["a/cam"].dtype == np.uint8
    np.testing.assert_array_equal(out["state"], [1.0, 2.0, 3.0])  # a/inner/x before b
    flat = {"b": np.array([3.0]), "a/cam": np.ones((8, 8, 3), np.uint8), "a/inner/x": np.array([1.0, 2.0])}
    np.testing.assert_array_equal(agent_observations(flat, space)["state"], out["state"])  # stored episodes
