"""Live transport peers on loopback for the transport tests: a fast-heartbeat config on a free
port, a started learner server and actor client for the fuzzing module's observation layout, a
TCP relay that can stall its connections, a bounded wait, and a thread's current stack."""

from __future__ import annotations

import socket
import sys
import threading
import time
import traceback

from agent.process_config import TransportConfig
from agent.transport import ActorClient, LearnerServer
from agent.transport.fuzzing import ACTION_DIM, CONFIG_HASH, SPEC, free_port


def cfg(**kw) -> TransportConfig:
    return TransportConfig(**{"port": free_port(), "heartbeat_interval_s": 0.05, "heartbeat_timeout_s": 1.0, **kw})


def server(c: TransportConfig, **kw) -> LearnerServer:
    return LearnerServer(c, config_hash=CONFIG_HASH, observation_spec=SPEC, action_dim=ACTION_DIM, **kw).start()


def client(c: TransportConfig, actor_id: str = "a0", **kw) -> ActorClient:
    return ActorClient(c, actor_id=actor_id, config_hash=CONFIG_HASH, observation_spec=SPEC,
                       action_dim=ACTION_DIM, **kw).start()


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def thread_stack(thread: threading.Thread) -> str:
    """Where `thread` is right now, innermost frames last: for a failure message that must tell a
    stuck thread from one that runs but hears nothing."""
    frame = sys._current_frames().get(thread.ident)
    if frame is None:
        return f"thread {thread.name}: not running\n"
    return f"thread {thread.name}:\n" + "".join(traceback.format_stack(frame, limit=10))


class StallingRelay:
    """A loopback TCP relay to `target_port` that can stall: after `stall()`, the connections open
    at that moment stay open but carry nothing more either way (as a stalled NAT entry or middlebox
    would); connections made later are relayed normally."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.connections = 0
        self._stalled_below = 0  # connections numbered below this carry nothing
        self._sockets: list[socket.socket] = []
        self._closed = False
        self._threads = [threading.Thread(target=self._accept, name="relay-accept", daemon=True)]
        self._threads[0].start()

    def stall(self) -> None:
        self._stalled_below = self.connections + 1

    def _accept(self) -> None:
        while not self._closed:
            try:
                near, _ = self._listener.accept()
                far = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                return
            self.connections += 1
            self._sockets += [near, far]
            for src, dst in ((near, far), (far, near)):
                pump = threading.Thread(target=self._pump, args=(src, dst, self.connections), name="relay-pump",
                                        daemon=True)
                self._threads.append(pump)
                pump.start()

    def _pump(self, src: socket.socket, dst: socket.socket, number: int) -> None:
        try:
            while data := src.recv(65536):
                if number >= self._stalled_below:
                    dst.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        """Close every socket and join the threads: a blocked accept() or recv() returns only
        after a shutdown (closing alone does not wake it), so none outlives the test."""
        self._closed = True
        for sock in [self._listener, *self._sockets]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # not connected
                pass
            sock.close()
        for thread in self._threads:
            thread.join(5.0)

    def __enter__(self) -> StallingRelay:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
