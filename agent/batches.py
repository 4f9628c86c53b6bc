"""Replay-buffer batches in the layout the jitted update reads (agent/sac.py).

The buffer (agent/data/replay_buffer.py) hands out shaped rewards beside the raw ones and keeps
cached backbone features under `<camera>_features`; the update shapes rewards itself and reads a
camera's cached features under the camera's own key. `to_agent_batch` bridges the two, so every
trainer (pretrain, learner, train-gym) feeds the update the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from agent.data.replay_buffer import FEATURES_SUFFIX


def agent_observations(observations: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cached features replace their camera's frames (`wrist_1_features` -> `wrist_1`)."""
    out = {}
    for key, value in observations.items():
        if key.endswith(FEATURES_SUFFIX):
            out[key[: -len(FEATURES_SUFFIX)]] = value
        elif key + FEATURES_SUFFIX not in observations:
            out[key] = value
    return out


def to_agent_batch(sample: Mapping[str, Any], *, bootstrap_on_truncation: bool = True) -> dict[str, Any]:
    """A `ReplayBuffer.sample` batch as the update's batch: raw rewards (the update shapes them),
    masks, Monte-Carlo returns (on the shaped reward, for the Cal-QL bound).

    With `bootstrap_on_truncation=False` a time-limit step is terminal too (agent.reward key).
    """
    if bootstrap_on_truncation:
        masks = sample["masks"]
    else:
        masks = (1.0 - np.asarray(sample["dones"], np.float32)).astype(np.float32)
    return {
        "observations": agent_observations(sample["observations"]),
        "next_observations": agent_observations(sample["next_observations"]),
        "actions": sample["actions"],
        "rewards": sample["raw_rewards"],
        "masks": masks,
        "mc_returns": sample["mc_returns"],
    }
