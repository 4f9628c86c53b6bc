"""Labelled frames for training and evaluating the classifier, from any episode directories.

Labels, per stored frame, from the first source an episode has:
1. `frame_info/success_label` (what `franka-rl record-rewards` writes);
2. `info/success` (the task's success after each step; o_0 counts as failure);
3. `rewards > 0` (a sparse task's reward after each step; o_0 counts as failure).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent.data.episodes import CorruptEpisodeError, Episode, EpisodeStore, load_episode
from agent.data.reward_frames import LABEL_KEY
from robot_env.errors import UserError


class ClassifierDataError(UserError, ValueError):
    """Reward data that cannot be used as asked (missing cameras, no labels of one kind, ...)."""


@dataclass(frozen=True)
class LabelledFrames:
    """Frames in recorded order. `episode` numbers episodes across every directory given."""

    images: dict[str, np.ndarray]  # camera -> uint8 (N, H, W, 3)
    labels: np.ndarray  # bool (N,)
    episode: np.ndarray  # int (N,)
    frame: np.ndarray  # int (N,), index of the frame within its episode
    label_sources: dict[str, int]  # label source -> number of episodes labelled by it

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, mask: np.ndarray) -> LabelledFrames:
        return LabelledFrames({k: v[mask] for k, v in self.images.items()}, self.labels[mask],
                              self.episode[mask], self.frame[mask], self.label_sources)


def frame_labels(episode: Episode) -> tuple[np.ndarray, str]:
    """One bool per stored frame (T+1) and the name of the source it came from."""
    if LABEL_KEY in episode.frame_info:
        return episode.frame_info[LABEL_KEY].astype(bool), LABEL_KEY
    if "success" in episode.info:
        return np.r_[False, episode.info["success"].astype(bool)], "info/success"
    return np.r_[False, episode.rewards > 0], "rewards"


def load_labelled_frames(directories: Sequence[str | os.PathLike], image_keys: Sequence[str]) -> LabelledFrames:
    """Every frame of every episode in `directories` with the cameras `image_keys`.

    Corrupt episode files are reported and skipped (EpisodeStore); an episode without one of the
    cameras is an error naming the camera, since training on fewer cameras would be a different model."""
    images: dict[str, list[np.ndarray]] = {key: [] for key in image_keys}
    labels, episode_ids, frame_ids = [], [], []
    sources: dict[str, int] = {}
    shapes: dict[str, tuple] = {}
    next_id = 0
    for directory in directories:
        try:
            store = EpisodeStore(directory)
        except FileNotFoundError as exc:
            raise ClassifierDataError(f"{exc}; pass a directory written by `franka-rl record-rewards`") from None
        for path in store.paths():
            try:
                episode = load_episode(path)
            except CorruptEpisodeError as exc:
                store.report(f"skipping {exc}")
                continue
            missing = [key for key in image_keys if key not in episode.observations]
            if missing:
                raise ClassifierDataError(
                    f"{path} has no camera {missing} (it has {sorted(episode.observations)}); use data "
                    f"recorded with cameras {list(image_keys)}, or train with classifier.image_keys set "
                    "to cameras the data has"
                )
            for key in image_keys:
                frames = episode.observations[key]
                if shapes.setdefault(key, frames.shape[1:]) != frames.shape[1:]:
                    raise ClassifierDataError(
                        f"{path}: camera '{key}' frames are {frames.shape[1:]}, earlier episodes' "
                        f"are {shapes[key]}; train on data recorded at one image size"
                    )
                images[key].append(frames)
            episode_labels, source = frame_labels(episode)
            sources[source] = sources.get(source, 0) + 1
            labels.append(episode_labels)
            episode_ids.append(np.full(len(episode_labels), next_id))
            frame_ids.append(np.arange(len(episode_labels)))
            next_id += 1
    if not labels:
        raise ClassifierDataError(
            f"no episodes in {', '.join(map(str, directories))} (record them with `franka-rl record-rewards`)"
        )
    return LabelledFrames(
        {key: np.concatenate(value) for key, value in images.items()},
        np.concatenate(labels),
        np.concatenate(episode_ids),
        np.concatenate(frame_ids),
        sources,
    )


def split_by_episode(episode: np.ndarray, labels: np.ndarray, validation_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, validation) holding out whole episodes, so frames from one episode
    (nearly identical neighbours) never sit on both sides.

    Episodes with positive frames and episodes without are split separately, so both sides get
    successes and failures in proportion."""
    if not 0.0 < validation_fraction < 1.0:
        raise ClassifierDataError(f"classifier.validation_fraction must be in (0, 1), got {validation_fraction}")
    rng = np.random.default_rng(seed)
    ids = np.unique(episode)
    has_positive = np.array([labels[episode == i].any() for i in ids])
    validation_ids = []
    for group in (ids[has_positive], ids[~has_positive]):
        if group.size == 0:
            continue
        count = int(round(validation_fraction * group.size))
        count = min(max(count, 1), group.size - 1) if group.size > 1 else 0
        validation_ids.extend(rng.permutation(group)[:count].tolist())
    validation = np.isin(episode, validation_ids)
    train = ~validation
    for name, mask in (("training", train), ("validation", validation)):
        if not labels[mask].any() or labels[mask].all():
            raise ClassifierDataError(
                f"the {name} split has no {'success' if not labels[mask].any() else 'failure'} frames "
                f"({np.unique(episode).size} episodes in all): record more episodes with "
                "`franka-rl record-rewards`, with successes in at least two of them"
            )
    return train, validation
