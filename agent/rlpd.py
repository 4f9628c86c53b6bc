"""RLPD/SERL-style mixed batches: part offline (demos, logs), part online.

    n_off = offline_batch_size(256, ratio=0.5, offline_size=len(demos), online_size=len(online))
    batch = mix_batches(offline_buffer.sample(n_off), online_buffer.sample(256 - n_off))
"""

from __future__ import annotations

import jax
import numpy as np


def offline_batch_size(batch_size: int, offline_ratio: float, offline_size: int, online_size: int) -> int:
    """How many of `batch_size` samples come from offline data.

    `offline_ratio` in [0, 1] is a fixed fraction; -1 is proportional to the buffers' sizes. An
    empty buffer contributes nothing (all samples come from the other one).
    """
    if offline_ratio != -1 and not 0.0 <= offline_ratio <= 1.0:
        raise ValueError(f"offline_ratio must be in [0, 1] or -1, got {offline_ratio}")
    if offline_size <= 0:
        return 0
    if online_size <= 0:
        return batch_size
    ratio = offline_size / (offline_size + online_size) if offline_ratio == -1 else offline_ratio
    return int(round(batch_size * ratio))


def mix_batches(offline: dict, online: dict) -> dict:
    """Concatenate two batches with the same structure along the batch axis (offline first)."""
    offline_struct = jax.tree.structure(offline)
    online_struct = jax.tree.structure(online)
    if offline_struct != online_struct:
        raise ValueError(f"batches differ in structure: offline {offline_struct} vs online {online_struct}")

    def cat(a, b):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape[1:] != b.shape[1:] or a.dtype != b.dtype:
            raise ValueError(f"cannot mix arrays {a.shape} {a.dtype} and {b.shape} {b.dtype}")
        return np.concatenate([a, b], axis=0)

    return jax.tree.map(cat, offline, online)
