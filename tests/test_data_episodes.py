"""Episode store: round trip, atomic writes that survive a killed writer, corrupt files named."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from agent.data import (
    CorruptEpisodeError,
    EpisodeRecorder,
    EpisodeStore,
    load_episode,
    make_metadata,
)
from agent.data.synthetic import synthetic_episode

REPO = Path(__file__).resolve().parent.parent


def assert_episodes_equal(a, b):
    assert a.observations.keys() == b.observations.keys()
    for key in a.observations:
        np.testing.assert_array_equal(a.observations[key], b.observations[key])
        assert a.observations[key].dtype == b.observations[key].dtype
    for name in ("actions", "rewards", "terminated", "truncated", "intervened"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    for key in a.info:
        np.testing.assert_array_equal(a.info[key], b.info[key])


def test_round_trip_without_pickle(tmp_path):
    rng = np.random.default_rng(0)
    store = EpisodeStore(tmp_path / "eps", create=True)
    written = [synthetic_episode(rng, n, episode_index=i) for i, n in enumerate([5, 1, 12])]
    paths = [store.write(e) for e in written]
    assert [p.name for p in paths] == ["episode_000000.npz", "episode_000001.npz", "episode_000002.npz"]
    loaded = list(store.episodes())
    assert len(loaded) == 3
    for a, b in zip(written, loaded, strict=True):
        assert_episodes_equal(a, b)
        assert b.metadata["task"] == "synthetic" and b.metadata["length"] == len(a)
        assert b.metadata["success"] == a.success
    # Every entry loads with pickle forbidden: the format has no object arrays.
    with np.load(paths[0], allow_pickle=False) as npz:
        assert all(npz[name].dtype != object for name in npz.files)
        assert "obs/wrist_1" in npz.files and npz["obs/wrist_1"].dtype == np.uint8


def test_object_arrays_are_refused(tmp_path):
    episode = synthetic_episode(np.random.default_rng(0), 3)
    episode.info["bad"] = np.array([{}, {}, {}], dtype=object)
    with pytest.raises(ValueError, match="info/bad"):
        EpisodeStore(tmp_path, create=True).write(episode)
    assert not list(tmp_path.iterdir())


def test_metadata_rejects_unknown_source():
    with pytest.raises(ValueError, match="source"):
        make_metadata(task="t", source="dreams")


def test_recorder_builds_and_writes_on_end(tmp_path):
    store = EpisodeStore(tmp_path, create=True)
    recorder = EpisodeRecorder(store)
    obs = {"state": np.zeros(3, np.float32)}
    recorder.start(obs, make_metadata(task="t", source="teleop", seed=3))
    for t in range(4):
        nxt = {"state": np.full(3, t + 1, np.float32)}
        path = recorder.add(np.ones(2) * t, float(t == 3), nxt, t == 3, False, t % 2 == 0, {"success": t == 3})
    assert path is not None and not recorder.active
    episode = load_episode(path)
    assert len(episode) == 4
    np.testing.assert_array_equal(episode.observations["state"][:, 0], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(episode.intervened, [True, False, True, False])
    assert episode.success and episode.metadata["seed"] == 3 and episode.metadata["interventions"] == 2


def test_corrupt_and_truncated_files_are_named_and_skipped(tmp_path):
    rng = np.random.default_rng(1)
    store = EpisodeStore(tmp_path, create=True)
    paths = [store.write(synthetic_episode(rng, 6, episode_index=i)) for i in range(3)]
    # Truncate the middle file (as a full disk would) and write garbage over the last one.
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2])
    paths[2].write_bytes(b"not a zip file at all")
    with pytest.raises(CorruptEpisodeError, match=paths[1].name):
        load_episode(paths[1])
    with pytest.raises(CorruptEpisodeError, match="episode_000002.npz"):
        load_episode(paths[2])
    reports: list[str] = []
    store = EpisodeStore(tmp_path, report=reports.append)
    loaded = list(store.episodes())
    assert len(loaded) == 1 and loaded[0].observations["state"][0, 0] == 0
    assert [p.name for p, _ in store.skipped] == [paths[1].name, paths[2].name]
    assert any(paths[1].name in r for r in reports) and any(paths[2].name in r for r in reports)


def test_inconsistent_arrays_are_reported(tmp_path):
    rng = np.random.default_rng(2)
    path = EpisodeStore(tmp_path, create=True).write(synthetic_episode(rng, 5))
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["rewards"] = arrays["rewards"][:-1]
    with zipfile.ZipFile(path, "w") as zf:  # rewrite with one array too short
        for name, value in arrays.items():
            with zf.open(name + ".npy", "w") as handle:
                np.lib.format.write_array(handle, value, allow_pickle=False)
    with pytest.raises(CorruptEpisodeError, match=r"episode_000000\.npz.*rewards"):
        load_episode(path)


WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from agent.data import EpisodeStore
    from agent.data.synthetic import synthetic_episode

    store = EpisodeStore(sys.argv[1], create=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        store.write(synthetic_episode(rng, 20, episode_index=i))
    print("three written", flush=True)
    # Episode 4 is in progress (steps accumulate), then is written slowly: the parent kills us
    # while the temporary file is being filled.
    import agent.data.episodes as episodes
    real_savez = episodes.np.savez_compressed
    def slow_savez(handle, **arrays):
        handle.write(b"PK partial")
        handle.flush()
        print("writing", flush=True)
        time.sleep(60)
        real_savez(handle, **arrays)
    episodes.np.savez_compressed = slow_savez
    store.write(synthetic_episode(rng, 50, episode_index=3))
    """
)


def test_killing_the_writer_mid_episode_keeps_earlier_episodes(tmp_path):
    directory = tmp_path / "eps"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(directory)], stdout=subprocess.PIPE,
                            text=True, env=env, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "three written"
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    reports: list[str] = []
    store = EpisodeStore(directory, report=reports.append)
    assert len(store.incomplete_writes()) == 1  # the half-written episode 4, under a temp name
    loaded = list(store.episodes())
    assert [int(e.observations["state"][0, 0]) for e in loaded] == [0, 1, 2]
    assert all(len(e) == 20 for e in loaded) and not store.skipped
    assert any("incomplete write" in r for r in reports)
    # The next writer carries on after the last complete episode.
    assert store.write(synthetic_episode(np.random.default_rng(5), 3)).name == "episode_000003.npz"
