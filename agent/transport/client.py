"""The actor's end of the transport: a DEALER socket served by one background thread.

The control loop never waits on the network: `send(chunk)` numbers a chunk and queues it,
`latest_params()` returns the newest parameters the thread has received (already converted by
`decode_params`, off the control thread). Every chunk stays in memory until the learner reports
it durable (inside a checkpoint); after a reconnection or a learner restart the thread
handshakes again and resends everything after the learner's `received_through`, so nothing is
lost and the learner drops any duplicate by its sequence number.

Sending is go-back-N over the held chunks: one cursor names the next sequence to transmit. New
chunks, resends and retransmissions all go out from it in order as the socket takes them, so a
full send queue delays chunks but never leaves a gap behind. The cursor moves back only to what
the learner names (`resend_from` in an ACK or a REJECT `busy`, `received_through` in a WELCOME;
the learner names a gap once)
or, when the learner has reported no progress on chunks in flight for `heartbeat_timeout_s`,
to its last `received_through`: a lost message is retransmitted however the loss happened.

Link states: "connecting" (no handshake yet), "up", "down" (no word from the learner for
`heartbeat_timeout_s`; the thread keeps knocking with HELLO), "refused" (the learner rejected
this actor as incompatible: see `refusal`).

No storms when the CPU is starved: an unanswered HELLO is repeated after a jittered, doubling
pause (up to `transport.reconnect_max_s`); a burst of REJECT `hello_required` (every message sent
to a learner that restarted) schedules one HELLO, not one each; only the WELCOME that brings the
link up triggers a resend (later WELCOMEs of the same session just update the watermarks); a
REJECT `busy` pauses sending for the time the learner asks and then resends from `resend_from`.

A connection that swallows messages is replaced: ZeroMQ reconnects a TCP connection that fails,
but not one that stays open and carries nothing (a stalled relay or NAT entry, a peer's wedged
pipe). When HELLOs sent on the current socket have gone unanswered for `reopen_after_s` (twice
the larger of `reconnect_max_s` and `heartbeat_timeout_s`), the thread closes the socket and
connects a fresh one (the "lazy pirate" pattern); whatever was in flight is resent after the
WELCOME, as after any reconnection.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import zmq

from agent.process_config import TransportConfig
from agent.transport.protocol import (
    PROTOCOL_VERSION,
    Message,
    MessageType,
    ProtocolError,
    TransitionChunk,
    decode,
    encode,
    spec_to_json,
)
from agent.transport.security import secure_client
from agent.transport.server import (
    BUSY,
    HELLO_REQUIRED,
    INCOMPATIBLE,
    MAX_CONSECUTIVE_LOOP_ERRORS,
    RateLimitedLog,
)
from agent.transport.service_thread import ServiceThread

log = logging.getLogger("agent.transport")


class ActorClient(ServiceThread):
    def __init__(
        self,
        cfg: TransportConfig,
        *,
        actor_id: str,
        config_hash: str,
        observation_spec: Mapping[str, tuple[Any, Any]],
        action_dim: int,
        backbone_digest: str = "",
        decode_params: Callable[[int, dict[str, np.ndarray]], Any] | None = None,
        on_backbone: Callable[[dict[str, np.ndarray]], None] | None = None,
        endpoint: str | None = None,
        incarnation: str | None = None,
        recovery: bool = False,
    ):
        """`incarnation` and `recovery`: a restarted actor speaking for an earlier incarnation of
        itself, to re-send that stream's episodes from its folder (see `preload`)."""
        self.cfg = cfg
        self.actor_id = actor_id
        self.incarnation = incarnation or uuid.uuid4().hex[:12]
        self.recovery = bool(recovery)
        self.endpoint = endpoint or f"tcp://{cfg.host}:{cfg.port}"
        self._hello_fields = {
            "incarnation": self.incarnation, "config_hash": config_hash, "protocol_version": PROTOCOL_VERSION,
            "action_dim": int(action_dim), "observation_spec": spec_to_json(observation_spec),
            **({"recovery": True} if recovery else {})}
        self._heartbeat = encode(Message(MessageType.HEARTBEAT, actor=actor_id))
        self.backbone_digest = backbone_digest
        self._decode_params = decode_params or (lambda version, arrays: arrays)
        self._on_backbone = on_backbone
        self.state = "connecting"
        self.refusal = ""
        self.session = ""
        self.stored_through = 0
        self.durable_through = 0
        self.received_through = 0  # stored or queued in order at the learner: the retransmission point
        self.params_version = -1
        # Whether the newest parameters are the frozen pre-trained policy of the WSRL warm-up.
        self.learner_warmup = False
        self.reconnects = 0
        self.hellos_sent = 0
        self.busy_pauses = 0
        self.resends = 0  # chunks transmitted again
        self.retransmission_timeouts = 0
        self.socket_reopens = 0  # connections replaced after HELLOs went unanswered (see the module doc)
        self.reopen_after_s = 2.0 * max(cfg.reconnect_max_s, cfg.heartbeat_timeout_s)
        self._first_unanswered_hello = 0.0  # when the oldest unanswered HELLO on this socket went out
        self._hello_attempts = 0  # HELLOs sent since the link was last up (for the back-off)
        self._next_beat = 0.0
        self._pause_until = 0.0
        self._bad_log = RateLimitedLog(log)
        self._sequence = 0
        self._outbox: queue.Queue[tuple[int, int, list]] = queue.Queue()
        self._unacked: deque[tuple[int, int, list]] = deque()  # (sequence, steps, frames), service thread only
        self._unacked_steps = 0
        self._queued_steps = 0
        self._count_lock = threading.Lock()
        self._params: tuple[int, Any] | None = None
        self._params_lock = threading.Lock()
        self._backbone_ready = threading.Event()
        self._last_heard = -float("inf")
        self._next_send = 1  # the cursor: the sequence to transmit next
        self._high_sent = 0  # the highest sequence ever transmitted
        self._progress_at = 0.0  # when the learner last reported progress (or the cursor moved back)
        # Chunks allowed in flight past `received_through`: halved by each REJECT `busy`, grown by
        # what the learner reports received, up to its queue's bound, so a full queue is not sent
        # the whole backlog again after every pause.
        self._window = max(1, int(cfg.max_queued_messages))
        super().__init__("actor-transport")

    # ------------------------------------------------------------------ control-loop API

    def send(self, chunk: TransitionChunk) -> int:
        """Queue a chunk; returns its sequence number. Never blocks."""
        self._sequence += 1
        frames = encode(chunk.to_message(self.actor_id, self._sequence))
        with self._count_lock:
            self._queued_steps += len(chunk)
        self._outbox.put((self._sequence, len(chunk), frames))
        self._wake()
        return self._sequence

    def preload(self, first_sequence: int, chunks: list[TransitionChunk]) -> None:
        """Hold `chunks` as sequences first_sequence, first_sequence + 1, ... (a recovery client,
        before anything else is sent): they go out and are held like sent ones."""
        if self._sequence and first_sequence != self._sequence + 1:
            raise ValueError(f"preload from {first_sequence} after sequence {self._sequence}")
        if first_sequence < 1:
            raise ValueError("sequence numbers start at 1")
        self._sequence = first_sequence - 1
        for chunk in chunks:
            self.send(chunk)

    @property
    def last_sequence(self) -> int:
        return self._sequence

    @property
    def unacked_transitions(self) -> int:
        """Steps sent or queued that the learner does not yet hold in a checkpoint."""
        with self._count_lock:
            return self._unacked_steps + self._queued_steps

    def latest_params(self) -> tuple[int, Any] | None:
        """(version, decoded parameters) if newer ones arrived since the last call, else None."""
        with self._params_lock:
            params, self._params = self._params, None
        return params

    def wait_for_backbone(self, timeout: float) -> bool:
        return self._backbone_ready.wait(timeout)

    def all_stored(self) -> bool:
        return self.stored_through >= self._sequence

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` s until the learner has stored every chunk sent so far."""
        deadline = time.monotonic() + timeout
        while not self.all_stored() and time.monotonic() < deadline:
            if self.state == "refused":
                return False
            time.sleep(0.02)
        return self.all_stored()

    # ------------------------------------------------------------------ service thread

    def _open_dealer(self) -> zmq.Socket:
        dealer = self._context.socket(zmq.DEALER)
        try:
            dealer.setsockopt(zmq.LINGER, 0)
            # Queue nothing for a learner that is not connected: the resend logic owns retries.
            dealer.setsockopt(zmq.IMMEDIATE, 1)
            dealer.setsockopt(zmq.SNDHWM, 10_000)
            dealer.setsockopt(zmq.RECONNECT_IVL, 100)
            dealer.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            secure_client(dealer, self.cfg)
            dealer.connect(self.endpoint)
        except BaseException:
            dealer.close(0)
            raise
        self._first_unanswered_hello = 0.0
        return dealer

    def _serve(self) -> None:
        dealer = wake = None
        try:
            dealer = self._open_dealer()
            wake = self._wake_socket()
        except BaseException as exc:
            if dealer is not None:
                dealer.close(0)
            self._serve_failed(exc)
            return
        self._serve_ready()
        poller = zmq.Poller()
        poller.register(dealer, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    self._serve_once(poller, dealer, wake)
                    dealer = self._replace_if_silent(poller, dealer)
                    failures = 0
                except zmq.ContextTerminated:
                    raise
                except Exception as exc:  # never die on one bad turn; give up (loudly) if it persists
                    failures += 1
                    log.error("transport: the actor's service loop failed (%d in a row): %s: %s", failures,
                              type(exc).__name__, exc, exc_info=failures == 1)
                    if failures >= MAX_CONSECUTIVE_LOOP_ERRORS:
                        raise
                    time.sleep(0.01)
        finally:
            dealer.close(0)
            wake.close(0)

    def _serve_once(self, poller: zmq.Poller, dealer: zmq.Socket, wake: zmq.Socket) -> None:
        wake_at = min(self._next_beat, self._pause_until or float("inf"))
        timeout_ms = max(0, int((wake_at - time.monotonic()) * 1000))
        # Wait for room in the send queue only while chunks wait for it.
        poller.modify(dealer, zmq.POLLIN | (zmq.POLLOUT if self._can_send() and self._backlog()
                                            and self._next_send - 1 - self.received_through < self._window else 0))
        events = dict(poller.poll(timeout_ms))
        if wake in events:
            self._drain_wake_ups(wake)
        self._take_outbox()
        if events.get(dealer, 0) & zmq.POLLIN:
            while True:
                try:
                    frames = dealer.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._handle(dealer, frames)
        now = time.monotonic()
        if self._pause_until and now >= self._pause_until:
            self._pause_until = 0.0
        if (self._can_send() and self._high_sent > self.received_through
                and now - self._progress_at > self.cfg.heartbeat_timeout_s):
            # Chunks in flight and no word of them for a timeout: something was lost on the way.
            self.retransmission_timeouts += 1
            self._rewind(self.received_through + 1)
        self._pump(dealer)
        if self.state == "up" and now - self._last_heard > self.cfg.heartbeat_timeout_s:
            self.state = "down"
            self._hello_attempts = 0
            log.warning("transport: no word from the learner for %.1f s; recording on, will resend",
                        now - self._last_heard)
        if now >= self._next_beat:
            if self.state == "up":
                self._try_send(dealer, self._heartbeat)
                self._next_beat = now + self.cfg.heartbeat_interval_s
            elif self.state != "refused":
                self._knock(dealer, now)

    def _knock(self, dealer: zmq.Socket, now: float) -> None:
        """Send HELLO and schedule the next one: after an interval while nothing could be sent (no
        connection yet), after a jittered, doubling pause while HELLOs go unanswered."""
        if self._try_send(dealer, self._hello()):
            self.hellos_sent += 1
            self._hello_attempts += 1
            if not self._first_unanswered_hello:
                self._first_unanswered_hello = now
        self._next_beat = now + self.hello_delay(self._hello_attempts)

    def _replace_if_silent(self, poller: zmq.Poller, dealer: zmq.Socket) -> zmq.Socket:
        """A new socket in place of `dealer` once HELLOs sent on it have gone unanswered for
        `reopen_after_s` (see the module doc); else `dealer` itself."""
        since = self._first_unanswered_hello
        if not since or self.state in ("up", "refused") or time.monotonic() - since < self.reopen_after_s:
            return dealer
        fresh = self._open_dealer()  # first: if it cannot be opened, the old socket stays in place
        poller.unregister(dealer)
        dealer.close(0)
        poller.register(fresh, zmq.POLLIN)
        self.socket_reopens += 1
        log.warning("transport: %d HELLO(s) to %s unanswered for %.1f s; opened a new connection (reopen #%d)",
                    self._hello_attempts, self.endpoint, time.monotonic() - since, self.socket_reopens)
        self._hello_attempts = 0  # knock on the new connection as soon as it is up
        self._next_beat = time.monotonic()
        return fresh

    def hello_delay(self, attempts: int) -> float:
        interval = self.cfg.heartbeat_interval_s
        if attempts <= 1:
            return interval
        delay = interval * 2.0 ** min(attempts - 1, 30)
        return min(delay * (0.5 + random.random()), self.cfg.reconnect_max_s)

    def _hello_soon(self) -> None:
        """Handshake again, once: pending knocks are not multiplied by a burst of refusals."""
        if self.state == "up":
            self.state = "down"
            self._hello_attempts = 0
            self._next_beat = min(self._next_beat, time.monotonic())

    def _hello(self) -> list:
        # `held_from`: the oldest chunk this actor still holds. A learner that lacks older ones (a
        # fresh run directory) learns they are gone instead of asking for them forever.
        held_from = self._unacked[0][0] if self._unacked else self.durable_through + 1
        return encode(Message(MessageType.HELLO, actor=self.actor_id,
                              fields={**self._hello_fields, "held_from": held_from,
                                      "param_version": self.params_version}))

    def _try_send(self, dealer: zmq.Socket, frames: list) -> bool:
        try:
            dealer.send_multipart(frames, zmq.NOBLOCK, copy=False)
            return True
        except zmq.ZMQError:  # not connected (IMMEDIATE) or the queue is full: resent later
            return False

    def _take_outbox(self) -> None:
        while True:
            try:
                entry = self._outbox.get_nowait()
            except queue.Empty:
                return
            self._unacked.append(entry)
            with self._count_lock:
                self._unacked_steps += entry[1]
                self._queued_steps -= entry[1]

    def _can_send(self) -> bool:
        return self.state == "up" and not self._pause_until

    def _backlog(self) -> bool:
        return bool(self._unacked) and self._next_send <= self._unacked[-1][0]

    def _pump(self, dealer: zmq.Socket) -> None:
        """Transmit held chunks from the cursor on, in order, until the socket takes no more."""
        if not self._can_send():
            return
        while self._backlog() and self._next_send - 1 - self.received_through < self._window:
            first = self._unacked[0][0]
            if self._next_send < first:
                self._next_send = first
            if self._high_sent <= self.received_through:  # nothing in flight: the timeout starts now
                self._progress_at = time.monotonic()
            if not self._try_send(dealer, self._unacked[self._next_send - first][2]):
                return
            if self._next_send <= self._high_sent:
                self.resends += 1
            self._high_sent = max(self._high_sent, self._next_send)
            self._next_send += 1

    def _rewind(self, sequence: int) -> None:
        """Move the cursor back to `sequence` (the learner asks once per gap, so this cannot storm)."""
        self._next_send = min(self._next_send, max(sequence, 1))
        self._progress_at = time.monotonic()

    def _forget_durable(self) -> None:
        while self._unacked and self._unacked[0][0] <= self.durable_through:
            _, steps, _ = self._unacked.popleft()
            with self._count_lock:
                self._unacked_steps -= steps

    def _marks(self, message: Message) -> None:
        stored = message.fields.get("stored_through")
        durable = message.fields.get("durable_through")
        if _is_int(stored) and _is_int(durable):
            self.stored_through, self.durable_through = stored, durable
            self._forget_durable()
            received = message.fields.get("received_through", stored)
            received = received if _is_int(received) else stored
            if received > self.received_through:
                self._progress_at = time.monotonic()
                self._window = min(self._window + received - self.received_through,
                                   max(1, int(self.cfg.max_queued_messages)))
            # The learner's word, also downwards (it dropped what it had queued: it asks again below).
            self.received_through = received

    def _handle(self, dealer: zmq.Socket, frames: list) -> None:
        """The boundary: nothing the learner (or anything posing as it) sends gets past as an exception."""
        try:
            message = decode(frames)
            self._dispatch(dealer, message)
        except ProtocolError as exc:
            self._bad_log.warning("transport: ignored a malformed message from the learner: %s", exc)
        except Exception as exc:
            log.debug("transport: handling a message from the learner failed", exc_info=True)
            self._bad_log.warning("transport: ignored a message from the learner that could not be handled "
                                  "(%s: %s)", type(exc).__name__, exc)

    def _dispatch(self, dealer: zmq.Socket, message: Message) -> None:
        self._last_heard = time.monotonic()
        self._first_unanswered_hello = 0.0  # the connection carries the learner's word
        kind = message.type
        if kind == MessageType.WELCOME:
            session = str(message.fields.get("session", ""))
            if self.state == "up" and session == self.session:
                self._marks(message)  # an answer to an earlier HELLO of this link: no second resend
                return
            if self.session and session != self.session:
                log.warning("transport: the learner restarted (session %s); resending what it lacks", session)
            if self.state != "up" and self.session:
                self.reconnects += 1
            self.session = session
            self._marks(message)  # before "up": whoever waits for the link reads this learner's marks
            self.state = "up"
            self._hello_attempts = 0
            self._next_beat = time.monotonic() + self.cfg.heartbeat_interval_s
            # A new link: transmit from what this learner holds (forward too, past what it queued).
            self._next_send = self.received_through + 1
            self._progress_at = time.monotonic()
            digest = message.fields.get("backbone_digest", "")
            if digest and digest != self.backbone_digest and self._on_backbone is not None:
                self._try_send(dealer, encode(Message(MessageType.BACKBONE_REQUEST, actor=self.actor_id)))
            else:
                self._backbone_ready.set()
        elif kind == MessageType.REJECT:
            code, reason = message.fields.get("code"), str(message.fields.get("reason", ""))
            if code == INCOMPATIBLE:
                self.state, self.refusal = "refused", reason
                log.error("transport: the learner refused this actor: %s", reason)
            elif code == HELLO_REQUIRED:
                if self.state == "up":
                    log.warning("transport: the learner does not know this actor (it restarted?); handshaking again")
                self._hello_soon()
            elif code == BUSY:
                retry = message.fields.get("retry_after_s")
                retry = float(retry) if isinstance(retry, int | float) and not isinstance(retry, bool) else 0.0
                retry = min(max(retry, 0.01), self.cfg.reconnect_max_s)
                self.busy_pauses += 1
                self._window = max(1, self._window // 2)
                self._pause_until = max(self._pause_until, time.monotonic() + retry)
                resend_from = message.fields.get("resend_from")
                self._rewind(resend_from if _is_int(resend_from) else self.stored_through + 1)
            else:
                self._bad_log.warning("transport: the learner rejected a message: %s", reason)
        elif self.state != "up":
            return  # anything else before a handshake belongs to an earlier session
        elif kind == MessageType.ACK:
            self._marks(message)
            if message.fields.get("resend"):
                resend_from = message.fields.get("resend_from")
                self._rewind(resend_from if _is_int(resend_from) and resend_from > 0 else self.stored_through + 1)
        elif kind == MessageType.HEARTBEAT:
            if message.fields.get("session") != self.session:
                self._hello_soon()
                return
            self._marks(message)
        elif kind == MessageType.PARAMS:
            self._take_params(message)

    def _take_params(self, message: Message) -> None:
        kind = message.fields.get("kind")
        # Copy out of the received frames: they are reused by ZeroMQ once this message is dropped.
        arrays = {k: np.array(v) for k, v in message.arrays.items()}
        try:
            if kind == "backbone":
                if self._on_backbone is not None:
                    self._on_backbone(arrays)
                self._backbone_ready.set()
                return
            version = int(message.fields.get("version", message.sequence))
            decoded = self._decode_params(version, arrays)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("transport: parameters from the learner do not fit this actor's agent: %s", exc)
            self.state, self.refusal = "refused", f"parameters do not fit this actor's agent: {exc}"
            return
        with self._params_lock:
            self._params = (version, decoded)
        self.params_version = version
        self.learner_warmup = bool(message.fields.get("warmup", False))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
