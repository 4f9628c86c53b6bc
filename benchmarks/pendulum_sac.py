"""SAC on Pendulum-v1 through `franka-rl train-gym`: evaluation return vs env steps, and wall time.

    .venv/bin/python benchmarks/pendulum_sac.py [--steps 20000] [--utd 2] [--critics 2] [--seed 0]

Runs the CLI exactly as a user would (the command is printed first), then prints one table row
per evaluation (5 episodes, deterministic policy) and copies the learning curve to
docs/img/pendulum_sac.png. Target (issue 3): mean evaluation return better than -250 within 20k
env steps. Everything not given here is the repo's agent default plus train-gym's gym defaults
(discount 0.99, rewards unshaped, dense MC returns): batch 256, [256, 256] tanh MLPs with
LayerNorm, lr 3e-4, tau 0.005, initial temperature 0.01, target entropy -d/2.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.metrics import read_metrics  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--utd", type=int, default=2, help="critic updates per env step (agent.sac.utd)")
    parser.add_argument("--critics", type=int, default=2, help="ensemble size (agent.network.num_critics)")
    parser.add_argument("--eval-every", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="run directory (default: a fresh temporary one)")
    parser.add_argument("--plot", default=str(REPO / "docs" / "img" / "pendulum_sac.png"),
                        help="where to copy the learning curve ('' to skip)")
    args = parser.parse_args()

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="pendulum_sac_")) / "run"
    algo = "sac" if args.critics == 2 else "redq"
    command = [
        str(REPO / ".venv" / "bin" / "franka-rl"), "train-gym", "--env", "Pendulum-v1", "--algo", algo,
        "--steps", str(args.steps), "--eval-every", str(args.eval_every), "--eval-episodes", "5",
        "--out", str(out), f"seed={args.seed}", f"agent.sac.utd={args.utd}",
        f"agent.network.num_critics={args.critics}",
    ]
    print("$", shlex.join(command), flush=True)
    result = subprocess.run(command, cwd=REPO)
    if result.returncode != 0:
        return result.returncode

    rows = [r for r in read_metrics(out / "metrics.jsonl") if r.get("eval/return_mean") is not None]
    print()
    print(f"SAC on Pendulum-v1: {args.critics} critics, UTD {args.utd}, batch 256, seed {args.seed}")
    print(f"{'env steps':>10} | {'eval return':>14} | {'wall time (s)':>13}")
    print(f"{'-' * 10}-+-{'-' * 14}-+-{'-' * 13}")
    for r in rows:
        print(f"{r['step']:>10} | {r['eval/return_mean']:>8.1f} ± {r['eval/return_std']:<4.0f} | "
              f"{r['eval/wall_time_s']:>13.0f}")
    reached = [r for r in rows if r["eval/return_mean"] > -250]
    if reached:
        print(f"\nfirst evaluation better than -250: {reached[0]['step']} env steps "
              f"({reached[0]['eval/wall_time_s']:.0f} s)")
    else:
        print("\nno evaluation better than -250")
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "learning_curve.png", args.plot)
        print(f"learning curve: {args.plot} (run directory {out})")
    return 0 if reached else 1


if __name__ == "__main__":
    sys.exit(main())
