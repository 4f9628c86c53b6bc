"""The reward classifier: threshold rule, ROC, episode split, the reward wrapper (stub classifier),
camera mismatch on load, and train-classifier / eval-classifier end to end on a tiny recording."""

from __future__ import annotations

import io
import json

import gymnasium as gym
import jax
import numpy as np
import pytest

from franka_rl.cli import main
from reward_classifier import ClassifierConfig, RewardClassifierWrapper, wrap_with_classifier
from reward_classifier.data import ClassifierDataError, split_by_episode
from reward_classifier.metrics import classification_report, roc_auc, roc_curve, threshold_for_fpr
from reward_classifier.model import init_backbone, init_head, make_head
from reward_classifier.saved_model import ClassifierLoadError, load_classifier, save_classifier

# ---------------------------------------------------------------------------------------------
# Threshold and metrics


@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.2])
def test_threshold_hits_the_target_fpr_and_is_the_lowest_that_does(target):
    rng = np.random.default_rng(0)
    negatives = rng.beta(2, 5, 2000)
    threshold = threshold_for_fpr(negatives, target)
    achieved = np.mean(negatives > threshold)
    assert achieved <= target
    # One more false positive would break the target: no lower threshold meets it.
    assert np.mean(negatives >= threshold) > target
    assert achieved >= target - 1 / negatives.size


def test_threshold_with_ties_and_floor():
    negatives = np.array([0.9] * 5 + [0.1] * 95)
    # Any threshold below 0.9 lets 5 % through: a 1 % target must sit at 0.9.
    assert threshold_for_fpr(negatives, 0.01) == pytest.approx(0.9)
    assert np.mean(negatives > threshold_for_fpr(negatives, 0.05)) == pytest.approx(0.05)
    assert threshold_for_fpr(negatives, 0.05, floor=0.5) == 0.5
    with pytest.raises(ValueError):
        threshold_for_fpr(np.array([]), 0.01)


def test_roc_auc_matches_pairwise_count_and_curve_ends():
    rng = np.random.default_rng(1)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.random(300) + 0.4 * labels, 1)  # coarse: many ties
    pos, neg = scores[labels], scores[~labels]
    pairwise = np.mean((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None]))
    assert roc_auc(labels, scores) == pytest.approx(pairwise)
    fpr, tpr, thresholds = roc_curve(labels, scores)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    # Each point is what classification_report says at its threshold.
    report = classification_report(labels, scores, thresholds[5])
    assert (report["fpr"], report["recall"]) == pytest.approx((fpr[5], tpr[5]))


def test_split_holds_out_whole_episodes_with_both_labels():
    episode = np.repeat(np.arange(20), 10)
    labels = np.zeros(200, bool)
    labels[(episode % 2 == 0) & (np.tile(np.arange(10), 20) >= 7)] = True
    train, validation = split_by_episode(episode, labels, 0.25, seed=3)
    assert not set(episode[train]) & set(episode[validation])
    assert (train | validation).all()
    for mask in (train, validation):
        assert labels[mask].any() and not labels[mask].all()
    with pytest.raises(ClassifierDataError, match="success"):
        split_by_episode(episode, np.zeros(200, bool), 0.25, seed=0)


def test_labels_fall_back_to_info_success_then_rewards(tmp_path):
    from agent.data import EpisodeStore
    from agent.data.episodes import Episode
    from reward_classifier.data import load_labelled_frames

    def episode(steps, **extra):
        return Episode({"wrist_1": np.zeros((steps + 1, 4, 4, 3), np.uint8)}, np.zeros((steps, 6), np.float32),
                       extra.pop("rewards", np.zeros(steps, np.float32)), np.zeros(steps, bool), np.zeros(steps, bool),
                       np.zeros(steps, bool), {"task": "t", "source": "policy"}, **extra)

    store = EpisodeStore(tmp_path, create=True)
    store.write(episode(3, frame_info={"success_label": np.array([0, 0, 1, 1], bool)}))
    store.write(episode(3, info={"success": np.array([0, 1, 0], bool)}))
    store.write(episode(3, rewards=np.array([0, 0, 1], np.float32)))
    frames = load_labelled_frames([tmp_path], ["wrist_1"])
    assert frames.labels.tolist() == [0, 0, 1, 1] + [0, 0, 1, 0] + [0, 0, 0, 1]
    assert frames.episode.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert frames.label_sources == {"success_label": 1, "info/success": 1, "rewards": 1}
    with pytest.raises(ClassifierDataError, match="wrist_2"):
        load_labelled_frames([tmp_path], ["wrist_1", "wrist_2"])


# ---------------------------------------------------------------------------------------------
# Reward wrapper


class CountingEnv(gym.Env):
    """A camera whose value is the step count; the task itself never succeeds; 20-step limit."""

    def __init__(self, size=8):
        self.observation_space = gym.spaces.Dict({
            "state": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32),
            "wrist_1": gym.spaces.Box(0, 255, (size, size, 3), np.uint8),
        })
        self.action_space = gym.spaces.Box(-1, 1, (6,), np.float32)

    def _obs(self):
        return {"state": np.array([self.t], np.float32), "wrist_1": np.full((8, 8, 3), self.t, np.uint8)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {"success": False}

    def step(self, action):
        self.t += 1
        return self._obs(), 0.0, False, self.t >= 20, {"success": False}


class ScriptedProbability:
    """A stub classifier: probability = table[step] read from the frame."""

    def __init__(self, table):
        self.table = table
        self.threshold = 0.5

    def probability(self, observation):
        return float(self.table[int(observation["wrist_1"][0, 0, 0])])

    def check_observation_space(self, space):
        pass


def run_episode(env):
    _, info = env.reset(seed=0)
    infos, rewards, terminated = [info], [], False
    while True:
        _, reward, terminated, truncated, info = env.step(np.zeros(6, np.float32))
        infos.append(info)
        rewards.append(reward)
        if terminated or truncated:
            return rewards, terminated, infos


def test_debounce_needs_consecutive_frames_and_terminates_with_reward_one():
    #          step: 0    1    2    3    4    5    6    7    8 ...
    table = np.array([0.0, 0.9, 0.9, 0.1, 0.9, 0.9, 0.9, 0.9] + [0.0] * 13)
    rewards, terminated, infos = run_episode(RewardClassifierWrapper(CountingEnv(), ScriptedProbability(table), 0.5, 3))
    # Steps 1-2 are above, 3 breaks the streak, 4-5-6 make three in a row: success at step 6.
    assert terminated and len(rewards) == 6
    assert rewards == [0.0] * 5 + [1.0]
    assert [i["classifier_probability"] for i in infos] == pytest.approx(table[:7].tolist())
    assert [i["classifier_success"] for i in infos] == [False] * 6 + [True]
    # The env's own success (ground truth in the twin) is passed through untouched.
    assert not any(i["success"] for i in infos)

    rewards, terminated, _ = run_episode(RewardClassifierWrapper(CountingEnv(), ScriptedProbability(table), 0.5, 1))
    assert terminated and rewards == [1.0]

    # Never above the threshold: the episode runs to the time limit with reward 0.
    rewards, terminated, _ = run_episode(RewardClassifierWrapper(CountingEnv(), ScriptedProbability(table), 0.95, 1))
    assert not terminated and len(rewards) == 20 and sum(rewards) == 0


def test_pose_check_vetoes_success():
    table = np.full(21, 0.99)
    pose_ok = iter([False, False, True])
    env = RewardClassifierWrapper(CountingEnv(), ScriptedProbability(table), 0.5, 1, pose_check=lambda: next(pose_ok))
    rewards, terminated, infos = run_episode(env)
    assert terminated and rewards == [0.0, 0.0, 1.0]
    assert [i["classifier_pose_ok"] for i in infos[1:]] == [False, False, True]


def test_tcp_pose_check_in_the_state_only_twin():
    import sim
    from reward_classifier.wrapper import tcp_pose_check

    env = sim.make_env(state_only=True)
    try:
        env.reset(seed=0)
        # The reset pose is 7.5 cm above the target: no tolerance below that passes.
        assert not tcp_pose_check(env, 0.0)()
        assert not tcp_pose_check(env, 0.05)()
        assert tcp_pose_check(env, 0.2)()
    finally:
        env.close()


def test_wrap_with_classifier_uses_config_threshold_and_debounce():
    table = np.array([0.0] + [0.7] * 20)
    cfg = ClassifierConfig(threshold=0.6, debounce_steps=2)
    rewards, terminated, infos = run_episode(wrap_with_classifier(CountingEnv(), cfg, classifier=ScriptedProbability(table)))
    assert terminated and rewards == [0.0, 1.0]
    # Episode statistics follow the classifier's episode end.
    assert "episode" not in infos[1] and infos[2]["episode"]["length"] == 2 and infos[2]["episode"]["return"] == 1.0
    cfg = ClassifierConfig(threshold=None)  # the stored 0.5
    env = wrap_with_classifier(CountingEnv(), cfg, classifier=ScriptedProbability(table))
    assert env.get_wrapper_attr("threshold") == 0.5
    with pytest.raises(ClassifierLoadError, match="model_dir"):
        wrap_with_classifier(CountingEnv(), ClassifierConfig())


# ---------------------------------------------------------------------------------------------
# Saved model and camera checks


def save_tiny_classifier(directory, keys=("wrist_1", "wrist_2"), size=32):
    head = make_head(keys, "spatial", 2, 16, 0.1)
    key = jax.random.PRNGKey(0)
    backbone = init_backbone("resnet10", (size, size), key)
    feature_shape = (1, 1, 512)
    meta = {"image_keys": list(keys), "image_shape": [size, size], "feature_shape": list(feature_shape),
            "backbone": "resnet10", "pretrained_path": "", "pooling": "spatial", "spatial_features": 2,
            "hidden_dim": 16, "dropout": 0.1, "threshold": 0.7}
    save_classifier(directory, backbone, init_head(head, feature_shape, key), meta)


def test_loading_for_other_cameras_fails_with_one_clear_line(tmp_path):
    save_tiny_classifier(tmp_path / "model")
    with pytest.raises(ClassifierLoadError) as missing:
        load_classifier(tmp_path / "model", {"wrist_1": (32, 32, 3), "front": (32, 32, 3)})
    message = str(missing.value)
    assert "\n" not in message and "['wrist_2']" in message and "wrist_1" in message and "retrain" in message
    with pytest.raises(ClassifierLoadError, match="wrist_1 at 64x64.*32x32|32x32.*wrist_1 at 64x64"):
        load_classifier(tmp_path / "model", {"wrist_1": (64, 64, 3), "wrist_2": (64, 64, 3)})
    # The wrapper checks the env's observation space the same way.
    with pytest.raises(ClassifierLoadError, match="wrist_2"):
        wrap_with_classifier(CountingEnv(), ClassifierConfig(model_dir=str(tmp_path / "model")))
    # Matching cameras load, and the jitted batch-1 forward gives a probability.
    classifier = load_classifier(tmp_path / "model", {"wrist_1": (32, 32, 3), "wrist_2": (32, 32, 3)})
    p = classifier.probability({"wrist_1": np.zeros((32, 32, 3), np.uint8), "wrist_2": np.zeros((32, 32, 3), np.uint8)})
    assert 0.0 <= p <= 1.0 and classifier.threshold == 0.7


def test_corrupt_or_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ClassifierLoadError, match="train-classifier"):
        load_classifier(tmp_path / "nothing")
    save_tiny_classifier(tmp_path / "model")
    (tmp_path / "model" / "classifier.msgpack").write_bytes(b"\x00garbage")
    with pytest.raises(ClassifierLoadError, match="retrain"):
        load_classifier(tmp_path / "model")


# ---------------------------------------------------------------------------------------------
# The commands, end to end on a tiny recording from the twin


def record_tiny(out, size, positives, negatives):
    """What `franka-rl record-rewards` records, at size x size, with its status line kept quiet."""
    import sim
    from agent.data import EpisodeStore
    from teleop.recording import StatusLine, record_reward_frames
    from teleop.scripted import ExpertDevice

    env = sim.make_env(**{"env.image_height": size, "env.image_width": size})
    try:
        record_reward_frames(env, ExpertDevice(env, noise=0.1), EpisodeStore(out, create=True),
                             positives=positives, negatives=negatives, metadata={"task": "peg_insertion"},
                             status=StatusLine(stream=io.StringIO()))
    finally:
        env.close()

TINY = ["classifier.steps=30", "classifier.batch_size=16", "classifier.hidden_dim=32", "classifier.eval_every=10",
        "classifier.spatial_features=2", "classifier.feature_batch_size=32", "classifier.validation_fraction=0.5"]


def test_train_then_eval_classifier_cli_write_their_files(tmp_path, capsys):
    data = tmp_path / "rewards"
    record_tiny(data, 32, positives=30, negatives=40)
    model = tmp_path / "model"
    assert main(["train-classifier", "--data", str(data), "--out", str(model), "--quiet", *TINY]) == 0
    for name in ("classifier.msgpack", "classifier.json", "metrics.json", "metrics.jsonl", "roc.png",
                 "confusion.png", "worst_frames.png"):
        assert (model / name).is_file(), name
    metrics = json.loads((model / "metrics.json").read_text())
    for key in ("precision", "recall", "f1", "roc_auc", "balanced_accuracy", "threshold", "fpr"):
        assert key in metrics
    meta = json.loads((model / "classifier.json").read_text())
    assert meta["image_keys"] == ["wrist_1", "wrist_2"] and meta["image_shape"] == [32, 32]
    assert meta["threshold"] == metrics["threshold"]
    assert "balanced accuracy" in capsys.readouterr().out

    report = tmp_path / "report"
    assert main(["eval-classifier", "--model", str(model), "--data", str(data), "--out", str(report), "--quiet"]) == 0
    evaluated = json.loads((report / "metrics.json").read_text())
    assert evaluated["positives"] + evaluated["negatives"] > metrics["positives"] + metrics["negatives"]
    assert all((report / name).is_file() for name in ("roc.png", "confusion.png", "worst_frames.png"))

    # A second training into the same directory would destroy the first: refused in one line.
    capsys.readouterr()
    assert main(["train-classifier", "--data", str(data), "--out", str(model), "--quiet", *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err

    # Crop augmentation: one shifted copy of every training frame joins the cache.
    assert main(["train-classifier", "--data", str(data), "--out", str(model), "--quiet", "--overwrite",
                 *TINY, "classifier.augment_copies=1"]) == 0
    augmented = json.loads((model / "metrics.json").read_text())
    assert augmented["training_examples"] == 2 * metrics["training_examples"] > 0


def test_shifted_copies_are_crops_of_the_edge_padded_frame():
    import jax

    from reward_classifier.train import shifted_copies

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 12, 10, 3), dtype=np.uint8)
    pad = 3
    copies = shifted_copies(frames, 2, pad, jax.random.PRNGKey(0))
    assert copies.shape == (10, 12, 10, 3) and copies.dtype == np.uint8
    padded = np.pad(frames, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    offsets = []
    for index, image in enumerate(copies):
        source = padded[index % len(frames)]
        found = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                 if np.array_equal(source[dy:dy + 12, dx:dx + 10], image)]
        assert found, index
        offsets.append(found[0])
    assert len(set(offsets)) > 1  # random offsets, not one fixed shift


def test_eval_on_data_from_other_cameras_is_one_line(tmp_path, capsys):
    save_tiny_classifier(tmp_path / "model", size=32)
    data = tmp_path / "rewards"
    record_tiny(data, 24, positives=1, negatives=5)
    assert main(["eval-classifier", "--model", str(tmp_path / "model"), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "24x24" in err and "32x32" in err
