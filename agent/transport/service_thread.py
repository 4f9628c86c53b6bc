"""One background thread that owns a process's ZeroMQ sockets, and the inproc pair that wakes it.

ZeroMQ sockets are not thread-safe, so the actor's and the learner's sockets are touched by their
service thread only; other threads queue work and call `_wake()`, which the thread sees as a
readable `wake` socket in its poller. Subclasses implement `_serve()` and call `_serve_ready()` /
`_serve_failed(exc)` once their sockets are set up (or could not be).

The thread never dies silently: whatever escapes `_serve()` after start-up is logged and kept in
`failure`, and `check_alive()` turns it into a `TransportError` for the owning process, which then
stops with that line instead of running on deaf.
"""

from __future__ import annotations

import logging
import threading

import zmq

from agent.transport.security import TransportError

_START_TIMEOUT_S = 10.0
_JOIN_TIMEOUT_S = 5.0

log = logging.getLogger("agent.transport")


class ServiceThread:
    def __init__(self, name: str):
        self.name = name
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._failure: BaseException | None = None
        self._started = False
        self._context = zmq.Context()
        self._wake_address = f"inproc://{name}-wake-{id(self)}"
        self._wake_send = self._context.socket(zmq.PAIR)
        self._wake_send.bind(self._wake_address)
        self._wake_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self):
        """Start the thread and wait until its sockets are up; re-raise what stopped them."""
        if self._thread.is_alive():
            return self
        self._thread.start()
        self._ready.wait(_START_TIMEOUT_S)
        if self._error is not None:
            self._stop_thread()  # release the context now: left to the garbage collector, term() blocks
            raise self._error
        return self

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # kept for check_alive() in the owner thread
            self._failure = exc
            log.critical("transport: the %s thread stopped on %s: %s", self.name, type(exc).__name__, exc,
                         exc_info=exc)
        else:
            if self._started and not self._stop.is_set():
                self._failure = RuntimeError("its loop returned")
        finally:
            self._ready.set()

    @property
    def failure(self) -> BaseException | None:
        """What stopped the thread after it had started (None while it serves or once closed)."""
        return None if self._stop.is_set() else self._failure

    def check_alive(self) -> None:
        """Raise TransportError if the service thread has died: the process cannot hear its peers."""
        failure = self.failure
        if failure is not None:
            raise TransportError(
                f"the {self.name} thread stopped ({type(failure).__name__}: {failure}); this process can no "
                "longer talk to its peers, so it stops. This is a bug: please report it with the log above; "
                "restarting resumes from the last checkpoint") from failure

    def _serve(self) -> None:
        raise NotImplementedError

    def _wake_socket(self) -> zmq.Socket:
        """The thread's end of the wake-up pair (create it on the service thread)."""
        wake = self._context.socket(zmq.PAIR)
        wake.connect(self._wake_address)
        return wake

    def _serve_ready(self) -> None:
        self._started = True
        self._ready.set()

    def _serve_failed(self, exc: BaseException) -> None:
        self._error = exc
        self._ready.set()

    def _wake(self) -> None:
        with self._wake_lock:
            if not self._wake_send.closed:
                try:
                    self._wake_send.send(b"", zmq.NOBLOCK)
                except zmq.Again:  # the thread has not started or has wake-ups queued: it will look
                    pass

    @staticmethod
    def _drain_wake_ups(wake: zmq.Socket) -> None:
        while wake.poll(0):
            wake.recv()

    def _stop_thread(self) -> None:
        """Stop and join the thread, then release the context (sockets close on the thread)."""
        self._stop.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(_JOIN_TIMEOUT_S)
        with self._wake_lock:
            if self._wake_send.closed:
                return
            self._wake_send.close(linger=0)
        self._context.term()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop_thread()
