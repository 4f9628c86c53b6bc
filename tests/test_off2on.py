"""Off2On end to end and its compiled parts: the ensemble trains as one pytree (members differ,
no Python loop), acts as one Gaussian, balanced replay draws the union by priority and refreshes
the priorities of what it drew, and train-gym runs the recipe with its metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_gym_trainer import _random_pendulum_episodes, tiny_config
from test_learner import close_learners  # noqa: F401  (an autouse fixture: closes the learners a test opens)

from agent import off2on
from agent.checkpoint import AgentCheckpointer
from agent.core import create_agent, eval_actions
from agent.data.replay_buffer import ReplayBuffer
from agent.gym_trainer import GymRun, TrainGymError, train_gym
from agent.metrics import read_metrics
from agent.returns import RewardShaping
from franka_rl.assemble import buffer_factory


def off2on_config(**sections):
    cfg = tiny_config(cql={"enabled": True, "calql_bound": False, "n_actions": 2},
                      online={"warmup_steps": 0}, sac={"utd": 1},
                      off2on={"enabled": True, "ensemble_size": 3, "ratio_hidden_dims": [16, 16],
                              "ratio_batch_size": 16, "reference_count": 20, "early_updates": 2}, **sections)
    return cfg


def _state(n: int, seed: int = 0) -> dict:
    return {"state": np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)}


def test_members_start_apart_update_together_and_the_ensemble_acts_as_their_average():
    cfg = off2on_config()
    example = {"state": np.zeros(3, np.float32)}
    ensemble = off2on.create_ensemble(cfg, example, 1, seed=0)
    assert off2on.is_ensemble(ensemble) and off2on.ensemble_size(ensemble) == 3
    def kernel(agent):
        return max(jax.tree.leaves(agent.actor.params), key=np.size)

    kernels = kernel(ensemble)
    assert not np.allclose(kernels[0], kernels[1])  # different initialisations
    # Member i is the agent created alone from seed i (run seed 0), so nothing is shared by accident.
    alone = create_agent(cfg, example, 1, seed=1)
    np.testing.assert_allclose(kernel(off2on.member(ensemble, 1)), kernel(alone))

    obs = _state(8)
    mean, log_std = off2on.ensemble_policy(ensemble, obs)
    means = [jnp.tanh(off2on.ensemble_policy(off2on.stack_members([off2on.member(ensemble, i)]), obs)[0])
             for i in range(3)]
    assert mean.shape == (8, 1) and log_std.shape == (8, 1)
    np.testing.assert_allclose(np.asarray(off2on.ensemble_eval_actions(ensemble, obs)), np.tanh(mean), atol=1e-6)
    # A one-member ensemble acts exactly as that member alone.
    np.testing.assert_allclose(np.asarray(means[1]), np.asarray(eval_actions(off2on.member(ensemble, 1), obs)),
                               atol=1e-6)

    batch = {"observations": {"state": np.zeros((3, 16, 3), np.float32)},
             "next_observations": {"state": np.zeros((3, 16, 3), np.float32)},
             "actions": np.zeros((3, 16, 1), np.float32), "rewards": np.zeros((3, 16), np.float32),
             "masks": np.ones((3, 16), np.float32), "mc_returns": np.zeros((3, 16), np.float32)}
    updated, metrics = off2on.ensemble_update(ensemble, batch)
    assert np.asarray(updated.critic.step).tolist() == [1, 1, 1]
    assert metrics["critic_loss"].shape == (3,)


def test_auroc_is_the_probability_that_a_positive_outranks_a_negative():
    assert float(off2on.auroc(jnp.array([2.0, 3.0]), jnp.array([0.0, 1.0]))) == 1.0
    assert float(off2on.auroc(jnp.array([0.0, 1.0]), jnp.array([2.0, 3.0]))) == 0.0
    assert float(off2on.auroc(jnp.array([1.0, 3.0]), jnp.array([2.0, 2.0]))) == 0.5
    assert float(off2on.auroc(jnp.array([1.0]), jnp.array([1.0]))) == 0.5


def _buffer(n_episodes: int, steps: int, value: float, capacity: int) -> ReplayBuffer:
    buffer = ReplayBuffer({"state": ((3,), np.float32)}, 1, capacity, shaping=RewardShaping(1.0, 0.0, 0.99, False))
    for _ in range(n_episodes):
        obs = np.full((steps + 1, 3), value, np.float32)
        buffer.add_episode({"state": obs}, np.full((steps, 1), value, np.float32), np.zeros(steps, np.float32),
                           np.zeros(steps, bool), np.eye(1, steps, steps - 1, dtype=bool)[0])
    return buffer


def test_balanced_replay_draws_new_online_samples_at_rho_and_sets_priorities_of_what_it_drew():
    cfg = off2on_config().off2on
    cfg.rho, cfg.reference_count = 0.75, 10
    offline = _buffer(4, 9, -1.0, 40)  # 36 transitions
    online = ReplayBuffer({"state": ((3,), np.float32)}, 1, 30, shaping=RewardShaping(1.0, 0.0, 0.99, False))
    replay = off2on.BalancedReplay(offline, online, cfg)
    rng = np.random.default_rng(0)
    assert replay.sample(64, 1, rng).offline_fraction == 1.0  # no online transition yet
    # 10 online transitions (= reference_count): a draw is online with probability rho.
    online.add_episode({"state": np.ones((11, 3), np.float32)}, np.ones((10, 1), np.float32),
                       np.zeros(10, np.float32), np.zeros(10, bool), np.eye(1, 10, 9, dtype=bool)[0])
    drawn = replay.sample(4000, 1, rng)
    assert drawn.offline_fraction == pytest.approx(0.25, abs=0.03)
    # Online samples are online in the batch: the draw's flags and the batch agree row by row.
    flags = drawn.draw.online
    np.testing.assert_array_equal(drawn.batches["actions"][0, :, 0] > 0, flags)
    # After use, a sample's priority is what the caller set; a low one makes it rare.
    replay.set_priorities(drawn, np.where(flags, 1e-3, 1.0))
    assert replay.sample(4000, 1, rng).offline_fraction > 0.95


def test_train_gym_runs_off2on_with_its_metrics_and_a_restorable_ensemble_checkpoint(tmp_path):
    data = tmp_path / "episodes"
    _random_pendulum_episodes(data, episodes=3)
    cfg = off2on_config()
    run = GymRun(env_id="Pendulum-v1", run_dir=tmp_path / "run", algo="cql", env_steps=60,
                 offline_data=str(data), offline_steps=20, eval_every=30, eval_episodes=1, log_every=20,
                 max_episode_steps=20, progress=False)
    summary = train_gym(run, cfg, buffer_factory(cfg), seed=0, log=lambda message: None)
    rows = read_metrics(run.run_dir / "metrics.jsonl")
    offline = [r for r in rows if "offline/critic_loss" in r]
    assert offline and all(np.isfinite(r["offline/cql_penalty"]) for r in offline)
    train = [r for r in rows if "train/critic_loss" in r]
    assert [r["step"] for r in train] == [20, 40, 60]
    for row in train:
        assert 0.0 <= row["train/off2on/offline_fraction"] <= 1.0
        assert 0.0 <= row["train/off2on/q_auroc"] <= 1.0
        assert np.isfinite(row["train/off2on/priority_online_mean"])
        assert np.isfinite(row["train/density_ratio/js_bound"])
        assert "train/cql_penalty" not in row  # online: SAC, no CQL term
    # Online samples enter and are drawn: the offline fraction falls below 1 once the ring has data.
    assert train[-1]["train/off2on/offline_fraction"] < 1.0
    assert summary["env_steps"] == 60
    checkpointer = AgentCheckpointer(run.run_dir / "checkpoints")
    template = off2on.create_ensemble(cfg, {"state": np.zeros(3, np.float32)}, 1, seed=5)
    restored, extra = checkpointer.restore(template, None, cfg)
    assert np.asarray(restored.critic.step).shape == (3,) and extra["phase"] == "online"
    # One step per offline update and per env step, plus (early_updates - 1) more for each env step
    # while the online buffer holds fewer than reference_count (= 20) transitions: 1 to 19 of them.
    early = cfg.off2on.early_updates
    assert early == 2 and np.all(np.asarray(restored.critic.step) == 20 + 60 + (early - 1) * 19)


def test_train_gym_refuses_off2on_without_offline_pretraining(tmp_path):
    cfg = off2on_config()
    run = GymRun(env_id="Pendulum-v1", run_dir=tmp_path / "run", algo="sac", env_steps=10, progress=False)
    with pytest.raises(TrainGymError, match="off2on"):
        train_gym(run, cfg, buffer_factory(cfg), seed=0, log=lambda message: None)


def test_pretrain_then_eval_with_the_off2on_preset_train_and_act_as_an_ensemble(tmp_path, capsys):
    """`franka-rl pretrain --preset off2on` trains N CQL agents in one compiled step, each on its
    own draws; `franka-rl eval --preset off2on` restores the stacked checkpoint and acts with it."""
    import json

    from test_pretrain_eval import TINY

    import sim
    from agent.data.episodes import EpisodeStore
    from agent.data.sim_expert import expert_episodes
    from franka_rl.cli import main

    demos = tmp_path / "demos"
    store = EpisodeStore(demos, create=True)
    env = sim.make_state_env(max_episode_steps=20)
    for episode in expert_episodes(env, 4, noise=0.2, seed=0):
        store.write(episode)
    env.close()
    tiny = [*TINY, "agent.off2on.ensemble_size=2", "pretrain.steps=20", "pretrain.checkpoint_every=10"]
    out = tmp_path / "pretrain"
    assert main(["pretrain", "--preset", "off2on", "--data", str(demos), "--out", str(out), "--no-progress",
                 *tiny]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == "CQL x2" and summary["steps"] == 20
    assert np.isfinite(summary["calibration"]["mean_q"])
    checkpoint = AgentCheckpointer(out / "checkpoints")
    assert checkpoint.latest_step() == 20
    evaluation = tmp_path / "eval"
    assert main(["eval", "--preset", "off2on", "--checkpoint", str(out), "--episodes", "1", "--out", str(evaluation),
                 "--no-progress", *tiny]) == 0
    results = json.loads((evaluation / "results.json").read_text())
    assert results["episodes"] == 1 and results["checkpoint_step"] == 20
    # A plain agent cannot be restored from the ensemble's checkpoint: one clear line.
    capsys.readouterr()
    assert main(["eval", "--preset", "cql", "--checkpoint", str(out), "--episodes", "1", "--out",
                 str(tmp_path / "eval2"), "--no-progress", *TINY]) != 0
    assert "off2on" in capsys.readouterr().err


def _offline_demos(directory, episodes=3, steps=5):
    from agent.data.episodes import EpisodeRecorder, EpisodeStore, make_metadata

    store = EpisodeStore(directory, create=True)
    rng = np.random.default_rng(0)
    for _ in range(episodes):
        recorder = EpisodeRecorder(store)
        recorder.start({"state": np.zeros(19, np.float32)}, make_metadata(task="peg_insertion", source="teleop"))
        for step in range(steps):
            recorder.add(rng.uniform(-1, 1, 6), float(step == steps - 1), {"state": np.zeros(19, np.float32)},
                         step == steps - 1, False)
    return directory


def test_the_learner_trains_the_ensemble_on_balanced_replay_publishes_what_an_actor_acts_with_and_resumes(tmp_path):
    from test_learner import chunk, deliver, make_learner
    from test_learner import config as learner_config

    from agent.core import act
    from agent.learner import LearnerError
    from agent.param_sync import apply_acting_params, export_acting_params
    from franka_rl.assemble import build_agent

    overrides = ("agent_preset=off2on", "agent.off2on.ensemble_size=2", "agent.off2on.ratio_hidden_dims=[16]",
                 "agent.off2on.ratio_batch_size=8", "agent.sac.utd=1", "agent.online.warmup_steps=0",
                 "learner.log_every_steps=2", "learner.steps_per_transition=0.5")
    cfg = learner_config(tmp_path / "run", *overrides)
    with pytest.raises(LearnerError, match="--offline-data"):
        make_learner(cfg)
    offline = str(_offline_demos(tmp_path / "demos"))
    learner = make_learner(cfg, offline_dirs=[offline])
    assert learner.ensemble and learner.balanced is not None
    assert deliver(learner, "a0/x", 1, chunk(0, 0, 6, end=True))
    learner.compile_update()
    compiled = [f._cache_size() for f in (off2on.ensemble_learner_step, off2on._density_step, off2on.q_auroc)]
    rows = [learner.update() for _ in range(4)]
    # What run() compiles ahead (on a thread, while storing goes on) is what the real steps run.
    assert [f._cache_size() for f in (off2on.ensemble_learner_step, off2on._density_step, off2on.q_auroc)] == compiled
    assert all(r is not None and np.isfinite(r["critic_loss"]) for r in rows)
    assert all(0.0 <= r["off2on/offline_fraction"] <= 1.0 and np.isfinite(r["density_ratio/js_bound"]) for r in rows)
    assert 0.0 <= rows[1]["off2on/q_auroc"] <= 1.0 and "cql_penalty" not in rows[0]
    # The published parameters carry the member axis; an actor's ensemble takes them and acts alike.
    arrays = export_acting_params(learner.agent)
    actor_agent = apply_acting_params(build_agent(cfg, seed=7), arrays)
    obs = {"state": np.linspace(-1, 1, 19).astype(np.float32)}
    np.testing.assert_allclose(act(actor_agent, obs), act(learner.agent, obs), rtol=1e-5, atol=1e-6)
    assert learner.checkpoint() is not None
    # The paced budget: 0.5 steps per transition, early_updates (5) times that for the first
    # reference_count (1000) transitions: 6 stored ask for ceil(0.5 * 5 * 6) = 15 steps.
    assert learner.agent_cfg.off2on.early_updates == 5 and learner.online_transitions == 6
    learner.counters.steps = 14
    assert learner.can_update()
    learner.counters.steps = 15
    assert not learner.can_update()
    learner.counters.steps = 4
    learner.server.close()
    resumed = make_learner(cfg, offline_dirs=[offline])
    assert resumed.counters.steps == 4
    np.testing.assert_allclose(act(resumed.agent, obs), act(learner.agent, obs), rtol=1e-5, atol=1e-6)
    assert resumed.update() is not None
