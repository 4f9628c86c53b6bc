"""franky-sim as a test peer: an FR3 (with the Franka Hand) in MuJoCo behind the libfranka
protocol, served on 127.0.0.1 only, in its own process so its 1 kHz loop does not share our GIL.

    with FrankySimPeer.start() as peer:
        robot = FrankyRobot(RealConfig(robot_ip=peer.host, realtime=False))
        peer.pause(1.5)   # stop serving for 1.5 s: libfranka times out after 1 s (a link fault)

Run as a script it is the server; its stdin takes `pause SECONDS` and `quit`.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time

HOST = "127.0.0.1"
_READY = "READY"
_PAUSED = "PAUSED"


class PeerUnavailable(RuntimeError):
    """franky-sim could not start here (missing package, address in use)."""


class FrankySimPeer:
    def __init__(self, process: subprocess.Popen, paused: threading.Event, host: str = HOST):
        self._process = process
        self._paused = paused
        self.host = host

    @classmethod
    def start(cls, timeout_s: float = 60.0, host: str = HOST) -> FrankySimPeer:
        """Serve on `host` (any 127.x.y.z is loopback): a test file with its own address does not
        collide with another franky-sim running on this machine."""
        process = subprocess.Popen(
            [sys.executable, __file__, host],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: list[str] = []
        ready = threading.Event()
        paused = threading.Event()

        def pump() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line.rstrip())
                if line.startswith(_READY):
                    ready.set()
                elif line.startswith(_PAUSED):
                    paused.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        ready.wait(timeout_s)
        if process.poll() is not None or not any(line.startswith(_READY) for line in lines):
            process.kill()
            process.wait(5)
            tail = "\n".join(lines[-8:])
            raise PeerUnavailable(f"franky-sim did not start on {host}:1337:\n{tail}")
        return cls(process, paused, host)

    def _send(self, line: str) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(line + "\n")
        self._process.stdin.flush()

    def pause(self, seconds: float, ack_timeout_s: float = 10.0) -> None:
        """Stop stepping and serving for `seconds` (the arm's link goes silent). Returns once the
        server has stopped, so that the silence is timed from here even when a loaded machine
        delays the server's command reader."""
        self._paused.clear()
        self._send(f"pause {seconds}")
        if not self._paused.wait(ack_timeout_s):
            raise RuntimeError(f"franky-sim did not acknowledge a pause within {ack_timeout_s} s")

    def close(self, wait_s: float = 10.0) -> None:
        """Ask the server to quit; kill it if it has not within `wait_s`."""
        if self._process.poll() is None:
            try:
                self._send("quit")
                self._process.wait(wait_s)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait(5)

    def __enter__(self) -> FrankySimPeer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def start_or_skip(host: str = HOST) -> FrankySimPeer:
    """A franky-sim peer on `host` for a test, or a pytest skip that says why it cannot start."""
    import pytest

    pytest.importorskip("franky", reason="franky-control is not installed")
    pytest.importorskip("franky_sim", reason="franky-sim is not installed")
    try:
        return FrankySimPeer.start(host=host)
    except PeerUnavailable as exc:
        pytest.skip(f"franky-sim cannot start here: {exc}")


def _serve(host: str) -> None:
    from franky_sim import SimulationServer
    from franky_sim.mujoco_simulator import MujocoSimulator

    requested_pauses: queue.SimpleQueue[float] = queue.SimpleQueue()
    stop = threading.Event()

    def read_commands() -> None:
        for line in sys.stdin:
            parts = line.split()
            if parts[:1] == ["pause"]:
                requested_pauses.put(float(parts[1]))
            elif parts[:1] == ["quit"]:
                break
        stop.set()

    threading.Thread(target=read_commands, daemon=True).start()
    with MujocoSimulator(enable_visualization=False) as sim:
        sim.add_robot()
        with SimulationServer(sim, hostname_candidates=[host]) as server:
            print(_READY, host, flush=True)
            pause_until = 0.0
            while not stop.is_set():
                # The serving loop starts the pause (not the reader thread), so the client's
                # acknowledgement marks the moment the link actually went silent.
                try:
                    pause_until = time.monotonic() + requested_pauses.get_nowait()
                    print(_PAUSED, flush=True)
                except queue.Empty:
                    pass
                if time.monotonic() < pause_until:
                    time.sleep(0.001)
                    continue
                server.run_once(True)


if __name__ == "__main__":
    _serve(sys.argv[1] if len(sys.argv) > 1 else HOST)
