"""Cal-QL's calibration property on the twin: its Q-values sit above the data's Monte-Carlo returns,
CQL's below them.

Generates a mixed-quality dataset (the state-only twin's scripted expert with Gaussian action
noise: some episodes succeed, some time out), pre-trains with the `wsrl` preset (Cal-QL) and the
`cql` preset (bound off) on the same data, then prints a table and writes one plot with both
(Q(s, π(s)) against G on held-out episodes, and along a few of them).

    .venv/bin/python benchmarks/calibration.py                      # docs/img/calibration.png
    .venv/bin/python benchmarks/calibration.py --steps 20000 --episodes 60 --hidden 256

Defaults are sized for a busy 2-core CPU (about 10 minutes): 2 critics of width 32, batch 128,
and a faster target (tau 0.05) and learning rate (1e-3) than the robot's; the rest is the robot
config (discount 0.98, alpha 5, min of 2 critics in the target). `--critics 10 --hidden 256
--batch 256` is the robot's size; any other key: `--set KEY=VALUE`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=30, help="expert episodes generated")
    parser.add_argument("--holdout", type=int, default=6, help="episodes held out for calibration")
    parser.add_argument("--noise", type=float, default=0.2, help="expert action noise (std)")
    parser.add_argument("--max-steps", type=int, default=50, help="episode time limit")
    parser.add_argument("--steps", type=int, default=6000, help="gradient steps per preset")
    parser.add_argument("--hidden", type=int, default=32, help="width of the 2 hidden layers")
    parser.add_argument("--critics", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--discount", type=float, default=0.98, help="the robot's discount")
    # A faster target and learning rate than the robot's (0.005, 3e-4) so that a CPU-sized run
    # gets past the optimistic start (Q = 0 > G everywhere) into the regime the property is about.
    parser.add_argument("--tau", type=float, default=0.05)
    parser.add_argument("--lr", type=float, default=1e-3, help="actor and critic learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench_calibration"), help="run folders")
    parser.add_argument("--plot", default=str(REPO / "docs" / "img" / "calibration.png"))
    args = parser.parse_args()

    import sim
    from agent.calibration import calibration_points, calibration_summary, plot_calibration
    from agent.checkpoint import restore_agent
    from agent.core import create_agent
    from agent.data.sim_expert import expert_episodes
    from agent.metrics import read_metrics
    from agent.pretrain import OfflineDataset, example_observation, pretrain, split_holdout
    from franka_rl.assemble import buffer_factory
    from franka_rl.config import load_config

    env = sim.make_state_env(max_episode_steps=args.max_steps)
    started = time.monotonic()
    episodes = list(expert_episodes(env, args.episodes, noise=args.noise, seed=args.seed))
    env.close()
    successes = sum(e.success for e in episodes)
    print(f"dataset: {len(episodes)} episodes ({successes} successful), {sum(map(len, episodes))} transitions, "
          f"expert noise {args.noise}, generated in {time.monotonic() - started:.0f} s")
    train, held_out = split_holdout(episodes, args.holdout)
    overrides = [
        f"agent.network.critic_hidden_dims=[{args.hidden},{args.hidden}]",
        f"agent.network.actor_hidden_dims=[{args.hidden},{args.hidden}]",
        f"agent.network.num_critics={args.critics}",
        f"agent.sac.batch_size={args.batch}",
        f"agent.sac.discount={args.discount}",
        f"agent.sac.tau={args.tau}",
        f"agent.sac.critic_lr={args.lr}",
        f"agent.sac.actor_lr={args.lr}",
        f"pretrain.steps={args.steps}",
        f"pretrain.holdout_episodes={args.holdout}",
        f"pretrain.log_every={max(1, args.steps // 20)}",
        f"pretrain.checkpoint_every={args.steps}",
        *args.set,
    ]
    runs, rows = {}, []
    for preset, label in (("wsrl", "Cal-QL"), ("cql", "CQL")):
        cfg = load_config(overrides=overrides, preset=preset)
        run_dir = Path(args.out) / preset
        summary = pretrain(cfg.agent, cfg.pretrain, OfflineDataset(episodes, ["generated"]), run_dir,
                           new_buffer=buffer_factory(cfg.agent), seed=args.seed, progress=sys.stderr.isatty(), run_info={"agent_preset": preset})
        agent, _ = restore_agent(run_dir / "checkpoints",
                                 create_agent(cfg.agent, example_observation(episodes[0]), 6, seed=args.seed))
        held = calibration_points(agent, held_out, cfg.agent.reward.sparse)
        runs[label] = held
        on_held = calibration_summary(*held)
        on_train_policy = calibration_summary(*calibration_points(agent, train, cfg.agent.reward.sparse))
        on_train_data = calibration_summary(*calibration_points(agent, train, cfg.agent.reward.sparse, "data"))
        metrics = [r for r in read_metrics(run_dir / "metrics.jsonl") if "pretrain/critic_loss" in r]
        tail = metrics[-max(1, len(metrics) // 4):]
        bound_rate = sum(r.get("pretrain/calql_bound_rate") or 0.0 for r in tail) / len(tail)
        rows.append((label, summary["steps"], on_held["mean_q_minus_g"], on_held["fraction_q_above_g"],
                     on_train_policy["mean_q_minus_g"], on_train_data["mean_q_minus_g"],
                     bound_rate if label == "Cal-QL" else float("nan"), summary["steps_per_s"]))
    plot = plot_calibration(runs, args.plot, episodes_to_show=3,
                            title=f"Cal-QL vs CQL after {args.steps} steps on {len(train)} noisy-expert episodes "
                                  f"(held-out: {len(held_out)})")

    header = ("method", "steps", "held-out Q(s,π)-G", "Q>=G", "train Q(s,π)-G", "train Q(s,a)-G",
              "bound rate", "steps/s")
    print()
    print(" | ".join(f"{h:>17}" for h in header))
    print(" | ".join("-" * 17 for _ in header))
    for label, steps, held_gap, above, train_gap, data_gap, bound, rate in rows:
        bound_text = "-" if bound != bound else f"{bound:.2f}"
        print(" | ".join(f"{v:>17}" for v in (label, steps, f"{held_gap:+.2f}", f"{above:.0%}", f"{train_gap:+.2f}",
                                               f"{data_gap:+.2f}", bound_text, f"{rate:.0f}")))
    print(f"\nplot: {plot}  (run folders under {args.out}; total {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
