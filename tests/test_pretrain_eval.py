"""`franka-rl pretrain` and `franka-rl eval` end to end on the state-only twin with tiny networks:
outputs, the WSRL restore of a pretrain checkpoint, resuming, and the one-line user errors."""

import json
import re

import numpy as np
import pytest

from agent.data.episodes import EpisodeStore
from franka_rl.cli import main

TINY = [
    "env.cameras=[]",
    "task.max_episode_steps=20",
    "agent.network.critic_hidden_dims=[32,32]",
    "agent.network.actor_hidden_dims=[32,32]",
    "agent.network.num_critics=2",
    "agent.encoder.proprio_dim=0",
    "agent.sac.batch_size=32",
    "agent.cql.n_actions=4",
    "pretrain.steps=30",
    "pretrain.log_every=10",
    "pretrain.checkpoint_every=20",
    "pretrain.holdout_episodes=2",
]


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    """Six noisy-expert episodes of the state-only twin, plus one corrupt file among them."""
    import sim
    from agent.data.sim_expert import expert_episodes

    directory = tmp_path_factory.mktemp("demos")
    store = EpisodeStore(directory, create=True)
    env = sim.make_state_env(max_episode_steps=20)
    for episode in expert_episodes(env, 6, noise=0.2, seed=0):
        store.write(episode)
    env.close()
    (directory / "episode_000099.npz").write_bytes(b"PK\x03\x04 not really a zip")
    return directory


@pytest.fixture(scope="module")
def pretrained(demos, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    code = main(["pretrain", "--data", str(demos), "--out", str(out), "--no-progress", *TINY])
    assert code == 0
    return out


def test_pretrain_writes_checkpoints_plot_summary_and_metrics(pretrained, capsys):
    from agent.metrics import read_metrics

    assert sorted(p.name for p in (pretrained / "checkpoints").iterdir() if p.name.isdigit()) == ["20", "30"]
    assert (pretrained / "calibration.png").stat().st_size > 10_000
    summary = json.loads((pretrained / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["algorithm"] == "Cal-QL" and summary["agent_preset"] == "wsrl"
    assert summary["data"]["episodes"] == 6 and summary["data"]["held_out_episodes"] == 2
    assert summary["data"]["train_episodes"] == 4
    # The corrupt file is named and skipped, and the run went on without it.
    assert [s["path"].endswith("episode_000099.npz") for s in summary["data"]["skipped_files"]] == [True]
    assert summary["calibration"]["points"] > 0 and np.isfinite(summary["calibration"]["mean_q_minus_g"])
    rows = read_metrics(pretrained / "metrics.jsonl")
    train_rows = [r for r in rows if "pretrain/critic_loss" in r]
    assert [r["step"] for r in train_rows] == [10, 20, 30]
    for key in ("pretrain/cql_diff", "pretrain/calql_bound_rate", "pretrain/q_minus_mc", "pretrain/steps_per_s"):
        assert key in train_rows[-1]
    assert any("calibration/mean_q_minus_g" in r for r in rows)


def test_pretrain_checkpoint_restores_through_wsrl(pretrained, demos):
    from agent.checkpoint import restore_agent, state_dict
    from agent.core import create_agent
    from agent.wsrl import start_online_from_checkpoint
    from franka_rl.config import load_config

    cfg = load_config(overrides=TINY, preset="wsrl")
    episode = next(EpisodeStore(demos, report=lambda _: None).episodes())
    example = {k: v[0] for k, v in episode.observations.items()}
    online, frozen, extra = start_online_from_checkpoint(pretrained / "checkpoints", cfg.agent, example, 6)
    assert extra["phase"] == "pretrain" and extra["pretrain_step"] == 30
    assert online.spec.cql.enabled is False and frozen.spec.cql.enabled is True
    assert int(online.critic.step) == 30  # optimizer state came along: 30 critic updates
    reference, _ = restore_agent(pretrained / "checkpoints", create_agent(cfg.agent, example, 6))
    for a, b in zip(*(jax_leaves(state_dict(x)) for x in (online, reference)), strict=True):
        np.testing.assert_array_equal(a, b)
    fresh = create_agent(cfg.agent, example, 6)  # same seed: differs only by the 30 pre-training steps
    trained = jax_leaves(online.critic.params)
    assert any(not np.array_equal(a, b) for a, b in zip(jax_leaves(fresh.critic.params), trained, strict=True))


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_pretrain_resumes_from_its_latest_checkpoint(pretrained, demos, tmp_path, capsys):
    import shutil

    out = tmp_path / "resumed"
    shutil.copytree(pretrained, out)
    code = main(["pretrain", "--data", str(demos), "--out", str(out), "--no-progress", *TINY, "pretrain.steps=35"])
    assert code == 0
    captured = capsys.readouterr()
    assert "resuming from" in captured.err
    assert json.loads((out / "summary.json").read_text())["steps"] == 35
    # It says what it does before the first step, and the final rate is never rounded to "0 steps/s".
    assert "pretrain: compiling the learner step" in captured.out
    assert "pretrain: compiled and ran the first step in" in captured.out
    final = next(line for line in captured.out.splitlines() if line.startswith("Cal-QL (wsrl): 35 steps (5 this run)"))
    assert re.search(r"\((\d+(\.\d+)? steps/s|[\d.]+ s/step|.* min .*/step)\)$", final), final
    assert "(0 steps/s)" not in final


def test_a_slow_pretrain_reports_its_rate_not_zero(demos, tmp_path, monkeypatch, capsys):
    """The issue's "50 steps in 503 s (0 steps/s)": the final line keeps a readable precision."""
    import agent.pretrain

    def slow(*args, **kwargs):
        return {"algorithm": "Cal-QL", "steps": 50, "steps_this_run": 50, "elapsed_s": 503.0, "interrupted": False,
                "calibration": {"points": 0}, "calibration_on": "held-out", "checkpoint": "c",
                "calibration_plot": "p"}

    monkeypatch.setattr(agent.pretrain, "pretrain", slow)
    assert main(["pretrain", "--data", str(demos), "--out", str(tmp_path), "--no-progress", *TINY]) == 0
    assert "Cal-QL (wsrl): 50 steps in 8 min 23 s (10.1 s/step)" in capsys.readouterr().out


def test_eval_on_the_state_twin_writes_results_episodes_and_video(pretrained, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["eval", "--checkpoint", str(pretrained), "--episodes", "2", "--out", str(out), "--no-progress",
                 "--preset", "wsrl", *TINY, "eval.video_episodes=1"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["episodes"] == 2 and results["checkpoint_step"] == 30 and results["spread"] == "lhs"
    assert 0 <= results["successes"] <= 2 and results["deterministic"] is True
    assert all(1 <= e["length"] <= 20 for e in results["per_episode"])
    offsets = np.array([e["reset_offset"] for e in results["per_episode"]])
    assert offsets.shape == (2, 4) and np.all(np.abs(offsets[:, :2]) <= 0.05)
    stored = list(EpisodeStore(out / "episodes").episodes())
    assert len(stored) == 2 and {e.metadata["source"] for e in stored} == {"eval"}
    assert (out / "eval.mp4").stat().st_size > 0 and (out / "contact_sheet.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "success:" in printed
    # What it does before the first episode is said, not a silence (issue 17).
    assert "eval: building the agent and restoring the checkpoint" in printed
    assert "eval: checkpoint step 30" in printed


def test_eval_with_a_checkpoint_of_another_architecture_fails_clearly(pretrained, tmp_path, capsys):
    code = main(["eval", "--checkpoint", str(pretrained), "--episodes", "1", "--out", str(tmp_path / "e"),
                 "--no-progress", *TINY, "agent.network.critic_hidden_dims=[64,64]"])
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    first = err.strip().splitlines()[0]
    assert first.startswith("franka-rl eval: error: checkpoint") and "does not fit this agent's architecture" in first
    assert "agent.network.critic_hidden_dims" in err  # the differing config key is named


@pytest.mark.parametrize("options, overrides, expected", [
    (["--preset", "rlpd"], [], "agent.cql.enabled=true"),
    ([], ["pretrain.steps=0"], "pretrain.steps must be >= 1"),
])
def test_pretrain_refuses_settings_that_cannot_work(demos, tmp_path, capsys, options, overrides, expected):
    code = main(["pretrain", "--data", str(demos), "--out", str(tmp_path), "--no-progress", *options, *TINY,
                 *overrides])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert expected in err[-1] and "Traceback" not in "\n".join(err)


def test_pretrain_data_errors_are_one_line(tmp_path, capsys):
    pickle_file = tmp_path / "demos.pkl"
    pickle_file.write_bytes(b"\x80\x04N.")
    assert main(["pretrain", "--data", str(pickle_file), "--out", str(tmp_path / "o"), *TINY]) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert main(["pretrain", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), *TINY]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["pretrain", "--data", str(empty), "--out", str(tmp_path / "o"), *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no usable episodes" in err[0]


def test_overrides_after_data_are_given_back():
    from franka_rl.commands.pretrain import split_data_and_overrides

    data, overrides = split_data_and_overrides(["runs/demos", "minari:franka/peg-v0", "pretrain.steps=5", "seed=2"])
    assert data == ["runs/demos", "minari:franka/peg-v0"] and overrides == ["pretrain.steps=5", "seed=2"]


def test_latin_hypercube_offsets_cover_every_stratum_and_place_the_start():
    import sim
    from agent.evaluation import spread_reset_offsets
    from robot_env.config import TaskConfig

    task = TaskConfig()
    offsets = spread_reset_offsets(10, task, seed=3)
    half = np.array([*task.reset_position_noise, task.reset_yaw_noise])
    assert offsets.shape == (10, 4) and np.all(np.abs(offsets) <= half + 1e-12)
    for axis in (0, 1, 3):  # z has no range in the default task
        strata = np.floor((offsets[:, axis] / half[axis] + 1.0) / 2.0 * 10).astype(int)
        assert sorted(strata) == list(range(10))
    np.testing.assert_array_equal(offsets, spread_reset_offsets(10, task, seed=3))
    assert spread_reset_offsets(10, task, spread="random") is None

    env = sim.make_state_env()
    try:
        target = np.array([0.04, -0.03, 0.0, 0.3])
        observation, _ = env.reset(seed=0, options={"reset_offset": target})
        # The state's pose is relative to the nominal reset pose: its distance is the offset's.
        assert np.linalg.norm(observation["state"][:3]) == pytest.approx(np.linalg.norm(target[:3]), abs=0.004)
        world = sim.sim_world(env)
        position, _ = world.tcp_pose()
        np.testing.assert_allclose(position[:2], np.array(task.reset_pose[:2]) + target[:2], atol=0.004)
    finally:
        env.close()


def test_load_offline_episodes_from_pickles_files_and_stores(tmp_path):
    import pickle

    from agent.data.episodes import write_episode_file
    from agent.data.synthetic import synthetic_episode
    from agent.pretrain import DatasetError, load_offline_episodes

    rng = np.random.default_rng(0)
    # A 7-D state (not SERL's Franka state, which needs `dataset import-serl` to be mapped).
    episodes = [synthetic_episode(rng, 5, cameras=(), state_dim=7, episode_index=i, success=i == 0) for i in range(3)]
    transitions = [
        {"observations": {"state": e.observations["state"][t][None]},
         "next_observations": {"state": e.observations["state"][t + 1][None]},
         "actions": e.actions[t], "rewards": e.rewards[t], "masks": 1.0 - float(e.terminated[t]),
         "dones": bool(e.terminated[t] or e.truncated[t])}
        for e in episodes[:2] for t in range(len(e))
    ]
    pickle_path = tmp_path / "serl.pkl"
    pickle_path.write_bytes(pickle.dumps(transitions))
    single = write_episode_file(episodes[2], tmp_path / "episode_000007.npz")
    broken = tmp_path / "episode_000008.npz"
    broken.write_bytes(single.read_bytes()[:200])
    reports = []
    dataset = load_offline_episodes([str(pickle_path), str(single), str(broken)], trust_pickle=True,
                                    report=reports.append)
    assert len(dataset.episodes) == 3 and dataset.transitions == 15 and dataset.successes == 1
    assert [p for p, _ in dataset.skipped] == [str(broken)] and str(broken) in reports[0]
    with pytest.raises(DatasetError, match="--trust-pickle"):
        load_offline_episodes([str(pickle_path)])
    franka = tmp_path / "serl_franka.pkl"
    franka.write_bytes(pickle.dumps([{**t, "observations": {"state": np.zeros((1, 19), np.float32)},
                                      "next_observations": {"state": np.zeros((1, 19), np.float32)}}
                                     for t in transitions]))
    with pytest.raises(DatasetError, match="dataset import-serl"):
        load_offline_episodes([str(franka)], trust_pickle=True)
    with pytest.raises(DatasetError, match="disagree"):
        other = synthetic_episode(rng, 4, cameras=("wrist_1",), image_size=8)
        write_episode_file(other, tmp_path / "episode_000009.npz")
        load_offline_episodes([str(single), str(tmp_path / "episode_000009.npz")])


class _CountingEnv:
    """A stand-in env: succeeds after `steps_to_success` steps; Ctrl-C at step `interrupt_at` of episode 1."""

    render_mode = None

    def __init__(self, steps_to_success=3, interrupt_at=None):
        self.steps_to_success, self.interrupt_at = steps_to_success, interrupt_at
        self.episode, self.t, self.offsets = -1, 0, []

    def reset(self, seed=None, options=None):
        self.episode, self.t = self.episode + 1, 0
        self.offsets.append(None if options is None else np.asarray(options["reset_offset"]))
        return {"state": np.zeros(3, np.float32)}, {}

    def step(self, action):
        self.t += 1
        if self.episode == 1 and self.t == self.interrupt_at:
            raise KeyboardInterrupt
        success = self.t >= self.steps_to_success
        return {"state": np.full(3, self.t, np.float32)}, float(success), success, False, {"success": success}


def test_evaluate_records_outcomes_and_keeps_finished_episodes_on_ctrl_c(tmp_path):
    from agent.data.episodes import make_metadata
    from agent.evaluation import evaluate

    offsets = np.arange(12, dtype=float).reshape(3, 4)
    env = _CountingEnv()
    store = EpisodeStore(tmp_path / "a", create=True)
    result = evaluate(env, lambda obs: np.zeros(6, np.float32), offsets, store=store, progress=False,
                      metadata=lambda i, o: make_metadata(task="t", source="eval", seed=i))
    assert [o.success for o in result.outcomes] == [True] * 3 and result.success_rate == 1.0
    assert [o.length for o in result.outcomes] == [3, 3, 3] and not result.interrupted
    np.testing.assert_array_equal(np.stack(env.offsets), offsets)  # each start placed as asked
    assert len(store) == 3

    env = _CountingEnv(interrupt_at=2)
    store = EpisodeStore(tmp_path / "b", create=True)
    result = evaluate(env, lambda obs: np.zeros(6, np.float32), offsets, store=store, progress=False,
                      metadata=lambda i, o: make_metadata(task="t", source="eval", seed=i))
    assert result.interrupted and len(result.outcomes) == 1 and len(store) == 1
    assert result.summary()["interrupted"] is True
