"""Control-period overrun of the actor at 10 Hz with policy inference in the loop.

    .venv/bin/python benchmarks/actor_loop.py [--steps 300]

Runs the real actor (`agent.actor.Actor`: parameter swaps, stochastic policy, episode recording,
streaming) against the twin, paced to wall-clock deadlines as `FrankaEnv` paces the real arm:
each step first waits for the next 100 ms boundary (recording by how much the loop arrived late),
then steps the env. A learner stand-in in another process acknowledges everything and publishes
fresh parameters every second, so swaps happen during the run. The twin's physics and rendering
count against the period here (on the arm, frames come from camera threads), so the figures are
conservative.

Policies: "state only" (MLP on the 19-D state) and "two 128x128 cameras" (the default agent:
ResNet-10 backbone on both frames, spatial-embedding heads, MLP; every step encodes the frames).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import tempfile
import time

import gymnasium as gym
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PacedEnv(gym.Wrapper):
    """Steps on monotonic 1/control_hz deadlines; records lateness, actor work and env step time."""

    def __init__(self, env: gym.Env, hz: float):
        super().__init__(env)
        self.period = 1.0 / hz
        self.deadline: float | None = None
        self.returned_at = 0.0
        self.overruns: list[float] = []
        self.actor_work: list[float] = []
        self.env_step: list[float] = []

    def reset(self, **kwargs):
        out = self.env.reset(**kwargs)
        self.deadline = None
        self.returned_at = time.monotonic()
        return out

    def step(self, action):
        now = time.monotonic()
        self.actor_work.append(now - self.returned_at)
        if self.deadline is None:
            self.deadline = now + self.period
        late = now - self.deadline
        self.overruns.append(max(late, 0.0))
        if late < 0:
            time.sleep(-late)
            self.deadline += self.period
        else:
            self.deadline = now + self.period  # like FrankaEnv: restart the grid after an overrun
        started = time.monotonic()
        out = self.env.step(action)
        self.returned_at = time.monotonic()
        self.env_step.append(self.returned_at - started)
        return out


def learner_stand_in(cfg, shapes, ready, done) -> None:
    from agent.transport.server import LearnerServer
    from franka_rl.assemble import config_hash, observation_spec

    rng = np.random.default_rng(0)
    params = {k: (0.01 * rng.normal(size=shape)).astype(dtype) for k, (shape, dtype) in shapes.items()}
    spec, action_dim = observation_spec(cfg)
    with LearnerServer(cfg.transport, config_hash=config_hash(cfg), observation_spec=spec,
                       action_dim=action_dim) as server:
        server.publish(0, params)
        ready.set()
        version, last = 0, time.monotonic()
        while not done.is_set():
            for delivery in server.receive(timeout=0.01):
                server.ack(delivery.stream, stored_through=delivery.sequence, durable_through=delivery.sequence)
            if time.monotonic() - last >= 1.0:
                version, last = version + 1, time.monotonic()
                server.publish(version, params)


def acting_shapes(cfg) -> dict:
    import jax

    from agent.param_sync import trainable_acting_params
    from franka_rl.assemble import build_agent

    tree = jax.eval_shape(lambda: trainable_acting_params(build_agent(cfg)))

    def flat(node, prefix=""):
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                out.update(flat(value, f"{prefix}/{key}" if prefix else str(key)))
            return out
        return {prefix: (tuple(node.shape), np.dtype(node.dtype))}

    return flat(tree)


def measure(name: str, overrides: list[str], steps: int) -> dict:
    from franka_rl.assemble import build_actor, build_env
    from franka_rl.config import load_config

    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(None, [f"output_dir={out}", f"transport.port={free_port()}", "task.max_episode_steps=50",
                                 f"actor.max_episodes={max(steps // 50, 1)}", *overrides])
        context = mp.get_context("spawn")
        ready, done = context.Event(), context.Event()
        stand_in = context.Process(target=learner_stand_in, args=(cfg, acting_shapes(cfg), ready, done), daemon=True)
        stand_in.start()
        ready.wait(120)
        env = PacedEnv(build_env(cfg, "actor"), cfg.env.control_hz)
        try:
            actor = build_actor(cfg, env, report=lambda message: None)
            swaps = []
            take = actor._swap_params
            actor._swap_params = lambda: swaps.append(take()) or swaps[-1]
            actor.run()  # the actor's own warm-up compiles its policy: nothing is compiled here
        finally:
            env.close()
            done.set()
            stand_in.join(10)
    # Every step counts, the first ones too: a compile inside them is what users would feel.
    return {
        "name": name, "steps": len(env.overruns), "swaps": int(sum(swaps)),
        "work": np.array(env.actor_work) * 1e3, "env": np.array(env.env_step) * 1e3,
        "overrun": np.array(env.overruns) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    rows = [
        measure("state only", ["env.cameras=[]"], args.steps),
        measure("two 128x128 cameras", [], args.steps),
    ]
    print(f"actor loop at 10 Hz (100 ms period), {args.steps} steps per policy; milliseconds")
    print(f"{'policy':<22} {'actor work p50/p99':>19} {'env step p50/p99':>17} {'overrun p50/p99':>16} "
          f"{'late steps':>11} {'param swaps':>12}")
    for row in rows:
        w, e, o = row["work"], row["env"], row["overrun"]
        print(f"{row['name']:<22} {np.percentile(w, 50):>8.1f}/{np.percentile(w, 99):<10.1f}"
              f"{np.percentile(e, 50):>7.1f}/{np.percentile(e, 99):<9.1f}"
              f"{np.percentile(o, 50):>7.2f}/{np.percentile(o, 99):<8.2f}"
              f"{100 * np.mean(o > 0):>10.1f}% {row['swaps']:>12}")
    print("target: overrun p99 <= 2 ms")


if __name__ == "__main__":
    main()
