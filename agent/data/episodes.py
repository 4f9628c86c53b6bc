"""Episodes on disk: one compressed `.npz` per episode, written atomically, loaded without pickle.

File layout (`episode_000042.npz`, a zip of `.npy` arrays; T = number of steps):

    obs/<key>         (T+1, ...)  every observation once: o_0 .. o_T (o_T is the final next-obs);
                                  `state` float32, camera frames uint8 (H, W, 3)
    actions           (T, A)      float32, the action actually executed (after interventions)
    rewards           (T,)        float32, raw (the task's or the classifier's), never shaped
    terminated        (T,)        bool
    truncated         (T,)        bool
    intervened        (T,)        bool, a teleop device drove this step
    info/<key>        (T, ...)    optional per-step extras (e.g. `success`)
    frame_info/<key>  (T+1, ...)  optional per-observation extras (e.g. reward labels)
    metadata          ()          a unicode string holding a JSON object (see `make_metadata`)

Format version 2 adds `content_sha256` to the metadata: the sha256 of every other array (name,
dtype, shape and bytes, in name order), checked by `load_episode`, so a damaged file is reported
by name even where the zip's own CRC would not notice (or `dataset info` would only read
metadata). Version 1 files (no checksum) are still read; their content is checked by the full
decode alone.

A file is written to a hidden temporary name in the same directory, flushed to disk, then
hard-linked to its final name (which fails rather than overwrites if the name is taken) and the
temporary name removed, so a crash loses at most the episode being written, and a reader never
sees half a file under a final name. `np.load(..., allow_pickle=False)` reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robot_env.errors import UserError

FORMAT_VERSION = 2  # 2: metadata carries content_sha256
SOURCES = ("teleop", "policy", "warm-up", "eval", "imported")
EPISODE_GLOB = "episode_*.npz"
_EPISODE_NAME = re.compile(r"^episode_(\d{6,})\.npz$")
_TEMP_PREFIX = ".tmp-episode_"


class CorruptEpisodeError(UserError, ValueError):
    """An episode file that cannot be read or does not follow the format."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(
            f"episode file {self.path} is corrupt or truncated ({reason}); "
            "move it out of the dataset directory or delete it"
        )


@dataclass
class Episode:
    """One episode in memory; see the module docstring for shapes."""

    observations: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    intervened: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)
    info: dict[str, np.ndarray] = field(default_factory=dict)
    frame_info: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    @property
    def success(self) -> bool:
        """Whether the task was achieved: the `success` info if recorded, else a positive reward."""
        if "success" in self.info:
            return bool(np.any(self.info["success"]))
        return bool(np.any(self.rewards > 0))

    def validate(self) -> None:
        """Raise ValueError if the arrays do not fit together."""
        steps = len(self)
        for name in ("rewards", "terminated", "truncated", "intervened"):
            value = getattr(self, name)
            if value.shape != (steps,):
                raise ValueError(f"{name} has shape {value.shape}, expected ({steps},)")
        if self.actions.ndim != 2:
            raise ValueError(f"actions must be (T, A), got {self.actions.shape}")
        if not self.observations:
            raise ValueError("no observations")
        for key, value in self.observations.items():
            if value.shape[:1] != (steps + 1,):
                raise ValueError(f"obs/{key} has {value.shape[:1]} entries, expected {steps + 1}")
        for key, value in self.info.items():
            if value.shape[:1] != (steps,):
                raise ValueError(f"info/{key} has {value.shape[:1]} entries, expected {steps}")
        for key, value in self.frame_info.items():
            if value.shape[:1] != (steps + 1,):
                raise ValueError(f"frame_info/{key} has {value.shape[:1]} entries, expected {steps + 1}")


def make_metadata(
    *,
    task: str,
    source: str,
    config_hash: str = "",
    seed: int | None = None,
    started_at: float | None = None,
    ended_at: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Episode metadata. `source` is one of SOURCES; times are Unix seconds; extras must be JSON."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got '{source}'")
    now = time.time()
    metadata = {
        "format_version": FORMAT_VERSION,
        "task": task,
        "source": source,
        "config_hash": config_hash,
        "seed": seed,
        "started_at": now if started_at is None else started_at,
        "ended_at": now if ended_at is None else ended_at,
    }
    metadata.update(extra)
    return metadata


def content_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 over every array but `metadata`: name, dtype, shape and C-order bytes, by name."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        if name == "metadata":
            continue
        value = np.ascontiguousarray(arrays[name])
        digest.update(json.dumps([name, value.dtype.str, list(value.shape)]).encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def episode_arrays(episode: Episode) -> dict[str, np.ndarray]:
    """The flat name -> array mapping written to disk."""
    episode.validate()
    metadata = dict(episode.metadata)
    metadata.pop("content_sha256", None)  # an episode loaded from a file gets its own new one
    metadata["length"] = len(episode)
    metadata["success"] = episode.success
    metadata["interventions"] = int(np.count_nonzero(episode.intervened))
    if "success_label" in episode.frame_info:  # reward-classifier frames: counts for `dataset info`
        labels = np.asarray(episode.frame_info["success_label"]).astype(bool)
        metadata["positive_frames"] = int(labels.sum())
        metadata["negative_frames"] = int((~labels).sum())
    arrays: dict[str, np.ndarray] = {f"obs/{k}": np.asarray(v) for k, v in episode.observations.items()}
    arrays["actions"] = np.asarray(episode.actions, dtype=np.float32)
    arrays["rewards"] = np.asarray(episode.rewards, dtype=np.float32)
    arrays["terminated"] = np.asarray(episode.terminated, dtype=bool)
    arrays["truncated"] = np.asarray(episode.truncated, dtype=bool)
    arrays["intervened"] = np.asarray(episode.intervened, dtype=bool)
    arrays.update({f"info/{k}": np.asarray(v) for k, v in episode.info.items()})
    arrays.update({f"frame_info/{k}": np.asarray(v) for k, v in episode.frame_info.items()})
    for name, value in arrays.items():
        if value.dtype == object:
            raise ValueError(f"{name} has dtype object, which would need pickle; use numeric arrays")
    metadata["format_version"] = FORMAT_VERSION
    metadata["content_sha256"] = content_sha256(arrays)
    arrays["metadata"] = np.array(json.dumps(metadata, sort_keys=True))
    return arrays


def fsync_directory(directory: str | Path) -> None:
    """Make a rename or creation inside `directory` durable (POSIX; a no-op elsewhere)."""
    if sys.platform.startswith("win"):
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish_without_overwrite(temp: Path, path: Path) -> None:
    """Give `temp` the name `path` atomically, failing (FileExistsError) if `path` exists."""
    try:
        os.link(temp, path)  # atomic, and refuses to clobber a recorded episode
    except FileExistsError:
        raise
    except OSError:
        # Filesystems without hard links: check, then rename (a racing second writer could slip
        # in between; one writer per directory is the documented rule).
        if path.exists():
            raise FileExistsError(path) from None
        os.replace(temp, path)
        return
    os.unlink(temp)


def write_episode_file(episode: Episode, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write one episode atomically to `path`. Without `overwrite`, an existing file is an error
    (FileExistsError) and is left untouched."""
    path = Path(path)
    arrays = episode_arrays(episode)
    temp = path.with_name(f"{_TEMP_PREFIX}{os.getpid()}-{time.monotonic_ns()}.npz")
    try:
        with open(temp, "wb") as handle:
            np.savez_compressed(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temp, path)
        else:
            _publish_without_overwrite(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return path


def load_episode(path: str | os.PathLike) -> Episode:
    """Load one episode file; any problem raises CorruptEpisodeError naming the file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, zipfile.LargeZipFile, zlib.error) as exc:
        raise CorruptEpisodeError(path, f"{type(exc).__name__}: {exc}") from None
    try:
        return _episode_from_arrays(arrays)
    except (KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise CorruptEpisodeError(path, f"{type(exc).__name__}: {exc}") from None


def _episode_from_arrays(arrays: Mapping[str, np.ndarray]) -> Episode:
    missing = [k for k in ("actions", "rewards", "terminated", "truncated", "intervened", "metadata") if k not in arrays]
    if missing:
        raise KeyError(f"missing arrays {missing}")
    metadata = json.loads(str(arrays["metadata"][()]))
    if not isinstance(metadata, dict):
        raise ValueError("metadata is not a JSON object")
    if int(metadata.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"format version {metadata['format_version']} is newer than this code reads ({FORMAT_VERSION})"
        )

    def section(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

    episode = Episode(
        observations=section("obs/"),
        actions=arrays["actions"],
        rewards=arrays["rewards"],
        terminated=arrays["terminated"].astype(bool),
        truncated=arrays["truncated"].astype(bool),
        intervened=arrays["intervened"].astype(bool),
        metadata=metadata,
        info=section("info/"),
        frame_info=section("frame_info/"),
    )
    episode.validate()  # shapes first: their message names the array
    expected = metadata.get("content_sha256")
    if expected is not None and content_sha256(arrays) != expected:
        raise ValueError("its arrays do not match the content_sha256 in its metadata (damaged file)")
    return episode


def _report_to_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


class EpisodeStore:
    """A directory of episode files, in recorded order (`episode_000000.npz`, `..._000001`, ...).

    One writer per directory. Reading skips corrupt files, but never silently: each one is passed
    to `report` (default: a warning on stderr) and kept in `skipped`.
    """

    def __init__(self, directory: str | os.PathLike, *, create: bool = False,
                 report: Callable[[str], None] = _report_to_stderr):
        self.directory = Path(directory)
        if create:
            self.directory.mkdir(parents=True, exist_ok=True)
        elif not self.directory.is_dir():
            raise FileNotFoundError(f"episode directory {self.directory} does not exist")
        self.report = report
        self.skipped: list[tuple[Path, str]] = []

    def paths(self) -> list[Path]:
        """Final episode files in recorded order."""
        found = []
        for path in self.directory.glob(EPISODE_GLOB):
            match = _EPISODE_NAME.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return [path for _, path in sorted(found)]

    def incomplete_writes(self) -> list[Path]:
        """Temporary files left by a writer that died mid-write (never part of the dataset)."""
        return sorted(self.directory.glob(f"{_TEMP_PREFIX}*"))

    def __len__(self) -> int:
        return len(self.paths())

    def _next_index(self) -> int:
        paths = self.paths()
        if not paths:
            return 0
        match = _EPISODE_NAME.match(paths[-1].name)
        assert match is not None
        return int(match.group(1)) + 1

    def write(self, episode: Episode) -> Path:
        """Write `episode` under the next free index and return its path."""
        for _ in range(1000):
            path = self.directory / f"episode_{self._next_index():06d}.npz"
            try:
                return write_episode_file(episode, path)
            except FileExistsError:
                continue  # another writer took the index first; take the next one
        raise RuntimeError(f"could not find a free episode name in {self.directory}")

    def episodes(self) -> Iterator[Episode]:
        """Every loadable episode in recorded order; corrupt files are reported and skipped."""
        leftovers = self.incomplete_writes()
        if leftovers:
            self.report(
                f"{len(leftovers)} incomplete write(s) in {self.directory} (e.g. {leftovers[0].name}) "
                "from a writer that stopped mid-episode; they are not part of the dataset"
            )
        for path in self.paths():
            try:
                yield load_episode(path)
            except CorruptEpisodeError as exc:
                self.skipped.append((path, exc.reason))
                self.report(f"skipping {exc}")

    def metadata(self) -> Iterator[tuple[Path, dict[str, Any]]]:
        """(path, metadata) of every loadable episode, reading only the metadata entry."""
        for path in self.paths():
            try:
                with np.load(path, allow_pickle=False) as npz:
                    metadata = json.loads(str(npz["metadata"][()]))
            except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
                self.skipped.append((path, str(exc)))
                self.report(f"skipping {CorruptEpisodeError(path, f'{type(exc).__name__}: {exc}')}")
                continue
            yield path, metadata


class EpisodeRecorder:
    """Accumulates one episode step by step and writes it to a store when it ends.

        recorder.start(obs, metadata)
        recorder.add(action, reward, next_obs, terminated, truncated, intervened, info)
        ...
        path = recorder.finish()  # or automatically by add() when the episode ends
    """

    def __init__(self, store: EpisodeStore | None, *, info_keys: tuple[str, ...] = ("success",)):
        self.store = store
        self.info_keys = info_keys
        self._observations: list[dict[str, np.ndarray]] = []
        self._steps: list[tuple[np.ndarray, float, bool, bool, bool, dict[str, Any]]] = []
        self._frame_info: list[dict[str, Any]] = []
        self._metadata: dict[str, Any] = {}
        self.last_episode: Episode | None = None
        self.last_path: Path | None = None

    @property
    def active(self) -> bool:
        return bool(self._observations)

    def __len__(self) -> int:
        return len(self._steps)

    def start(self, observation: Mapping[str, np.ndarray], metadata: dict[str, Any],
              frame_info: Mapping[str, Any] | None = None) -> None:
        self._observations = [{k: np.array(v) for k, v in observation.items()}]
        self._steps = []
        self._frame_info = [dict(frame_info or {})]
        self._metadata = dict(metadata)
        self._metadata.setdefault("started_at", time.time())

    def update_metadata(self, **fields: Any) -> None:
        """Add or change metadata of the episode in progress (written with it)."""
        self._metadata.update(fields)

    def add(self, action: np.ndarray, reward: float, next_observation: Mapping[str, np.ndarray],
            terminated: bool, truncated: bool, intervened: bool = False,
            info: Mapping[str, Any] | None = None, frame_info: Mapping[str, Any] | None = None,
            *, write_on_end: bool = True) -> Path | None:
        """Append a step; returns the written path when this step ended the episode."""
        if not self.active:
            raise RuntimeError("EpisodeRecorder.add() before start()")
        info = info or {}
        kept = {k: info[k] for k in self.info_keys if k in info}
        self._steps.append((np.asarray(action, dtype=np.float32).copy(), float(reward),
                            bool(terminated), bool(truncated), bool(intervened), kept))
        self._observations.append({k: np.array(v) for k, v in next_observation.items()})
        self._frame_info.append(dict(frame_info or {}))
        if write_on_end and (terminated or truncated):
            return self.finish()
        return None

    def build(self) -> Episode:
        """The episode so far, as arrays."""
        steps = self._steps
        keys = self._observations[0].keys()
        info_keys = sorted({k for *_, kept in steps for k in kept})
        frame_keys = sorted({k for fi in self._frame_info for k in fi})
        metadata = dict(self._metadata)
        metadata["ended_at"] = time.time()
        return Episode(
            observations={k: np.stack([o[k] for o in self._observations]) for k in keys},
            actions=np.stack([s[0] for s in steps]) if steps else np.zeros((0, 0), np.float32),
            rewards=np.array([s[1] for s in steps], dtype=np.float32),
            terminated=np.array([s[2] for s in steps], dtype=bool),
            truncated=np.array([s[3] for s in steps], dtype=bool),
            intervened=np.array([s[4] for s in steps], dtype=bool),
            metadata=metadata,
            info={k: np.array([s[5].get(k, False) for s in steps]) for k in info_keys},
            frame_info={k: np.array([fi.get(k, -1) for fi in self._frame_info]) for k in frame_keys},
        )

    def finish(self, *, truncate: bool = False) -> Path | None:
        """Write the episode (if it has at least one step) and reset; returns the path.

        `truncate` marks the last step truncated (an episode cut short, e.g. by Ctrl-C)."""
        if not self._steps:
            self._observations = []
            return None
        if truncate and not (self._steps[-1][2] or self._steps[-1][3]):
            action, reward, terminated, _, intervened, kept = self._steps[-1]
            self._steps[-1] = (action, reward, terminated, True, intervened, kept)
        episode = self.build()
        self._observations, self._steps, self._frame_info = [], [], []
        self.last_episode = episode
        self.last_path = self.store.write(episode) if self.store is not None else None
        return self.last_path

    def discard(self) -> None:
        self._observations, self._steps, self._frame_info = [], [], []
