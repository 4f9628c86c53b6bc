"""`franka-rl pretrain`: offline Cal-QL (or CQL, IQL, ...) on recorded episodes; see agent/pretrain.py."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from franka_rl.cli import UserError, add_config_arguments
from robot_env.progress import format_duration, format_rate, say

MINARI_PREFIX = "minari:"  # agent.data.sources.MINARI_PREFIX, without importing the data stack

_OVERRIDE = re.compile(r"^[A-Za-z_][\w]*(\.[\w]+)*=")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="offline pre-training (Cal-QL by default) on recorded episodes, LeRobot, Minari or SERL data",
        description=(
            "Pre-train the agent offline with the CQL penalty (Cal-QL with the wsrl preset, the default; "
            "plain CQL with --preset cql) or with IQL (--preset wsrl_iql) on recorded data, holding out "
            "pretrain.holdout_episodes "
            "episodes to check calibration. Writes checkpoints/ (restored one-to-one by the online "
            "learner), metrics.jsonl + tensorboard/, calibration.png and summary.json. Run it again "
            "with the same --out to resume from the latest checkpoint."
        ),
        epilog=(
            "data sources: episode directories, single episode files, LeRobotDataset v3 folders, "
            "SERL/HIL-SERL transition pickles "
            "(*.pkl, with --trust-pickle), local Minari datasets (minari:<dataset id>). KEY=VALUE overrides "
            "may follow --data: an item that is not an existing path and looks like key=value is one.\n"
            "examples:\n"
            "  franka-rl pretrain --data runs/demos --out runs/pretrain\n"
            "  franka-rl pretrain --preset cql --data runs/demos runs/old_run/episodes --steps 50000\n"
            "  franka-rl pretrain --preset wsrl_iql --data runs/demos   # IQL, then `learner --preset wsrl_iql`\n"
            "  franka-rl pretrain --data runs/peg_lerobot   # a LeRobotDataset v3 folder\n"
            "  franka-rl pretrain --data minari:franka/peg-demos-v0 serl_demos.pkl --trust-pickle "
            "agent.sac.batch_size=128"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--data", nargs="+", action="extend", required=True, metavar="PATH",
                        help="episode directories/files, LeRobot dataset folders, SERL *.pkl, or minari:<id> "
                             "(loaded in this order)")
    parser.add_argument("--out", default=None, help="run folder (default: <output_dir>/pretrain)")
    parser.add_argument("--steps", type=int, default=None, help="gradient steps (pretrain.steps, default 200000)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow loading SERL pickles: unpickling runs code, so only files you trust")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    parser.set_defaults(handler=run)


def split_data_and_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """`--data a b key=value` collects the trailing overrides too: give them back to the overrides."""
    data, overrides = [], []
    for item in items:
        is_override = _OVERRIDE.match(item) and not item.startswith(MINARI_PREFIX) and not Path(item).exists()
        (overrides if is_override else data).append(item)
    return data, overrides


def check_data_paths(data: list[str]) -> None:
    """A missing --data path, before JAX is imported (seconds) and before any data is read."""
    for item in data:
        if not item.startswith(MINARI_PREFIX) and not Path(item).exists():
            raise UserError(f"--data {item} does not exist; give episode directories or files, "
                            "LeRobot dataset folders, SERL *.pkl or minari:<id> (record demos with "
                            "`franka-rl record-demos`)")


def run(args: argparse.Namespace) -> int:
    data, extra_overrides = split_data_and_overrides(args.data)
    if not data:
        raise UserError("--data needs at least one episode directory, episode file, *.pkl or minari:<id>")
    check_data_paths(data)
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    from franka_rl.config import load_config

    overrides = [*args.overrides, *extra_overrides]
    if args.steps is not None:
        overrides.append(f"pretrain.steps={args.steps}")
    cfg = load_config(args.config, overrides, default_preset="wsrl")
    out = Path(args.out) if args.out else Path(cfg.output_dir) / "pretrain"

    say("pretrain: loading JAX and the agent")
    from agent.pretrain import (
        check_image_size,
        load_offline_episodes,
        pretrain,
        validate_pretrain_config,
    )
    from franka_rl.assemble import buffer_factory, config_hash, run_config

    validate_pretrain_config(cfg.agent, cfg.pretrain)  # before reading a possibly large dataset
    from agent.devices import use_device
    from franka_rl.assemble import check_backbone_weights, warn_random_backbone

    check_backbone_weights(cfg)

    print(f"pretrain: {use_device(cfg.pretrain.device, 'pretrain.device')}", flush=True)
    warn_random_backbone(cfg, print)

    from agent.data.lerobot_io import layout_from_spaces
    from robot_env import wrapped_spaces

    dataset = load_offline_episodes(data, trust_pickle=args.trust_pickle,
                                    layout=layout_from_spaces(*wrapped_spaces(cfg.task, cfg.env)))
    check_image_size(dataset.episodes, cfg.agent.encoder.image_keys, cfg.env.image_height, cfg.env.image_width)
    skipped = f", skipped {len(dataset.skipped)} corrupt file(s)" if dataset.skipped else ""
    print(f"data: {len(dataset.episodes)} episodes, {dataset.transitions} transitions, "
          f"{dataset.successes} successful{skipped}")
    run_info = {"agent_preset": cfg.agent_preset, "config": args.config or "configs/peg_insertion_sim.yaml",
                "overrides": overrides, "config_hash": config_hash(cfg), "seed": cfg.seed}
    summary = pretrain(cfg.agent, cfg.pretrain, dataset, out, new_buffer=buffer_factory(cfg.agent), seed=cfg.seed,
                       progress=not args.no_progress, run_info=run_info, metrics=cfg.metrics,
                       run_config=run_config(cfg))
    calibration = summary["calibration"]
    this_run = f" ({summary['steps_this_run']} this run)" if summary["steps_this_run"] != summary["steps"] else ""
    print(f"{summary['algorithm']} ({cfg.agent_preset}): {summary['steps']} steps{this_run} in "
          f"{format_duration(summary['elapsed_s'])} "
          f"({format_rate(summary['steps_this_run'], summary['elapsed_s'], 'step')})"
          + (" (interrupted)" if summary["interrupted"] else ""))
    print(f"calibration on {calibration.get('points', 0)} {summary['calibration_on']} steps: "
          f"mean Q - G = {calibration.get('mean_q_minus_g', float('nan')):+.2f}, "
          f"Q >= G at {calibration.get('fraction_q_above_g', float('nan')):.0%}")
    print(f"checkpoint: {summary['checkpoint']}")
    print(f"calibration plot: {summary['calibration_plot']}")
    print(f"summary: {out / 'summary.json'}")
    return 130 if summary["interrupted"] else 0
