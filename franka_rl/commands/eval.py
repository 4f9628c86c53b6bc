"""`franka-rl eval`: run a checkpoint's policy from spread initial poses; see agent/evaluation.py."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from franka_rl.cli import UserError, add_config_arguments
from robot_env.progress import say


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint: success rate from spread initial poses, video, contact sheet",
        description=(
            "Load an agent checkpoint (a pretrain or learner run folder, or its checkpoints/ folder), "
            "run eval.episodes episodes with the deterministic policy (agent.sac.deterministic_eval) "
            "from initial poses spread over the reset range (eval.spread: lhs = seeded Latin hypercube "
            "over x, y, z, yaw; random = the env's sampling), and write results.json, a video, a "
            "contact sheet and the episodes (source 'eval'). The agent config (preset and overrides) "
            "must be the one the checkpoint was trained with."
        ),
        epilog=(
            "examples:\n"
            "  franka-rl eval --checkpoint runs/pretrain --episodes 20\n"
            "  franka-rl eval --checkpoint runs/learner --preset cql env.cameras=[] --out runs/eval_cql"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--checkpoint", required=True, help="run folder or checkpoint folder")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--episodes", type=int, default=None, help="episodes (eval.episodes, default 20)")
    parser.add_argument("--out", default=None, help="output folder (default: <checkpoint run>/eval)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def checkpoint_directory(path: Path) -> Path:
    """A run folder holds `checkpoints/`; a checkpoint folder holds numbered steps."""
    if (path / "checkpoints").is_dir():
        return path / "checkpoints"
    if path.is_dir():
        return path
    raise UserError(f"checkpoint folder {path} does not exist: give a pretrain/learner run folder "
                    "or its checkpoints/ folder")


def run(args: argparse.Namespace) -> int:
    # Paths and arguments first: a typo answers at once, not after JAX and the twin have loaded.
    checkpoints = checkpoint_directory(Path(args.checkpoint))
    if args.episodes is not None and args.episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {args.episodes}")
    from franka_rl.config import load_config

    overrides = list(args.overrides)
    if args.episodes is not None:
        overrides.append(f"eval.episodes={args.episodes}")
    cfg = load_config(args.config, overrides)
    if cfg.eval.episodes < 1:
        raise UserError("eval.episodes must be at least 1")

    say("eval: loading JAX and the agent")
    from agent.checkpoint import AgentCheckpointer
    from agent.data.episodes import EpisodeStore, make_metadata
    from agent.evaluation import contact_sheet_rows, evaluate, policy_fn, spread_reset_offsets
    from franka_rl.assemble import build_agent, build_env, check_backbone_weights, config_hash
    from robot_env.media import contact_sheet, save_png, write_video

    try:
        offsets = spread_reset_offsets(cfg.eval.episodes, cfg.task, cfg.seed, cfg.eval.spread)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    out = Path(args.out) if args.out else checkpoints.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)

    check_backbone_weights(cfg)  # before the arm and the cameras are opened
    cameras = list(cfg.env.cameras)
    say(f"eval: building the {'twin' if cfg.mode == 'sim' else 'robot'} env ({cfg.mode})")
    env = build_env(cfg, "eval", render=not cameras and cfg.eval.video_episodes > 0)
    try:
        say("eval: building the agent and restoring the checkpoint")
        template = build_agent(cfg, env)  # shapes from the spaces: no reset move just for a template
        checkpointer = AgentCheckpointer(checkpoints, max_to_keep=None)
        # value_optional: with --preset wsrl_iql, a learner checkpoint (its value net dropped online) too
        agent, _ = checkpointer.restore(template, args.step, cfg.agent, value_optional=True)
        step = checkpointer.restored_step  # the newest usable one when the latest was damaged
        say(f"eval: checkpoint step {step} from {checkpoints}; {cfg.eval.episodes} episodes "
            "(the first action compiles the policy)")
        store = EpisodeStore(out / "episodes", create=True)
        base = {"task": cfg.task.name, "source": "eval", "config_hash": config_hash(cfg), "mode": cfg.mode,
                "checkpoint": str(checkpoints), "checkpoint_step": step, "cameras": cameras}

        def metadata(index, offset):
            return make_metadata(**base, seed=cfg.seed + index,
                                 reset_offset=None if offset is None else [float(x) for x in offset])

        deterministic = bool(cfg.agent.sac.deterministic_eval)
        result = evaluate(env, policy_fn(agent, deterministic, cfg.seed), offsets, episodes=cfg.eval.episodes,
                          seed=cfg.seed, store=store, metadata=metadata, video_episodes=cfg.eval.video_episodes,
                          cameras=cameras, progress=not args.no_progress)
    finally:
        env.close()

    results = {
        **result.summary(),
        "checkpoint": str(checkpoints),
        "checkpoint_step": step,
        "deterministic": deterministic,
        "spread": cfg.eval.spread,
        "episodes_dir": str(out / "episodes"),
        "agent_preset": cfg.agent_preset,
        "config": args.config or "configs/peg_insertion_sim.yaml",
        "overrides": overrides,
    }
    if result.videos:
        frames = [frame for episode in result.videos for frame in episode]
        results["video"] = str(write_video(out / "eval.mp4", frames, fps=cfg.env.control_hz))
        rows, labels = contact_sheet_rows(result)
        results["contact_sheet"] = str(save_png(out / "contact_sheet.png", contact_sheet(rows, labels)))
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"success: {result.successes}/{len(result.outcomes)} = {result.success_rate:.0%}, "
          f"mean length {results['mean_length']:.1f} steps ({'deterministic' if deterministic else 'stochastic'} "
          f"policy, {cfg.eval.spread} spread, checkpoint step {step})"
          + (" (interrupted: finished episodes only)" if result.interrupted else ""))
    for key in ("video", "contact_sheet"):
        if key in results:
            print(f"{key.replace('_', ' ')}: {results[key]}")
    print(f"results: {out / 'results.json'}")
    return 130 if result.interrupted else 0
