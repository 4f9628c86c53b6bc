"""A pure-numpy replay buffer that stores each observation once and computes Monte-Carlo returns.

Slots hold observations; an episode of T transitions takes T+1 consecutive slots (modulo the
capacity): slot s holds o_t together with the action, raw reward and flags of step t, and the
next observation of that transition is slot s+1. The last slot of an episode holds only o_T.
So every camera frame is stored once per step (uint8), about (T+1)/T frames per transition.

Episodes enter the ring only when they are complete (`add_episode`, or `insert` step by step,
which keeps the open episode aside until it ends), so:
- only transitions of completed episodes are sampled, and never one whose next slot belongs to
  another episode (`valid` marks the slots that start a usable transition);
- the Monte-Carlo return G of every step is computed once, at completion, on the agent's shaped
  reward r' = scale * r + bias with the buffer's `RewardShaping` (built from the agent's own
  settings by the composition root; there is no default), from the raw rewards alone, and it
  stays correct when the ring later overwrites the start of that episode: G_t depends only on
  steps >= t, which were all present when it was computed; overwriting a slot invalidates the
  transition stored there and the one just before it.

With a frozen image backbone, `feature_fn(frames_uint8 (N, H, W, 3)) -> (N, ...)` (a vector or
a pre-pooling feature map per frame) fills a per-slot feature array for each camera when an
episode enters the ring; batches then carry `<camera>_features` beside (or, with `frames=False`,
instead of) the frames. Features are stored as `feature_dtype`, float16 by default: half the bytes
of float32 (a 4x4x512 map per 128x128 camera is 16 KiB beside the 48 KiB frame instead of 32 KiB),
and the network casts them back to float32 before its first layer. A feature beyond float16's
range is refused with a message rather than stored as inf.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.data.episodes import Episode, EpisodeStore
from agent.returns import RewardShaping

FEATURES_SUFFIX = "_features"
BUFFER_FORMAT = "franka_rl.replay_buffer"
BUFFER_VERSION = 3  # 3: files carry their slots, so a file can be a segment


class BufferFileError(ValueError):
    """A saved replay buffer that cannot be used."""


class CorruptBufferError(BufferFileError):
    """A saved replay buffer whose bytes are damaged (checksum mismatch, truncation, bad zip)."""


class BufferShapingError(BufferFileError):
    """A saved replay buffer whose returns were computed under another reward shaping."""


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()
FeatureFn = Callable[[np.ndarray], np.ndarray]
ObservationSpec = dict[str, tuple[tuple[int, ...], np.dtype]]


def _is_frame(shape: tuple[int, ...], dtype: np.dtype) -> bool:
    return np.dtype(dtype) == np.uint8 and len(shape) == 3


@dataclass
class _OpenEpisode:
    """Steps of an episode still in progress on one stream (kept outside the ring)."""

    observations: list[dict[str, np.ndarray]] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    terminated: list[bool] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)
    intervened: list[bool] = field(default_factory=list)


class ReplayBuffer:
    """Ring buffer of episodes; see the module docstring for the layout and guarantees."""

    def __init__(
        self,
        observation_spec: Mapping[str, tuple[tuple[int, ...], Any]],
        action_dim: int,
        capacity: int,
        *,
        shaping: RewardShaping,
        feature_fn: FeatureFn | None = None,
        feature_keys: Iterable[str] | None = None,
        feature_batch_size: int = 256,
        feature_dtype: Any = np.float16,
    ):
        if capacity < 2:
            raise ValueError("capacity must hold at least one transition (2 slots)")
        self.observation_spec: ObservationSpec = {
            k: (tuple(int(d) for d in shape), np.dtype(dtype)) for k, (shape, dtype) in observation_spec.items()
        }
        self.action_dim = int(action_dim)
        self.capacity = int(capacity)
        if not isinstance(shaping, RewardShaping):
            raise TypeError(f"shaping must be a RewardShaping, got {type(shaping).__name__}")
        self.shaping = shaping

        c = self.capacity
        self._obs = {k: np.zeros((c, *shape), dtype) for k, (shape, dtype) in self.observation_spec.items()}
        self._actions = np.zeros((c, self.action_dim), np.float32)
        self._raw_rewards = np.zeros(c, np.float32)
        self._terminated = np.zeros(c, bool)
        self._truncated = np.zeros(c, bool)
        self._intervened = np.zeros(c, bool)
        self._mc_returns = np.zeros(c, np.float32)
        self._valid = np.zeros(c, bool)
        self._episode_ids = np.full(c, -1, np.int64)
        self._cursor = 0
        self._slots_written = 0
        self._episodes_added = 0
        self._valid_index: np.ndarray | None = None
        self._open: dict[Any, _OpenEpisode] = {}

        frame_keys = [k for k, (s, d) in self.observation_spec.items() if _is_frame(s, d)]
        self.feature_keys = tuple(feature_keys) if feature_keys is not None else tuple(frame_keys)
        self.feature_batch_size = int(feature_batch_size)
        self.feature_dtype = np.dtype(feature_dtype)
        self._feature_fn: FeatureFn | None = None
        self._features: dict[str, np.ndarray] = {}
        self.features_restored = False  # set by `load` when the cache came back from the file
        self.last_saved_sha256 = ""  # of the file `save` / `save_segment` wrote last
        if feature_fn is not None:
            self.set_feature_fn(feature_fn)

    # ------------------------------------------------------------------ construction helpers

    @classmethod
    def from_spaces(cls, observation_space, action_space, capacity: int, **kwargs) -> ReplayBuffer:
        """Build from a gymnasium Dict observation space and a Box action space."""
        spec = {k: (space.shape, space.dtype) for k, space in observation_space.spaces.items()}
        return cls(spec, int(np.prod(action_space.shape)), capacity, **kwargs)

    @classmethod
    def from_episodes(cls, episodes: Iterable[Episode], capacity: int, **kwargs) -> ReplayBuffer:
        """Build from episodes (e.g. `EpisodeStore(path).episodes()`), shapes taken from the first."""
        iterator = iter(episodes)
        first = next(iterator, None)
        if first is None:
            raise ValueError("no episodes to build a replay buffer from")
        spec = {k: (v.shape[1:], v.dtype) for k, v in first.observations.items()}
        buffer = cls(spec, first.actions.shape[1], capacity, **kwargs)
        buffer.add_episode_record(first)
        for episode in iterator:
            buffer.add_episode_record(episode)
        return buffer

    @classmethod
    def from_store(cls, directory: str | os.PathLike, capacity: int, **kwargs) -> ReplayBuffer:
        return cls.from_episodes(EpisodeStore(directory).episodes(), capacity, **kwargs)

    # ------------------------------------------------------------------ sizes

    @property
    def size(self) -> int:
        """Slots holding data (observations), at most `capacity`."""
        return min(self._slots_written, self.capacity)

    @property
    def num_transitions(self) -> int:
        """Transitions that can be sampled."""
        return int(self._valid_indices().size)

    def __len__(self) -> int:
        return self.num_transitions

    @property
    def num_episodes_added(self) -> int:
        return self._episodes_added

    @property
    def nbytes(self) -> int:
        arrays = [*self._obs.values(), *self._features.values(), self._actions, self._raw_rewards,
                  self._terminated, self._truncated, self._intervened, self._mc_returns,
                  self._valid, self._episode_ids]
        return int(sum(a.nbytes for a in arrays))

    def slot_nbytes(self, feature_nbytes: int = 0) -> int:
        """Bytes one slot takes once filled: every per-slot array, plus `feature_nbytes` per
        feature key for a cache not filled yet (its arrays are allocated on the first encode)."""
        arrays = [*self._obs.values(), *self._features.values(), self._actions, self._raw_rewards,
                  self._terminated, self._truncated, self._intervened, self._mc_returns,
                  self._valid, self._episode_ids]
        missing = [k for k in self.feature_keys if k not in self._features] if self._feature_fn is not None else []
        return int(sum(a.nbytes for a in arrays) // self.capacity + feature_nbytes * len(missing))

    # ------------------------------------------------------------------ features

    def set_feature_fn(self, feature_fn: FeatureFn | None, *,
                       on_progress: Callable[[int], None] | None = None) -> None:
        """Attach (or detach with None) the frame encoder and (re)compute features of every slot;
        `on_progress(n)` hears of every `n` frames encoded (`frames_to_encode` in all), for a bar."""
        self._feature_fn = feature_fn
        self._features = {}
        if feature_fn is None:
            return
        for key in self.feature_keys:
            if key not in self._obs:
                raise KeyError(f"feature key '{key}' is not an observation key {sorted(self._obs)}")
        if self.size:
            self._encode_slots(np.arange(self.size), on_progress)

    @property
    def frames_to_encode(self) -> int:
        """Frames `set_feature_fn` encodes for the slots filled now (every feature key's)."""
        return self.size * len(self.feature_keys)

    @property
    def has_features(self) -> bool:
        return self._feature_fn is not None

    def _encode_slots(self, slots: np.ndarray, on_progress: Callable[[int], None] | None = None) -> None:
        assert self._feature_fn is not None
        for key in self.feature_keys:
            for start in range(0, len(slots), self.feature_batch_size):
                chunk = slots[start:start + self.feature_batch_size]
                features = np.asarray(self._feature_fn(self._obs[key][chunk]))
                if features.ndim < 2 or features.shape[0] != len(chunk):
                    raise ValueError(f"feature_fn returned {features.shape} for {len(chunk)} frames; "
                                     "expected (N, ...) with one entry per frame")
                with np.errstate(over="ignore"):  # an overflow is reported just below
                    stored = features.astype(self.feature_dtype, copy=False)
                if stored.dtype.kind == "f" and not np.isfinite(stored).all() and np.isfinite(features).all():
                    raise ValueError(f"backbone features of '{key}' reach {float(np.abs(features).max()):.3g}, "
                                     f"beyond {self.feature_dtype.name}'s range; build the buffer with "
                                     "feature_dtype=float32")
                if key not in self._features:
                    self._features[key] = np.zeros((self.capacity, *features.shape[1:]), self.feature_dtype)
                self._features[key][chunk] = stored
                if on_progress is not None:
                    on_progress(len(chunk))

    # ------------------------------------------------------------------ adding data

    def add_episode(
        self,
        observations: Mapping[str, np.ndarray],
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        intervened: np.ndarray | None = None,
    ) -> None:
        """Add one complete episode: observations (T+1, ...) per key, the rest (T, ...).

        Whether a sparse episode succeeded is read off `rewards` (the stream the critic trains
        on), not off any success flag the env reported.
        """
        rewards = np.asarray(rewards, np.float32).reshape(-1)
        steps = rewards.shape[0]
        if steps == 0:
            return
        if steps + 1 > self.capacity:
            raise ValueError(f"an episode of {steps} steps needs {steps + 1} slots; capacity is {self.capacity}")
        terminated = np.asarray(terminated, bool).reshape(-1)
        truncated = np.asarray(truncated, bool).reshape(-1)
        intervened = np.zeros(steps, bool) if intervened is None else np.asarray(intervened, bool).reshape(-1)
        actions = np.asarray(actions, np.float32).reshape(steps, -1)
        if actions.shape[1] != self.action_dim:
            raise ValueError(f"actions have dimension {actions.shape[1]}, the buffer {self.action_dim}")
        if set(observations) != set(self._obs):
            raise ValueError(f"observation keys {sorted(observations)} != buffer keys {sorted(self._obs)}")
        for key, value in observations.items():
            shape, _ = self.observation_spec[key]
            if np.shape(value) != (steps + 1, *shape):
                raise ValueError(f"observation '{key}' has shape {np.shape(value)}, expected {(steps + 1, *shape)}")

        returns = self.shaping.episode_returns(rewards, terminated)

        slots = (self._cursor + np.arange(steps + 1)) % self.capacity
        # The old transition just before the first overwritten slot loses its next observation.
        self._valid[(self._cursor - 1) % self.capacity] = False
        self._valid[slots] = False
        for key, value in observations.items():
            self._obs[key][slots] = value
        step_slots = slots[:-1]
        self._actions[step_slots] = actions
        self._raw_rewards[step_slots] = rewards
        self._terminated[step_slots] = terminated
        self._truncated[step_slots] = truncated
        self._intervened[step_slots] = intervened
        self._mc_returns[step_slots] = returns
        last = slots[-1]
        self._actions[last] = 0.0
        self._raw_rewards[last] = 0.0
        self._terminated[last] = self._truncated[last] = self._intervened[last] = False
        self._mc_returns[last] = 0.0
        self._episode_ids[slots] = self._episodes_added
        if self._feature_fn is not None:
            self._encode_slots(slots)
        self._valid[step_slots] = True
        self._cursor = int((self._cursor + steps + 1) % self.capacity)
        self._slots_written += steps + 1
        self._episodes_added += 1
        self._valid_index = None

    def add_episode_record(self, episode: Episode) -> None:
        """Add an `Episode` loaded from an episode store."""
        self.add_episode(
            episode.observations, episode.actions, episode.rewards, episode.terminated,
            episode.truncated, episode.intervened,
        )

    def insert(
        self,
        observation: Mapping[str, np.ndarray],
        action: np.ndarray,
        reward: float,
        next_observation: Mapping[str, np.ndarray],
        terminated: bool,
        truncated: bool,
        intervened: bool = False,
        *,
        stream: Any = 0,
    ) -> None:
        """Add one transition of the episode in progress on `stream` (one stream per actor).

        The episode enters the ring when a step is terminated or truncated. If `observation` is
        not the previous step's next observation, the open episode is closed as truncated there.
        """
        open_episode = self._open.setdefault(stream, _OpenEpisode())
        if open_episode.observations and not _same_observation(open_episode.observations[-1], observation):
            open_episode.truncated[-1] = True
            self._commit(stream)
            open_episode = self._open.setdefault(stream, _OpenEpisode())
        if not open_episode.observations:
            open_episode.observations.append({k: np.array(v) for k, v in observation.items()})
        open_episode.observations.append({k: np.array(v) for k, v in next_observation.items()})
        open_episode.actions.append(np.asarray(action, np.float32))
        open_episode.rewards.append(float(reward))
        open_episode.terminated.append(bool(terminated))
        open_episode.truncated.append(bool(truncated))
        open_episode.intervened.append(bool(intervened))
        if terminated or truncated:
            self._commit(stream)

    def open_steps(self, stream: Any = 0) -> int:
        """Steps of the episode in progress on `stream` (not yet sampleable)."""
        open_episode = self._open.get(stream)
        return len(open_episode.actions) if open_episode else 0

    def discard_open(self, stream: Any = 0) -> int:
        """Drop the episode in progress on `stream` (its steps never enter the ring); returns them."""
        open_episode = self._open.pop(stream, None)
        return len(open_episode.actions) if open_episode else 0

    def _commit(self, stream: Any) -> None:
        episode = self._open.pop(stream)
        if not episode.actions:
            return
        self.add_episode(
            {k: np.stack([o[k] for o in episode.observations]) for k in episode.observations[0]},
            np.stack(episode.actions), np.array(episode.rewards, np.float32),
            np.array(episode.terminated), np.array(episode.truncated),
            np.array(episode.intervened),
        )

    # ------------------------------------------------------------------ sampling

    def _valid_indices(self) -> np.ndarray:
        if self._valid_index is None:
            self._valid_index = np.flatnonzero(self._valid)
        return self._valid_index

    def valid_mask(self) -> np.ndarray:
        """A read-only view: slot i starts a complete transition (what `batch` accepts)."""
        view = self._valid.view()
        view.flags.writeable = False
        return view

    def sample(self, batch_size: int, rng: np.random.Generator, *, frames: bool = True) -> dict[str, Any]:
        """A uniform batch of valid transitions (dict of numpy arrays, see docs/data.md).

        `rewards` are the shaped rewards r' the critic trains on (`raw_rewards` beside them) and
        `masks` = 1 - terminated. With a feature encoder attached, observations also carry
        `<camera>_features`; `frames=False` then leaves the uint8 frames out.
        """
        valid = self._valid_indices()
        if valid.size == 0:
            raise ValueError("the replay buffer holds no complete episode yet")
        slots = valid[rng.integers(0, valid.size, size=batch_size)]
        return self.batch(slots, frames=frames)

    def batch(self, slots: np.ndarray, *, frames: bool = True) -> dict[str, Any]:
        """The transitions starting at `slots` (which must be valid)."""
        slots = np.asarray(slots, np.int64)
        if not np.all(self._valid[slots]):
            raise ValueError("batch() asked for slots that do not start a complete transition")
        next_slots = (slots + 1) % self.capacity
        raw = self._raw_rewards[slots]
        terminated = self._terminated[slots]
        truncated = self._truncated[slots]
        return {
            "observations": self._observations_at(slots, frames),
            "next_observations": self._observations_at(next_slots, frames),
            "actions": self._actions[slots],
            "rewards": self.shaping.shape(raw),
            "raw_rewards": raw,
            "masks": (1.0 - terminated).astype(np.float32),
            "dones": terminated | truncated,
            "terminated": terminated,
            "truncated": truncated,
            "intervened": self._intervened[slots],
            "mc_returns": self._mc_returns[slots],
            "indices": slots,
            "episode_ids": self._episode_ids[slots],
        }

    def _observations_at(self, slots: np.ndarray, frames: bool) -> dict[str, np.ndarray]:
        out = {}
        for key, array in self._obs.items():
            if frames or key not in self._features:
                out[key] = array[slots]
        for key, array in self._features.items():
            out[key + FEATURES_SUFFIX] = array[slots]
        return out

    def all_transitions(self) -> dict[str, Any]:
        """Every valid transition in slot order (for offline passes and tests)."""
        return self.batch(self._valid_indices())

    # ------------------------------------------------------------------ integrity

    def nonfinite_episodes(self) -> list[int]:
        """Ids of episodes with a sampleable step holding a non-finite float (action, reward,
        return, or a float observation of the step or of its next slot)."""
        used = self.size
        if used == 0:
            return []
        bad = ~np.isfinite(self._actions[:used]).all(axis=1)
        bad |= ~np.isfinite(self._raw_rewards[:used]) | ~np.isfinite(self._mc_returns[:used])
        for array in self._obs.values():
            if array.dtype.kind == "f":
                finite = np.isfinite(array[:used].reshape(used, -1)).all(axis=1)
                bad |= ~finite
        bad &= self._episode_ids[:used] >= 0
        return sorted({int(e) for e in np.unique(self._episode_ids[:used][bad])})

    def invalidate_episodes(self, episode_ids: Iterable[int]) -> int:
        """Make every transition of these episodes unsampleable (they stay in their slots until
        overwritten); returns how many transitions that removed."""
        ids = np.asarray(list(episode_ids), np.int64)
        if ids.size == 0:
            return 0
        used = self.size
        hit = np.isin(self._episode_ids[:used], ids)
        removed = int(np.count_nonzero(self._valid[:used] & hit))
        self._valid[:used][hit] = False
        self._valid_index = None
        return removed

    # ------------------------------------------------------------------ persistence

    @property
    def slots_written(self) -> int:
        """Slots written since the buffer was made (it only grows): where a snapshot segment starts."""
        return self._slots_written

    def save(self, path: str | os.PathLike, *, feature_digest: str = "") -> Path:
        """Write the whole ring (completed episodes, not open ones) atomically to `path`.

        With `feature_digest` (a fingerprint of the frozen backbone that made the cached features)
        the features are written too, so `load` with the same digest restores them instead of
        encoding every frame again. A failure (OSError, e.g. a full disk) leaves `path` as it was
        and no temporary file."""
        return self._write_slots(Path(path), np.arange(self.size), max(0, self._slots_written - self.size),
                                 feature_digest)

    def save_segment(self, path: str | os.PathLike, since_written: int, *, feature_digest: str = "") -> Path:
        """Write only the slots written since `since_written` (an earlier `slots_written`), plus
        the few bytes of state that change in place (which slots are sampleable, the cursor).

        Loading the segments of a chain in order (`load_chain`) gives back the buffer: each one
        overwrites the slots the ring reused. A checkpoint therefore writes what arrived since the
        previous one, not the whole ring. Atomic like `save`."""
        since = max(int(since_written), self._slots_written - self.capacity, 0)
        if since > self._slots_written:
            raise ValueError(f"since_written={since_written} is beyond the {self._slots_written} slots written")
        slots = np.arange(since, self._slots_written, dtype=np.int64) % self.capacity
        return self._write_slots(Path(path), slots, since, feature_digest)

    def _write_slots(self, path: Path, slots: np.ndarray, since: int, feature_digest: str) -> Path:
        slots = np.asarray(slots, np.int64)
        # A run of consecutive slots is written from a view: a whole 12 GiB ring is never copied.
        pick = _as_slice(slots)
        arrays = {f"obs/{k}": v[pick] for k, v in self._obs.items()}
        if feature_digest and self._features:
            arrays.update({f"features/{k}": v[pick] for k, v in self._features.items()})
        arrays.update(
            slots=slots, actions=self._actions[pick], raw_rewards=self._raw_rewards[pick],
            terminated=self._terminated[pick], truncated=self._truncated[pick],
            intervened=self._intervened[pick], mc_returns=self._mc_returns[pick],
            episode_ids=self._episode_ids[pick],
            valid=self._valid[:self.size],  # whole: overwrites and quarantine change it in place
        )
        header = {
            "format": BUFFER_FORMAT, "version": BUFFER_VERSION,
            "capacity": self.capacity, "action_dim": self.action_dim,
            "cursor": self._cursor, "slots_written": self._slots_written, "since_written": int(since),
            "episodes_added": self._episodes_added,
            "shaping": self.shaping.as_dict(),
            "observation_spec": {k: [list(s), d.str] for k, (s, d) in self.observation_spec.items()},
            "feature_digest": feature_digest if self._features else "",
        }
        arrays["header"] = np.array(json.dumps(header))
        temp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
        try:
            with open(temp, "wb") as handle:
                # Hashed as written (the zip streams, never seeking back): no second read of the file.
                stream = _HashingWriter(handle)
                np.savez(stream, **arrays)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        except BaseException:  # a full disk: leave no half-written temporary behind
            temp.unlink(missing_ok=True)
            raise
        self.last_saved_sha256 = stream.sha256.hexdigest()
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, expected_sha256: str | None = None, **kwargs: Any) -> ReplayBuffer:
        """Load a buffer written by `save` (see `load_chain` for the arguments)."""
        return cls.load_chain([path], expected_sha256=None if expected_sha256 is None else [expected_sha256],
                              **kwargs)

    @classmethod
    def load_chain(cls, paths: Sequence[str | os.PathLike], *, shaping: RewardShaping,
                   feature_fn: FeatureFn | None = None, feature_keys: Iterable[str] | None = None,
                   expected_sha256: Sequence[str | None] | None = None,
                   on_progress: Callable[[int], None] | None = None, feature_digest: str = "") -> ReplayBuffer:
        """Load a buffer from files written by `save` / `save_segment`, oldest first (a checkpoint
        records its chain), for an agent that shapes rewards with `shaping`.

        With `feature_fn`, the cached features come back from the files when every one holds them
        for the same backbone (`feature_digest` equals the one saved; `features_restored` is then
        True); otherwise every stored frame is encoded again (`on_progress` hears of it).

        With `expected_sha256` (what the learner's checkpoint recorded, one per file; None skips a
        file) each file's bytes are checked first: a mismatch, a truncated file or a damaged zip
        raises CorruptBufferError naming the file, as does a chain whose segments do not follow on.
        MC returns are stored, so a buffer saved under another shaping would hand the critic
        returns on the wrong reward: that is refused (BufferShapingError; rebuild it from the
        episode store)."""
        paths = [Path(p) for p in paths]
        if not paths:
            raise BufferFileError("no replay buffer file to load")
        expected = list(expected_sha256) if expected_sha256 is not None else [None] * len(paths)
        buffer: ReplayBuffer | None = None
        features_complete = feature_fn is not None and bool(feature_digest)
        for path, digest in zip(paths, expected, strict=True):
            _verify_sha256(path, digest)
            try:
                # Member by member from the open file: loading never holds a second copy of the ring.
                with np.load(path, allow_pickle=False) as npz:
                    header = _buffer_header(path, npz)
                    if buffer is None:
                        buffer = cls._empty_like(path, header, shaping, feature_keys)
                    else:
                        _check_follows(path, header, buffer)
                    names = set(npz.files)
                    slots = npz["slots"].astype(np.int64) if "slots" in names else \
                        np.arange(npz["actions"].shape[0])  # version 2: the whole ring from slot 0
                    pick = _as_slice(slots)
                    for key in buffer._obs:
                        buffer._obs[key][pick] = npz[f"obs/{key}"]
                    for name in ("actions", "raw_rewards", "terminated", "truncated", "intervened", "mc_returns",
                                 "episode_ids"):
                        getattr(buffer, f"_{name}")[pick] = npz[name]
                    valid = npz["valid"]
                    buffer._valid[:] = False
                    buffer._valid[:valid.shape[0]] = valid
                    buffer._cursor = int(header["cursor"])
                    buffer._slots_written = int(header["slots_written"])
                    buffer._episodes_added = int(header["episodes_added"])
                    if features_complete:
                        keys = [f"features/{k}" for k in buffer.feature_keys]
                        if header.get("feature_digest") == feature_digest and all(k in names for k in keys):
                            for key in buffer.feature_keys:
                                values = npz[f"features/{key}"]
                                if values.shape[0] != slots.shape[0]:
                                    raise ValueError(f"features of {key} do not match the file's slots")
                                if key not in buffer._features:
                                    buffer._features[key] = np.zeros((buffer.capacity, *values.shape[1:]),
                                                                     buffer.feature_dtype)
                                buffer._features[key][pick] = values
                        else:
                            features_complete = False
            except FileNotFoundError:
                raise
            except BufferFileError:
                raise
            except (OSError, ValueError, KeyError, TypeError, IndexError, EOFError, zipfile.BadZipFile,
                    zlib.error) as exc:
                raise CorruptBufferError(f"replay buffer file {path} cannot be read or does not hold a consistent "
                                         f"buffer ({type(exc).__name__}: {exc}); it may be truncated or "
                                         "corrupt") from None
        assert buffer is not None
        if feature_fn is not None:
            if features_complete and buffer._features:
                buffer._feature_fn = feature_fn
                buffer.features_restored = True
            else:
                buffer._features = {}
                buffer.set_feature_fn(feature_fn, on_progress=on_progress)
        return buffer

    @classmethod
    def _empty_like(cls, path: Path, header: dict, shaping: RewardShaping,
                    feature_keys: Iterable[str] | None) -> ReplayBuffer:
        spec = {k: (tuple(s), np.dtype(d)) for k, (s, d) in header["observation_spec"].items()}
        saved = header.get("shaping") or {  # version 1 kept the four settings at the top level
            "scale": header["reward_scale"], "bias": header["reward_bias"],
            "discount": header["discount"], "sparse": header["sparse_reward"]}
        if RewardShaping(**saved) != shaping:
            raise BufferShapingError(
                f"replay buffer file {path} holds returns computed with reward shaping {saved}, but the agent now "
                f"uses {shaping.as_dict()}; restore the old agent.reward/agent.sac.discount settings or rebuild the "
                "buffer from the episode store")
        return cls(spec, header["action_dim"], header["capacity"], shaping=shaping, feature_keys=feature_keys)


class _HashingWriter(io.RawIOBase):
    """A write-only, non-seekable file that hashes what passes through it to `handle`."""

    def __init__(self, handle: Any):
        self.handle = handle
        self.sha256 = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data: Any) -> int:
        self.sha256.update(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def _as_slice(slots: np.ndarray) -> slice | np.ndarray:
    """`slots` as a slice when they are one run of consecutive indices (views, not copies)."""
    if slots.size == 0:
        return slice(0, 0)
    if int(slots[-1]) - int(slots[0]) + 1 == slots.size and np.all(np.diff(slots) == 1):
        return slice(int(slots[0]), int(slots[-1]) + 1)
    return slots


def _verify_sha256(path: Path, expected_sha256: str | None) -> None:
    if expected_sha256 is None:
        return
    try:
        found = file_sha256(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CorruptBufferError(f"replay buffer file {path} cannot be read ({exc})") from None
    if found != expected_sha256:
        raise CorruptBufferError(f"replay buffer file {path} does not match the sha256 its checkpoint "
                                 "recorded (corrupt or truncated)")


def _buffer_header(path: Path, npz: Any) -> dict:
    header = json.loads(str(npz["header"][()]))
    if not isinstance(header, dict) or header.get("format") != BUFFER_FORMAT:
        raise BufferFileError(f"{path} is not a saved replay buffer")
    if int(header.get("version", 1)) > BUFFER_VERSION:
        raise BufferFileError(f"replay buffer file {path} has format version {header['version']}, newer than "
                              f"this code reads ({BUFFER_VERSION}); run the franka-rl version that wrote it")
    return header


def _check_follows(path: Path, header: dict, buffer: ReplayBuffer) -> None:
    """A segment must continue the chain loaded so far: same ring, starting where it ended."""
    since = int(header.get("since_written", -1))
    if int(header.get("capacity", -1)) != buffer.capacity or since != buffer._slots_written:
        raise CorruptBufferError(f"replay buffer segment {path} does not continue the files before it (it starts "
                                 f"at slot {since} of a ring of {header.get('capacity')}; they end at slot "
                                 f"{buffer._slots_written} of a ring of {buffer.capacity}): a segment is missing")


def _same_observation(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@dataclass(frozen=True)
class BufferFactory:
    """Makes and loads replay buffers with one reward shaping bound: what the composition root
    hands a trainer, so that every buffer it sizes computes G on the agent's own reward."""

    shaping: RewardShaping

    def __call__(self, observation_spec: Mapping[str, tuple[tuple[int, ...], Any]], action_dim: int,
                 capacity: int, **kwargs: Any) -> ReplayBuffer:
        return ReplayBuffer(observation_spec, action_dim, capacity, shaping=self.shaping, **kwargs)

    def from_episodes(self, episodes: Iterable[Episode], capacity: int, **kwargs: Any) -> ReplayBuffer:
        return ReplayBuffer.from_episodes(episodes, capacity, shaping=self.shaping, **kwargs)

    def load(self, path: str | os.PathLike, **kwargs: Any) -> ReplayBuffer:
        return ReplayBuffer.load(path, shaping=self.shaping, **kwargs)

    def load_chain(self, paths: Sequence[str | os.PathLike], **kwargs: Any) -> ReplayBuffer:
        return ReplayBuffer.load_chain(paths, shaping=self.shaping, **kwargs)
