"""One background thread that owns a process's ZeroMQ sockets, and the inproc pair that wakes it.

ZeroMQ sockets are not thread-safe, so the actor's and the learner's sockets are touched by their
service thread only; other threads queue work and call `_wake()`, which the thread sees as a
readable `wake` socket in its poller. Subclasses implement `_serve()` and call `_serve_ready()` /
`_serve_failed(exc)` once their sockets are set up (or could not be).
"""

from __future__ import annotations

import threading

import zmq

_START_TIMEOUT_S = 10.0
_JOIN_TIMEOUT_S = 5.0


class ServiceThread:
    def __init__(self, name: str):
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._context = zmq.Context()
        self._wake_address = f"inproc://{name}-wake-{id(self)}"
        self._wake_send = self._context.socket(zmq.PAIR)
        self._wake_send.bind(self._wake_address)
        self._wake_lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    def start(self):
        """Start the thread and wait until its sockets are up; re-raise what stopped them."""
        if self._thread.is_alive():
            return self
        self._thread.start()
        self._ready.wait(_START_TIMEOUT_S)
        if self._error is not None:
            raise self._error
        return self

    def _serve(self) -> None:
        raise NotImplementedError

    def _wake_socket(self) -> zmq.Socket:
        """The thread's end of the wake-up pair (create it on the service thread)."""
        wake = self._context.socket(zmq.PAIR)
        wake.connect(self._wake_address)
        return wake

    def _serve_ready(self) -> None:
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
            self._wake_send.close(linger=0)
        self._context.term()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop_thread()
