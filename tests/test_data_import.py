"""Importers/exporters: SERL / HIL-SERL transition pickles and a lossless Minari round trip."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

from agent.data import EpisodeStore
from agent.data.minari_io import MinariError, export_minari, import_minari
from agent.data.serl import SerlImportError, load_serl_pickle, serl_transitions_to_episodes
from agent.data.synthetic import synthetic_episode
from franka_rl.cli import main


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    root = tmp_path / "minari"
    root.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def test_minari_round_trip_preserves_every_array(minari_root):
    rng = np.random.default_rng(0)
    episodes = [synthetic_episode(rng, n, image_size=12, episode_index=i, success=i % 2 == 0)
                for i, n in enumerate([4, 1, 9])]
    dataset = export_minari(episodes, "franka/roundtrip-v0")
    assert dataset.total_episodes == 3 and dataset.total_steps == 14
    assert any(minari_root.rglob("*.hdf5"))  # written under the temporary root only
    back = list(import_minari("franka/roundtrip-v0"))
    assert len(back) == 3
    for a, b in zip(episodes, back, strict=True):
        assert a.observations.keys() == b.observations.keys()
        for key in a.observations:
            assert b.observations[key].dtype == a.observations[key].dtype
            np.testing.assert_array_equal(a.observations[key], b.observations[key])
        for name in ("actions", "rewards", "terminated", "truncated", "intervened"):
            got, want = getattr(b, name), getattr(a, name)
            assert got.dtype == want.dtype and got.shape == want.shape, name
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(a.info["success"], b.info["success"])
        assert b.metadata == a.metadata


def test_minari_errors_are_clear(minari_root):
    with pytest.raises(MinariError, match="no local Minari dataset"):
        list(import_minari("franka/absent-v0"))
    export_minari([synthetic_episode(np.random.default_rng(0), 2)], "franka/twice-v0")
    with pytest.raises(MinariError, match="twice-v0"):
        export_minari([synthetic_episode(np.random.default_rng(0), 2)], "franka/twice-v0")


def test_minari_cli_round_trip(tmp_path, minari_root, capsys):
    rng = np.random.default_rng(1)
    store = EpisodeStore(tmp_path / "eps", create=True)
    originals = [synthetic_episode(rng, 3, image_size=8, episode_index=i) for i in range(2)]
    for episode in originals:
        store.write(episode)
    assert main(["dataset", "export-minari", str(tmp_path / "eps"), "franka/cli-v0",
                 "--minari-root", str(minari_root)]) == 0
    assert main(["dataset", "import-minari", "franka/cli-v0", "--out", str(tmp_path / "back")]) == 0
    back = list(EpisodeStore(tmp_path / "back").episodes())
    np.testing.assert_array_equal(back[1].observations["wrist_2"], originals[1].observations["wrist_2"])


def serl_transitions(rng, lengths, history_axis=True):
    """Transitions as SERL's recording scripts pickle them (history axis of 1 on observations)."""
    transitions = []
    for e, length in enumerate(lengths):
        states = rng.standard_normal((length + 1, 5)).astype(np.float32)
        states[:, 0] = e
        frames = rng.integers(0, 256, (length + 1, 6, 6, 3), dtype=np.uint8)

        def obs(t, states=states, frames=frames):
            o = {"state": states[t], "wrist1": frames[t]}
            return {k: v[None] for k, v in o.items()} if history_axis else o

        for t in range(length):
            last = t == length - 1
            success = last and e % 2 == 0
            transitions.append({
                "observations": obs(t), "actions": rng.uniform(-1, 1, 7).astype(np.float32),
                "next_observations": obs(t + 1), "rewards": float(success),
                "masks": 0.0 if success else 1.0, "dones": last,
                "infos": {"intervene_action": np.zeros(7)} if t == 0 else {},
            })
    return transitions


def test_serl_transitions_become_episodes():
    rng = np.random.default_rng(0)
    transitions = serl_transitions(rng, [3, 4, 2])
    episodes = serl_transitions_to_episodes(transitions, rename={"wrist1": "wrist_1"}, origin="demo.pkl")
    assert [len(e) for e in episodes] == [3, 4, 2]
    first, second = episodes[0], episodes[1]
    assert set(first.observations) == {"state", "wrist_1"}
    assert first.observations["wrist_1"].shape == (4, 6, 6, 3)  # history axis removed, T+1 frames
    np.testing.assert_array_equal(first.observations["wrist_1"][1], transitions[1]["observations"]["wrist1"][0])
    np.testing.assert_array_equal(first.observations["wrist_1"][3], transitions[2]["next_observations"]["wrist1"][0])
    assert first.terminated.tolist() == [False, False, True] and first.success
    assert second.truncated.tolist() == [False, False, False, True] and not second.success
    assert first.intervened.tolist() == [True, False, False]
    assert first.metadata["source"] == "imported" and first.metadata["imported_from"] == "demo.pkl"


def test_serl_discontinuity_splits_episodes():
    rng = np.random.default_rng(0)
    transitions = serl_transitions(rng, [3, 3], history_axis=False)
    # An episode boundary without any flag (a log cut short): found by the observation gap.
    transitions[2].update(dones=False, masks=1.0, rewards=0.0)
    episodes = serl_transitions_to_episodes(transitions)
    assert [len(e) for e in episodes] == [3, 3] and episodes[0].truncated[-1]


def test_serl_pickle_needs_trust(tmp_path, capsys):
    path = tmp_path / "demos.pkl"
    with open(path, "wb") as handle:
        pickle.dump(serl_transitions(np.random.default_rng(0), [2, 3]), handle)
    with pytest.raises(PermissionError, match="runs any code"):
        load_serl_pickle(path, trusted=False)
    assert main(["dataset", "import-serl", str(path), "--out", str(tmp_path / "eps")]) == 2
    assert "--trust-pickle" in capsys.readouterr().err and not (tmp_path / "eps").exists()
    assert main(["dataset", "import-serl", str(path), "--out", str(tmp_path / "eps"), "--trust-pickle",
                 "--rename", "wrist1=wrist_1"]) == 0
    episodes = list(EpisodeStore(tmp_path / "eps").episodes())
    assert [len(e) for e in episodes] == [2, 3] and "wrist_1" in episodes[0].observations
    assert "deprecated" not in capsys.readouterr().err
    # The old name still works, hidden from --help, with a one-line notice naming the new one.
    assert main(["dataset", "import-serl", str(path), "--out", str(tmp_path / "old"), "--trusted",
                 "--rename", "wrist1=wrist_1"]) == 0
    notice = [line for line in capsys.readouterr().err.splitlines() if "deprecated" in line]
    assert notice == ["franka-rl dataset import-serl: --trusted is deprecated, use --trust-pickle"]
    assert len(list(EpisodeStore(tmp_path / "old").episodes())) == 2
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"not": "transitions"}))
    with pytest.raises(SerlImportError, match="list of transition dicts"):
        load_serl_pickle(bad, trusted=True)


def test_dataset_info_names_corrupt_files(tmp_path, capsys):
    rng = np.random.default_rng(0)
    store = EpisodeStore(tmp_path / "eps", create=True)
    for i in range(3):
        store.write(synthetic_episode(rng, 5, image_size=16, episode_index=i, success=i == 0))
    (tmp_path / "eps" / "episode_000001.npz").write_bytes(b"garbage")
    assert main(["dataset", "info", str(tmp_path / "eps"), "--sheet", str(tmp_path / "sheet.png")]) == 0
    out, err = capsys.readouterr()
    assert "episode_000001.npz" in err and "SKIPPED (corrupt)" in out and "episode_000001.npz" in out
    assert "episodes           2" in out and "transitions        10" in out
    assert "successes          1 (50.0 %)" in out
    assert (tmp_path / "sheet.png").stat().st_size > 0
    assert main(["dataset", "info", str(tmp_path / "nowhere")]) == 2


def test_minari_twin_export_recovers_the_env_and_compresses_frames(tmp_path, minari_root, capsys):
    import h5py
    import minari

    from agent.data.sim_expert import expert_episodes
    from sim import make_env

    overrides = ["env.image_height=16", "env.image_width=16", "task.max_episode_steps=6"]
    env = make_env(**{"env.image_height": 16, "env.image_width": 16, "task.max_episode_steps": 6})
    store = EpisodeStore(tmp_path / "eps", create=True)
    try:
        for episode in expert_episodes(env, 2, noise=0.2):
            store.write(episode)
    finally:
        env.close()
    # A config that does not match the recorded frames is refused rather than stored wrongly.
    assert main(["dataset", "export-minari", str(tmp_path / "eps"), "franka/twin-v0"]) == 2
    assert "env.image_height" in capsys.readouterr().err
    assert main(["dataset", "export-minari", str(tmp_path / "eps"), "franka/twin-v0", *overrides]) == 0
    assert "env_spec: FrankaPegInsertionSim-v0" in capsys.readouterr().out
    dataset = minari.load_dataset("franka/twin-v0")
    assert dataset.env_spec.id == "FrankaPegInsertionSim-v0"
    recovered = dataset.recover_environment()
    try:
        observation, _ = recovered.reset(seed=0)
        assert observation["wrist_1"].shape == (16, 16, 3)
        assert recovered.action_space.shape == dataset.action_space.shape == (6,)
        _, reward, terminated, truncated, _ = recovered.step(np.zeros(6, np.float32))
        assert np.isfinite(reward) and not terminated
    finally:
        recovered.close()
    (data_file,) = minari_root.rglob("*.hdf5")
    with h5py.File(data_file) as handle:
        assert handle["episode_0/observations/wrist_1"].compression == "gzip"
    back = list(import_minari("franka/twin-v0"))
    for original, episode in zip(store.episodes(), back, strict=True):
        np.testing.assert_array_equal(episode.observations["wrist_2"], original.observations["wrist_2"])


def foreign_minari(dataset_id, action_space, actions, infos, rewards):
    """A Minari dataset written by Minari's own API, as another project would publish it."""
    import gymnasium as gym
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    steps = len(rewards)
    buffer = EpisodeBuffer(id=0, observations=np.zeros((steps + 1, 3), np.float32), actions=actions,
                           rewards=np.asarray(rewards, np.float32), terminations=np.eye(steps, dtype=bool)[-1],
                           truncations=np.zeros(steps, bool), infos=infos)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Minari's advice on optional fields
        minari.create_dataset_from_buffers(dataset_id, [buffer], action_space=action_space,
                                           observation_space=gym.spaces.Box(-1, 1, (3,), np.float32),
                                           algorithm_name="other", data_format="hdf5")


def test_minari_import_refuses_discrete_actions(minari_root):
    import gymnasium as gym

    foreign_minari("other/discrete-v0", gym.spaces.Discrete(4), np.array([0, 3, 1]), {}, [0.0, 0.0, 1.0])
    with pytest.raises(MinariError, match="discrete .*Discrete"):
        list(import_minari("other/discrete-v0"))


def test_minari_success_comes_from_is_success_and_a_guess_is_announced(minari_root):
    import gymnasium as gym

    box = gym.spaces.Box(-1, 1, (2,), np.float32)
    actions = np.zeros((3, 2), np.float32)
    dense = [0.5, 0.7, 0.9]  # a dense reward: positive on every step of a failed episode
    foreign_minari("other/labelled-v0", box, actions, {"is_success": np.zeros(4, bool)}, dense)
    reports = []
    (episode,) = import_minari("other/labelled-v0", report=reports.append)
    assert not episode.success and reports == []
    foreign_minari("other/unlabelled-v0", box, actions, {}, dense)
    (episode,) = import_minari("other/unlabelled-v0", report=reports.append)
    assert episode.success and len(reports) == 1 and "guessed" in reports[0]
