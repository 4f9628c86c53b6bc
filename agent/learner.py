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
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np

from agent.checkpoint import AgentCheckpointer
from agent.config import AgentConfig
from agent.core import Agent, agent_encode_frames, uses_feature_cache
from agent.data.replay_buffer import BufferFactory, ReplayBuffer
from agent.metrics import MetricsConfig, MetricsWriter
from agent.param_sync import all_finite, backbone_digest, export_acting_params, export_backbone
from agent.process_config import LearnerConfig, TransportConfig, validate_process_config
from agent.sac import learner_step
from agent.sampling import sample_batches
from agent.transport.server import Delivery, LearnerServer, Watermarks
from agent.wsrl import policy_drift, updates_allowed
from robot_env.errors import UserError
from robot_env.progress import format_duration
from robot_env.progress import progress as progress_bar

log = logging.getLogger("agent.learner")

BOOKKEEPING_FORMAT = "franka_rl.learner"


class LearnerError(UserError, RuntimeError):
    """A learner problem the user must act on (diverged training, unusable data)."""




# ------------------------------------------------------------------------------------ bookkeeping


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
        self.link_security = ("CURVE: encrypted, admits the actors in "
                              f"{transport_cfg.curve_authorized_clients_dir}" if transport_cfg.curve
                              else "no CURVE: unencrypted")
        self.agent_cfg, self.lcfg = agent_cfg, learner_cfg
        self.report = report
        lcfg = learner_cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.buffer_dir = self.run_dir / "replay"
        self.buffer_dir.mkdir(exist_ok=True)
        for leftover in self.buffer_dir.glob(".tmp-*"):  # a buffer save cut short by a crash
            leftover.unlink(missing_ok=True)
        self.spec = {k: (tuple(int(d) for d in shape), np.dtype(dtype)) for k, (shape, dtype) in observation_spec.items()}
        self.action_dim = int(action_dim)
        self.new_buffer = new_buffer
        self.rng = np.random.default_rng(seed)
        self.counters = LearnerCounters()
        self.books: dict[str, StreamBook] = {}
        self.checkpointer = AgentCheckpointer(self.run_dir / "checkpoints", max_to_keep=lcfg.keep_checkpoints)
        self.pretrained = pretrained
        self.agent = agent
        self.feature_cache = uses_feature_cache(self.agent)
        feature_fn = self._make_feature_fn() if self.feature_cache else None
        self.feature_fn = feature_fn
        if self.checkpointer.latest_step() is not None:
            self._resume(feature_fn)
        else:
            self.buffer = new_buffer(self.spec, self.action_dim, lcfg.buffer_capacity, feature_fn=feature_fn)
        self.offline = self._load_offline(offline_dirs, feature_fn) if offline_dirs else None
        if self.offline is None and agent_cfg.online.offline_ratio != 0:
            raise LearnerError(f"agent.online.offline_ratio={agent_cfg.online.offline_ratio} mixes offline data "
                               "into every batch: pass the episode directories with --offline-data DIR ...")

        # Before the server binds its port: a metrics backend that cannot start (metrics.wandb without
        # wandb installed) stops the learner with nothing left open.
        self.metrics = MetricsWriter(self.run_dir, tensorboard=lcfg.tensorboard,
                                     wandb=metrics.wandb if metrics else None, config=run_config,
                                     job_type="learner")
        try:
            self.server = LearnerServer(
                transport_cfg, config_hash=config_hash, observation_spec=self.spec, action_dim=self.action_dim,
                backbone_digest=backbone_digest(self.agent),
                watermarks={s: Watermarks(b.committed_through, b.committed_through) for s, b in self.books.items()},
                endpoint=endpoint,
            )
        except BaseException:
            self.metrics.close()
            raise
        if self.agent.frozen_backbone:
            self.server.set_backbone(export_backbone(self.agent))
        self._stop = threading.Event()
        self._last_checkpoint_time = time.monotonic()
        self._last_checkpoint_step = self.counters.steps
        self._steps_at_last_log = self.counters.steps
        self._time_at_last_log = time.monotonic()
        self._dirty = False
        self._published_after_warmup = False

    # ------------------------------------------------------------------ construction helpers

    def _make_feature_fn(self) -> Callable[[np.ndarray], np.ndarray]:
        # Reads self.agent at call time: after a resume that is the restored agent.
        return lambda frames: np.asarray(agent_encode_frames(self.agent, frames))

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
                bar.update(1)
        if feature_fn is not None:
            self.report(f"offline data: encoded in {format_duration(time.monotonic() - started)}")
        self.report(f"offline data: {buffer.num_transitions} transitions from {len(episodes)} episodes "
                    f"(offline_ratio {self.agent_cfg.online.offline_ratio})")
        return buffer

    def _resume(self, feature_fn) -> None:
        step = self.checkpointer.latest_step()
        meta = self.checkpointer.read_meta(step)
        extra = meta.get("extra", {})
        if extra.get("format") != BOOKKEEPING_FORMAT:
            raise LearnerError(f"{self.checkpointer.directory} holds checkpoints of another command; give the "
                               "learner its own learner.run_dir")
        restored, _ = self.checkpointer.restore(self.agent, step, self.agent_cfg)
        self.agent = restored
        buffer_path = self.buffer_dir / extra["buffer_file"]
        if feature_fn is not None:
            self.report(f"resuming: loading the replay buffer of checkpoint {step} and encoding its frames with "
                        "the frozen backbone (the first batch also compiles the encoder)")
        try:
            with progress_bar(desc="encoding saved frames", unit="frame", disable=feature_fn is None) as bar:
                self.buffer = self.new_buffer.load(buffer_path, feature_fn=feature_fn, on_progress=bar.update)
        except (ValueError, FileNotFoundError) as exc:
            raise LearnerError(f"cannot resume: the replay buffer of checkpoint {step} is unreadable ({exc}); "
                               f"move {self.run_dir} aside to start afresh") from None
        self.books = {stream: StreamBook.from_durable(state) for stream, state in extra["streams"].items()}
        self.counters.steps = int(extra["learner_steps"])
        self.counters.params_version = int(extra["params_version"])
        self.counters.checkpoints = step
        self.report(f"resumed from checkpoint {step}: {self.counters.steps} learner steps, "
                    f"{self.online_transitions} transitions from {len(self.books)} actor stream(s)")

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
        """Store one delivery exactly once; returns whether it was stored."""
        stream = delivery.stream
        book = self.books.setdefault(stream, StreamBook(actor=delivery.actor))
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
        for k in range(len(chunk)):
            observation = {key: value[k] for key, value in chunk.next_observations.items()}
            self.buffer.insert(previous, chunk.actions[k], float(chunk.rewards[k]), observation,
                               bool(chunk.terminated[k]), bool(chunk.truncated[k]), bool(chunk.intervened[k]),
                               stream=stream)
            previous = observation
        book.stored_through = delivery.sequence
        book.transitions_stored += len(chunk)
        book.episode, book.next_step = chunk.episode, chunk.step + len(chunk)
        book.last_observation = {k: np.array(v) for k, v in previous.items()}
        if chunk.ends_episode:
            book.committed_through = delivery.sequence
            book.transitions_committed = book.transitions_stored
            book.episodes += 1
            book.episode, book.next_step, book.last_observation = -1, 0, None
            self.counters.recent_success.append(bool(chunk.success.any()))
        self.counters.recent_interventions.extend(bool(x) for x in chunk.intervened)
        self._dirty = True
        self.server.ack(stream, stored_through=book.stored_through)
        return True

    # ------------------------------------------------------------------ training

    def _step_budget_left(self) -> bool:
        rate = self.lcfg.steps_per_transition
        if rate <= 0:
            return True
        since_gate = self.online_transitions - self.agent_cfg.online.warmup_steps
        return self.counters.steps < math.ceil(rate * max(since_gate, 1))

    def can_update(self) -> bool:
        return (self.warmup_done and self.buffer.num_transitions > 0 and self._step_budget_left()
                and (self.lcfg.max_steps == 0 or self.counters.steps < self.lcfg.max_steps))

    def update(self) -> dict[str, float]:
        sac = self.agent_cfg.sac
        batches = sample_batches(
            self.buffer, self.offline, self.rng, sac.batch_size, sac.utd, self.agent_cfg.online.offline_ratio,
            bootstrap_on_truncation=self.agent_cfg.reward.bootstrap_on_truncation, frames=not self.feature_cache)
        agent, metrics = learner_step(self.agent, batches)
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        if bad:
            raise LearnerError(
                f"learner step {self.counters.steps + 1} produced non-finite {', '.join(bad[:4])}; nothing from it "
                f"was published or checkpointed (last checkpoint: {self.checkpointer.latest_step()}). Lower "
                "agent.sac.*_lr or check the rewards, then restart the learner: it resumes from that checkpoint")
        self.agent = agent
        self.counters.steps += 1
        self._dirty = True
        if self.pretrained is not None and self.counters.steps % self.lcfg.log_every_steps == 0:
            last = jax.tree.map(lambda x: x[-1], batches)
            metrics.update({k: float(v) for k, v in
                            policy_drift(self.agent, self.pretrained.actor.params, last["observations"]).items()})
        return metrics

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
                observations[key] = np.zeros((*lead, *features.shape[1:]), features.dtype)
            else:
                observations[key] = np.zeros((*lead, *shape), dtype)
        batches = {
            "observations": observations, "next_observations": observations,
            "actions": np.zeros((*lead, self.action_dim), np.float32),
            "rewards": np.zeros(lead, np.float32), "masks": np.ones(lead, np.float32),
            "mc_returns": np.zeros(lead, np.float32),
        }
        jax.block_until_ready(learner_step(self.agent, batches))
        self.report(f"learner: compiled in {format_duration(time.monotonic() - started)}")

    def publish(self) -> None:
        arrays = export_acting_params(self.agent)
        if not all_finite(arrays):
            raise LearnerError(f"the parameters after learner step {self.counters.steps} are not finite; they were "
                               f"not published (last checkpoint: {self.checkpointer.latest_step()}). Lower "
                               "agent.sac.*_lr or check the rewards, then restart the learner")
        self.counters.params_version = self.counters.steps
        self._published_after_warmup = self.warmup_done
        self.server.publish(self.counters.params_version, arrays, warmup=not self.warmup_done)

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self) -> int:
        """Agent + buffer + bookkeeping, atomically; then tell the actors what is durable."""
        index = self.counters.checkpoints + 1
        buffer_file = f"buffer_{index:06d}.npz"
        self.buffer.save(self.buffer_dir / buffer_file)
        extra = {
            "format": BOOKKEEPING_FORMAT,
            "buffer_file": buffer_file,
            "learner_steps": self.counters.steps,
            "params_version": self.counters.params_version,
            "transitions": sum(b.transitions_committed for b in self.books.values()),
            "streams": {s: b.durable_state() for s, b in self.books.items()},
        }
        self.checkpointer.save(index, self.agent, self.agent_cfg, extra)
        self.counters.checkpoints = index
        kept = {f"buffer_{s:06d}.npz" for s in self.checkpointer.all_steps()}
        for old in self.buffer_dir.glob("buffer_*.npz"):
            if old.name not in kept:
                old.unlink(missing_ok=True)
        for stream, book in self.books.items():
            self.server.ack(stream, durable_through=book.committed_through)
        self._last_checkpoint_time = time.monotonic()
        self._last_checkpoint_step = self.counters.steps
        self._dirty = False
        return index

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
        if train_metrics:
            self.metrics.log(self.counters.steps, train_metrics, prefix="train")
        success, interventions = self.counters.recent_success, self.counters.recent_interventions
        self.metrics.log(self.counters.steps, {
            "transitions": self.online_transitions,
            "episodes": sum(b.episodes for b in self.books.values()),
            "success_rate": float(np.mean(success)) if success else float("nan"),
            "intervention_rate": float(np.mean(interventions)) if interventions else float("nan"),
            "actors_connected": len(self.server.connected_actors()),
            "rejected_messages": self.server.rejected,
            "duplicates_dropped": self.counters.duplicates,
            "chunks_skipped": self.counters.skipped,
            "learner_steps_per_s": steps_per_s,
            "buffer_transitions": self.buffer.num_transitions,
        }, prefix="online")

    def run(self, status: Any = None) -> LearnerCounters:
        lcfg = self.lcfg
        self.server.start()
        self.report(f"learner listening on {self.server.endpoint} ({self.link_security}; session {self.server.session}); "
                    f"run directory {self.run_dir}")
        self.publish()
        if not self.warmup_done:
            self.compile_update()
        else:
            self.report("learner: warm-up already done; the first update compiles the learner step "
                        "(up to a few minutes on a CPU with images)")
        last_metrics: dict[str, float] = {}
        last_log_step = self.counters.steps
        last_status = 0.0
        try:
            while not self._stop.is_set():
                busy = self.can_update()
                for delivery in self.server.receive(timeout=0.0 if busy else 0.05):
                    self.store(delivery)
                if self.can_update():
                    last_metrics = self.update()
                    if self.counters.steps % lcfg.publish_every_steps == 0:
                        self.publish()
                    if self.counters.steps - last_log_step >= lcfg.log_every_steps:
                        self._log(last_metrics)
                        last_log_step = self.counters.steps
                if self.warmup_done and not self._published_after_warmup:
                    self.publish()  # same parameters, but the actors now label their episodes "policy"
                due = (self.counters.steps - self._last_checkpoint_step >= lcfg.checkpoint_every_steps
                       or time.monotonic() - self._last_checkpoint_time >= lcfg.checkpoint_interval_s)
                if due and self._dirty:
                    self.checkpoint()
                if status is not None and time.monotonic() - last_status >= lcfg.status_interval_s:
                    status.update(self.status_text(), force=True)
                    last_status = time.monotonic()
                if lcfg.max_steps and self.counters.steps >= lcfg.max_steps:
                    break
        finally:
            try:
                if self._dirty:
                    self.checkpoint()
                self._log(last_metrics)
            finally:
                self.server.close()
                self.metrics.close()
        return self.counters


__all__ = [
    "Learner",
    "LearnerError",
    "StreamBook",
]
