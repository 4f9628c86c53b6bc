"""LeRobotDataset v3 in and out, checked against LeRobot's own dataset class (ledataset, a dev
dependency: see tests/lerobot_compat.py for the two test-only shims it needs beside CPU torch)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lerobot_compat import load_ledataset

from agent.data import EpisodeStore
from agent.data.lerobot_io import (
    ExpectedLayout,
    LeRobotError,
    export_lerobot,
    layout_from_spaces,
    read_lerobot,
)
from agent.data.sim_expert import expert_episodes
from agent.data.sources import detect_format, read_source
from agent.pretrain import load_offline_episodes
from franka_rl.cli import main

SIZE = 32
# H.264 yuv420p subsamples colour 2x2: on 32x32 twin frames the mean error is about 6 grey
# levels. A frame taken from the wrong time step differs far more (checked below).
LOSSY_MEAN_TOLERANCE = 10.0


@pytest.fixture(scope="module", autouse=True)
def hugging_face_offline_in_tmp(tmp_path_factory):
    """ledataset's `datasets` caches parquet as arrow under HF_HOME: keep that in a temporary
    folder, and make sure nothing reaches for the Hub."""
    patch = pytest.MonkeyPatch()
    patch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
    patch.setenv("HF_HUB_OFFLINE", "1")
    yield
    patch.undo()


@pytest.fixture(scope="module")
def twin_episodes():
    """Three episodes of the twin's scripted expert, recorded as record-demos does (EpisodeRecorder),
    ending terminated (success) or truncated; a few steps marked as operator takeovers."""
    from sim import make_env

    env = make_env(**{"env.image_height": SIZE, "env.image_width": SIZE, "task.max_episode_steps": 9})
    try:
        episodes = list(expert_episodes(env, 3, noise=0.3, seed=3))
    finally:
        env.close()
    for index, episode in enumerate(episodes):
        episode.intervened[index::3] = True
    return episodes


@pytest.fixture(scope="module")
def exported(twin_episodes, tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot")
    store = EpisodeStore(root / "episodes", create=True)
    for episode in twin_episodes:
        store.write(episode)
    assert main(["dataset", "export-lerobot", str(root / "episodes"), str(root / "peg"),
                 "--task", "insert the peg"]) == 0
    return root / "peg"


def test_export_loads_in_lerobots_own_dataset_class(twin_episodes, exported):
    LeRobotDataset = load_ledataset()
    dataset = LeRobotDataset("local/peg", root=exported, video_backend="pyav")
    lengths = [len(e) + 1 for e in twin_episodes]  # T steps + the final observation
    assert dataset.num_episodes == 3 and dataset.num_frames == sum(lengths)
    assert dataset.fps == 10  # the twin's control rate, from the episodes' metadata
    starts = np.cumsum([0, *lengths])
    for index, episode_meta in enumerate(dataset.meta.episodes):
        assert (episode_meta["dataset_from_index"], episode_meta["dataset_to_index"]) == (starts[index], starts[index + 1])
    assert set(dataset.meta.camera_keys) == {"observation.images.wrist_1", "observation.images.wrist_2"}
    ours = list(read_lerobot(exported))
    for index, episode in enumerate(twin_episodes):
        steps = len(episode)
        for t in range(steps + 1):
            item = dataset[int(starts[index] + t)]
            assert item["episode_index"].item() == index and item["frame_index"].item() == t
            assert item["task"] == "insert the peg"
            np.testing.assert_array_equal(item["observation.state"].numpy(), episode.observations["state"][t])
            action = episode.actions[t] if t < steps else np.zeros_like(episode.actions[0])
            np.testing.assert_array_equal(item["action"].numpy(), action)
            assert item["next.reward"].item() == (episode.rewards[t] if t < steps else 0.0)
            last = min(t, steps - 1)
            assert item["next.done"].item() == bool(episode.terminated[last] or episode.truncated[last])
            assert item["final_observation"].item() == (t == steps)
            for camera in ("wrist_1", "wrist_2"):
                frame = item[f"observation.images.{camera}"].numpy()  # (3, H, W) float in [0, 1]
                decoded = np.round(frame.transpose(1, 2, 0) * 255).astype(np.uint8)
                # LeRobot's timestamp lookup lands on the same frame our importer picks...
                np.testing.assert_array_equal(decoded, ours[index].observations[camera][t])
                # ...which is the recorded one, within the codec's error, and not its neighbour.
                original = episode.observations[camera].astype(float)
                error = np.abs(decoded - original[t]).mean()
                assert error < LOSSY_MEAN_TOLERANCE
                if 0 < t and not np.array_equal(original[t], original[t - 1]):
                    assert error < np.abs(decoded - original[t - 1]).mean()


def assert_same_steps(original, back):
    assert back.observations.keys() == original.observations.keys()
    np.testing.assert_array_equal(back.observations["state"], original.observations["state"])
    for name in ("actions", "rewards", "terminated", "truncated", "intervened"):
        got, want = getattr(back, name), getattr(original, name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    np.testing.assert_array_equal(back.info["success"], original.info["success"])
    written_by_store = ("length", "success", "interventions", "content_sha256")  # what EpisodeStore.write adds
    assert {k: v for k, v in back.metadata.items() if k not in written_by_store} == original.metadata


def test_import_gives_back_the_exported_episodes(twin_episodes, exported, tmp_path):
    assert main(["dataset", "import-lerobot", str(exported), str(tmp_path / "back")]) == 0
    back = list(EpisodeStore(tmp_path / "back").episodes())
    assert [len(e) for e in back] == [len(e) for e in twin_episodes]
    for original, episode in zip(twin_episodes, back, strict=True):
        assert_same_steps(original, episode)
        for camera in ("wrist_1", "wrist_2"):
            error = np.abs(episode.observations[camera].astype(float) - original.observations[camera]).mean()
            assert episode.observations[camera].dtype == np.uint8 and error < LOSSY_MEAN_TOLERANCE


def test_lossless_export_round_trips_frames_bit_exactly(twin_episodes, tmp_path):
    export_lerobot(twin_episodes[:2], tmp_path / "exact", lossless=True)
    info = json.loads((tmp_path / "exact" / "meta" / "info.json").read_text())
    assert info["features"]["observation.images.wrist_1"]["info"]["video.pix_fmt"] == "rgb24"
    for original, back in zip(twin_episodes[:2], read_lerobot(tmp_path / "exact"), strict=True):
        assert_same_steps(original, back)
        for camera in ("wrist_1", "wrist_2"):
            np.testing.assert_array_equal(back.observations[camera], original.observations[camera])


def test_imports_a_dataset_written_by_lerobots_own_writer(tmp_path, capsys):
    LeRobotDataset = load_ledataset()
    features = {
        "observation.state": {"dtype": "float32", "shape": (19,), "names": None},
        "action": {"dtype": "float32", "shape": (6,), "names": None},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
        "next.done": {"dtype": "bool", "shape": (1,), "names": None},
        "observation.images.top": {"dtype": "video", "shape": (SIZE, SIZE, 3), "names": ["height", "width", "channels"]},
        "observation.images.wrist_2": {"dtype": "video", "shape": (SIZE, SIZE, 3),
                                       "names": ["height", "width", "channels"]},
    }
    writer = LeRobotDataset.create("local/native", fps=10, features=features, root=tmp_path / "native",
                                   use_videos=True, image_writer_threads=0)
    rng = np.random.default_rng(0)
    written = []
    for length, success in ((4, True), (6, False)):
        frames = []
        for t in range(length):
            frame = {"observation.state": rng.standard_normal(19).astype(np.float32),
                     "action": rng.uniform(-1, 1, 6).astype(np.float32),
                     "next.reward": np.array([float(success and t == length - 1)], np.float32),
                     "next.done": np.array([success and t == length - 1]),
                     "observation.images.top": np.full((SIZE, SIZE, 3), 30 * t, np.uint8),
                     "observation.images.wrist_2": np.full((SIZE, SIZE, 3), 200 - 30 * t, np.uint8),
                     "task": "insert the peg"}
            writer.add_frame(dict(frame))
            frames.append(frame)
        writer.save_episode(parallel_encoding=False)  # no fork of this JAX-importing process
        written.append(frames)
    writer.finalize()

    out = tmp_path / "imported"
    assert main(["dataset", "import-lerobot", str(tmp_path / "native"), str(out)]) == 2
    assert "observation.images.top" in capsys.readouterr().err  # not a camera of the twin's config
    assert main(["dataset", "import-lerobot", str(tmp_path / "native"), str(out), "--rename", "top=wrist_1"]) == 0
    assert "no 'next.success' feature: success guessed" in capsys.readouterr().err
    episodes = list(EpisodeStore(out).episodes())
    assert [len(e) for e in episodes] == [4, 6]  # N frames are N steps
    for frames, episode, success in zip(written, episodes, (True, False), strict=True):
        np.testing.assert_array_equal(episode.actions, np.stack([f["action"] for f in frames]))
        states = np.stack([f["observation.state"] for f in frames])
        np.testing.assert_array_equal(episode.observations["state"][:-1], states)
        np.testing.assert_array_equal(episode.observations["state"][-1], states[-1])  # repeated last frame
        assert episode.rewards.tolist() == [0.0] * (len(frames) - 1) + [float(success)]
        assert episode.terminated[-1] == success and episode.truncated[-1] == (not success)
        assert episode.success == success and not episode.intervened.any()
        assert episode.metadata["source"] == "imported" and episode.metadata["task"] == "insert the peg"
        wrist_1 = episode.observations["wrist_1"][:-1].astype(float)
        assert np.abs(wrist_1 - np.stack([f["observation.images.top"] for f in frames])).max() <= 3


def write_variant(exported, tmp_path, change):
    """A copy of the exported dataset with meta/info.json's features edited by `change`."""
    import shutil

    root = tmp_path / "variant"
    shutil.copytree(exported, root)
    info = json.loads((root / "meta" / "info.json").read_text())
    change(info["features"])
    (root / "meta" / "info.json").write_text(json.dumps(info))
    return root


@pytest.mark.parametrize(("change", "layout", "feature"), [
    (lambda f: f["observation.state"].update(shape=[7]), ExpectedLayout(state_dim=19), "observation.state"),
    (lambda f: f["action"].update(dtype="int64"), ExpectedLayout(), "action"),
    (lambda f: f.update({"observation.images.side": f.pop("observation.images.wrist_2")}),
     ExpectedLayout(cameras=("wrist_1", "wrist_2")), "observation.images.side"),
    (lambda f: f.update({"observation.environment_state": {"dtype": "float32", "shape": [4], "names": None}}),
     ExpectedLayout(), "observation.environment_state"),
    (lambda f: f.pop("next.reward"), ExpectedLayout(), "next.reward"),
])
def test_import_refuses_what_it_cannot_map_naming_the_feature(exported, tmp_path, change, layout, feature):
    root = write_variant(exported, tmp_path, change)
    with pytest.raises(LeRobotError, match=f"feature '{feature}'"):
        list(read_lerobot(root, layout=layout))


def test_cli_refusal_names_the_feature_and_writes_nothing(exported, tmp_path, capsys):
    root = write_variant(exported, tmp_path, lambda f: f["action"].update(dtype="int64"))
    assert main(["dataset", "import-lerobot", str(root), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "feature 'action'" in err and "discrete" in err and not (tmp_path / "out").exists()


def test_pretraining_and_learner_sources_read_a_lerobot_folder(twin_episodes, exported):
    from robot_env import wrapped_spaces
    from robot_env.config import EnvConfig, TaskConfig

    assert detect_format(exported) == "lerobot"
    twin = layout_from_spaces(*wrapped_spaces(TaskConfig(), EnvConfig()))
    assert twin == ExpectedLayout(cameras=("wrist_1", "wrist_2"), state_dim=19, action_dim=6)
    dataset = load_offline_episodes([str(exported)], layout=twin)
    assert [len(e) for e in dataset.episodes] == [len(e) for e in twin_episodes]
    for original, episode in zip(twin_episodes, read_source(exported), strict=True):
        assert_same_steps(original, episode)
