"""Configuration of the online processes: the transport between them, the actor and the learner.

The three sections hang under the root config as `transport:`, `actor:` and `learner:` (see
franka_rl/config.py). They say how a run is carried out, not what it learns, so they are left out
of `config_hash`: an actor and a learner with different ports or run directories still agree.
docs/processes.md explains every key.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

from robot_env.errors import ConfigError

ON_LEARNER_LOSS = ("continue", "finish_episode")


@dataclass
class TransportConfig:
    # Where actors reach the learner (its host name or address as the actors see it).
    host: str = "127.0.0.1"
    # The interface the learner binds: "127.0.0.1" keeps it on this machine; "*" accepts actors
    # from other hosts (then switch on CURVE below).
    bind_host: str = "127.0.0.1"
    port: int = 5555
    # Each side sends a heartbeat this often; the link counts as down after the timeout.
    heartbeat_interval_s: float = 1.0
    heartbeat_timeout_s: float = 5.0
    # Larger frames are refused by the learner's socket (the peer is disconnected).
    max_frame_bytes: int = 256 * 1024 * 1024
    # A message's header (prefix + JSON) beyond this size is rejected unread.
    max_header_bytes: int = 64 * 1024
    # Observations whose float (or wide integer) entries exceed this magnitude are rejected:
    # no sensor reads 1e6, but a corrupted or hostile one can (3e38 is finite and poisons updates).
    max_abs_observation: float = 1e6
    # The learner's receive queue (checked chunks waiting for Learner.store). When either bound is
    # reached an actor's chunk is answered "busy" and the actor pauses and resends it: nothing lost.
    max_queued_messages: int = 1024
    max_queued_bytes: int = 512 * 1024 * 1024
    # Episodes in progress held by the learner (one per actor stream). A new one beyond this evicts
    # the least recently active; its actor is asked to resend it from the start.
    max_open_episodes: int = 16
    # An actor whose HELLO goes unanswered knocks again after a jittered, doubling pause up to this.
    reconnect_max_s: float = 8.0
    # CURVE (encryption + client authentication) for links that leave the host. Key files are
    # pyzmq certificates (`franka-rl transport-keys DIR` writes them): the learner needs its
    # secret certificate and a directory of the public certificates of the actors it admits;
    # an actor needs its own secret certificate and the learner's public one.
    curve: bool = False
    curve_server_secret_file: str = ""
    curve_authorized_clients_dir: str = ""
    curve_client_secret_file: str = ""
    curve_server_public_file: str = ""
    # A learner bound to a non-loopback address (bind_host not 127.x / localhost / ::1) refuses to
    # start without CURVE unless this is true (then it warns): anyone on the network could feed it.
    insecure: bool = False


@dataclass
class ActorConfig:
    # Names this actor to the learner; every actor of a run needs its own.
    actor_id: str = "actor-0"
    # Where the actor writes its episodes (empty: <output_dir>/actors/<actor_id>/episodes).
    episodes_dir: str = ""
    # Steps per transitions message (a message never spans two episodes).
    send_every_steps: int = 1
    # Transitions kept in memory until the learner has them in a checkpoint (about 98 kB each with
    # two 128x128 cameras: 20 000 is ~2 GB, 33 minutes at 10 Hz). When full, the actor finishes
    # its episode and waits (holding pose) for the learner to catch up.
    max_unacked_transitions: int = 20_000
    # When the learner is unreachable: "continue" acting with the last parameters (everything
    # is recorded and resent later) or "finish_episode" and wait, holding pose, for the learner.
    on_learner_loss: str = "continue"
    # Wait this long at start-up for the learner's first parameters (0: forever).
    first_params_timeout_s: float = 0.0
    # Wrap the env with teleop interventions from the device named in `teleop.device`.
    intervention: bool = False
    # Stop after this many episodes (0: run until interrupted).
    max_episodes: int = 0
    # On exit, wait this long for the learner to store what is still unacknowledged.
    flush_timeout_s: float = 10.0
    # Moving success / intervention rates over this many episodes.
    stats_window: int = 20
    status_interval_s: float = 0.5


@dataclass
class LearnerConfig:
    # Checkpoints, metrics and the replay buffer snapshot (empty: <output_dir>/learner).
    run_dir: str = ""
    buffer_capacity: int = 200_000
    # 0: learner steps as fast as the device allows (SERL); > 0: at most this many learner steps
    # per stored online transition, whatever the machine's speed. Each learner step is
    # agent.sac.utd critic updates and one actor update.
    steps_per_transition: float = 0.0
    # Send new parameters to the actors every this many learner steps.
    publish_every_steps: int = 10
    # Checkpoint (agent + replay buffer + transport bookkeeping) every this many learner steps
    # or seconds, whichever comes first; actors drop what a checkpoint holds.
    checkpoint_every_steps: int = 1000
    checkpoint_interval_s: float = 120.0
    keep_checkpoints: int = 2
    # A checkpoint the disk refused (full, unwritable) is tried again after this many seconds;
    # training goes on meanwhile and the previous checkpoint stays the latest.
    checkpoint_retry_s: float = 30.0
    # A learner step whose losses or new parameters are not finite is skipped (the agent keeps
    # its previous state); this many in a row stop the learner with a pointer at the data.
    max_consecutive_nonfinite_updates: int = 10
    log_every_steps: int = 100
    # Stop after this many learner steps (0: run until interrupted).
    max_steps: int = 0
    tensorboard: bool = True
    status_interval_s: float = 1.0
    # Where the updates run: "auto" (a GPU if JAX finds one, else the CPU, said at start), "gpu"
    # (refuse to start without one) or "cpu". See agent/devices.py and docs/processes.md.
    device: str = "auto"
    # How many local devices of that backend share every learner step (agent/sharding.py): the
    # batch is split over them, the agent replicated. 0 = all of them; agent.sac.batch_size must
    # be a multiple of the count.
    devices: int = 0
    # Sample (and place on the device) the next learner step's batches while the current step
    # runs, so host sampling and the host->device copy hide behind the compiled step. The
    # prefetched batches are at most one learner step older than the buffer; off = sample after
    # each step finishes.
    prefetch: bool = True


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the learner on this machine (127.x, localhost, ::1)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # "*", a host name, an interface name: reachable from elsewhere
        return False


def insecure_bind_message(bind_host: str) -> str:
    return (f"transport.bind_host={bind_host!r} lets other hosts reach the learner, so transport.curve must be on: "
            "run `franka-rl transport-keys DIR --actors actor-0 ...` and set transport.curve=true, "
            "transport.curve_server_secret_file=DIR/learner.key_secret, "
            "transport.curve_authorized_clients_dir=DIR/authorized_actors "
            "(or accept an unauthenticated link with transport.insecure=true)")


class ProcessConfigError(ConfigError):
    """A transport, actor or learner setting that cannot work; the message names the key."""


def validate_process_config(transport: TransportConfig, actor: ActorConfig | None = None,
                            learner: LearnerConfig | None = None,
                            max_episode_steps: int | None = None) -> None:
    """Raise ProcessConfigError naming the first key that cannot work. With `max_episode_steps`
    (task.max_episode_steps), also check that the learner's buffer holds a whole episode."""
    checks = [
        (bool(transport.host), "transport.host must not be empty"),
        (bool(transport.bind_host), "transport.bind_host must not be empty ('127.0.0.1' or '*')"),
        (1 <= transport.port <= 65535, "transport.port must be in 1..65535"),
        (transport.heartbeat_interval_s > 0, "transport.heartbeat_interval_s must be > 0"),
        (transport.heartbeat_timeout_s > transport.heartbeat_interval_s,
         "transport.heartbeat_timeout_s must exceed transport.heartbeat_interval_s"),
        (transport.max_frame_bytes >= 1024, "transport.max_frame_bytes must be at least 1024"),
        (1024 <= transport.max_header_bytes <= 16 * 1024 * 1024,
         "transport.max_header_bytes must be in 1024..16777216"),
        (math.isfinite(transport.max_abs_observation) and transport.max_abs_observation > 0, "transport.max_abs_observation must be finite and > 0"),
        (transport.max_queued_messages >= 1, "transport.max_queued_messages must be >= 1"),
        (transport.max_queued_bytes >= transport.max_frame_bytes,
         "transport.max_queued_bytes must be >= transport.max_frame_bytes (one largest message must fit)"),
        (transport.max_open_episodes >= 1, "transport.max_open_episodes must be >= 1"),
        (transport.reconnect_max_s >= transport.heartbeat_interval_s,
         "transport.reconnect_max_s must be >= transport.heartbeat_interval_s"),
    ]
    if actor is not None:
        checks += [
            (bool(actor.actor_id) and "/" not in actor.actor_id and len(actor.actor_id) <= 64,
             "actor.actor_id must be a non-empty name without '/' (at most 64 characters)"),
            (actor.send_every_steps >= 1, "actor.send_every_steps must be >= 1"),
            (actor.max_unacked_transitions >= 1, "actor.max_unacked_transitions must be >= 1"),
            (actor.on_learner_loss in ON_LEARNER_LOSS, f"actor.on_learner_loss must be one of {ON_LEARNER_LOSS}"),
            (actor.max_episodes >= 0, "actor.max_episodes must be >= 0"),
            (actor.stats_window >= 1, "actor.stats_window must be >= 1"),
            (actor.first_params_timeout_s >= 0, "actor.first_params_timeout_s must be >= 0 (0 = forever)"),
            (actor.flush_timeout_s >= 0, "actor.flush_timeout_s must be >= 0"),
            (actor.status_interval_s > 0, "actor.status_interval_s must be > 0"),
        ]
    if learner is not None:
        checks.append((transport.curve or transport.insecure or is_loopback(transport.bind_host),
                       insecure_bind_message(transport.bind_host)))
        checks += [
            (learner.buffer_capacity >= 2, "learner.buffer_capacity must be >= 2"),
            (learner.steps_per_transition >= 0, "learner.steps_per_transition must be >= 0"),
            (learner.publish_every_steps >= 1, "learner.publish_every_steps must be >= 1"),
            (learner.checkpoint_every_steps >= 1, "learner.checkpoint_every_steps must be >= 1"),
            (learner.checkpoint_interval_s > 0, "learner.checkpoint_interval_s must be > 0"),
            (learner.keep_checkpoints >= 1, "learner.keep_checkpoints must be >= 1"),
            (learner.checkpoint_retry_s > 0, "learner.checkpoint_retry_s must be > 0"),
            (learner.max_consecutive_nonfinite_updates >= 1,
             "learner.max_consecutive_nonfinite_updates must be >= 1"),
            (learner.log_every_steps >= 1, "learner.log_every_steps must be >= 1"),
            (learner.max_steps >= 0, "learner.max_steps must be >= 0"),
            (learner.status_interval_s > 0, "learner.status_interval_s must be > 0"),
            (learner.devices >= 0, "learner.devices must be >= 0 (0 = all local devices)"),
        ]
        if max_episode_steps is not None:
            # A ring buffer smaller than one episode overwrites that episode's first transitions
            # while it is still being stored (T steps need T + 1 slots with the final observation).
            checks.append((learner.buffer_capacity >= max_episode_steps + 1,
                           f"learner.buffer_capacity ({learner.buffer_capacity}) must be >= "
                           f"task.max_episode_steps + 1 ({max_episode_steps + 1})"))
    for ok, message in checks:
        if not ok:
            raise ProcessConfigError(message)
