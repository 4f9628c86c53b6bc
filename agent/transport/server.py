"""The learner's end of the transport: a ROUTER socket served by one background thread.

The thread answers handshakes and heartbeats at once, even while the learner is busy compiling or
updating, and hands checked transition chunks to the learner through `receive()`. The learner
decides what is stored and says so with `ack()`; parameters go out with `publish()`. Sockets are
touched by the service thread only (ZeroMQ sockets are not thread-safe): the learner's calls
queue commands and wake the thread through an inproc pair.

Exactly-once storage is the learner's job (see `agent/learner.py`): each delivery carries the
actor's stream and sequence number, and the learner stores sequence `stored_through + 1` only.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import zmq

from agent.process_config import TransportConfig
from agent.transport.protocol import (
    PROTOCOL_VERSION,
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
from agent.transport.security import TransportError, secure_server
from agent.transport.service_thread import ServiceThread

log = logging.getLogger("agent.transport")

# REJECT codes: "hello_required" asks the actor to handshake (again); "incompatible" is final.
HELLO_REQUIRED = "hello_required"
INCOMPATIBLE = "incompatible"
MALFORMED = "malformed"


@dataclass
class Delivery:
    """One checked TRANSITIONS message from a handshaken actor, or (chunk None) the news that the
    actor no longer holds chunks up to `sequence`: another learner had them in a checkpoint that
    this one does not have."""

    stream: str  # "<actor id>/<incarnation>": one per actor process
    actor: str
    sequence: int
    chunk: TransitionChunk | None


@dataclass
class _Peer:
    stream: str
    actor: str
    last_seen: float
    sent_version: int = -1


@dataclass
class Watermarks:
    """What the learner holds of one stream: stored (in memory) and durable (in a checkpoint)."""

    stored_through: int = 0
    durable_through: int = 0


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
    ):
        self.cfg = cfg
        self.config_hash = config_hash
        self.observation_spec = {k: (tuple(s), np.dtype(d).str) for k, (s, d) in observation_spec.items()}
        self.action_dim = int(action_dim)
        self.backbone_digest = backbone_digest
        self.session = uuid.uuid4().hex[:12]
        self.endpoint = endpoint or f"tcp://{cfg.bind_host}:{cfg.port}"
        self.rejected = 0
        self.last_rejection = ""
        self._marks: dict[str, Watermarks] = {k: Watermarks(v.stored_through, v.durable_through)
                                              for k, v in (watermarks or {}).items()}
        self._marks_lock = threading.Lock()
        self._inbox: queue.Queue[Delivery] = queue.Queue()
        self._commands: queue.Queue[tuple] = queue.Queue()
        self._peers: dict[bytes, _Peer] = {}
        self._params_frames: list | None = None
        self._params_version = -1
        self._backbone_frames: list | None = None
        super().__init__("learner-transport")

    # ------------------------------------------------------------------ learner-side API

    def receive(self, timeout: float = 0.0, max_items: int = 1 << 30) -> list[Delivery]:
        """Deliveries waiting (blocking up to `timeout` for the first one)."""
        out: list[Delivery] = []
        try:
            out.append(self._inbox.get(timeout=timeout) if timeout > 0 else self._inbox.get_nowait())
            while len(out) < max_items:
                out.append(self._inbox.get_nowait())
        except queue.Empty:
            pass
        return out

    def watermarks(self) -> dict[str, Watermarks]:
        with self._marks_lock:
            return {k: Watermarks(v.stored_through, v.durable_through) for k, v in self._marks.items()}

    def ack(self, stream: str, *, stored_through: int | None = None, durable_through: int | None = None,
            resend: bool = False) -> None:
        """Record what the learner holds of `stream` and tell its actor."""
        with self._marks_lock:
            marks = self._marks.setdefault(stream, Watermarks())
            if stored_through is not None:
                marks.stored_through = stored_through
            if durable_through is not None:
                marks.durable_through = durable_through
        self._command(("ack", stream, resend))

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
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(int(self.cfg.heartbeat_interval_s * 1000)))
                if wake in events:
                    self._drain_wake_ups(wake)
                if not self._run_commands(router):
                    break
                if router in events:
                    for _ in range(1000):  # drain, but come back to commands now and then
                        try:
                            frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._handle(router, frames)
                self._forget_silent_peers()
        finally:
            router.close(0)
            wake.close(0)
            if authenticator is not None:
                authenticator.stop()

    def _run_commands(self, router: zmq.Socket) -> bool:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return True
            if command[0] == "stop":
                return False
            if command[0] == "ack":
                _, stream, resend = command
                for rid, peer in list(self._peers.items()):
                    if peer.stream == stream:
                        self._send(router, rid, self._ack_message(stream, resend))
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

    def _ack_message(self, stream: str, resend: bool = False) -> list:
        marks = self._marks_of(stream)
        return encode(Message(MessageType.ACK, fields={
            "stored_through": marks.stored_through, "durable_through": marks.durable_through, "resend": resend}))

    def _reject(self, router: zmq.Socket, rid: bytes, code: str, reason: str) -> None:
        self.rejected += 1
        self.last_rejection = reason
        log.warning("transport: rejected a message from peer %s: %s", rid.hex()[:10], reason)
        self._send(router, rid, encode(Message(MessageType.REJECT, fields={"code": code, "reason": reason})))

    def _handle(self, router: zmq.Socket, frames: list) -> None:
        rid = bytes(frames[0].buffer) if hasattr(frames[0], "buffer") else bytes(frames[0])
        try:
            message = decode(frames[1:])
        except ProtocolError as exc:
            self._reject(router, rid, MALFORMED, str(exc))
            return
        try:
            if message.type == MessageType.HELLO:
                self._hello(router, rid, message)
                return
            peer = self._peers.get(rid)
            if peer is None:
                self._reject(router, rid, HELLO_REQUIRED, f"{message.type.name} before HELLO (learner session "
                             f"{self.session}); send HELLO first")
                return
            if message.actor != peer.actor:
                raise ProtocolError(f"message names actor '{message.actor}' on the connection of '{peer.actor}'")
            peer.last_seen = time.monotonic()
            if message.type == MessageType.HEARTBEAT:
                marks = self._marks_of(peer.stream)
                self._send(router, rid, encode(Message(MessageType.HEARTBEAT, fields={
                    "session": self.session, "param_version": self._params_version,
                    "stored_through": marks.stored_through, "durable_through": marks.durable_through})))
                self._send_params(router, rid, peer)
            elif message.type == MessageType.TRANSITIONS:
                chunk = TransitionChunk.from_message(message, self.observation_spec, self.action_dim)
                if message.sequence < 1:
                    raise ProtocolError("transition sequence numbers start at 1")
                self._inbox.put(Delivery(peer.stream, peer.actor, int(message.sequence), chunk))
            elif message.type == MessageType.BACKBONE_REQUEST:
                if self._backbone_frames is None:
                    self._reject(router, rid, INCOMPATIBLE, "this learner has no frozen backbone to send")
                else:
                    self._send(router, rid, self._backbone_frames)
            else:
                raise ProtocolError(f"an actor may not send {message.type.name}")
        except ProtocolError as exc:
            self._reject(router, rid, MALFORMED, str(exc))

    def _hello(self, router: zmq.Socket, rid: bytes, message: Message) -> None:
        actor = message.actor
        incarnation = require(message, "incarnation", str)
        config_hash = require(message, "config_hash", str)
        version = require(message, "protocol_version", int)
        action_dim = require(message, "action_dim", int)
        spec = spec_from_json(message.fields.get("observation_spec"))
        problems = []
        if not actor or "/" in actor or len(actor) > 64:
            problems.append(f"actor id {actor!r} is not a valid name")
        if version != PROTOCOL_VERSION:
            problems.append(f"protocol version {version} != learner's {PROTOCOL_VERSION}")
        if config_hash != self.config_hash:
            problems.append(f"config hash {config_hash} != learner's {self.config_hash}: start both with the same "
                            "task, env and agent config (`franka-rl show-config` prints the hash)")
        if action_dim != self.action_dim:
            problems.append(f"action size {action_dim} != learner's {self.action_dim}")
        if spec_to_json(spec) != spec_to_json(self.observation_spec):
            problems.append(f"observation spec {spec_to_json(spec)} != learner's {spec_to_json(self.observation_spec)}")
        if problems:
            self._reject(router, rid, INCOMPATIBLE, "; ".join(problems))
            return
        stream = f"{actor}/{incarnation}"
        for other_rid, other in list(self._peers.items()):
            if other.actor == actor and other_rid != rid:
                if other.stream == stream:  # the same actor process on a new connection
                    del self._peers[other_rid]
                elif time.monotonic() - other.last_seen < self.cfg.heartbeat_timeout_s:
                    self._reject(router, rid, INCOMPATIBLE,
                                 f"actor id '{actor}' is already connected: give each actor its own actor.actor_id")
                    return
        peer = self._peers.get(rid)
        if peer is None or peer.stream != stream:
            peer = _Peer(stream, actor, time.monotonic())
            self._peers[rid] = peer
        peer.last_seen = time.monotonic()
        peer.sent_version = -1
        marks = self._marks_of(stream)
        held_from = message.fields.get("held_from", 1)
        if not isinstance(held_from, int) or isinstance(held_from, bool) or held_from < 1:
            raise ProtocolError(f"HELLO field 'held_from' must be an integer >= 1, got {held_from!r}")
        if held_from - 1 > marks.stored_through:
            log.warning("transport: actor '%s' no longer holds chunks %d..%d (a previous learner checkpointed "
                        "them; they are in the actor's episode directory); continuing after them", actor,
                        marks.stored_through + 1, held_from - 1)
            with self._marks_lock:
                self._marks[stream] = marks = Watermarks(held_from - 1, held_from - 1)
            self._inbox.put(Delivery(stream, actor, held_from - 1, None))
        log.info("transport: actor '%s' joined (stream %s, resuming after sequence %d)", actor, stream,
                 marks.stored_through)
        self._send(router, rid, encode(Message(MessageType.WELCOME, fields={
            "session": self.session, "stored_through": marks.stored_through,
            "durable_through": marks.durable_through, "backbone_digest": self.backbone_digest,
            "param_version": self._params_version})))
        self._send_params(router, rid, peer)

    def _forget_silent_peers(self) -> None:
        horizon = time.monotonic() - 10 * self.cfg.heartbeat_timeout_s
        for rid, peer in list(self._peers.items()):
            if peer.last_seen < horizon:
                del self._peers[rid]
