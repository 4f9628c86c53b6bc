"""Export episodes to a Minari dataset and import them back (Farama's offline-RL format).

Minari keeps datasets under `MINARI_DATASETS_PATH` (default ~/.minari/datasets). Export writes
HDF5 without JPEG encoding, so frames stay lossless, and then compresses every array of the file
with gzip (Minari's writer has no compression option; h5py decompresses transparently on read).
Per-step extras go into Minari's `infos` with Minari's convention of T+1 entries (entry 0
belongs to the reset): `intervened` and `success`. Each episode's own metadata (task, source,
config hash, ...) is kept as the JSON attribute `franka_rl_metadata` of the Minari episode. With
an `env_spec` (the twin's: `sim.envs.twin_env_spec`), `recover_environment()` builds the env.

Import refuses discrete action spaces (this project's agents act in continuous boxes) and takes
success from the dataset's `success` or `is_success` info; without either it guesses "some
reward > 0" and says so once.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from agent.data.episodes import Episode, make_metadata
from robot_env.errors import UserError

METADATA_KEY = "franka_rl_metadata"
SUCCESS_INFO_KEYS = ("success", "is_success")
HDF5_COMPRESSION = "gzip"
HDF5_COMPRESSION_LEVEL = 4


class MinariError(UserError, ValueError):
    """A Minari dataset that cannot be written or read."""


def _space_for(array: np.ndarray) -> gym.spaces.Box:
    shape = array.shape[1:]
    if array.dtype == np.uint8:
        return gym.spaces.Box(0, 255, shape, np.uint8)
    return gym.spaces.Box(-np.inf, np.inf, shape, array.dtype)


def _with_reset_entry(values: np.ndarray) -> np.ndarray:
    return np.concatenate([np.zeros(1, values.dtype), values])


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def compress_hdf5(path: str | os.PathLike) -> None:
    """Rewrite the HDF5 file `path` with every non-scalar array gzip-compressed (groups,
    attributes, dtypes and values unchanged), atomically (temporary file, then rename)."""
    import h5py

    path = Path(path)
    temp = path.with_name(f".tmp-{path.name}")

    def copy(source, target) -> None:
        target.attrs.update(dict(source.attrs))
        for name, item in source.items():
            if isinstance(item, h5py.Group):
                copy(item, target.create_group(name))
            elif item.shape and item.size:
                maxshape = item.maxshape if item.chunks else None
                out = target.create_dataset(name, data=item[()], dtype=item.dtype, chunks=True, maxshape=maxshape,
                                            compression=HDF5_COMPRESSION, compression_opts=HDF5_COMPRESSION_LEVEL,
                                            shuffle=item.dtype.kind in "iuf" and item.dtype.itemsize > 1)
                out.attrs.update(dict(item.attrs))
            else:
                source.copy(item, target, name=name)

    try:
        with h5py.File(path, "r") as source, h5py.File(temp, "w") as target:
            copy(source, target)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def export_minari(episodes: Iterable[Episode], dataset_id: str, *, description: str = "",
                  author: str | None = None, algorithm_name: str = "franka-rl recording",
                  env_spec: gym.envs.registration.EnvSpec | None = None):
    """Write `episodes` as a new local Minari dataset `dataset_id` (e.g. "franka/peg-demos-v0").

    `env_spec` (e.g. `sim.envs.twin_env_spec(task, env, sim)` for twin recordings) is built once
    here, to check it, and stored so that `recover_environment()` works."""
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    episodes = list(episodes)
    if not episodes:
        raise MinariError("no episodes to export")
    first = episodes[0]
    observation_space = gym.spaces.Dict({k: _space_for(v) for k, v in first.observations.items()})
    action_space = gym.spaces.Box(-1.0, 1.0, first.actions.shape[1:], np.float32)
    buffers = []
    all_have_success = all("success" in e.info for e in episodes)
    for index, episode in enumerate(episodes):
        if episode.observations.keys() != first.observations.keys():
            raise MinariError(f"episode {index} has observation keys {sorted(episode.observations)}, "
                              f"the first one {sorted(first.observations)}")
        infos = {"intervened": _with_reset_entry(episode.intervened.astype(bool))}
        if all_have_success:  # never a guess written as if recorded
            infos["success"] = _with_reset_entry(np.asarray(episode.info["success"], bool))
        seed = episode.metadata.get("seed")
        buffers.append(EpisodeBuffer(
            id=index,
            seed=int(seed) if isinstance(seed, int) else None,
            observations={k: np.asarray(v) for k, v in episode.observations.items()},
            actions=np.asarray(episode.actions, np.float32),
            rewards=np.asarray(episode.rewards, np.float32),
            terminations=np.asarray(episode.terminated, bool),
            truncations=np.asarray(episode.truncated, bool),
            infos=infos,
        ))
    env = None
    if env_spec is not None:
        # Minari takes the spec from a built env (and would build one itself from a bare spec).
        env = gym.make(env_spec)
    try:
        with warnings.catch_warnings():
            # Minari nags about optional fields (env spec of robot recordings, permalink, e-mail);
            # the dataset is complete without them.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"minari\.")
            dataset = minari.create_dataset_from_buffers(
                dataset_id, buffers, env=env, observation_space=observation_space, action_space=action_space,
                algorithm_name=algorithm_name, author=author,
                description=description or f"{len(episodes)} episodes recorded with franka-rl "
                f"(task {first.metadata.get('task', '?')})",
                data_format="hdf5", jpeg_encoding=False,
            )
    except (ValueError, FileExistsError, AssertionError) as exc:
        raise MinariError(f"cannot create Minari dataset '{dataset_id}': {exc}") from None
    finally:
        if env is not None:
            env.close()
    dataset.storage.update_episode_metadata(
        [{METADATA_KEY: json.dumps(e.metadata, sort_keys=True)} for e in episodes], range(len(episodes))
    )
    for data_file in Path(dataset.storage.data_path).glob("*.hdf5"):
        compress_hdf5(data_file)
    return minari.load_dataset(dataset_id, download=False)


def _step_info(infos: dict[str, Any] | None, key: str, steps: int) -> np.ndarray | None:
    if not infos or key not in infos:
        return None
    values = np.asarray(infos[key])
    if values.shape[0] == steps + 1:
        return values[1:]
    if values.shape[0] == steps:
        return values
    return None


def _refuse_discrete(space: gym.spaces.Space, dataset_id: str) -> None:
    if isinstance(space, gym.spaces.Box) and np.issubdtype(space.dtype, np.floating):
        return
    if isinstance(space, gym.spaces.Dict | gym.spaces.Tuple):
        kind = "a Dict/Tuple"
    elif isinstance(space, gym.spaces.Discrete | gym.spaces.MultiDiscrete | gym.spaces.MultiBinary):
        kind = f"a discrete ({type(space).__name__})"
    else:
        kind = f"an integer or non-float ({space})"
    raise MinariError(f"Minari dataset '{dataset_id}' has {kind} action space {space}: this project's agents "
                      "act in continuous float boxes, so its actions cannot be imported")


def import_minari(dataset_id: str, *, report: Callable[[str], None] = _warn) -> Iterator[Episode]:
    """Episodes of the local Minari dataset `dataset_id` (nothing is downloaded)."""
    import minari

    try:
        dataset = minari.load_dataset(dataset_id, download=False)
    except (FileNotFoundError, ValueError) as exc:
        raise MinariError(f"no local Minari dataset '{dataset_id}' ({exc}); check MINARI_DATASETS_PATH "
                          "or `minari list local`") from None
    _refuse_discrete(dataset.action_space, dataset_id)
    guessed = False
    metadatas = list(dataset.storage.get_episode_metadata(dataset.episode_indices))
    for episode_data, minari_meta in zip(dataset.iterate_episodes(), metadatas, strict=True):
        observations = episode_data.observations
        if not isinstance(observations, dict):
            observations = {"state": observations}
        steps = len(episode_data.rewards)
        actions = np.asarray(episode_data.actions, np.float32).reshape(steps, -1)
        rewards = np.asarray(episode_data.rewards, np.float32)
        if METADATA_KEY in minari_meta:
            metadata = json.loads(str(minari_meta[METADATA_KEY]))
        else:
            seed = minari_meta.get("seed")
            metadata = make_metadata(task=dataset_id, source="imported", original_format="minari",
                                     imported_from=dataset_id, seed=None if seed is None else int(seed))
        intervened = _step_info(episode_data.infos, "intervened", steps)
        success = next((found for key in SUCCESS_INFO_KEYS
                        if (found := _step_info(episode_data.infos, key, steps)) is not None), None)
        guessed = guessed or success is None
        yield Episode(
            observations={k: np.asarray(v) for k, v in observations.items()},
            actions=actions,
            rewards=rewards,
            terminated=np.asarray(episode_data.terminations, bool),
            truncated=np.asarray(episode_data.truncations, bool),
            intervened=np.zeros(steps, bool) if intervened is None else intervened.astype(bool),
            metadata=metadata,
            info={"success": (rewards > 0) if success is None else success.astype(bool)},
        )
    if guessed:
        report(f"Minari dataset '{dataset_id}' has no 'success' or 'is_success' info: success guessed as "
               "'some reward > 0' (wrong for dense rewards)")
