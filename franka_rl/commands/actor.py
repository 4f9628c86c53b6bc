"""`franka-rl actor`: drive the robot (or the twin) with the learner's current policy."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from franka_rl.cli import add_config_arguments

    parser = subparsers.add_parser(
        "actor",
        help="act with the learner's current policy, record every episode, stream transitions to the learner",
        description=(
            "Build the env from the config (the twin with mode=sim, the arm with mode=real; the reward "
            "classifier with classifier.enabled, teleop interventions with actor.intervention), connect to "
            "the learner at transport.host:transport.port, act at env.control_hz with the newest parameters "
            "it publishes (swapped between steps), write every finished episode to actor.episodes_dir and "
            "stream each step to the learner, which acknowledges what it checkpointed. If the learner goes "
            "away the actor keeps recording (or, with actor.on_learner_loss=finish_episode, finishes the "
            "episode and waits) and resends what the learner lacks when it is back. Ctrl-C or SIGTERM "
            "ends the episode as truncated and stops. See docs/processes.md."
        ),
        epilog=(
            "examples:\n"
            "  franka-rl actor                                           # the twin, actor-0, learner on this host\n"
            "  franka-rl actor actor.actor_id=actor-1 sim.randomization.lighting=0.3\n"
            "  franka-rl actor --config configs/peg_insertion_real.yaml actor.intervention=true \\\n"
            "      teleop.device=spacemouse classifier.enabled=true transport.host=gpu-box"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from agent.stop_signals import install_stop_handlers
    from franka_rl.assemble import build_actor, build_env, check_backbone_weights
    from franka_rl.commands.learner import start_online_process
    from franka_rl.config import load_config
    from teleop.recording import StatusLine

    start_online_process()
    cfg = load_config(args.config, args.overrides)
    check_backbone_weights(cfg)  # before the arm and the cameras are opened
    env = build_env(cfg, "actor")
    try:
        actor = build_actor(cfg, env)
        install_stop_handlers(actor.request_stop)
        stats = actor.run(StatusLine(interval_s=cfg.actor.status_interval_s))
    finally:
        env.close()
    success = sum(stats.successes)
    print(f"actor {cfg.actor.actor_id} stopped: {stats.episodes} episodes ({stats.steps} steps, "
          f"{success}/{len(stats.successes)} recent successes) in {actor.store.directory}")
    return 0
