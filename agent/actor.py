"""The actor process: act at the control rate, record every episode, stream transitions.

The control loop (`run_actor`) never waits on the network. It acts with the newest parameters
the transport thread has converted (swapped between steps: a pytree swap, no copies), writes each
finished episode to its own episode store, and queues each step for the learner. The transport
keeps every step until the learner has it in a checkpoint and resends after a learner restart.

When the learner is unreachable the actor either goes on acting with its last parameters
(`actor.on_learner_loss=continue`: still recorded, sent later) or finishes the episode and waits,
the arm holding its last pose (`finish_episode`). It also waits at an episode boundary when more
than `actor.max_unacked_transitions` steps are not yet durable, so memory stays bounded and
nothing is dropped. Stopping (Ctrl-C, SIGTERM, `max_episodes`) ends the episode in progress as
truncated at the current step, writes it, and gives the learner `flush_timeout_s` to store it.

Restarts (agent/recovery.py): each episode file records its stream, the sequence number of its
first chunk and the chunk lengths, and is written before its last chunk is sent. A restarted actor
(after a SIGKILL, a power cut) re-sends, beside its new stream, what its earlier incarnations
recorded but the learner never made durable.

Disk errors: the episode folder is checked for writing before the arm moves; an episode that
cannot be written (full disk, folder gone read-only) stops the actor after that episode's last
step with one line (`EpisodeWriteError`): no further step is taken, so the arm holds its pose,
the steps already sent stay with the learner, and every episode written before is untouched.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import jax
import numpy as np

from agent.core import Agent, act
from agent.data.episodes import EpisodeRecorder, EpisodeStore, make_metadata
from agent.param_sync import (
    acting_params_from_arrays,
    apply_backbone,
    backbone_digest,
    with_acting_params,
)
from agent.process_config import ActorConfig, TransportConfig, validate_process_config
from agent.recovery import DurableLog, earlier_streams, recover_all
from agent.transport.client import ActorClient
from agent.transport.protocol import TransitionChunk
from agent.transport.security import TransportError
from robot_env.errors import UserError

log = logging.getLogger("agent.actor")

# An actor that cannot reach its learner says so after this long, then this often (s).
UNREACHABLE_FIRST_REPORT_S = 5.0
UNREACHABLE_REPORT_EVERY_S = 30.0


class EpisodeWriteError(UserError, OSError):
    """The actor's episode folder refused a write (full disk, unwritable folder)."""


def _free_bytes(path: Path) -> str:
    import shutil

    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return str(shutil.disk_usage(path).free)
    except OSError:
        return "unknown"


def _disk_reason(exc: OSError, directory: Path) -> str:
    return f"{directory}: {exc.strerror or exc} ({_free_bytes(directory)} bytes free)"


def observation_spec_of(env: gym.Env) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    return {k: (tuple(space.shape), np.dtype(space.dtype)) for k, space in env.observation_space.spaces.items()}


@dataclass
class ActorStats:
    episodes: int = 0
    steps: int = 0
    successes: deque = field(default_factory=deque)
    interventions: deque = field(default_factory=deque)
    period_overruns: list = field(default_factory=list)

    def moving(self, values: deque) -> str:
        return f"{100 * np.mean(values):.0f}%" if values else "-"


class _StepBuffer:
    """Steps of the current episode not yet handed to the transport."""

    def __init__(self, episode: int, first_observation: dict[str, np.ndarray], source: str):
        self.episode, self.source = episode, source
        self.first_observation: dict[str, np.ndarray] | None = first_observation
        self.next_step = 0
        self.rows: list[tuple] = []

    def add(self, action, reward, observation, terminated, truncated, intervened, success) -> None:
        self.rows.append((action, reward, observation, terminated, truncated, intervened, success))

    def take(self) -> TransitionChunk:
        rows, self.rows = self.rows, []
        keys = rows[0][2].keys()
        chunk = TransitionChunk(
            episode=self.episode, step=self.next_step,
            actions=np.stack([np.asarray(r[0], np.float32) for r in rows]),
            rewards=np.array([r[1] for r in rows], np.float32),
            terminated=np.array([r[3] for r in rows], bool), truncated=np.array([r[4] for r in rows], bool),
            intervened=np.array([r[5] for r in rows], bool), success=np.array([r[6] for r in rows], bool),
            next_observations={k: np.stack([r[2][k] for r in rows]) for k in keys},
            first_observation=self.first_observation if self.next_step == 0 else None, source=self.source)
        self.next_step += len(rows)
        self.first_observation = None
        return chunk


class Actor:
    """One actor process: env, agent, episode store, transport."""

    def __init__(self, env: gym.Env, agent: Agent, actor_cfg: ActorConfig, transport_cfg: TransportConfig, *,
                 config_hash: str, episodes_dir: str | Path, seed: int = 0,
                 episode_metadata: Mapping[str, Any] | None = None, endpoint: str | None = None,
                 report: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic):
        """`agent`: a template of the learner's agent (same config); its acting parameters are
        replaced by the learner's. `episode_metadata` (task, mode, control rate, cameras) goes into
        every episode file with the source, seed and parameter version."""
        validate_process_config(transport_cfg, actor=actor_cfg)
        self.acfg, self.transport_cfg = actor_cfg, transport_cfg
        self.env = env
        self.report = report
        self.clock = clock
        self.seed = int(seed)
        self.config_hash = config_hash
        self.episode_metadata = dict(episode_metadata or {})
        self.store = self._writable_store(Path(episodes_dir))
        spec = observation_spec_of(env)
        self.agent: Agent = agent
        self._template = self.agent
        action_dim = int(np.prod(env.action_space.shape))
        self.client = ActorClient(
            transport_cfg, actor_id=actor_cfg.actor_id, config_hash=self.config_hash, observation_spec=spec,
            action_dim=action_dim, backbone_digest=backbone_digest(self.agent),
            decode_params=lambda version, arrays: acting_params_from_arrays(self._template, arrays),
            on_backbone=self._take_backbone, endpoint=endpoint)
        self.params_version = -1
        self.stats = ActorStats(successes=deque(maxlen=actor_cfg.stats_window),
                                interventions=deque(maxlen=actor_cfg.stats_window))
        self._stop = threading.Event()
        # Actors of one run share a seed; their ids keep their resets and action noise apart.
        self._actor_seed = zlib.crc32(actor_cfg.actor_id.encode())
        self._key = jax.random.fold_in(jax.random.PRNGKey(self.seed), self._actor_seed)
        self._first_episode = len(self.store)
        self._spec, self._action_dim, self._endpoint = spec, action_dim, endpoint
        self.durable_log = DurableLog(self.store.directory)
        self._recovery: threading.Thread | None = None
        self.recovered_streams = 0

    # ------------------------------------------------------------------ earlier incarnations

    def _recovery_client(self, incarnation: str) -> ActorClient:
        return ActorClient(
            self.transport_cfg, actor_id=self.acfg.actor_id, config_hash=self.config_hash,
            observation_spec=self._spec, action_dim=self._action_dim, backbone_digest=backbone_digest(self.agent),
            endpoint=self._endpoint, incarnation=incarnation, recovery=True)

    def _recover(self) -> None:
        try:
            streams = earlier_streams(self.store, self.acfg.actor_id, self.client.incarnation, self.durable_log)
            if streams:
                self.report(f"actor '{self.acfg.actor_id}': {len(streams)} earlier incarnation(s) of this actor "
                            f"left episodes in {self.store.directory} the learner may lack; re-sending beside "
                            "the new ones")
            self.recovered_streams = recover_all(
                streams, make_client=self._recovery_client, durable=self.durable_log,
                stopping=self._stop.is_set, report=lambda text: self.report(f"actor '{self.acfg.actor_id}': {text}"))
        except Exception:  # the live stream goes on; the episodes stay on disk
            log.exception("re-sending earlier incarnations' episodes failed")

    # ------------------------------------------------------------------ disk

    def _writable_store(self, directory: Path) -> EpisodeStore:
        """The episode store, after proving the folder takes a write (before the arm moves)."""
        probe = directory / f".tmp-write-check-{os.getpid()}"
        try:
            store = EpisodeStore(directory, create=True)
            with open(probe, "wb") as handle:
                handle.write(b"0" * 4096)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise EpisodeWriteError(f"actor '{self.acfg.actor_id}' cannot write episodes to {_disk_reason(exc, directory)}"
                                    "; free space or set actor.episodes_dir to a writable folder") from None
        finally:
            try:
                probe.unlink(missing_ok=True)
            except OSError:
                pass
        return store

    # ------------------------------------------------------------------ parameters

    def _take_backbone(self, arrays: dict[str, np.ndarray]) -> None:
        self._template = apply_backbone(self._template, arrays)

    def _swap_params(self) -> bool:
        update = self.client.latest_params()
        if update is None:
            return False
        version, tree = update
        self.agent = with_acting_params(self._template, tree)
        self.params_version = version
        return True

    def warm_up(self) -> float:
        """Compile the policy path the control loop uses (stochastic actions for one observation of
        the env's spec) and return the seconds it took. Run before the first control step: inside
        it, the first call would stall the arm's loop for the whole compile (seconds with cameras).
        Parameter swaps keep shapes and dtypes, so they reuse this compilation."""
        observation = {k: np.zeros(shape, dtype) for k, (shape, dtype) in observation_spec_of(self.env).items()}
        started = time.perf_counter()
        jax.block_until_ready(act(self.agent, observation, jax.random.fold_in(self._key, 0)))
        return time.perf_counter() - started

    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    def _check_refused(self) -> None:
        self.client.check_alive()  # a dead transport thread stops the actor (between episodes), loudly
        if self.client.state == "refused":
            raise TransportError(f"the learner at {self.client.endpoint} refused actor '{self.acfg.actor_id}': "
                                 f"{self.client.refusal}")

    def _wait(self, condition: Callable[[], bool], why: str, status: Any, timeout: float = 0.0) -> bool:
        """Wait (the arm holds its pose: no step is taken) until `condition`, a stop, or `timeout` s
        (0: none). While the learner does not answer, say so in words, soon and then periodically."""
        start = self.clock()
        next_report = start + UNREACHABLE_FIRST_REPORT_S
        while not condition():
            self._check_refused()
            now = self.clock()
            if self._stop.is_set() or (timeout and now - start > timeout):
                return False
            if self.client.state != "up" and now >= next_report:
                self.report(self.unreachable_text(now - start))
                next_report = now + UNREACHABLE_REPORT_EVERY_S
            if status is not None:
                status.update(f"actor {self.acfg.actor_id} | waiting: {why} | {self._link_text()}")
            time.sleep(0.02)
        return True

    def unreachable_text(self, waited_s: float) -> str:
        endpoint = self.client.endpoint
        curve = ("both sides use certificates from one `franka-rl transport-keys` run (this actor's "
                 "transport.curve_client_secret_file and the learner's public key; the learner admits this "
                 "actor's public key)" if self.transport_cfg.curve else
                 "transport.curve is the same on both sides (off here)")
        return (f"actor '{self.acfg.actor_id}': no answer from the learner at {endpoint} for {waited_s:.0f} s; "
                f"the arm holds its pose meanwhile. Check: `franka-rl learner` is running and says it listens on "
                f"port {self.transport_cfg.port}; on the learner host transport.bind_host is an address this host "
                f"can reach (its LAN address or '*', not 127.0.0.1); here transport.host/port name that host; a "
                f"firewall lets TCP {self.transport_cfg.port} through; {curve}")

    # ------------------------------------------------------------------ status

    def _link_text(self) -> str:
        c = self.client
        return f"learner {c.state} (params v{self.params_version}, unacked {c.unacked_transitions})"

    def status_text(self, episode_steps: int, hz: float) -> str:
        s = self.stats
        return (f"actor {self.acfg.actor_id} | episode {s.episodes + 1} step {episode_steps} | "
                f"success {s.moving(s.successes)} | interventions {s.moving(s.interventions)} | {hz:5.1f} Hz | "
                f"{self._link_text()}")

    # ------------------------------------------------------------------ the loop

    def _must_wait(self) -> str:
        acfg = self.acfg
        if self.client.unacked_transitions >= acfg.max_unacked_transitions:
            return f"{self.client.unacked_transitions} steps not yet in a learner checkpoint"
        if acfg.on_learner_loss == "finish_episode" and self.client.state != "up":
            return "learner unreachable (actor.on_learner_loss=finish_episode)"
        return ""

    def run(self, status: Any = None) -> ActorStats:
        from teleop.recording import RateMeter

        acfg = self.acfg
        self.client.start()
        try:
            self.report(f"actor '{acfg.actor_id}' connecting to {self.client.endpoint}; episodes go to "
                        f"{self.store.directory}")
            # While the link comes up: the first control step must not wait for a compile.
            self.report(f"actor '{acfg.actor_id}': policy compiled in {self.warm_up():.1f} s, before the first "
                        "control step")
            if not self._wait(lambda: self.client.params_version >= 0, "first parameters from the learner", status,
                              acfg.first_params_timeout_s):
                if self._stop.is_set():
                    return self.stats
                raise TransportError(f"no parameters from the learner at {self.client.endpoint} within "
                                     f"{acfg.first_params_timeout_s:g} s: start `franka-rl learner` first, or check "
                                     "transport.host/port (and the CURVE keys if transport.curve is on)")
            if not self.client.wait_for_backbone(timeout=30.0):
                raise TransportError("the learner did not send its frozen image backbone within 30 s; set "
                                     "agent.encoder.pretrained_path to the same weights on both sides")
            self._swap_params()
            self._recovery = threading.Thread(target=self._recover, name="actor-recovery", daemon=True)
            self._recovery.start()
            rate = RateMeter(self.clock)
            while not self._stop.is_set() and (acfg.max_episodes == 0 or self.stats.episodes < acfg.max_episodes):
                if not self._wait(lambda: not self._must_wait(), self._must_wait() or "-", status):
                    break
                self._check_refused()
                self._episode(rate, status)
        finally:
            flush_started = time.monotonic()
            stored = self.client.flush(acfg.flush_timeout_s)
            if self.client.durable_through:
                self.durable_log.record(self.client.incarnation, self.client.durable_through)
            if self._recovery is not None:
                self._recovery.join(max(0.0, acfg.flush_timeout_s - (time.monotonic() - flush_started)))
                if self._recovery.is_alive():
                    self.report(f"actor '{acfg.actor_id}': re-sending earlier incarnations' episodes did not finish "
                                f"within actor.flush_timeout_s={acfg.flush_timeout_s:g}; they stay in "
                                f"{self.store.directory} and are re-sent at the next start")
            if not stored:
                self.report(f"actor '{acfg.actor_id}': the learner did not confirm the last "
                            f"{self.client.last_sequence - self.client.stored_through} message(s) within "
                            f"actor.flush_timeout_s={acfg.flush_timeout_s:g}; every episode is in "
                            f"{self.store.directory} (a learner can read it with --offline-data)")
            self.client.close()
            if status is not None:
                status.close()
        return self.stats

    def _episode(self, rate: Any, status: Any) -> None:
        acfg = self.acfg
        index = self._first_episode + self.stats.episodes
        source = "warm-up" if self.client.learner_warmup else "policy"
        seed = int(np.random.SeedSequence([self.seed, self._actor_seed, index]).generate_state(1)[0])
        observation, _ = self.env.reset(seed=seed)
        recorder = EpisodeRecorder(self.store)
        # Enough to rebuild the chunks this episode is sent as (agent/recovery.py).
        recorder.start(observation, make_metadata(
            **self.episode_metadata, source=source, config_hash=self.config_hash, seed=seed,
            actor_id=acfg.actor_id, params_version=self.params_version,
            stream=f"{acfg.actor_id}/{self.client.incarnation}", first_sequence=self.client.last_sequence + 1,
            episode_index=index))
        chunk_steps: list[int] = []
        pending = _StepBuffer(index, {k: np.asarray(v) for k, v in observation.items()}, source)
        interventions = 0
        done = False
        while not done:
            self._swap_params()
            self._key, key = jax.random.split(self._key)
            action = act(self.agent, observation, key)
            observation, reward, terminated, truncated, info = self.env.step(action)
            rate.tick()
            truncated = bool(truncated) or self._stop.is_set()
            done = bool(terminated) or truncated
            executed = info.get("executed_action", action)
            intervened = bool(info.get("intervened", False))
            success = bool(info.get("success", False))
            interventions += intervened
            self.stats.period_overruns.append(float(info.get("period_overrun_s", 0.0)))
            pending.add(executed, float(reward), observation, bool(terminated), truncated, intervened, success)
            chunk = None
            if done or len(pending.rows) >= acfg.send_every_steps:
                chunk = pending.take()
                chunk_steps.append(len(chunk))
                if done:
                    recorder.update_metadata(chunk_steps=chunk_steps)
            write_error = None
            try:  # the episode file goes first: a restarted actor re-sends from it (agent/recovery.py)
                recorder.add(executed, reward, observation, bool(terminated), truncated, intervened,
                             {"success": success})
            except OSError as exc:
                write_error = exc
            if chunk is not None:
                self.client.send(chunk)  # also when the write failed: a full disk loses no step
            if write_error is not None:
                exc = write_error
                self._stop.set()  # no further step: the arm holds its pose
                written = len(self.store) - self._first_episode
                raise EpisodeWriteError(
                    f"actor '{acfg.actor_id}' stopped: episode {index} could not be written to "
                    f"{_disk_reason(exc, self.store.directory)}; the arm holds its pose, its steps went to the "
                    f"learner, and the {written} episode(s) written before are intact. Free space (or set "
                    "actor.episodes_dir) and start the actor again") from None
            self.stats.steps += 1
            if status is not None:
                status.update(self.status_text(pending.next_step + len(pending.rows), rate.hz))
        episode = recorder.last_episode
        self.stats.episodes += 1
        self.stats.successes.append(bool(episode.success))
        self.stats.interventions.append(interventions / max(len(episode), 1))
        if status is not None:
            status.update(f"actor {acfg.actor_id} | episode {self.stats.episodes} ({source}): "
                          f"{'success' if episode.success else 'failure'} in {len(episode)} steps | "
                          f"success {self.stats.moving(self.stats.successes)} | {self._link_text()}", force=True)


__all__ = ["Actor", "ActorStats", "EpisodeWriteError", "observation_spec_of"]
