"""Import SERL / HIL-SERL transition pickles into an episode store.

SERL's and HIL-SERL's recording scripts pickle a list of transition dicts:
    {"observations": {...}, "actions": a, "next_observations": {...}, "rewards": r,
     "masks": 1 - terminated, "dones": episode ended, "infos": {...} (optional)}
with observation arrays that usually carry a leading history axis of length 1 (their chunking
wrapper). Loading a pickle executes whatever code the file contains: import only files you made
or trust, which is why the caller must say `trusted=True`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.data.episodes import Episode, make_metadata
from agent.returns import split_episodes
from robot_env.errors import UserError

PICKLE_WARNING = (
    "SERL transition files are Python pickles: loading one runs any code inside it. "
    "Import only files you recorded yourself or whose source you trust"
)


class SerlImportError(UserError, ValueError):
    """A SERL file that does not hold transitions in the expected layout."""


def load_serl_pickle(path: str | os.PathLike, *, trusted: bool) -> list[dict[str, Any]]:
    """Unpickle a SERL transition list. Refuses unless `trusted` (see PICKLE_WARNING)."""
    if not trusted:
        raise PermissionError(PICKLE_WARNING + f"; refusing to load {path} without trusted=True")
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = pickle.load(handle)  # noqa: S301 - trusted by the caller, see PICKLE_WARNING
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as exc:
        raise SerlImportError(f"{path} is not a readable pickle ({type(exc).__name__}: {exc})") from None
    if isinstance(data, Mapping) and "observations" in data:
        data = _columns_to_rows(data)
    if not isinstance(data, Sequence) or not data or not isinstance(data[0], Mapping):
        raise SerlImportError(f"{path} does not hold a list of transition dicts")
    return list(data)


def _columns_to_rows(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A dict of stacked arrays (a saved buffer) as a list of transitions."""
    def row(tree, i):
        return {k: row(v, i) for k, v in tree.items()} if isinstance(tree, Mapping) else tree[i]

    count = len(np.asarray(data["rewards"]))
    return [row(data, i) for i in range(count)]


def _squeeze_history(value: Any) -> np.ndarray:
    value = np.asarray(value)
    if value.ndim >= 2 and value.shape[0] == 1:
        return value[0]
    return value


def _observation(obs: Any, rename: Mapping[str, str]) -> dict[str, np.ndarray]:
    if not isinstance(obs, Mapping):
        obs = {"state": obs}
    out = {}
    for key, value in obs.items():
        if isinstance(value, Mapping):  # SERL's un-flattened state dict: concatenate in key order
            value = np.concatenate([np.asarray(v, np.float32).reshape(-1) for _, v in sorted(value.items())])
        value = _squeeze_history(value)
        if value.dtype != np.uint8:
            value = value.astype(np.float32)
        out[rename.get(key, key)] = value
    return out


def serl_transitions_to_episodes(
    transitions: Sequence[Mapping[str, Any]],
    *,
    rename: Mapping[str, str] | None = None,
    task: str = "imported",
    origin: str = "",
) -> list[Episode]:
    """Group transitions into episodes on `dones`, terminations and discontinuities."""
    rename = dict(rename or {})
    required = ("observations", "actions", "next_observations", "rewards")
    for i, transition in enumerate(transitions):
        missing = [k for k in required if k not in transition]
        if missing or ("masks" not in transition and "dones" not in transition):
            raise SerlImportError(f"transition {i} lacks {missing or ['masks/dones']}")
    obs = [_observation(t["observations"], rename) for t in transitions]
    next_obs = [_observation(t["next_observations"], rename) for t in transitions]
    actions = np.stack([np.asarray(t["actions"], np.float32).reshape(-1) for t in transitions])
    rewards = np.array([float(np.asarray(t["rewards"]).reshape(-1)[0]) for t in transitions], np.float32)
    dones = np.array([bool(np.asarray(t.get("dones", False)).reshape(-1)[0]) for t in transitions])
    if "masks" in transitions[0]:
        terminated = np.array([float(np.asarray(t["masks"]).reshape(-1)[0]) == 0.0 for t in transitions])
    else:
        terminated = dones.copy()
    truncated = dones & ~terminated
    intervened = np.array([isinstance(t.get("infos"), Mapping) and "intervene_action" in t["infos"]
                           for t in transitions])
    gap = np.zeros(len(transitions), bool)
    for t in range(len(transitions) - 1):
        gap[t] = not all(np.array_equal(next_obs[t][k], obs[t + 1].get(k)) for k in next_obs[t])
    episodes = []
    for index, piece in enumerate(split_episodes(terminated, truncated, gap, keep_incomplete=True)):
        steps = range(piece.start, piece.stop)
        ep_truncated = truncated[piece].copy()
        if not (terminated[piece][-1] or ep_truncated[-1]):
            ep_truncated[-1] = True  # ends on a discontinuity or the end of the file
        observations = {k: np.stack([obs[t][k] for t in steps] + [next_obs[piece.stop - 1][k]]) for k in obs[piece.start]}
        episodes.append(Episode(
            observations=observations,
            actions=actions[piece],
            rewards=rewards[piece],
            terminated=terminated[piece],
            truncated=ep_truncated,
            intervened=intervened[piece],
            metadata=make_metadata(task=task, source="imported", original_format="serl-transitions",
                                   imported_from=origin, imported_episode=index),
            info={"success": rewards[piece] > 0},
        ))
    return episodes
