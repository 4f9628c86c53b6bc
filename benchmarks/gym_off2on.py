"""Off2On beside WSRL on a gymnasium task through `franka-rl train-gym`, from offline data the
project makes itself.

    .venv/bin/python benchmarks/gym_off2on.py [--env Pendulum-v1] [--seeds 0 1] [--offline-steps 3000]
                                              [--steps 3000] [--out DIR] [--set KEY=VALUE ...]

`--set` overrides go to both methods' runs alike (e.g. smaller networks for a 2-core CPU, where
the presets' 256-wide critics with CQL's sampled actions cost about half a second per update).

1. Data: SAC trains for `--data-steps` env steps (train-gym, as a user runs it); its final policy,
   with Gaussian action noise of std `--noise` (on the [-1, 1] policy scale), records
   `--episodes` episodes into an episode folder (actions in the env's units, as a recorder stores
   them). A mediocre policy made noisier: data that pre-training can learn from and online
   fine-tuning can improve on.
2. For each seed, two train-gym runs on that folder, same offline and online budgets:
   - WSRL: `--algo calql` (Cal-QL pre-training), then SAC with the frozen policy acting for
     `agent.online.warmup_steps` (here `--warmup`), no offline data online;
   - Off2On: `--algo cql --preset off2on`: N = 4 CQL agents pre-trained as one vmapped ensemble,
     then SAC on balanced replay.
3. The table: evaluation return (5 deterministic episodes) after pre-training and at each
   `--eval-every` mark online, per method and seed, and the mean over seeds; wall-clock per run.
   Off2On's balanced-replay metrics at the end (offline fraction, Q AUROC) beside it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.metrics import read_metrics  # noqa: E402

CLI = str(REPO / ".venv" / "bin" / "franka-rl")


def run(command: list[str]) -> float:
    print("$", shlex.join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    return time.perf_counter() - started


def record_offline_data(env_id: str, run_dir: Path, out: Path, episodes: int, noise: float, seed: int) -> dict:
    """Roll out the SAC run's final checkpoint with action noise into an episode folder."""
    import gymnasium as gym
    import jax

    from agent.checkpoint import AgentCheckpointer
    from agent.core import create_agent, eval_actions
    from agent.data.episodes import Episode, EpisodeStore, make_metadata
    from franka_rl.config import load_config

    cfg = load_config(str(run_dir / "config.yaml"), []).agent
    env = gym.make(env_id)
    low, high = env.action_space.low, env.action_space.high
    obs, _ = env.reset(seed=seed)
    template = create_agent(cfg, {"state": np.asarray(obs, np.float32)}, int(env.action_space.shape[0]))
    agent, _ = AgentCheckpointer(run_dir / "checkpoints").restore(template, None, cfg)
    store = EpisodeStore(out, create=True)
    rng = np.random.default_rng(seed)
    returns = []
    for index in range(episodes):
        obs, _ = env.reset(seed=seed + index)
        observations, actions, rewards = [np.asarray(obs, np.float32)], [], []
        done = False
        while not done:
            unit = np.asarray(eval_actions(agent, jax.tree.map(lambda x: x[None], {"state": observations[-1]}))[0])
            unit = np.clip(unit + rng.normal(0.0, noise, unit.shape), -1.0, 1.0)
            action = (low + (unit + 1.0) * 0.5 * (high - low)).astype(np.float32)
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(np.asarray(obs, np.float32))
            actions.append(action)
            rewards.append(reward)
            done = terminated or truncated
        steps = len(actions)
        store.write(Episode(
            observations={"state": np.asarray(observations, np.float32)}, actions=np.asarray(actions, np.float32),
            rewards=np.asarray(rewards, np.float32), terminated=np.eye(1, steps, steps - 1, dtype=bool)[0] & terminated,
            truncated=np.eye(1, steps, steps - 1, dtype=bool)[0] & truncated, intervened=np.zeros(steps, bool),
            metadata=make_metadata(task=env_id, source="policy"),
        ))
        returns.append(float(np.sum(rewards)))
    env.close()
    return {"episodes": episodes, "return_mean": float(np.mean(returns)), "return_std": float(np.std(returns))}


def evaluations(run_dir: Path) -> tuple[float | None, dict[int, float]]:
    rows = read_metrics(run_dir / "metrics.jsonl")
    offline = [r["offline_eval/return_mean"] for r in rows if "offline_eval/return_mean" in r]
    online = {r["step"]: r["eval/return_mean"] for r in rows if "eval/return_mean" in r}
    return (offline[-1] if offline else None), online


def last_metric(run_dir: Path, key: str) -> float | None:
    values = [r[key] for r in read_metrics(run_dir / "metrics.jsonl") if key in r]
    return values[-1] if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--data-steps", type=int, default=2500, help="SAC env steps behind the offline data")
    parser.add_argument("--episodes", type=int, default=30, help="offline episodes recorded")
    parser.add_argument("--noise", type=float, default=0.5, help="action noise std of the recording policy")
    parser.add_argument("--offline-steps", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=3000, help="online env steps")
    parser.add_argument("--warmup", type=int, default=500, help="WSRL warm-up steps")
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--out", default=None)
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                        help="config override for both methods' runs (repeatable)")
    args = parser.parse_args()

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gym_off2on_"))
    data_run, data = out / "data_sac", out / "offline_episodes"
    if not (data_run / "summary.json").is_file():
        run([CLI, "train-gym", "--env", args.env, "--algo", "sac", "--steps", str(args.data_steps),
             "--eval-every", str(args.data_steps), "--out", str(data_run), "--no-progress", "seed=100"])
    if not data.is_dir():
        recorded = record_offline_data(args.env, data_run, data, args.episodes, args.noise, seed=100)
        (out / "offline_data.json").write_text(json.dumps(recorded, indent=2))
    recorded = json.loads((out / "offline_data.json").read_text())
    print(f"offline data: {recorded['episodes']} episodes, return {recorded['return_mean']:.1f} ± "
          f"{recorded['return_std']:.1f} (SAC after {args.data_steps} steps, action noise {args.noise})", flush=True)

    common = ["--env", args.env, "--offline-data", str(data), "--offline-steps", str(args.offline_steps),
              "--steps", str(args.steps), "--eval-every", str(args.eval_every), "--eval-episodes", "5",
              "--no-progress"]
    methods = {  # (options, overrides)
        "wsrl": (["--algo", "calql"], [f"agent.online.warmup_steps={args.warmup}"]),
        "off2on": (["--algo", "cql", "--preset", "off2on"], []),
    }
    for seed in args.seeds:
        for method, (options, overrides) in methods.items():
            run_dir = out / f"{method}_s{seed}"
            if not (run_dir / "summary.json").is_file():
                run([CLI, "train-gym", *common, *options, "--out", str(run_dir), *args.overrides, *overrides,
                     f"seed={seed}"])

    marks = list(range(args.eval_every, args.steps + 1, args.eval_every))
    print()
    print(f"{args.env}: offline data {recorded['episodes']} episodes (return {recorded['return_mean']:.0f}); "
          f"{args.offline_steps} offline updates, then {args.steps} online env steps; eval = 5 episodes"
          + (f"; both with {' '.join(args.overrides)}" if args.overrides else ""))
    print("| method | seed | after pre-training | " + " | ".join(f"@ {m}" for m in marks)
          + " | wall-clock | offline fraction (last) | Q AUROC (last) |")
    print("|---|---:|---:|" + "---:|" * len(marks) + "---:|---:|---:|")
    for method in methods:
        table = []
        for seed in args.seeds:
            run_dir = out / f"{method}_s{seed}"
            offline, online = evaluations(run_dir)
            summary = json.loads((run_dir / "summary.json").read_text())
            table.append([offline, *[online.get(m) for m in marks]])
            fraction = last_metric(run_dir, "train/off2on/offline_fraction")
            auroc = last_metric(run_dir, "train/off2on/q_auroc")
            print(f"| {method} | {seed} | " + " | ".join(f"{v:.1f}" if v is not None else "–" for v in table[-1])
                  + f" | {summary['wall_time_s'] / 60:.1f} min | "
                  + (f"{fraction:.2f}" if fraction is not None else "–") + " | "
                  + (f"{auroc:.2f}" if auroc is not None else "–") + " |")
        means = [np.mean([row[i] for row in table if row[i] is not None]) if any(row[i] is not None for row in table)
                 else None for i in range(len(marks) + 1)]
        print(f"| **{method} mean** | {len(args.seeds)} | " + " | ".join(f"{v:.1f}" if v is not None else "–"
                                                                        for v in means) + " | | | |")
    print(f"\nruns in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
