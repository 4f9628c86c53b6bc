"""Replay-buffer batches -> the batches `agent.sac` updates on.

The buffer (agent/data/replay_buffer.py) hands out `rewards` already shaped and `raw_rewards`
as stored; the update shapes rewards itself (r' = scale * r + bias from the agent's spec), so it
must get the raw ones, or they would be shaped twice. Cached backbone features arrive as
`<camera>_features`; the agent reads them under the camera's own key (a float entry there means
"features, skip the backbone").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from agent.data.replay_buffer import FEATURES_SUFFIX, ReplayBuffer
from agent.rlpd import mix_batches, offline_batch_size


def _agent_observations(observations: Mapping[str, np.ndarray], image_keys: Sequence[str]) -> dict[str, np.ndarray]:
    out = {k: v for k, v in observations.items() if not k.endswith(FEATURES_SUFFIX)}
    for key in image_keys:
        cached = observations.get(key + FEATURES_SUFFIX)
        if cached is not None:
            out[key] = cached
    return out


def to_agent_batch(batch: Mapping, image_keys: Sequence[str] = ()) -> dict:
    """The fields of a buffer batch that the update reads, with raw rewards and cached features."""
    return {
        "observations": _agent_observations(batch["observations"], image_keys),
        "next_observations": _agent_observations(batch["next_observations"], image_keys),
        "actions": batch["actions"],
        "rewards": batch["raw_rewards"],
        "masks": batch["masks"],
        "mc_returns": batch["mc_returns"],
    }


def stack_leading(batch: dict, groups: int) -> dict:
    """Reshape every array's leading axis n*groups into (groups, n): one sample of groups*n for a UTD step."""
    def split(x):
        x = np.asarray(x)
        return x.reshape(groups, x.shape[0] // groups, *x.shape[1:])

    return {k: ({kk: split(vv) for kk, vv in v.items()} if isinstance(v, dict) else split(v)) for k, v in batch.items()}


def sample_batches(
    online: ReplayBuffer | None,
    offline: ReplayBuffer | None,
    rng: np.random.Generator,
    batch_size: int,
    groups: int,
    offline_ratio: float,
    image_keys: Sequence[str] = (),
    frames: bool = True,
) -> dict:
    """`groups` agent batches of `batch_size` stacked on a leading axis (learner_step's input).

    Each batch takes `offline_batch_size(...)` samples from `offline` and the rest from `online`
    (RLPD-style mixing, offline first); either buffer may be None or empty.
    """
    online_size = online.num_transitions if online is not None else 0
    offline_size = offline.num_transitions if offline is not None else 0
    if online_size + offline_size == 0:
        raise ValueError("no complete episode in either buffer yet")
    ratio = offline_ratio if offline_size else 0.0
    n_off = offline_batch_size(batch_size, ratio, offline_size, online_size) if offline_size else 0
    if online_size == 0:
        n_off = batch_size
    parts = []
    if n_off:
        parts.append(stack_leading(to_agent_batch(offline.sample(n_off * groups, rng, frames=frames), image_keys), groups))
    if batch_size - n_off:
        parts.append(stack_leading(to_agent_batch(online.sample((batch_size - n_off) * groups, rng, frames=frames),
                                                  image_keys), groups))
    if len(parts) == 1:
        return parts[0]
    # mix_batches concatenates on axis 0; the batch axis is axis 1 here, so mix group by group.
    mixed = [mix_batches(_group(parts[0], g), _group(parts[1], g)) for g in range(groups)]
    return _stack(mixed)


def _group(batch: dict, index: int) -> dict:
    return {k: ({kk: vv[index] for kk, vv in v.items()} if isinstance(v, dict) else v[index]) for k, v in batch.items()}


def _stack(batches: list[dict]) -> dict:
    first = batches[0]
    return {k: ({kk: np.stack([b[k][kk] for b in batches]) for kk in v} if isinstance(v, dict)
                else np.stack([b[k] for b in batches])) for k, v in first.items()}
