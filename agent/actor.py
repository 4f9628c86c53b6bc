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
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import jax
import numpy as np

from agent.core import Agent, act, create_agent
from agent.data.episodes import EpisodeRecorder, EpisodeStore, make_metadata
from agent.param_sync import (
    acting_params_from_arrays,
    apply_backbone,
    backbone_digest,
    with_acting_params,
)
from agent.process_config import validate_process_config
from agent.transport.client import ActorClient
from agent.transport.protocol import TransitionChunk
from agent.transport.security import TransportError

log = logging.getLogger("agent.actor")


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


def build_env(cfg: Any) -> gym.Env:
    """The env the actor drives: the twin or the arm, with interventions and the reward classifier
    when configured (innermost first: env -> classifier reward -> interventions)."""
    if cfg.mode == "sim":
        import sim

        env = sim.make_env(cfg)
    else:
        from robot_env.real import make_real_env

        env = make_real_env(cfg)
    try:
        if cfg.classifier.enabled:
            from reward_classifier import wrap_with_classifier

            model_dir = cfg.classifier.model_dir or str(Path(cfg.output_dir) / "classifier")
            env = wrap_with_classifier(env, cfg.classifier, model_dir)
        if cfg.actor.intervention:
            from teleop.devices import make_device
            from teleop.intervention import InterventionWrapper

            device = make_device(cfg.teleop, action_frame=cfg.env.action_frame, env=env, seed=cfg.seed)
            env = InterventionWrapper(env, device, hold_over_steps=cfg.teleop.hold_over_steps)
    except BaseException:
        env.close()
        raise
    return env


class Actor:
    """One actor process: env, agent, episode store, transport."""

    def __init__(self, cfg: Any, env: gym.Env, *, endpoint: str | None = None,
                 report: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic):
        from franka_rl.config import config_hash

        validate_process_config(cfg.transport, actor=cfg.actor)
        self.cfg = cfg
        self.env = env
        self.report = report
        self.clock = clock
        acfg = cfg.actor
        self.config_hash = config_hash(cfg)
        directory = acfg.episodes_dir or Path(cfg.output_dir) / "actors" / acfg.actor_id / "episodes"
        self.store = EpisodeStore(directory, create=True)
        spec = observation_spec_of(env)
        example = {k: np.zeros(shape, dtype) for k, (shape, dtype) in spec.items()}
        action_dim = int(np.prod(env.action_space.shape))
        self.agent: Agent = create_agent(cfg.agent, example, action_dim, seed=cfg.seed)
        self._template = self.agent
        self.client = ActorClient(
            cfg.transport, actor_id=acfg.actor_id, config_hash=self.config_hash, observation_spec=spec,
            action_dim=action_dim, backbone_digest=backbone_digest(self.agent),
            decode_params=lambda version, arrays: acting_params_from_arrays(self._template, arrays),
            on_backbone=self._take_backbone, endpoint=endpoint)
        self.params_version = -1
        self.stats = ActorStats(successes=deque(maxlen=acfg.stats_window),
                                interventions=deque(maxlen=acfg.stats_window))
        self._stop = threading.Event()
        # Actors of one run share cfg.seed; their ids keep their resets and action noise apart.
        self._actor_seed = zlib.crc32(acfg.actor_id.encode())
        self._key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), self._actor_seed)
        self._first_episode = len(self.store)

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

    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    def _check_refused(self) -> None:
        if self.client.state == "refused":
            raise TransportError(f"the learner at {self.client.endpoint} refused actor '{self.cfg.actor.actor_id}': "
                                 f"{self.client.refusal}")

    def _wait(self, condition: Callable[[], bool], why: str, status: Any, timeout: float = 0.0) -> bool:
        """Wait (the arm holds its pose) until `condition`, a stop, or `timeout` s (0: none)."""
        start = self.clock()
        while not condition():
            self._check_refused()
            if self._stop.is_set() or (timeout and self.clock() - start > timeout):
                return False
            if status is not None:
                status.update(f"actor {self.cfg.actor.actor_id} | waiting: {why} | {self._link_text()}")
            time.sleep(0.02)
        return True

    # ------------------------------------------------------------------ status

    def _link_text(self) -> str:
        c = self.client
        return f"learner {c.state} (params v{self.params_version}, unacked {c.unacked_transitions})"

    def status_text(self, episode_steps: int, hz: float) -> str:
        s = self.stats
        return (f"actor {self.cfg.actor.actor_id} | episode {s.episodes + 1} step {episode_steps} | "
                f"success {s.moving(s.successes)} | interventions {s.moving(s.interventions)} | {hz:5.1f} Hz | "
                f"{self._link_text()}")

    # ------------------------------------------------------------------ the loop

    def _must_wait(self) -> str:
        acfg = self.cfg.actor
        if self.client.unacked_transitions >= acfg.max_unacked_transitions:
            return f"{self.client.unacked_transitions} steps not yet in a learner checkpoint"
        if acfg.on_learner_loss == "finish_episode" and self.client.state != "up":
            return "learner unreachable (actor.on_learner_loss=finish_episode)"
        return ""

    def run(self, status: Any = None) -> ActorStats:
        from teleop.recording import RateMeter

        acfg = self.cfg.actor
        self.client.start()
        try:
            self.report(f"actor '{acfg.actor_id}' connecting to {self.client.endpoint}; episodes go to "
                        f"{self.store.directory}")
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
            rate = RateMeter(self.clock)
            while not self._stop.is_set() and (acfg.max_episodes == 0 or self.stats.episodes < acfg.max_episodes):
                if not self._wait(lambda: not self._must_wait(), self._must_wait() or "-", status):
                    break
                self._check_refused()
                self._episode(rate, status)
        finally:
            stored = self.client.flush(acfg.flush_timeout_s)
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
        acfg = self.cfg.actor
        index = self._first_episode + self.stats.episodes
        source = "warm-up" if self.client.learner_warmup else "policy"
        seed = int(np.random.SeedSequence([self.cfg.seed, self._actor_seed, index]).generate_state(1)[0])
        observation, _ = self.env.reset(seed=seed)
        recorder = EpisodeRecorder(self.store)
        recorder.start(observation, make_metadata(
            task=self.cfg.task.name, source=source, config_hash=self.config_hash, seed=seed,
            mode=self.cfg.mode, actor_id=acfg.actor_id, params_version=self.params_version,
            control_hz=self.cfg.env.control_hz, cameras=list(self.cfg.env.cameras)))
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
            recorder.add(executed, reward, observation, bool(terminated), truncated, intervened, {"success": success})
            pending.add(executed, float(reward), observation, bool(terminated), truncated, intervened, success)
            if done or len(pending.rows) >= acfg.send_every_steps:
                self.client.send(pending.take())
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


def install_stop_handlers(actor: Actor) -> None:
    """SIGTERM and the first Ctrl-C end the episode at the current step (truncated) and stop; a
    second Ctrl-C aborts at once."""

    def on_signal(signum, frame):
        actor.request_stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


__all__ = ["Actor", "ActorStats", "build_env", "install_stop_handlers", "observation_spec_of"]
