"""Transport speed over loopback: transitions/s with two 128x128 cameras, and the latency of a
parameter broadcast of the default agent's acting parameters (policy + two camera heads, ~9.8 MB).

    .venv/bin/python benchmarks/transport.py [--transitions 2000] [--broadcasts 20]

The learner end runs in its own process (as in a real run): it takes every delivery, acknowledges
it as stored and durable, and counts. The actor end sends as fast as it can; the rate is measured
from the first send until the learner has acknowledged the last chunk. For the broadcast, the
learner stamps each version with its monotonic clock (one clock per host) and the actor records
when the parameters are converted to device arrays and ready to swap in.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import time

import numpy as np

SPEC = {"state": ((19,), np.dtype(np.float32)), "wrist_1": ((128, 128, 3), np.dtype(np.uint8)),
        "wrist_2": ((128, 128, 3), np.dtype(np.uint8))}
ACTION_DIM = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flat_shapes(tree, prefix: str = "") -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flat_shapes(value, f"{prefix}/{key}" if prefix else str(key)))
        return out
    return {prefix: (tuple(tree.shape), np.dtype(tree.dtype))}


def acting_param_shapes() -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Names and shapes of what travels for the default agent with two cameras (no weights built)."""
    import jax

    from agent.config import AgentConfig
    from agent.core import create_agent
    from agent.param_sync import trainable_acting_params

    example = {k: np.zeros(shape, dtype) for k, (shape, dtype) in SPEC.items()}
    return _flat_shapes(jax.eval_shape(lambda: trainable_acting_params(create_agent(AgentConfig(), example,
                                                                                     ACTION_DIM))))


def learner_side(port: int, broadcasts: int, ready, done) -> None:
    from agent.process_config import TransportConfig
    from agent.transport.server import LearnerServer

    cfg = TransportConfig(port=port)
    rng = np.random.default_rng(0)
    params = {k: rng.normal(size=shape).astype(dtype) for k, (shape, dtype) in acting_param_shapes().items()}
    with LearnerServer(cfg, config_hash="bench", observation_spec=SPEC, action_dim=ACTION_DIM) as server:
        ready.set()
        while not done.is_set():
            for delivery in server.receive(timeout=0.01):
                server.ack(delivery.stream, stored_through=delivery.sequence, durable_through=delivery.sequence)
            if server.connected_actors() and broadcasts and done.wait(0) is False and _due():
                server.publish(time.monotonic_ns() // 1000, params)
                broadcasts -= 1


_last = [0.0]


def _due(interval: float = 0.5) -> bool:
    now = time.monotonic()
    if now - _last[0] >= interval:
        _last[0] = now
        return True
    return False


def make_chunks(count: int, steps: int) -> list:
    from agent.transport.protocol import TransitionChunk

    rng = np.random.default_rng(1)
    frames = rng.integers(0, 255, (steps, 128, 128, 3), dtype=np.uint8)
    chunks = []
    for i in range(count):
        step = (i * steps) % 100
        chunks.append(TransitionChunk(
            episode=i * steps // 100, step=step, actions=np.zeros((steps, ACTION_DIM), np.float32),
            rewards=np.zeros(steps, np.float32), terminated=np.zeros(steps, bool), truncated=np.zeros(steps, bool),
            intervened=np.zeros(steps, bool), success=np.zeros(steps, bool),
            next_observations={"state": np.zeros((steps, 19), np.float32), "wrist_1": frames, "wrist_2": frames},
            first_observation={"state": np.zeros(19, np.float32), "wrist_1": frames[0], "wrist_2": frames[0]}
            if step == 0 else None))
    return chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=2000)
    parser.add_argument("--broadcasts", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="throughput runs per row; the best is shown")
    args = parser.parse_args()

    import jax.numpy as jnp

    from agent.process_config import TransportConfig
    from agent.transport.client import ActorClient

    port = free_port()
    context = mp.get_context("spawn")
    ready, done = context.Event(), context.Event()
    learner = context.Process(target=learner_side, args=(port, args.broadcasts, ready, done), daemon=True)
    learner.start()
    ready.wait(120)
    latencies: list[float] = []

    def decode(version, arrays):
        converted = {k: jnp.asarray(v) for k, v in arrays.items()}
        for value in converted.values():
            value.block_until_ready()
        latencies.append(time.monotonic_ns() // 1000 - version)
        return converted

    client = ActorClient(TransportConfig(port=port), actor_id="bench", config_hash="bench", observation_spec=SPEC,
                         action_dim=ACTION_DIM, decode_params=decode).start()
    deadline = time.monotonic() + 60
    while client.state != "up" and time.monotonic() < deadline:
        time.sleep(0.01)

    bytes_per_transition = sum(int(np.prod(s)) * d.itemsize for s, d in SPEC.values()) + ACTION_DIM * 4 + 8
    print(f"transport over loopback: two 128x128 cameras + 19-D state, {bytes_per_transition / 1e3:.0f} kB per "
          "transition (the next observation; o_0 once per episode)")
    print(f"{'steps per message':>18} {'transitions':>12} {'transitions/s':>14} {'MB/s':>8}   (best of {args.repeats})")
    for steps in (1, 10):
        chunks = make_chunks(max(args.transitions // steps, 1), steps)
        elapsed = float("inf")
        for _ in range(args.repeats):  # best of: other jobs on the host only ever slow a run down
            started = time.perf_counter()
            for chunk in chunks:
                client.send(chunk)
            while client.stored_through < client.last_sequence:
                time.sleep(0.001)
            elapsed = min(elapsed, time.perf_counter() - started)
        count = len(chunks) * steps
        print(f"{steps:>18} {count:>12} {count / elapsed:>14.0f} {count * bytes_per_transition / elapsed / 1e6:>8.1f}")

    while len(latencies) < args.broadcasts and time.monotonic() < deadline + 60:
        time.sleep(0.05)
    size = sum(int(np.prod(s)) * d.itemsize for s, d in acting_param_shapes().values())
    lat = np.array(latencies[1:] or latencies, float) / 1e3  # the first includes connection warm-up
    print(f"\nparameter broadcast: {size / 1e6:.1f} MB of acting parameters, publish -> ready on the actor "
          f"(host->device copy included), {len(lat)} broadcasts")
    print(f"{'p50 ms':>8} {'p90 ms':>8} {'max ms':>8}")
    print(f"{np.percentile(lat, 50):>8.1f} {np.percentile(lat, 90):>8.1f} {lat.max():>8.1f}")
    client.close()
    done.set()
    learner.join(10)


if __name__ == "__main__":
    main()
