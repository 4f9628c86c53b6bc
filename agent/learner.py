"""The learner process: replay buffer(s), WSRL warm-up gate, UTD updates, parameter publishing,
NaN guard, atomic checkpoints with the transport's bookkeeping, and resume.

Exactly-once storage: each actor process is one stream (`<actor id>/<incarnation>`) whose
transition chunks carry sequence numbers 1, 2, ... The learner stores chunk `stored_through + 1`
only; an older one is a duplicate (dropped, acknowledged again), a newer one means a gap (the actor
is asked to resend). A checkpoint holds the agent, the replay buffer (completed episodes) and, per
stream, `committed_through`: the last chunk whose episode is complete in that buffer. After the
checkpoint the actors are told those chunks are durable and drop them; after a crash the learner
restores the checkpoint, tells each actor it holds `committed_through`, and the actor resends the
rest. So the buffer holds every transition an actor produced exactly once.

The loop (`Learner.run`): take deliveries, store them, run a learner step when allowed, publish,
checkpoint, log. `docs/processes.md` has the details.

Faults (docs/processes.md, "Faults"): a learner step whose losses or new parameters are not finite
is skipped (the agent keeps its previous state), counted and logged, and
`learner.max_consecutive_nonfinite_updates` in a row stop the learner with a message about the
data; no checkpoint is written while the last step was non-finite. Resume verifies checksums and
falls back to the previous kept checkpoint when the newest is damaged. A checkpoint the disk
refuses is retried every `learner.checkpoint_retry_s` while training goes on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from agent import off2on
from agent.checkpoint import (
    AgentCheckpointer,
    CheckpointCorruptError,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointWriteError,
    describe_write_failure,
    write_json_atomically,
)
from agent.config import AgentConfig
from agent.core import Agent, frozen_feature_fn, is_ensemble, uses_feature_cache
from agent.data.replay_buffer import (
    BufferFactory,
    BufferShapingError,
    CorruptBufferError,
    ReplayBuffer,
)
from agent.metrics import MetricsConfig, MetricsWriter
from agent.param_sync import all_finite, backbone_digest, export_acting_params, export_backbone
from agent.process_config import LearnerConfig, TransportConfig, validate_process_config
from agent.sac import learner_step
from agent.sampling import sample_batches
from agent.sharding import data_parallel_step, place_batches
from agent.transport.server import Delivery, LearnerServer, Watermarks
from agent.wsrl import policy_drift, updates_allowed
from robot_env.errors import UserError
from robot_env.progress import format_duration
from robot_env.progress import progress as progress_bar

log = logging.getLogger("agent.learner")

BOOKKEEPING_FORMAT = "franka_rl.learner"
# Inside each checkpoint step: the replay-buffer segment it wrote, with that file's sha256.
SEGMENT_RECORD = "buffer_segment.json"


class LearnerError(UserError, RuntimeError):
    """A learner problem the user must act on (diverged training, unusable data)."""


# Stored values beyond these magnitudes are named when updates turn non-finite.
_SUSPECT_OBSERVATION = 1e6
# The learner's pace is judged over windows this long (wall seconds after the warm-up gate); a
# learner running fewer than PACE_TOLERANCE of the steps the arriving data needs is behind.
# A replay buffer that would take more than this share of the memory available is refused; more
# than MEMORY_WARN_SHARE of it is a warning (the arrays fill as data arrives: page by page).
MEMORY_REFUSE_SHARE = 0.95
MEMORY_WARN_SHARE = 0.8
PACE_WINDOW_S = 30.0
PACE_TOLERANCE = 0.9
_SUSPECT_REWARD = 1e6


@jax.jit
def _trainable_state_finite(agent: Agent) -> jax.Array:
    """Whether every float leaf of the agent's trained state (not the frozen backbone) is finite."""
    parts = (agent.actor, agent.critic, agent.target_critic_params, agent.temperature, agent.lagrange)
    checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(parts) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)


@dataclass
class DataStats:
    """Largest magnitudes (and non-finite counts) a source put into a buffer: what the non-finite
    stop names. Not part of a checkpoint."""

    action: float = 0.0
    reward: float = 0.0
    observation: float = 0.0
    nonfinite: int = 0

    def add(self, actions: np.ndarray, rewards: np.ndarray, observations: Mapping[str, np.ndarray]) -> None:
        floats = [np.asarray(actions, np.float64), np.asarray(rewards, np.float64)]
        floats += [np.asarray(v, np.float64) for v in observations.values() if np.asarray(v).dtype.kind == "f"]
        self.nonfinite += int(sum(np.count_nonzero(~np.isfinite(a)) for a in floats))

        def peak(array) -> float:
            array = np.abs(np.asarray(array, np.float64))
            array = array[np.isfinite(array)]
            return float(array.max()) if array.size else 0.0

        self.action = max(self.action, peak(actions))
        self.reward = max(self.reward, peak(rewards))
        for value in observations.values():
            if np.asarray(value).dtype.kind == "f":
                self.observation = max(self.observation, peak(value))

    def findings(self) -> list[str]:
        found = []
        if self.nonfinite:
            found.append(f"{self.nonfinite} non-finite value(s)")
        if self.action > 1.0 + 1e-6:
            found.append(f"actions up to |{self.action:.3g}| (the action space is [-1, 1])")
        if self.reward > _SUSPECT_REWARD:
            found.append(f"rewards up to |{self.reward:.3g}|")
        if self.observation > _SUSPECT_OBSERVATION:
            found.append(f"observations up to |{self.observation:.3g}|")
        return found

def available_memory() -> int:
    """Bytes of memory this machine can give without swapping (MemAvailable), 0 if unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


# ------------------------------------------------------------------------------------ bookkeeping


class StreamRegistry:
    """Every stream this run's learners ever welcomed, one JSON line each in `run_dir/streams.jsonl`
    (appended and fsynced before the WELCOME). A restarted actor may re-send an earlier
    incarnation's episodes only into a stream listed here: one the run's checkpoints may lack
    (welcomed, then the learner died before checkpointing it) but never one from another run."""

    def __init__(self, path: Path):
        self.path = path
        self.streams: set[str] = set()
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            try:
                stream = json.loads(line)["stream"]
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a crash mid-append
            if isinstance(stream, str):
                self.streams.add(stream)

    def add(self, stream: str) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"stream": stream, "at": time.time()}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.streams.add(stream)


@dataclass
class StreamBook:
    """What the learner holds of one actor stream."""

    actor: str = ""
    stored_through: int = 0  # last chunk stored (its episode may still be open)
    committed_through: int = 0  # last chunk whose episode is complete in the buffer
    transitions_stored: int = 0
    transitions_committed: int = 0
    episodes: int = 0
    # The open episode: which one, the next step expected, its last observation.
    episode: int = -1
    next_step: int = 0
    last_observation: dict[str, np.ndarray] | None = None
    last_active: float = 0.0  # monotonic time of the last chunk stored (eviction order)
    refused: str = ""  # why this stream's chunks are no longer accepted (final)
    data: DataStats = field(default_factory=DataStats)

    def durable_state(self) -> dict[str, Any]:
        return {"actor": self.actor, "committed_through": self.committed_through,
                "transitions": self.transitions_committed, "episodes": self.episodes}

    @classmethod
    def from_durable(cls, state: Mapping[str, Any]) -> StreamBook:
        return cls(actor=str(state["actor"]), stored_through=int(state["committed_through"]),
                   committed_through=int(state["committed_through"]), transitions_stored=int(state["transitions"]),
                   transitions_committed=int(state["transitions"]), episodes=int(state["episodes"]))


@dataclass
class LearnerCounters:
    steps: int = 0  # learner steps (each: utd critic updates + one actor update)
    params_version: int = 0
    checkpoints: int = 0
    duplicates: int = 0
    gaps: int = 0
    skipped: int = 0  # chunks an actor no longer held (checkpointed by an earlier learner)
    inconsistent: int = 0
    evicted: int = 0  # open episodes dropped for transport.max_open_episodes (their actors resend them)
    refused_streams: int = 0
    skipped_nonfinite: int = 0  # learner steps rolled back because a loss or parameter was not finite
    nonfinite_streak: int = 0  # of them, how many in a row up to now
    quarantined_episodes: int = 0  # buffer episodes made unsampleable for holding non-finite values
    checkpoint_failures: int = 0  # checkpoints the disk refused (retried)
    recent_success: deque = field(default_factory=lambda: deque(maxlen=20))
    recent_interventions: deque = field(default_factory=lambda: deque(maxlen=20))


# ------------------------------------------------------------------------------------ learner


class Learner:
    """Owns the agent, the buffers and the bookkeeping; `run()` is the process's main loop."""

    def __init__(self, agent: Agent, agent_cfg: AgentConfig, learner_cfg: LearnerConfig,
                 transport_cfg: TransportConfig, *, observation_spec: Mapping[str, tuple[Sequence[int], Any]],
                 action_dim: int, new_buffer: BufferFactory, config_hash: str, run_dir: str | Path, seed: int = 0,
                 pretrained: Agent | None = None, offline_dirs: Sequence[str] = (), endpoint: str | None = None,
                 report: Callable[[str], None] = print, metrics: MetricsConfig | None = None,
                 run_config: Mapping[str, Any] | None = None):
        """`agent`: the online agent to train (a checkpoint in `run_dir` replaces it on resume);
        `pretrained`: the frozen pre-trained agent behind the drift metrics; `new_buffer` makes
        every buffer (online and offline) with the agent's reward shaping; `metrics` (the config's
        `metrics:`) adds Weights & Biases, with `run_config` as its run config."""
        validate_process_config(transport_cfg, learner=learner_cfg)
        if agent.spec.iql.enabled:
            # Before any buffer or socket: the SAC update would refuse it only after the warm-up.
            raise LearnerError("the online learner got an agent with agent.iql.enabled: IQL is offline "
                               "pre-training; pass the agent through agent.wsrl.wsrl_switch (which drops it)")
        self.link_security = ("CURVE: encrypted, admits the actors in "
                              f"{transport_cfg.curve_authorized_clients_dir}" if transport_cfg.curve
                              else "no CURVE: unencrypted")
        self.agent_cfg, self.lcfg, self.tcfg = agent_cfg, learner_cfg, transport_cfg
        self.report = report
        lcfg = learner_cfg
        self.run_dir = Path(run_dir)
        self.buffer_dir = self.run_dir / "replay"
        try:
            self.buffer_dir.mkdir(parents=True, exist_ok=True)
            for leftover in self.buffer_dir.glob(".tmp-*"):  # a buffer save cut short by a crash
                leftover.unlink(missing_ok=True)
        except OSError as exc:
            raise LearnerError(f"cannot use learner.run_dir {describe_write_failure(self.run_dir, exc)}; "
                               "give the learner a writable folder") from None
        self.spec = {k: (tuple(int(d) for d in shape), np.dtype(dtype)) for k, (shape, dtype) in observation_spec.items()}
        self.action_dim = int(action_dim)
        self.new_buffer = new_buffer
        self.rng = np.random.default_rng(seed)
        self.counters = LearnerCounters()
        self.books: dict[str, StreamBook] = {}
        try:
            self.checkpointer = AgentCheckpointer(self.run_dir / "checkpoints", max_to_keep=lcfg.keep_checkpoints)
            self.checkpointer.remove_temporaries()  # one learner per run directory: ours to clean
        except CheckpointWriteError as exc:
            raise LearnerError(f"{exc}; give the learner a writable learner.run_dir") from None
        self.pretrained = pretrained
        self.agent = agent
        self.ensemble = is_ensemble(agent)  # Off2On: N members stacked, trained on balanced replay
        if self.ensemble:
            if lcfg.devices > 1:
                raise LearnerError(f"agent.off2on.enabled trains its ensemble on one device (the members are the "
                                   f"vmapped axis), not learner.devices={lcfg.devices}: set learner.devices=1")
            if not offline_dirs:
                raise LearnerError("agent.off2on.enabled: balanced replay draws from the offline data as well as the "
                                   "online data; pass the episode directories with --offline-data DIR ...")
            self.learner_step = off2on.ensemble_learner_step
        else:
            # The one learner step every update (and its compile) runs: split over learner.devices.
            self.learner_step, how = data_parallel_step(lcfg.devices, agent_cfg.sac.batch_size, "learner.devices")
            if self.learner_step is not learner_step:
                report(f"learner: {how}")
        self.feature_cache = uses_feature_cache(self.agent)
        feature_fn = self._make_feature_fn() if self.feature_cache else None
        self.feature_fn = feature_fn
        # The buffer files the latest checkpoint's snapshot consists of, oldest first.
        self._snapshot_chain: list[dict[str, Any]] = []
        if self.checkpointer.latest_step() is not None:
            self._resume(feature_fn)
        else:
            self.buffer = new_buffer(self.spec, self.action_dim, lcfg.buffer_capacity, feature_fn=feature_fn)
        self._check_memory()
        self._episode_streams: dict[int, str] = {}  # buffer episode id -> the stream that sent it
        self._last_stream = ""
        self.offline_data = DataStats()
        self.offline = self._load_offline(offline_dirs, feature_fn) if offline_dirs else None
        if self.offline is None and agent_cfg.online.offline_ratio != 0:
            raise LearnerError(f"agent.online.offline_ratio={agent_cfg.online.offline_ratio} mixes offline data "
                               "into every batch: pass the episode directories with --offline-data DIR ...")
        self.balanced: off2on.BalancedReplay | None = None
        self.density: off2on.DensityStep | None = None
        if self.ensemble:
            # Priorities and w_psi are not checkpointed: after a resume the online samples start again
            # at the default priority and w_psi from scratch (docs/agent.md, "Off2On").
            self.balanced = off2on.BalancedReplay(
                self.offline, self.buffer, agent_cfg.off2on,
                bootstrap_on_truncation=agent_cfg.reward.bootstrap_on_truncation, frames=not self.feature_cache)
            self.density = off2on.DensityStep(agent_cfg.off2on, self.agent, self.balanced, self.rng, seed)
            self._auroc_key = jax.random.PRNGKey(seed + 2)

        # Before the server binds its port: a metrics backend that cannot start (metrics.wandb without
        # wandb installed) stops the learner with nothing left open.
        self.streams = StreamRegistry(self.run_dir / "streams.jsonl")
        self.metrics = MetricsWriter(self.run_dir, tensorboard=lcfg.tensorboard,
                                     wandb=metrics.wandb if metrics else None, config=run_config,
                                     job_type="learner")
        try:
            self.server = LearnerServer(
                transport_cfg, config_hash=config_hash, observation_spec=self.spec, action_dim=self.action_dim,
                backbone_digest=backbone_digest(self.agent),
                watermarks={s: Watermarks(b.committed_through, b.committed_through) for s, b in self.books.items()},
                endpoint=endpoint, known_streams=self.streams.streams, on_new_stream=self.streams.add,
            )
        except BaseException:
            self.metrics.close()
            raise
        if self.agent.frozen_backbone:
            self.server.set_backbone(export_backbone(self.agent))
        self._stop = threading.Event()
        # Cleared while `run` compiles the update in the background (storing goes on meanwhile).
        self._compiled = threading.Event()
        self._compiled.set()
        self._compile_error: BaseException | None = None
        self._last_checkpoint_time = time.monotonic()
        self._last_checkpoint_step = self.counters.steps
        self._steps_at_last_log = self.counters.steps
        self._time_at_last_log = time.monotonic()
        self._dirty = False
        self._published_after_warmup = False
        # The next step's batches and balanced draw (learner.prefetch).
        self._prefetched: tuple[dict[str, Any], off2on.BalancedDraw | None] | None = None
        self._next_checkpoint_try = 0.0  # after a refused checkpoint: not before this (monotonic s)
        self._metrics_failing = False
        self._pace_mark: tuple[float, int, int] | None = None  # (time, transitions, steps) of the window start
        self.behind = ""  # set (and said once) when the learner cannot keep up with the actors

    # ------------------------------------------------------------------ construction helpers

    def _check_memory(self) -> None:
        """Refuse (or warn about) a replay buffer that would not fit this machine's memory once
        full, naming the bytes and a capacity that fits: before any data arrives, not at 3 a.m."""
        buffer = self.buffer
        feature_nbytes = 0
        if buffer.has_features and buffer.feature_keys:
            shape, dtype = self.spec[buffer.feature_keys[0]]
            sample = np.asarray(self.feature_fn(np.zeros((1, *shape), dtype)))
            feature_nbytes = int(np.prod(sample.shape[1:])) * buffer.feature_dtype.itemsize
        per_slot = buffer.slot_nbytes(feature_nbytes)
        needed = per_slot * (buffer.capacity - buffer.size)  # the filled part is resident already
        available = available_memory()
        if not available or needed <= MEMORY_WARN_SHARE * available:
            return
        fits = int(MEMORY_WARN_SHARE * available // per_slot) + buffer.size
        text = (f"learner.buffer_capacity={self.lcfg.buffer_capacity} needs {_gib(per_slot * buffer.capacity)} once "
                f"full ({per_slot} bytes per transition{' with the feature cache' if feature_nbytes else ''}); this "
                f"machine has {_gib(available)} available")
        if needed > MEMORY_REFUSE_SHARE * available:
            raise LearnerError(f"{text}: set learner.buffer_capacity <= {fits} (or free memory)")
        self.report(f"warning: {text}: it will use most of it; learner.buffer_capacity={fits} leaves a fifth free")

    def _make_feature_fn(self) -> Callable[[np.ndarray], np.ndarray]:
        # Reads self.agent at call time: after a resume that is the restored agent.
        return frozen_feature_fn(lambda: self.agent)

    def _load_offline(self, directories: Sequence[str], feature_fn) -> ReplayBuffer:
        from agent.data.lerobot_io import ExpectedLayout
        from agent.data.sources import DataSourceError, read_source

        cameras = tuple(k for k, (shape, dtype) in self.spec.items() if np.dtype(dtype) == np.uint8 and len(shape) == 3)
        state = self.spec.get("state")
        layout = ExpectedLayout(cameras=cameras, state_dim=int(state[0][0]) if state and len(state[0]) == 1 else None,
                                action_dim=self.action_dim)
        episodes = []
        for directory in directories:  # episode folders, LeRobot folders, minari:<id>, episode files
            try:
                episodes.extend(read_source(directory, layout=layout, report=self.report))
            except (DataSourceError, FileNotFoundError) as exc:
                raise LearnerError(f"--offline-data: {exc}") from None
        if not episodes:
            raise LearnerError(f"--offline-data {' '.join(directories)} holds no episodes")
        for episode in episodes:
            found = {k: (v.shape[1:], v.dtype) for k, v in episode.observations.items()}
            if found != {k: (tuple(s), np.dtype(d)) for k, (s, d) in self.spec.items()} or \
                    episode.actions.shape[1] != self.action_dim:
                raise LearnerError(f"--offline-data: episodes with observations {found} and action size "
                                   f"{episode.actions.shape[1]} do not fit this run's {self.spec} / {self.action_dim}")
        capacity = sum(len(e) + 1 for e in episodes) + 1
        buffer = self.new_buffer(self.spec, self.action_dim, capacity, feature_fn=feature_fn)
        if feature_fn is not None:
            frames = sum(len(e) + 1 for e in episodes) * len(buffer.feature_keys)
            self.report(f"offline data: encoding {frames} frames once with the frozen backbone into the feature "
                        "cache (the first batch also compiles the encoder)")
        started = time.monotonic()
        with progress_bar(total=len(episodes), desc="offline data", unit="episode") as bar:
            for episode in episodes:
                buffer.add_episode_record(episode)
                self.offline_data.add(episode.actions, episode.rewards, episode.observations)
                bar.update(1)
        if feature_fn is not None:
            self.report(f"offline data: encoded in {format_duration(time.monotonic() - started)}")
        self.report(f"offline data: {buffer.num_transitions} transitions from {len(episodes)} episodes "
                    f"(offline_ratio {self.agent_cfg.online.offline_ratio})")
        return buffer

    def _resume(self, feature_fn) -> None:
        """Resume from the newest checkpoint whose files and buffer verify; damaged newer ones are
        moved to `<run_dir>/corrupt/` with one warning line. None usable: one LearnerError."""
        problems: list[tuple[int, str]] = []
        for step in sorted(self.checkpointer.all_steps(), reverse=True):
            try:
                self._resume_from(step, feature_fn)
            except (CheckpointError, CorruptBufferError, FileNotFoundError) as exc:
                if isinstance(exc, CheckpointMismatchError):
                    raise
                problems.append((step, str(exc)))
                continue
            if problems:
                moved = self._move_aside([s for s, _ in problems])
                self.report(f"warning: checkpoint {problems[0][0]} is unusable ({problems[0][1]}); resumed from "
                            f"the previous checkpoint {step} instead" + (f", moved the damaged one(s) to {moved}"
                                                                        if moved else ""))
            self.report(f"resumed from checkpoint {step}: {self.counters.steps} learner steps, "
                        f"{self.online_transitions} transitions from {len(self.books)} actor stream(s)")
            return
        details = "; ".join(f"{step}: {reason}" for step, reason in problems)
        raise LearnerError(f"cannot resume: no usable checkpoint in {self.checkpointer.directory} ({details}). "
                           f"Move {self.run_dir} aside to start afresh; every episode the actors recorded is in their "
                           "episode folders (train on them with --offline-data)")

    def _resume_from(self, step: int, feature_fn) -> None:
        meta = self.checkpointer.read_meta(step)
        extra = meta.get("extra", {})
        if extra.get("format") != BOOKKEEPING_FORMAT:
            raise LearnerError(f"{self.checkpointer.directory} holds checkpoints of another command; give the "
                               "learner its own learner.run_dir")
        restored, _ = self.checkpointer.restore(self.agent, step, self.agent_cfg)
        chain = snapshot_chain(extra, self.checkpointer.step_directory(step))
        for segment in chain:
            if segment["sha256"] is None:  # checkpoints written before checksums
                log.warning("checkpoint %d records no checksum for %s (an older version wrote it); loading it "
                            "unverified", step, segment["file"])
        # The restored agent first: feature_fn encodes with self.agent's backbone, if it must encode
        # (the snapshot holds no features, or features of another backbone).
        previous_agent, self.agent = self.agent, restored
        bars: list[Any] = []

        def encoded(frames: int) -> None:
            if not bars:
                self.report(f"resuming: encoding the frames of checkpoint {step}'s replay buffer with the frozen "
                            "backbone (its snapshot holds no features of this backbone)")
                bars.append(progress_bar(desc="encoding saved frames", unit="frame"))
            bars[0].update(frames)

        try:
            buffer = self.new_buffer.load_chain(
                [self.buffer_dir / segment["file"] for segment in chain],
                expected_sha256=[segment["sha256"] for segment in chain], feature_fn=feature_fn,
                on_progress=encoded, feature_digest=backbone_digest(restored) if feature_fn is not None else "")
        except FileNotFoundError as exc:
            self.agent = previous_agent
            raise CorruptBufferError(f"its replay buffer file {exc.filename} is missing") from None
        except BufferShapingError as exc:
            self.agent = previous_agent
            raise LearnerError(f"cannot resume from checkpoint {step}: {exc}") from None
        except ValueError as exc:
            self.agent = previous_agent
            raise CorruptBufferError(str(exc)) from None
        except BaseException:
            self.agent = previous_agent
            raise
        finally:
            for bar in bars:
                bar.close()
        if buffer.features_restored:
            self.report(f"resuming: checkpoint {step}'s feature cache came back from its buffer snapshot (same "
                        "backbone): no frame encoded")
        self.buffer = buffer
        if chain[-1]["until"] < 0:  # a whole-ring file of an older version: the next segment follows it
            chain[-1]["until"] = buffer.slots_written
        self._snapshot_chain = chain
        self.books = {stream: StreamBook.from_durable(state) for stream, state in extra["streams"].items()}
        self.counters.steps = int(extra["learner_steps"])
        self.counters.params_version = int(extra["params_version"])
        self.counters.checkpoints = step

    def _move_aside(self, steps: Sequence[int]) -> Path | None:
        """Move damaged checkpoint steps (and their buffer files) to <run_dir>/corrupt/, so new
        checkpoints do not reuse their numbers and pruning does not count them."""
        target = self.run_dir / "corrupt"
        moved = False
        for step in steps:
            try:
                target.mkdir(exist_ok=True)
                stamp = time.strftime("%Y%m%d-%H%M%S")
                source = self.checkpointer.step_directory(step)
                if source.exists():
                    source.rename(target / f"checkpoint_{step}_{stamp}")
                    moved = True
                buffer_file = self.buffer_dir / f"buffer_{step:06d}.npz"
                if buffer_file.exists():
                    buffer_file.rename(target / f"buffer_{step:06d}_{stamp}.npz")
            except OSError as exc:
                log.warning("could not move damaged checkpoint %d aside (%s); it stays in place", step, exc)
        self.checkpointer.reload()
        return target if moved else None

    # ------------------------------------------------------------------ state

    @property
    def online_transitions(self) -> int:
        return sum(b.transitions_stored for b in self.books.values())

    @property
    def warmup_done(self) -> bool:
        return updates_allowed(self.online_transitions, self.agent_cfg.online.warmup_steps)

    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ storing

    def store(self, delivery: Delivery) -> bool:
        """Store one delivery exactly once; returns whether it was stored. Never raises on what an
        actor sent: a chunk that cannot be stored is counted as a rejection, and its stream is
        refused with a message saying why (see `_refuse`)."""
        stream = delivery.stream
        book = self.books.setdefault(stream, StreamBook(actor=delivery.actor))
        if book.refused:
            return False
        if delivery.chunk is None:  # chunks up to `sequence` are gone for good: continue after them
            if delivery.sequence > book.stored_through and book.last_observation is None:
                self.counters.skipped += delivery.sequence - book.stored_through
                book.stored_through = book.committed_through = delivery.sequence
                self._dirty = True
            self.server.ack(stream, stored_through=book.stored_through)
            return False
        if delivery.sequence <= book.stored_through:
            self.counters.duplicates += 1
            self.server.ack(stream, stored_through=book.stored_through)
            return False
        if delivery.sequence != book.stored_through + 1:
            self.counters.gaps += 1
            self.server.ack(stream, stored_through=book.stored_through, resend=True)
            return False
        chunk = delivery.chunk
        if chunk.step == 0:
            if book.last_observation is not None:
                log.warning("stream %s started episode %d before episode %d ended; the open one is closed as "
                            "truncated", stream, chunk.episode, book.episode)
            previous = chunk.first_observation
        elif chunk.episode == book.episode and chunk.step == book.next_step and book.last_observation is not None:
            previous = book.last_observation
        else:
            self.counters.inconsistent += 1
            log.warning("stream %s: chunk %d continues episode %d at step %d, expected episode %d step %d; "
                        "asking for a resend", stream, delivery.sequence, chunk.episode, chunk.step, book.episode,
                        book.next_step)
            self.server.ack(stream, stored_through=book.stored_through, resend=True)
            return False
        open_steps = len(chunk) + (0 if chunk.step == 0 else self.buffer.open_steps(stream))
        if open_steps + 1 > self.buffer.capacity:
            self._refuse(stream, book, "episode_too_long",
                         f"episode {chunk.episode} of actor '{book.actor}' reached {open_steps} steps, but the "
                         f"learner's replay buffer holds episodes of at most {self.buffer.capacity - 1} steps: set "
                         f"learner.buffer_capacity >= task.max_episode_steps + 1 on the learner (or lower "
                         "task.max_episode_steps on the actor) and restart both")
            return False
        if chunk.step == 0 and book.last_observation is None:
            self._make_room_for_an_episode(stream)
        book.data.add(chunk.actions, chunk.rewards, chunk.next_observations)
        if chunk.first_observation is not None:
            book.data.add(np.zeros((0,)), np.zeros((0,)), chunk.first_observation)
        self._last_stream = stream
        try:
            for k in range(len(chunk)):
                observation = {key: value[k] for key, value in chunk.next_observations.items()}
                self.buffer.insert(previous, chunk.actions[k], float(chunk.rewards[k]), observation,
                                   bool(chunk.terminated[k]), bool(chunk.truncated[k]), bool(chunk.intervened[k]),
                                   stream=stream)
                previous = observation
        except Exception as exc:  # the buffer refused it: drop the open episode and the stream, loudly
            log.error("stream %s: chunk %d could not be stored", stream, delivery.sequence, exc_info=True)
            self._refuse(stream, book, "store_failed",
                         f"a chunk of actor '{book.actor}' could not be stored ({type(exc).__name__}: {exc})")
            return False
        book.stored_through = delivery.sequence
        book.transitions_stored += len(chunk)
        book.episode, book.next_step = chunk.episode, chunk.step + len(chunk)
        book.last_observation = {k: np.array(v) for k, v in previous.items()}
        book.last_active = time.monotonic()
        if chunk.ends_episode:
            self._episode_streams[self.buffer.num_episodes_added - 1] = stream
            book.committed_through = delivery.sequence
            book.transitions_committed = book.transitions_stored
            book.episodes += 1
            book.episode, book.next_step, book.last_observation = -1, 0, None
            self.counters.recent_success.append(bool(chunk.success.any()))
        self.counters.recent_interventions.extend(bool(x) for x in chunk.intervened)
        self._dirty = True
        self.server.ack(stream, stored_through=book.stored_through)
        return True

    def _drop_open_episode(self, stream: str, book: StreamBook) -> int:
        """Forget `stream`'s episode in progress: back to its last complete episode."""
        dropped = self.buffer.discard_open(stream)
        book.stored_through, book.transitions_stored = book.committed_through, book.transitions_committed
        book.episode, book.next_step, book.last_observation = -1, 0, None
        return dropped

    def _make_room_for_an_episode(self, stream: str) -> None:
        """Keep at most transport.max_open_episodes episodes in progress: evict the least recently
        active one. Its actor still holds those chunks (they are not durable) and resends them."""
        open_streams = [s for s, b in self.books.items() if b.last_observation is not None and s != stream]
        while len(open_streams) >= self.tcfg.max_open_episodes:
            victim = min(open_streams, key=lambda s: self.books[s].last_active)
            open_streams.remove(victim)
            book = self.books[victim]
            steps = self._drop_open_episode(victim, book)
            self.counters.evicted += 1
            log.warning("stream %s: its episode in progress (%d steps) was dropped to open one of %s "
                        "(transport.max_open_episodes=%d); its actor is asked to resend it", victim, steps, stream,
                        self.tcfg.max_open_episodes)
            self.server.ack(victim, stored_through=book.stored_through, resend=True)

    def _refuse(self, stream: str, book: StreamBook, reason: str, text: str) -> None:
        """Count a rejection, drop the stream's open episode and refuse the stream for good."""
        self._drop_open_episode(stream, book)
        book.refused = text
        self.counters.refused_streams += 1
        self.server.count_rejection(reason, text, f"actor '{book.actor}'")
        self.report(f"learner: refused stream {stream}: {text}")
        self.server.ack(stream, stored_through=book.stored_through)
        self.server.refuse_stream(stream, text)

    # ------------------------------------------------------------------ training

    def _step_budget_left(self) -> bool:
        rate = self.lcfg.steps_per_transition
        if rate <= 0:
            return True
        since_gate = self.online_transitions - self.agent_cfg.online.warmup_steps
        budget = max(since_gate, 1)
        if self.ensemble:  # Off2On: `early_updates` times the steps for the first reference_count samples
            early = self.agent_cfg.off2on
            budget += (early.early_updates - 1) * min(max(since_gate, 0), early.reference_count)
        return self.counters.steps < math.ceil(rate * budget)

    @property
    def target_steps_per_transition(self) -> float:
        """Learner steps each stored transition asks for: `learner.steps_per_transition`, or one
        (agent.sac.utd critic updates per env step, the UTD the agent is configured for) when it
        is 0 (as fast as the device allows)."""
        return self.lcfg.steps_per_transition or 1.0

    def updates_per_transition(self) -> float:
        """Achieved critic updates per online transition since the warm-up gate (the real UTD)."""
        since_gate = self.online_transitions - self.agent_cfg.online.warmup_steps
        return self.counters.steps * self.agent_cfg.sac.utd / since_gate if since_gate > 0 else float("nan")

    def check_pace(self) -> str:
        """Once per PACE_WINDOW_S after the gate: compare the learner steps run with those the
        arriving transitions need. The first time it falls short, say so once, in words (rates,
        device, GFLOP per step, the UTD reached) and keep the text in `behind`. Returns it."""
        if self.behind or not self.warmup_done or (self.lcfg.max_steps and self.counters.steps >= self.lcfg.max_steps):
            return self.behind
        now = time.monotonic()
        mark = (now, self.online_transitions, self.counters.steps)
        if self._pace_mark is None:
            self._pace_mark = mark
            return ""
        started, transitions, steps = self._pace_mark
        if now - started < PACE_WINDOW_S:
            return ""
        self._pace_mark = mark
        arrived = (mark[1] - transitions) / (now - started)
        ran = (mark[2] - steps) / (now - started)
        needed = arrived * self.target_steps_per_transition
        if arrived <= 0 or ran >= PACE_TOLERANCE * needed:
            return ""
        sac = self.agent_cfg.sac
        device = jax.devices()[0].platform
        cost = self._gflop_per_step()
        self.behind = (
            f"learner: cannot keep up: the actors deliver {arrived:.1f} transitions/s, which at "
            f"{self.target_steps_per_transition:g} learner step(s) per transition (each agent.sac.utd={sac.utd} critic "
            f"updates, batch {sac.batch_size}) needs {needed:.1f} learner steps/s; this {device} device runs "
            f"{ran:.2f}{f' at {cost:.1f} GFLOP per step' if cost else ''}, so the data gets "
            f"{ran / arrived * sac.utd:.2f} critic updates per transition instead of "
            f"{self.target_steps_per_transition * sac.utd:g}. Train on a GPU (learner.device=gpu), or lower "
            "agent.sac.batch_size, the image size or the number of cameras; the actors are not slowed")
        self.report(self.behind)
        return self.behind

    def _gflop_per_step(self) -> float:
        """The compiled learner step's floating-point work from XLA's cost analysis (0 if unknown)."""
        try:
            sac = self.agent_cfg.sac
            batches = sample_batches(
                self.buffer, self.offline, self.rng, sac.batch_size, sac.utd, self.agent_cfg.online.offline_ratio,
                bootstrap_on_truncation=self.agent_cfg.reward.bootstrap_on_truncation, frames=not self.feature_cache)
            step = getattr(self.learner_step, "_step", self.learner_step)
            analysis = step.lower(self.agent, batches).cost_analysis()
            if isinstance(analysis, list | tuple):
                analysis = analysis[0] if analysis else {}
            return float(analysis.get("flops", 0.0)) / 1e9
        except Exception:  # an estimate for a message: never a reason to stop training
            log.debug("no cost analysis of the learner step", exc_info=True)
            return 0.0

    def can_update(self) -> bool:
        return (self._compiled.is_set() and self.warmup_done and self.buffer.num_transitions > 0 and self._step_budget_left()
                and (self.lcfg.max_steps == 0 or self.counters.steps < self.lcfg.max_steps))

    def update(self) -> dict[str, float] | None:
        """One learner step. Returns its metrics, or None when it was skipped because a loss or a
        new parameter was not finite (the agent keeps its previous state). Raises LearnerError
        after `learner.max_consecutive_nonfinite_updates` skipped steps in a row."""
        prefetched, self._prefetched = self._prefetched, None
        batches, draw = prefetched if prefetched is not None else self._sample_batches()
        agent, metrics = self.learner_step(self.agent, batches)  # dispatched; runs while we go on
        if self.lcfg.prefetch and (self.lcfg.max_steps == 0 or self.counters.steps + 1 < self.lcfg.max_steps):
            # The next step's batches, sampled and copied to the device while this step computes.
            self._prefetched = self._sample_batches()
        if self.ensemble:
            metrics = off2on.mean_over_members(metrics)
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        if not bad and not bool(_trainable_state_finite(agent)):
            bad = ["parameters"]  # e.g. a non-finite gradient of an earlier UTD critic update
        if bad:
            self._skip_nonfinite(bad, batches)
            return None
        self.counters.nonfinite_streak = 0
        self.agent = agent
        self.counters.steps += 1
        self._dirty = True
        if draw is not None:
            metrics.update(self.density(agent, draw))  # w_psi step, then the drawn samples' priorities
            if self.counters.steps % self.lcfg.log_every_steps == 0 and self.buffer.num_transitions:
                states = self.balanced.uniform(self.buffer, self.agent_cfg.sac.batch_size, self.rng)
                self._auroc_key, key = jax.random.split(self._auroc_key)
                metrics["off2on/q_auroc"] = float(off2on.q_auroc(agent, states["observations"], states["actions"], key))
        elif self.pretrained is not None and self.counters.steps % self.lcfg.log_every_steps == 0:
            last = jax.tree.map(lambda x: x[-1], batches)
            metrics.update({k: float(v) for k, v in
                            policy_drift(self.agent, self.pretrained.actor.params, last["observations"]).items()})
        return metrics

    def _sample_batches(self) -> tuple[dict[str, Any], off2on.BalancedDraw | None]:
        """One learner step's UTD batches, already where the step reads them (agent/sharding.py),
        and for Off2On the balanced-replay draw they came from (its priorities are set after the step)."""
        sac = self.agent_cfg.sac
        if self.balanced is not None:
            draw = self.balanced.sample(sac.batch_size, sac.utd, self.rng)
            return place_batches(self.learner_step, draw.batches), draw
        batches = sample_batches(
            self.buffer, self.offline, self.rng, sac.batch_size, sac.utd, self.agent_cfg.online.offline_ratio,
            bootstrap_on_truncation=self.agent_cfg.reward.bootstrap_on_truncation, frames=not self.feature_cache)
        return place_batches(self.learner_step, batches), None

    def _skip_nonfinite(self, bad: Sequence[str], batches: Mapping[str, Any]) -> None:
        self._prefetched = None  # may hold the same poisoned episodes: sample again after quarantine
        counters = self.counters
        counters.skipped_nonfinite += 1
        counters.nonfinite_streak += 1
        quarantined = self._quarantine_nonfinite() if _has_nonfinite(batches) else 0
        limit = self.lcfg.max_consecutive_nonfinite_updates
        log.warning("learner step %d skipped: non-finite %s (%d in a row, limit %d; %d skipped in all); the agent "
                    "keeps its previous state%s", counters.steps + 1, ", ".join(bad[:4]), counters.nonfinite_streak,
                    limit, counters.skipped_nonfinite,
                    f"; {quarantined} buffer episode(s) with non-finite values set aside" if quarantined else "")
        if counters.nonfinite_streak >= limit:
            raise LearnerError(self._nonfinite_stop_message(bad))

    def _quarantine_nonfinite(self) -> int:
        """Make buffer episodes holding non-finite values unsampleable; returns how many."""
        found = 0
        for name, buffer in (("online", self.buffer), ("offline", self.offline)):
            if buffer is None:
                continue
            episodes = buffer.nonfinite_episodes()
            if episodes:
                removed = buffer.invalidate_episodes(episodes)
                streams = sorted({self._episode_streams.get(e, "?") for e in episodes}) if name == "online" else []
                log.warning("%s buffer: %d episode(s) (%d transitions) hold non-finite values and are no longer "
                            "sampled%s", name, len(episodes), removed,
                            f" (from stream(s) {', '.join(streams)})" if streams else "")
                found += len(episodes)
        self.counters.quarantined_episodes += found
        if found:
            self._prefetched = None
        return found

    def _nonfinite_stop_message(self, bad: Sequence[str]) -> str:
        findings = [f"stream {stream} sent {'; '.join(book.data.findings())}"
                    for stream, book in sorted(self.books.items()) if book.data.findings()]
        if self.offline is not None and self.offline_data.findings():
            findings.append(f"the --offline-data buffer holds {'; '.join(self.offline_data.findings())}")
        buffer_peaks = _buffer_peaks(self.buffer)
        if not findings:
            recent = f"; the most recent data came from stream {self._last_stream}" if self._last_stream else ""
            findings.append(f"no stored value is non-finite or beyond the usual range (online buffer: {buffer_peaks})"
                            f"{recent}: look at that actor's episodes and its reward source")
        else:
            findings.append(f"online buffer: {buffer_peaks}")
        latest = self.checkpointer.latest_step()
        return (f"learner stopped: {self.counters.nonfinite_streak} learner steps in a row were non-finite "
                f"({', '.join(bad[:4])}) and were skipped; none of them was published or checkpointed (last good "
                f"checkpoint: {latest if latest is not None else 'none'} in {self.checkpointer.directory}). The data "
                f"is the likely cause: {'; '.join(findings)}. Move the offending episodes out of the actor's episode "
                "folder (`franka-rl dataset info DIR` checks them) or fix the actor that sends them, then restart the "
                "learner: it resumes from that checkpoint")

    def compile_update(self) -> None:
        """Compile the learner step on a batch of zeros and discard the result.

        The first call of a jitted step compiles it (tens of seconds with image heads on a CPU);
        doing that during the warm-up, while the server already answers actors, keeps it from
        stalling the storing of transitions when the gate opens."""
        started = time.monotonic()
        self.report(f"learner: compiling the learner step ({self.agent_cfg.sac.utd} critic update(s) + actor "
                    f"update, batch {self.agent_cfg.sac.batch_size}; up to a few minutes on a CPU with images)")
        sac = self.agent_cfg.sac
        lead = (sac.utd, sac.batch_size)
        observations = {}
        for key, (shape, dtype) in self.spec.items():
            if self.feature_cache and key in self.agent.spec.image_keys:
                features = np.asarray(self.feature_fn(np.zeros((1, *shape), dtype)))
                # The dtype the buffer stores (float16), not the backbone's: no second compile later.
                observations[key] = np.zeros((*lead, *features.shape[1:]), self.buffer.feature_dtype)
            else:
                observations[key] = np.zeros((*lead, *shape), dtype)
        batches = {
            "observations": observations, "next_observations": observations,
            "actions": np.zeros((*lead, self.action_dim), np.float32),
            "rewards": np.zeros(lead, np.float32), "masks": np.ones(lead, np.float32),
            "mc_returns": np.zeros(lead, np.float32),
        }
        # Placed as _sample_batches places real batches: a committed array is another compile key.
        agent, _ = self.learner_step(self.agent, place_batches(self.learner_step, batches))
        jax.block_until_ready(_trainable_state_finite(agent))
        if self.density is not None:  # Off2On: the w_psi step and the AUROC compile too (results discarded)
            flat = jax.tree.map(lambda x: x[0], batches)
            jax.block_until_ready(off2on.compile_density_step(self.density, self.agent, flat, batches))
            jax.block_until_ready(off2on.q_auroc(self.agent, flat["observations"], flat["actions"],
                                                 jax.random.PRNGKey(0)))
        self.report(f"learner: compiled in {format_duration(time.monotonic() - started)}")

    def _compile_in_background(self) -> None:
        try:
            self.compile_update()
        except BaseException as exc:  # re-raised by the main loop
            self._compile_error = exc
        finally:
            self._compiled.set()

    def publish(self) -> None:
        arrays = export_acting_params(self.agent)
        if not all_finite(arrays):  # update() never keeps such a state; this guards other paths in
            raise LearnerError(f"the parameters after learner step {self.counters.steps} are not finite; they were "
                               f"not published (last checkpoint: {self.checkpointer.latest_step()}). Check the data "
                               "in the replay buffer (and any --offline-data), then restart the learner")
        self.counters.params_version = self.counters.steps
        self._published_after_warmup = self.warmup_done
        self.server.publish(self.counters.params_version, arrays, warmup=not self.warmup_done)

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_refusal(self) -> str:
        """Why the current state must not be checkpointed ('' when it may be)."""
        if self.counters.nonfinite_streak:
            return "the last learner step was non-finite"
        if not bool(_trainable_state_finite(self.agent)):
            return "the agent's parameters are not finite"
        return ""

    def checkpoint(self) -> int | None:
        """Agent + buffer + bookkeeping, atomically; then tell the actors what is durable.

        Returns the checkpoint's number, or None when the state is poisoned (nothing written).
        Raises CheckpointWriteError when the disk refuses (nothing partial is left behind and the
        previous checkpoint stays the latest)."""
        refusal = self.checkpoint_refusal()
        if refusal:
            log.warning("checkpoint not written: %s; checkpoint %s stays the latest", refusal,
                        self.checkpointer.latest_step())
            return None
        if self.buffer.nonfinite_episodes():
            self._quarantine_nonfinite()  # a snapshot never carries sampleable non-finite data
        index = max([self.counters.checkpoints, *self.checkpointer.all_steps()]) + 1
        buffer_file = f"buffer_{index:06d}.npz"
        buffer_path = self.buffer_dir / buffer_file
        written = self.buffer.slots_written
        # Incremental: only the slots written since the last checkpoint's snapshot; the earlier
        # segments the ring has not overwritten yet stay in the chain this checkpoint records.
        since = self._snapshot_chain[-1]["until"] if self._snapshot_chain else 0
        segment = {"file": buffer_file, "sha256": None, "bytes": 0, "until": written}
        chain = [s for s in self._snapshot_chain if s["until"] > written - self.buffer.capacity] + [segment]
        extra = {
            "format": BOOKKEEPING_FORMAT,
            "buffer_file": buffer_file,
            # The new segment's sha256 is in SEGMENT_RECORD inside the step (covered by its manifest):
            # the segment is written while orbax saves the agent, so it is not known yet here.
            "buffer_segments": chain,
            "segment_record": SEGMENT_RECORD,
            "learner_steps": self.counters.steps,
            "params_version": self.counters.params_version,
            "transitions": sum(b.transitions_committed for b in self.books.values()),
            "streams": {s: b.durable_state() for s, b in self.books.items()},
        }
        # With the feature cache: the features too, so a resume with this backbone skips encoding.
        digest = backbone_digest(self.agent) if self.feature_cache else ""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer-segment") as pool:
            # Nothing changes the buffer meanwhile: this method returns only when both are written.
            writing = pool.submit(self.buffer.save_segment, buffer_path, since, feature_digest=digest)

            def record_segment(step_directory: Path) -> None:
                try:
                    writing.result()
                    segment.update(sha256=self.buffer.last_saved_sha256, bytes=buffer_path.stat().st_size)
                    write_json_atomically(step_directory / SEGMENT_RECORD, dict(segment))
                except OSError as exc:
                    raise CheckpointWriteError(f"checkpoint {index} not written: replay buffer folder "
                                               f"{describe_write_failure(self.buffer_dir, exc)}") from None
            try:
                self.checkpointer.save(index, self.agent, self.agent_cfg, extra, before_manifest=record_segment)
            except BaseException:
                wait([writing])
                buffer_path.unlink(missing_ok=True)  # belongs to no checkpoint
                raise
        self.counters.checkpoints = index
        self._snapshot_chain = chain
        kept = {segment["file"] for segment in chain}
        for step in self.checkpointer.all_steps():
            if step != index:
                try:
                    kept.update(s["file"] for s in snapshot_chain(self.checkpointer.read_meta(step, verify=False)
                                                                  .get("extra", {})))
                except (CheckpointError, OSError, KeyError, TypeError, ValueError):
                    kept.add(f"buffer_{step:06d}.npz")  # unreadable: keep at least its own file
        for old in self.buffer_dir.glob("buffer_*.npz"):
            if old.name not in kept:
                old.unlink(missing_ok=True)
        for stream, book in self.books.items():
            self.server.ack(stream, durable_through=book.committed_through)
        self._last_checkpoint_time = time.monotonic()
        self._last_checkpoint_step = self.counters.steps
        self._dirty = False
        return index

    def try_checkpoint(self) -> int | None:
        """`checkpoint()`, turning a refused write into one warning line and a retry after
        `learner.checkpoint_retry_s` (training goes on; actors keep what is not durable)."""
        try:
            return self.checkpoint()
        except (CheckpointWriteError, OSError) as exc:
            self.counters.checkpoint_failures += 1
            self._next_checkpoint_try = time.monotonic() + self.lcfg.checkpoint_retry_s
            latest = self.checkpointer.latest_step()
            self.report(f"warning: {exc}; training goes on, next try in {self.lcfg.checkpoint_retry_s:g} s "
                        f"(latest good checkpoint: {latest if latest is not None else 'none'})")
            return None

    # ------------------------------------------------------------------ main loop

    def status_text(self) -> str:
        warm = self.agent_cfg.online.warmup_steps
        phase = "training" if self.warmup_done else f"warm-up {min(self.online_transitions, warm)}/{warm}"
        success = self.counters.recent_success
        rate = f"{100 * np.mean(success):.0f}%" if success else "-"
        actors = ",".join(self.server.connected_actors()) or "none"
        return (f"learner | {phase} | step {self.counters.steps} | transitions {self.online_transitions} | "
                f"episodes {sum(b.episodes for b in self.books.values())} | success {rate} | actors {actors} | "
                f"params v{self.counters.params_version}")

    def _log(self, train_metrics: Mapping[str, float]) -> None:
        now = time.monotonic()
        steps_per_s = (self.counters.steps - self._steps_at_last_log) / max(now - self._time_at_last_log, 1e-9)
        self._steps_at_last_log, self._time_at_last_log = self.counters.steps, now
        success, interventions = self.counters.recent_success, self.counters.recent_interventions
        try:
            self._write_metrics(train_metrics, success, interventions, steps_per_s)
        except OSError as exc:  # a full disk must not stop training
            if not self._metrics_failing:
                self.report(f"warning: metrics not written ({describe_write_failure(self.run_dir, exc)}); "
                            "training goes on")
            self._metrics_failing = True
        else:
            self._metrics_failing = False

    def _write_metrics(self, train_metrics: Mapping[str, float], success: deque, interventions: deque,
                       steps_per_s: float) -> None:
        self.metrics.log(self.counters.steps, {**train_metrics,
                                               "skipped_nonfinite_updates": self.counters.skipped_nonfinite},
                         prefix="train")
        online = {
            "transitions": self.online_transitions,
            "episodes": sum(b.episodes for b in self.books.values()),
            "success_rate": float(np.mean(success)) if success else float("nan"),
            "intervention_rate": float(np.mean(interventions)) if interventions else float("nan"),
            "actors_connected": len(self.server.connected_actors()),
            "rejected_messages": self.server.rejected,
            "duplicates_dropped": self.counters.duplicates,
            "chunks_skipped": self.counters.skipped,
            "open_episodes_evicted": self.counters.evicted,
            "streams_refused": self.counters.refused_streams,
            "learner_steps_per_s": steps_per_s,
            "updates_per_transition": self.updates_per_transition(),
            "target_updates_per_transition": self.target_steps_per_transition * self.agent_cfg.sac.utd,
            "buffer_transitions": self.buffer.num_transitions,
            "quarantined_episodes": self.counters.quarantined_episodes,
            "checkpoint_failures": self.counters.checkpoint_failures,
        }
        # One row: online/* and transport/* (rejections by reason, busy deferrals, early duplicates).
        self.metrics.log(self.counters.steps, {**{f"online/{k}": v for k, v in online.items()},
                                               **{f"transport/{k}": v for k, v in self.server.stats().items()}})

    def run(self, status: Any = None) -> LearnerCounters:
        lcfg = self.lcfg
        self.server.start()
        self.report(f"learner listening on {self.server.endpoint} ({self.link_security}; session {self.server.session}); "
                    f"run directory {self.run_dir}")
        self.publish()
        # Compiled on a thread while this loop goes on storing what the actors send: a compile of
        # minutes (images on a CPU) must not leave the actors' chunks unacknowledged meanwhile.
        self._compiled.clear()
        compiler = threading.Thread(target=self._compile_in_background, name="learner-compile", daemon=True)
        compiler.start()
        last_metrics: dict[str, float] = {}
        last_log_step = self.counters.steps
        last_status = 0.0
        try:
            while not self._stop.is_set():
                if self._compile_error is not None:
                    raise self._compile_error
                busy = self.can_update()
                for delivery in self.server.receive(timeout=0.0 if busy else 0.05):
                    self.store(delivery)
                if self.can_update():
                    step_metrics = self.update()
                    if step_metrics is not None:
                        last_metrics = step_metrics
                        if self.counters.steps % lcfg.publish_every_steps == 0:
                            self.publish()
                        if self.counters.steps - last_log_step >= lcfg.log_every_steps:
                            self._log(last_metrics)
                            last_log_step = self.counters.steps
                if self.warmup_done and not self._published_after_warmup:
                    self.publish()  # same parameters, but the actors now label their episodes "policy"
                due = (self.counters.steps - self._last_checkpoint_step >= lcfg.checkpoint_every_steps
                       or time.monotonic() - self._last_checkpoint_time >= lcfg.checkpoint_interval_s)
                if due and self._dirty and time.monotonic() >= self._next_checkpoint_try \
                        and not self.counters.nonfinite_streak:
                    self.try_checkpoint()
                self.check_pace()
                if status is not None and time.monotonic() - last_status >= lcfg.status_interval_s:
                    status.update(self.status_text(), force=True)
                    last_status = time.monotonic()
                if lcfg.max_steps and self.counters.steps >= lcfg.max_steps:
                    break
        finally:
            if compiler.is_alive():
                # A process that exits while XLA compiles on another thread aborts (and takes what
                # follows with it): the compile is finished first.
                self.report("learner: stopping; waiting for the learner step's compile to finish")
                compiler.join()
            try:
                # Never from a poisoned state: after a non-finite step the last good checkpoint stays.
                if self._dirty and not self.counters.nonfinite_streak:
                    self.try_checkpoint()
                self._log(last_metrics)
            finally:
                self.server.close()
                self.metrics.close()
        return self.counters


def snapshot_chain(extra: Mapping[str, Any], step_directory: Path | None = None) -> list[dict[str, Any]]:
    """The replay-buffer files a learner checkpoint's snapshot is made of, oldest first: each
    {"file", "sha256", "until", "bytes"} (sha256 None when unrecorded). With the checkpoint's
    `step_directory`, the newest segment's sha256 is read from the record inside it (a missing
    record raises CheckpointCorruptError). Older checkpoints have one whole file."""
    if "buffer_segments" in extra:
        chain = [{"file": str(s["file"]), "sha256": s.get("sha256"), "until": int(s["until"]),
                  "bytes": int(s.get("bytes", 0))} for s in extra["buffer_segments"]]
        if step_directory is not None and extra.get("segment_record") and chain[-1]["sha256"] is None:
            path = Path(step_directory) / str(extra["segment_record"])
            try:
                record = json.loads(path.read_text())
                if record.get("file") != chain[-1]["file"]:
                    raise ValueError(f"it names {record.get('file')!r}, not {chain[-1]['file']!r}")
                chain[-1].update(sha256=str(record["sha256"]), bytes=int(record.get("bytes", 0)))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise CheckpointCorruptError(f"its buffer segment record {path} is unreadable ({exc})") from None
        return chain
    return [{"file": str(extra["buffer_file"]), "sha256": extra.get("buffer_sha256"), "until": -1,
             "bytes": int(extra.get("buffer_bytes", 0))}]


def _has_nonfinite(tree: Any) -> bool:
    return any(np.asarray(x).dtype.kind == "f" and not np.all(np.isfinite(x)) for x in jax.tree.leaves(tree))


def _buffer_peaks(buffer: ReplayBuffer) -> str:
    """Largest finite magnitudes and non-finite counts among the buffer's sampleable steps."""
    batch = buffer.all_transitions() if buffer.num_transitions else None
    if batch is None:
        return "empty"
    parts = []
    floats = {"action": batch["actions"], "reward": batch["raw_rewards"],
              **{f"obs/{k}": v for k, v in batch["observations"].items() if v.dtype.kind == "f"}}
    for name, value in floats.items():
        value = np.asarray(value, np.float64)
        finite = np.abs(value[np.isfinite(value)])
        nonfinite = int(np.count_nonzero(~np.isfinite(value)))
        parts.append(f"|{name}| <= {finite.max() if finite.size else 0:.3g}"
                     + (f" ({nonfinite} non-finite)" if nonfinite else ""))
    return ", ".join(parts)


__all__ = [
    "DataStats",
    "Learner",
    "LearnerError",
    "StreamBook",
    "snapshot_chain",
]
