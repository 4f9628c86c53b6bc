"""The learner's end of the transport: a ROUTER socket served by one background thread.

The thread answers handshakes and heartbeats at once, even while the learner is busy compiling or
updating, and hands checked transition chunks to the learner through `receive()`. The learner
decides what is stored and says so with `ack()`; parameters go out with `publish()`. Sockets are
touched by the service thread only (ZeroMQ sockets are not thread-safe): the learner's calls
queue commands and wake the thread through an inproc pair.

Hostile input: every received message goes through one boundary (`_handle`) that turns any
exception into a counted, logged (rate-limited) rejection naming the actor when known; the loop
around it has its own catch-all, and if the thread dies anyway `receive()` raises so the learner
stops loudly. Values are checked after the cast to the stored dtype (`TransitionChunk.from_message`).
The receive queue is bounded (`transport.max_queued_messages` / `max_queued_bytes`): a chunk that
does not fit is answered REJECT `busy` and its actor pauses and resends it.

Exactly-once storage is the learner's job (see `agent/learner.py`): each delivery carries the
actor's stream and sequence number, and the learner stores sequence `stored_through + 1` only. The
server already drops what is certainly a duplicate (a sequence number at or below what is stored
or queued) before checking its arrays, answering one ACK per run of duplicates; a chunk after a
gap gets one ACK per gap asking for a resend from the missing sequence (`resend_from`). Every ACK,
HEARTBEAT and WELCOME carries `received_through` (stored or queued in order), the actor's
retransmission point.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import zmq

from agent.process_config import TransportConfig
from agent.transport.protocol import (
    PROTOCOL_VERSION,
    Limits,
    Message,
    MessageType,
    ObservationSpec,
    ProtocolError,
    TransitionChunk,
    decode,
    encode,
    require,
    spec_from_json,
    spec_to_json,
)
from agent.transport.security import TransportError, authorized_ids, secure_server
from agent.transport.service_thread import ServiceThread

log = logging.getLogger("agent.transport")

# REJECT codes: "hello_required" asks the actor to handshake (again); "incompatible" is final;
# "busy" asks it to pause and resend from `resend_from` (the learner's queue is full).
HELLO_REQUIRED = "hello_required"
INCOMPATIBLE = "incompatible"
MALFORMED = "malformed"
BUSY = "busy"

MAX_PEERS = 256
# After this many failures of the loop in a row the thread gives up (and the learner stops).
MAX_CONSECUTIVE_LOOP_ERRORS = 50
# Rejection warnings: at most BURST per WINDOW seconds, then one line with the count left out.
LOG_BURST = 5
LOG_WINDOW_S = 10.0


@dataclass
class Delivery:
    """One checked TRANSITIONS message from a handshaken actor, or (chunk None) the news that the
    actor no longer holds chunks up to `sequence`: another learner had them in a checkpoint that
    this one does not have."""

    stream: str  # "<actor id>/<incarnation>": one per actor process
    actor: str
    sequence: int
    chunk: TransitionChunk | None
    nbytes: int = 0  # wire size, for the receive queue's bound


@dataclass
class _Peer:
    stream: str
    actor: str
    last_seen: float
    sent_version: int = -1
    key: str = ""  # the CURVE public key (z85) of the connection, "" without CURVE
    recovery: bool = False  # an earlier incarnation's episodes, re-sent by a restarted actor
    gap_reported: int = 0  # the missing sequence this peer was last asked to resend from (0: none)
    duplicate_acked: bool = False  # a duplicate since the last accepted chunk was answered


@dataclass
class Watermarks:
    """What the learner holds of one stream: stored (in memory) and durable (in a checkpoint)."""

    stored_through: int = 0
    durable_through: int = 0


class RateLimitedLog:
    """Warnings at most `burst` per `window_s`; the rest are counted and summarised later."""

    def __init__(self, logger: logging.Logger, burst: int = LOG_BURST, window_s: float = LOG_WINDOW_S):
        self.logger, self.burst, self.window_s = logger, burst, window_s
        self._window_start = -float("inf")
        self._logged = 0
        self.suppressed = 0

    def warning(self, text: str, *args) -> bool:
        now = time.monotonic()
        if now - self._window_start >= self.window_s:
            if self.suppressed:
                self.logger.warning("transport: %d more rejection(s) in the last %.0f s were not logged one by one",
                                    self.suppressed, now - self._window_start)
            self._window_start, self._logged, self.suppressed = now, 0, 0
        if self._logged < self.burst:
            self._logged += 1
            self.logger.warning(text, *args)
            return True
        self.suppressed += 1
        return False


class LearnerServer(ServiceThread):
    def __init__(
        self,
        cfg: TransportConfig,
        *,
        config_hash: str,
        observation_spec: ObservationSpec,
        action_dim: int,
        backbone_digest: str = "",
        watermarks: Mapping[str, Watermarks] | None = None,
        endpoint: str | None = None,
        action_bound: float = 1.0,
        known_streams: Iterable[str] = (),
        on_new_stream: Callable[[str], None] | None = None,
    ):
        """`known_streams`: every stream this run's learners ever welcomed (the learner's registry),
        the only ones a restarted actor may recover; `on_new_stream(stream)` records a newly
        welcomed one durably before its WELCOME goes out."""
        self.cfg = cfg
        self.config_hash = config_hash
        self.observation_spec = {k: (tuple(s), np.dtype(d).str) for k, (s, d) in observation_spec.items()}
        self.action_dim = int(action_dim)
        self.action_bound = float(action_bound)
        self.backbone_digest = backbone_digest
        self.session = uuid.uuid4().hex[:12]
        self.endpoint = endpoint or f"tcp://{cfg.bind_host}:{cfg.port}"
        self.limits = Limits(max_header_bytes=int(cfg.max_header_bytes))
        self.last_rejection = ""
        self._stats_lock = threading.Lock()
        self._rejected: dict[str, int] = {}
        self._counts = {"handshakes": 0, "deferred_busy": 0, "duplicates_dropped": 0, "out_of_order": 0,
                        "loop_errors": 0}
        self._reject_log = RateLimitedLog(log)
        self._marks: dict[str, Watermarks] = {k: Watermarks(v.stored_through, v.durable_through)
                                              for k, v in (watermarks or {}).items()}
        self._marks_lock = threading.Lock()
        self._inbox: queue.Queue[Delivery] = queue.Queue()
        self._queued = [0, 0]  # messages, bytes (under _queue_lock)
        self._queue_lock = threading.Lock()
        self._queue_marks: dict[str, int] = {}  # stream -> last sequence stored or queued in order
        self._refused: dict[str, str] = {}  # stream -> why the learner refused it (final)
        self._known_streams: set[str] = set(known_streams) | set(self._marks)
        self._on_new_stream = on_new_stream
        self._owners: dict[str, str] = {}  # actor id -> CURVE key that claimed it
        self._reserved: dict[str, str] = {}  # actor id -> key of authorized_actors/<id>.key
        self._commands: queue.Queue[tuple] = queue.Queue()
        self._peers: dict[bytes, _Peer] = {}
        self._params_frames: list | None = None
        self._params_version = -1
        self._backbone_frames: list | None = None
        super().__init__("learner-transport")

    # ------------------------------------------------------------------ learner-side API

    def receive(self, timeout: float = 0.0, max_items: int = 1 << 30) -> list[Delivery]:
        """Deliveries waiting (blocking up to `timeout` for the first one). Raises TransportError
        if the service thread has died: a learner that cannot hear its actors must not run on."""
        self.check_alive()
        out: list[Delivery] = []
        try:
            out.append(self._inbox.get(timeout=timeout) if timeout > 0 else self._inbox.get_nowait())
            while len(out) < max_items:
                out.append(self._inbox.get_nowait())
        except queue.Empty:
            pass
        if out:
            with self._queue_lock:
                self._queued[0] -= len(out)
                self._queued[1] -= sum(d.nbytes for d in out)
        return out

    @property
    def rejected(self) -> int:
        with self._stats_lock:
            return sum(self._rejected.values())

    def rejected_by_reason(self) -> dict[str, int]:
        with self._stats_lock:
            return dict(self._rejected)

    def stats(self) -> dict[str, float]:
        """Counters for the learner's metrics (`transport/*`)."""
        with self._stats_lock:
            out: dict[str, float] = {"rejected_messages": sum(self._rejected.values()), **self._counts}
            out.update({f"rejected/{reason}": n for reason, n in self._rejected.items()})
        with self._queue_lock:
            out["queued_messages"], out["queued_bytes"] = self._queued
        return out

    def count_rejection(self, reason: str, text: str, who: str = "") -> None:
        """Count and log (rate-limited) one rejected message; the learner calls it for what it
        refuses to store, the service thread for what it refuses to queue."""
        with self._stats_lock:
            self._rejected[reason] = self._rejected.get(reason, 0) + 1
            self.last_rejection = text
        self._reject_log.warning("transport: rejected a message from %s (%s): %s", who or "an unknown peer", reason,
                                 text)

    def watermarks(self) -> dict[str, Watermarks]:
        with self._marks_lock:
            return {k: Watermarks(v.stored_through, v.durable_through) for k, v in self._marks.items()}

    def ack(self, stream: str, *, stored_through: int | None = None, durable_through: int | None = None,
            resend: bool = False) -> None:
        """Record what the learner holds of `stream` and tell its actor. `resend` (a gap, or a
        dropped open episode) also makes the server accept that stream again from `stored_through`."""
        with self._marks_lock:
            marks = self._marks.setdefault(stream, Watermarks())
            if stored_through is not None:
                marks.stored_through = stored_through
            if durable_through is not None:
                marks.durable_through = durable_through
            stored = marks.stored_through
        self._command(("ack", stream, resend, stored))

    def refuse_stream(self, stream: str, reason: str) -> None:
        """Refuse every further message of `stream` (final: its actor is told why and stops)."""
        self._command(("refuse", stream, reason))

    def publish(self, version: int, arrays: Mapping[str, np.ndarray], *, warmup: bool = False) -> None:
        """Send parameters to every connected actor (and to each actor that joins later).

        `warmup` tells the actors these are the frozen pre-trained policy's (WSRL warm-up)."""
        frames = encode(Message(MessageType.PARAMS, version, fields={
            "kind": "trainable", "version": int(version), "warmup": bool(warmup)},
            arrays={k: np.asarray(v) for k, v in arrays.items()}))
        self._command(("publish", version, frames))

    def set_backbone(self, arrays: Mapping[str, np.ndarray]) -> None:
        """The frozen backbone, sent once to an actor whose own backbone differs."""
        self._backbone_frames = encode(Message(MessageType.PARAMS, 0, fields={"kind": "backbone"},
                                               arrays={k: np.asarray(v) for k, v in arrays.items()}))

    def connected_actors(self) -> list[str]:
        now = time.monotonic()
        return sorted(p.actor for p in list(self._peers.values())
                      if now - p.last_seen < self.cfg.heartbeat_timeout_s)

    def close(self) -> None:
        self._commands.put(("stop",))
        self._stop_thread()

    def _command(self, command: tuple) -> None:
        self._commands.put(command)
        self._wake()

    # ------------------------------------------------------------------ service thread

    def _serve(self) -> None:
        authenticator = None
        router = self._context.socket(zmq.ROUTER)
        wake = None
        try:
            router.setsockopt(zmq.LINGER, 0)
            router.setsockopt(zmq.MAXMSGSIZE, int(self.cfg.max_frame_bytes))
            router.setsockopt(zmq.RCVHWM, 100_000)
            authenticator = secure_server(self._context, router, self.cfg)
            if self.cfg.curve:
                self._reserved = authorized_ids(self.cfg.curve_authorized_clients_dir)
            try:
                router.bind(self.endpoint)
            except zmq.ZMQError as exc:
                raise TransportError(f"cannot listen on {self.endpoint} ({exc}): is another learner running "
                                     "there? choose another transport.port") from None
            wake = self._wake_socket()
        except BaseException as exc:
            router.close(0)
            if wake is not None:
                wake.close(0)
            if authenticator is not None:
                authenticator.stop()
            self._serve_failed(exc)
            return
        self._serve_ready()
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    if not self._serve_once(poller, router, wake):
                        break
                    failures = 0
                except zmq.ContextTerminated:
                    raise
                except Exception as exc:  # never die on one bad turn; give up (loudly) if it persists
                    failures += 1
                    with self._stats_lock:
                        self._counts["loop_errors"] += 1
                    log.error("transport: the learner's service loop failed (%d in a row): %s: %s", failures,
                              type(exc).__name__, exc, exc_info=failures == 1)
                    if failures >= MAX_CONSECUTIVE_LOOP_ERRORS:
                        raise
                    time.sleep(0.01)
        finally:
            router.close(0)
            wake.close(0)
            if authenticator is not None:
                authenticator.stop()

    def _serve_once(self, poller: zmq.Poller, router: zmq.Socket, wake: zmq.Socket) -> bool:
        events = dict(poller.poll(int(self.cfg.heartbeat_interval_s * 1000)))
        if wake in events:
            self._drain_wake_ups(wake)
        if not self._run_commands(router):
            return False
        if router in events:
            for _ in range(1000):  # drain, but come back to commands now and then
                try:
                    frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._handle(router, frames)
        self._forget_silent_peers()
        return True

    def _run_commands(self, router: zmq.Socket) -> bool:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return True
            if command[0] == "stop":
                return False
            if command[0] == "ack":
                _, stream, resend, stored = command
                if resend:  # take this stream again from what the learner holds
                    self._queue_marks[stream] = stored
                for rid, peer in list(self._peers.items()):
                    if peer.stream == stream:
                        if resend:
                            peer.gap_reported = 0
                        self._send(router, rid, self._ack_message(stream, stored + 1 if resend else 0))
            elif command[0] == "refuse":
                _, stream, reason = command
                self._refused[stream] = reason
                for rid, peer in list(self._peers.items()):
                    if peer.stream == stream:
                        self._send(router, rid, self._reject_message(INCOMPATIBLE, reason))
                        del self._peers[rid]
            elif command[0] == "publish":
                _, version, frames = command
                self._params_frames, self._params_version = frames, version
                for rid, peer in list(self._peers.items()):
                    self._send_params(router, rid, peer)

    def _send(self, router: zmq.Socket, rid: bytes, frames: list) -> None:
        try:
            router.send_multipart([rid, *frames], zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:  # peer gone or its queue full: it will resynchronise
            log.debug("could not send to a peer: %s", exc)

    def _send_params(self, router: zmq.Socket, rid: bytes, peer: _Peer) -> None:
        if self._params_frames is not None and peer.sent_version != self._params_version:
            self._send(router, rid, self._params_frames)
            peer.sent_version = self._params_version

    def _marks_of(self, stream: str) -> Watermarks:
        with self._marks_lock:
            marks = self._marks.get(stream, Watermarks())
            return Watermarks(marks.stored_through, marks.durable_through)

    def _received_through(self, stream: str) -> int:
        """The last sequence of `stream` this server stored or queued in order (service thread only)."""
        return max(self._queue_marks.get(stream, 0), self._marks_of(stream).stored_through)

    def _mark_fields(self, stream: str) -> dict:
        marks = self._marks_of(stream)
        return {"stored_through": marks.stored_through, "durable_through": marks.durable_through,
                "received_through": self._received_through(stream)}

    def _ack_message(self, stream: str, resend_from: int = 0) -> list:
        """ACK with the stream's watermarks; `resend_from` > 0 asks the actor to go back to that sequence."""
        return encode(Message(MessageType.ACK, fields={**self._mark_fields(stream), "resend": resend_from > 0,
                                                       "resend_from": resend_from}))

    @staticmethod
    def _reject_message(code: str, reason: str, **fields) -> list:
        return encode(Message(MessageType.REJECT, fields={"code": code, "reason": reason, **fields}))

    def _reject(self, router: zmq.Socket, rid: bytes, code: str, category: str, reason: str, who: str) -> None:
        self.count_rejection(category, reason, who)
        self._send(router, rid, self._reject_message(code, reason))

    @staticmethod
    def _who(rid: bytes, peer: _Peer | None, claimed: str) -> str:
        if peer is not None:
            return f"actor '{peer.actor}'"
        if claimed:
            return f"peer {rid.hex()[:10]} (claims actor '{claimed[:64]}')"
        return f"peer {rid.hex()[:10]}"

    def _handle(self, router: zmq.Socket, frames: list) -> None:
        """The boundary: nothing a peer sends gets past here as an exception."""
        rid, peer, claimed = b"", None, ""
        try:
            rid = bytes(frames[0].buffer) if hasattr(frames[0], "buffer") else bytes(frames[0])
            peer = self._peers.get(rid)
            message = decode(frames[1:], self.limits)
            claimed = message.actor
            self._dispatch(router, rid, frames, message)
        except ProtocolError as exc:
            self._reject(router, rid, MALFORMED, exc.reason, str(exc), self._who(rid, peer, claimed))
        except Exception as exc:
            log.debug("transport: message handling failed", exc_info=True)
            self._reject(router, rid, MALFORMED, "internal", f"could not be handled ({type(exc).__name__}: "
                         f"{str(exc)[:200]})", self._who(rid, peer, claimed))

    def _dispatch(self, router: zmq.Socket, rid: bytes, frames: list, message: Message) -> None:
        if message.type == MessageType.HELLO:
            self._hello(router, rid, frames, message)
            return
        peer = self._peers.get(rid)
        if peer is None:
            self._reject(router, rid, HELLO_REQUIRED, "order", f"{message.type.name} before HELLO (learner session "
                         f"{self.session}); send HELLO first", self._who(rid, None, message.actor))
            return
        if message.actor != peer.actor:
            raise ProtocolError(f"message names actor '{message.actor[:64]}' on the connection of '{peer.actor}'",
                                "order")
        peer.last_seen = time.monotonic()
        if message.type == MessageType.HEARTBEAT:
            self._send(router, rid, encode(Message(MessageType.HEARTBEAT, fields={
                "session": self.session, "param_version": self._params_version,
                **self._mark_fields(peer.stream)})))
            self._send_params(router, rid, peer)
        elif message.type == MessageType.TRANSITIONS:
            self._transitions(router, rid, peer, frames, message)
        elif message.type == MessageType.BACKBONE_REQUEST:
            if self._backbone_frames is None:
                self._reject(router, rid, INCOMPATIBLE, "order", "this learner has no frozen backbone to send",
                             self._who(rid, peer, ""))
            else:
                self._send(router, rid, self._backbone_frames)
        else:
            raise ProtocolError(f"an actor may not send {message.type.name}", "order")

    def _transitions(self, router: zmq.Socket, rid: bytes, peer: _Peer, frames: list, message: Message) -> None:
        if message.sequence < 1:
            raise ProtocolError("transition sequence numbers start at 1", "field")
        stream, sequence = peer.stream, int(message.sequence)
        expected = self._received_through(stream) + 1
        # The sequence number decides first: a duplicate or a chunk after a gap is answered without
        # checking its arrays, so a resend after a reconnection costs little and floods nothing.
        if sequence < expected:  # stored or queued already: a resend
            with self._stats_lock:
                self._counts["duplicates_dropped"] += 1
            if not peer.duplicate_acked or sequence == expected - 1:  # one ACK per run of duplicates
                peer.duplicate_acked = True
                self._send(router, rid, self._ack_message(stream))
            return
        if sequence > expected:  # one before it is missing: have the actor resend from `expected`
            with self._stats_lock:
                self._counts["out_of_order"] += 1
            if peer.gap_reported != expected:  # once per gap; the actor's retransmission timer covers a loss
                peer.gap_reported = expected
                self._send(router, rid, self._ack_message(stream, resend_from=expected))
            return
        chunk = TransitionChunk.from_message(message, self.observation_spec, self.action_dim,
                                             action_bound=self.action_bound,
                                             max_abs_observation=self.cfg.max_abs_observation)
        nbytes = sum(len(f.buffer) if hasattr(f, "buffer") else len(f) for f in frames[1:])
        with self._queue_lock:
            full = (self._queued[0] >= self.cfg.max_queued_messages
                    or self._queued[1] + nbytes > self.cfg.max_queued_bytes)
            if not full:
                self._queued[0] += 1
                self._queued[1] += nbytes
        if full:
            with self._stats_lock:
                self._counts["deferred_busy"] += 1
            retry = self.cfg.heartbeat_interval_s * (0.5 + random.random())
            self._send(router, rid, self._reject_message(
                BUSY, f"the learner's receive queue is full; resend from {expected} in {retry:.2f} s",
                sequence=sequence, retry_after_s=retry, resend_from=expected))
            return
        self._queue_marks[stream] = sequence
        peer.gap_reported = 0
        peer.duplicate_acked = False
        self._inbox.put(Delivery(stream, peer.actor, sequence, chunk, nbytes))

    def _client_key(self, frames: list) -> str:
        """The CURVE public key (z85) the authenticator admitted this message's connection with."""
        if not self.cfg.curve:
            return ""
        try:
            return str(frames[-1].get("User-Id") or "")
        except (zmq.ZMQError, AttributeError):
            return ""

    def _hello(self, router: zmq.Socket, rid: bytes, frames: list, message: Message) -> None:
        # Everything is checked before anything is registered: a HELLO that fails claims nothing.
        actor = message.actor
        incarnation = require(message, "incarnation", str)
        config_hash = require(message, "config_hash", str)
        version = require(message, "protocol_version", int)
        action_dim = require(message, "action_dim", int)
        spec = spec_from_json(message.fields.get("observation_spec"))
        held_from = message.fields.get("held_from", 1)
        if not isinstance(held_from, int) or isinstance(held_from, bool) or held_from < 1:
            raise ProtocolError(f"HELLO field 'held_from' must be an integer >= 1, got {str(held_from)[:40]!r}",
                                "field")
        param_version = message.fields.get("param_version", -1)
        if not isinstance(param_version, int) or isinstance(param_version, bool):
            raise ProtocolError("HELLO field 'param_version' must be an integer", "field")
        # A restarted actor re-sending an earlier incarnation's episodes from its folder.
        recovery = message.fields.get("recovery", False)
        if not isinstance(recovery, bool):
            raise ProtocolError("HELLO field 'recovery' must be true or false", "field")
        problems = []
        if not actor or "/" in actor or len(actor) > 64 or not actor.isprintable():
            problems.append(f"actor id {actor[:64]!r} is not a valid name")
        if not incarnation or len(incarnation) > 64 or not incarnation.isprintable() or "/" in incarnation:
            problems.append("incarnation is not a valid name")
        if version != PROTOCOL_VERSION:
            problems.append(f"protocol version {version} != learner's {PROTOCOL_VERSION}")
        if config_hash != self.config_hash:
            problems.append(f"config hash {config_hash[:64]} != learner's {self.config_hash}: start both with the "
                            "same task, env and agent config (`franka-rl show-config` prints the hash)")
        if action_dim != self.action_dim:
            problems.append(f"action size {action_dim} != learner's {self.action_dim}")
        if spec_to_json(spec) != spec_to_json(self.observation_spec):
            problems.append(f"observation spec {str(spec_to_json(spec))[:200]} != learner's "
                            f"{spec_to_json(self.observation_spec)}")
        if problems:
            self._reject(router, rid, INCOMPATIBLE, "hello", "; ".join(problems), self._who(rid, None, actor))
            return
        stream = f"{actor}/{incarnation}"
        who = self._who(rid, None, actor)
        if stream in self._refused:
            self._reject(router, rid, INCOMPATIBLE, "refused", self._refused[stream], who)
            return
        if recovery and stream not in self._known_streams:
            self._reject(router, rid, INCOMPATIBLE, "unknown_stream",
                         f"this learner run never welcomed stream {stream}: nothing to recover into it (its "
                         "episodes stay in the actor's folder; a learner can read them with --offline-data)", who)
            return
        key = self._client_key(frames)
        if self.cfg.curve:
            owner = self._reserved.get(actor) or self._owners.get(actor)
            if not key or (owner is not None and owner != key):
                why = (f"the certificate {actor}.key in transport.curve_authorized_clients_dir" if actor in
                       self._reserved else "the CURVE key that claimed it first")
                self._reject(router, rid, INCOMPATIBLE, "squat",
                             f"actor id '{actor}' belongs to {why}; this connection uses another key: give each "
                             "actor its own actor.actor_id and its own certificate", who)
                return
        now = time.monotonic()
        for other_rid, other in list(self._peers.items()):
            if other.actor == actor and other_rid != rid:
                if recovery or other.recovery:
                    # An earlier incarnation beside the live one: only the same stream twice collides.
                    if other.stream != stream:
                        continue
                    if recovery and not other.recovery and now - other.last_seen < self.cfg.heartbeat_timeout_s:
                        self._reject(router, rid, INCOMPATIBLE, "squat",
                                     f"stream {stream} is still connected: it is not an earlier incarnation", who)
                        return
                    del self._peers[other_rid]  # the stream itself, on a new connection
                    continue
                if other.stream == stream or (key and other.key == key):
                    del self._peers[other_rid]  # the same process, or the same key, on a new connection
                elif now - other.last_seen < self.cfg.heartbeat_timeout_s:
                    self._reject(router, rid, INCOMPATIBLE, "squat",
                                 f"actor id '{actor}' is already connected: give each actor its own actor.actor_id",
                                 who)
                    return
                else:
                    del self._peers[other_rid]  # silent for longer than the timeout: gone
        if rid not in self._peers and len(self._peers) >= MAX_PEERS:
            self._reject(router, rid, INCOMPATIBLE, "hello", f"the learner already serves {MAX_PEERS} connections",
                         who)
            return
        # Valid: claim the id and register the connection.
        with self._stats_lock:
            self._counts["handshakes"] += 1
        if key:
            self._owners.setdefault(actor, key)
        if stream not in self._known_streams:
            self._known_streams.add(stream)
            if self._on_new_stream is not None:
                try:
                    self._on_new_stream(stream)
                except Exception as exc:  # the link still works; only a later recovery of it would fail
                    log.error("transport: could not record stream %s in the learner's registry (%s: %s); a "
                              "restarted actor cannot recover its episodes into this run", stream,
                              type(exc).__name__, exc)
        peer = self._peers.get(rid)
        if peer is None or peer.stream != stream:
            peer = _Peer(stream, actor, now, key=key, recovery=recovery)
            self._peers[rid] = peer
        peer.last_seen = now
        peer.sent_version = param_version  # what the actor already has: sent again only if newer
        marks = self._marks_of(stream)
        if held_from - 1 > marks.stored_through:
            log.warning("transport: actor '%s' no longer holds chunks %d..%d (a previous learner checkpointed "
                        "them; they are in the actor's episode directory); continuing after them", actor,
                        marks.stored_through + 1, held_from - 1)
            with self._marks_lock:
                self._marks[stream] = marks = Watermarks(held_from - 1, held_from - 1)
            self._queue_marks[stream] = max(self._queue_marks.get(stream, 0), held_from - 1)
            self._inbox.put(Delivery(stream, actor, held_from - 1, None))
            with self._queue_lock:
                self._queued[0] += 1
        log.info("transport: actor '%s' joined (stream %s, resuming after sequence %d)", actor, stream,
                 marks.stored_through)
        self._send(router, rid, encode(Message(MessageType.WELCOME, fields={
            "session": self.session, **self._mark_fields(stream), "backbone_digest": self.backbone_digest,
            "param_version": self._params_version})))
        self._send_params(router, rid, peer)

    def _forget_silent_peers(self) -> None:
        horizon = time.monotonic() - 10 * self.cfg.heartbeat_timeout_s
        for rid, peer in list(self._peers.items()):
            if peer.last_seen < horizon:
                del self._peers[rid]
