"""Batches for one learner step: `groups` (= UTD) batches stacked on a leading axis, each mixing
offline and online samples RLPD-style (agent/rlpd.py), in the update's layout (agent/batches.py).

One `ReplayBuffer.sample` call per buffer draws all groups at once (cheaper than utd calls).
"""

from __future__ import annotations

import numpy as np

from agent.batches import to_agent_batch
from agent.data.replay_buffer import ReplayBuffer
from agent.rlpd import mix_batches, offline_batch_size


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
    *,
    bootstrap_on_truncation: bool = True,
    frames: bool = True,
) -> dict:
    """`groups` agent batches of `batch_size` stacked on a leading axis (learner_step's input).

    Each batch takes `offline_batch_size(...)` samples from `offline` and the rest from `online`
    (RLPD-style mixing, offline first); either buffer may be None or empty. `frames=False` leaves
    out the uint8 frames of cameras whose features the buffer caches.
    """
    online_size = online.num_transitions if online is not None else 0
    offline_size = offline.num_transitions if offline is not None else 0
    if online_size + offline_size == 0:
        raise ValueError("no complete episode in either buffer yet")
    ratio = offline_ratio if offline_size else 0.0
    n_off = offline_batch_size(batch_size, ratio, offline_size, online_size) if offline_size else 0
    if online_size == 0:
        n_off = batch_size
    def draw(buffer: ReplayBuffer, n: int) -> dict:
        sample = buffer.sample(n * groups, rng, frames=frames)
        return stack_leading(to_agent_batch(sample, bootstrap_on_truncation=bootstrap_on_truncation), groups)

    parts = []
    if n_off:
        parts.append(draw(offline, n_off))
    if batch_size - n_off:
        parts.append(draw(online, batch_size - n_off))
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
