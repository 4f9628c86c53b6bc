"""`franka-rl train-gym`: the agent on any continuous-action gymnasium env (the loop is agent/gym_trainer.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from franka_rl.cli import UserError, add_config_arguments

_GYM_DEFAULTS_HELP = (
    "train-gym applies these over the config file, before your KEY=VALUE overrides (the robot's "
    "sparse -1/0 shaping and 0.98 discount do not fit dense gym rewards): agent.reward.scale=1 "
    "agent.reward.bias=0 agent.reward.sparse=false agent.sac.discount=0.99 agent.encoder.proprio_dim=0. "
    "--algo sac also sets agent.network.num_critics=2 (REDQ keeps the ensemble of 10); calql/cql set "
    "agent.cql.enabled=true and agent.cql.calql_bound=true/false; iql sets agent.iql.enabled=true and "
    "agent.cql.enabled=false. A --preset applies under both "
    "(so --algo decides the CQL keys), e.g. --preset rlpd gives agent.online.offline_ratio=0.5."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-gym",
        help="train SAC/REDQ online, or CQL/Cal-QL offline then online, on a gymnasium env",
        description=(
            "Train the project's agent on a continuous-action gymnasium env with a Box or Dict "
            "observation (a flat Box becomes the agent's 'state'). The policy's [-1, 1] actions are "
            "rescaled to the env's bounds. Evaluates the deterministic policy every --eval-every steps "
            "and writes metrics.jsonl, tensorboard/, checkpoints/, learning_curve.png and summary.json "
            "to the run directory. Hyperparameters are agent.* config keys. " + _GYM_DEFAULTS_HELP
        ),
        epilog=(
            "examples:\n"
            "  franka-rl train-gym --env Pendulum-v1 --algo sac --steps 20000\n"
            "  franka-rl train-gym --env Pendulum-v1 --algo redq agent.sac.utd=4 agent.network.num_critics=10\n"
            "  franka-rl train-gym --env Pendulum-v1 --algo calql --offline-data runs/pendulum-episodes \\\n"
            "      --offline-steps 20000 --steps 10000 agent.online.warmup_steps=1000\n"
            "  franka-rl train-gym --env Pendulum-v1 --algo sac --preset rlpd --offline-data runs/pendulum-episodes\n"
            "      # RLPD: half of every batch from the offline episodes\n"
            "  franka-rl train-gym --env Pendulum-v1 --algo iql --preset wsrl_iql --offline-data runs/pendulum-episodes \\\n"
            "      --offline-steps 20000 --steps 10000          # WSRL from an IQL initialisation\n"
            "  franka-rl train-gym --env Pendulum-v1 --env-kwargs g=9.81\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--env", required=True, help="gymnasium env id, e.g. Pendulum-v1")
    parser.add_argument("--algo", default="sac", choices=("sac", "redq", "calql", "cql", "iql"),
                        help="sac (2 critics), redq (the config's ensemble), calql/cql/iql (offline pre-training "
                             "then WSRL fine-tuning); default sac")
    parser.add_argument("--steps", type=int, default=20_000, help="online env steps (0: offline only); default 20000")
    parser.add_argument("--random-steps", type=int, default=1_000,
                        help="from scratch: env steps of uniform random actions before updates start (default 1000); "
                             "after offline pre-training agent.online.warmup_steps applies instead (WSRL)")
    parser.add_argument("--offline-data", default=None,
                        help="episode directory (episode_*.npz) or local Minari dataset id, in the env's own units")
    parser.add_argument("--offline-steps", type=int, default=0, help="offline updates (calql/cql); default 0")
    parser.add_argument("--eval-every", type=int, default=2_000,
                        help="evaluate every N env steps (and N offline updates); default 2000")
    parser.add_argument("--eval-episodes", type=int, default=5, help="episodes per evaluation; default 5")
    parser.add_argument("--checkpoint-every", type=int, default=0,
                        help="also checkpoint every N steps (default 0: at the end of each phase only)")
    parser.add_argument("--log-every", type=int, default=500, help="training metrics every N steps; default 500")
    parser.add_argument("--buffer-capacity", type=int, default=1_000_000, help="online replay capacity (transitions)")
    parser.add_argument("--max-episode-steps", type=int, default=None,
                        help="override the env's registered time limit (truncation; bootstrapped through by default)")
    parser.add_argument("--env-kwargs", nargs="+", default=None, metavar="KWARGS",
                        help="keyword arguments for gymnasium.make: one JSON object ('{\"max_episode_steps\": 50}') "
                             "or KEY=VALUE pairs (a=1 b=true c=name; a value is a JSON literal when it parses, "
                             "else a string). Put agent.* overrides before this flag")
    parser.add_argument("--out", default=None,
                        help="run directory (default <output_dir>/train-gym/<env>-<algo>-seed<seed>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in logs)")
    parser.set_defaults(handler=run)


def parse_env_kwargs(values: list[str] | None) -> dict[str, Any]:
    """--env-kwargs as a dict: one JSON object, or KEY=VALUE pairs with JSON-literal values
    (strings when they do not parse). A bad value is one UserError naming the flag."""
    if not values:
        return {}
    if len(values) == 1 and values[0].lstrip().startswith("{"):
        try:
            parsed = json.loads(values[0])
        except json.JSONDecodeError as exc:
            raise UserError(f"--env-kwargs: {values[0]!r} is not valid JSON ({exc})") from None
        if not isinstance(parsed, dict):
            raise UserError(f"--env-kwargs: {values[0]!r} is not a JSON object")
        return parsed
    out: dict[str, Any] = {}
    for item in values:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or not key.strip().isidentifier():
            raise UserError(f"--env-kwargs: {item!r} is not KEY=VALUE (or give one JSON object)")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out[key.strip()] = value
    return out


def run(args: argparse.Namespace) -> int:
    from agent.gym_env import make_gym_env
    from agent.gym_trainer import GYM_DEFAULTS, GymRun, algo_overrides, train_gym
    from franka_rl.assemble import buffer_factory, run_config
    from franka_rl.config import load_config, to_yaml

    for name in ("steps", "random_steps", "offline_steps", "checkpoint_every"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0")
    if args.max_episode_steps is not None and args.max_episode_steps < 1:
        raise UserError("--max-episode-steps must be >= 1")
    if args.log_every < 1 or args.buffer_capacity < 2:
        raise UserError("--log-every must be >= 1 and --buffer-capacity >= 2")
    cfg = load_config(args.config, [*GYM_DEFAULTS, *algo_overrides(args.algo), *args.overrides])
    env_kwargs = parse_env_kwargs(args.env_kwargs)
    make_gym_env(args.env, **env_kwargs).close()  # a bad id stops here, before anything is written
    out = Path(args.out) if args.out else Path(cfg.output_dir) / "train-gym" / f"{args.env}-{args.algo}-seed{cfg.seed}"
    if (out / "metrics.jsonl").exists() or (out / "checkpoints").exists():
        raise UserError(f"{out} already holds a run (metrics.jsonl or checkpoints/); choose another --out "
                        "or move that run away")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    gym_run = GymRun(
        env_id=args.env, run_dir=out, algo=args.algo, env_steps=args.steps, random_steps=args.random_steps,
        offline_data=args.offline_data, offline_steps=args.offline_steps, eval_every=args.eval_every,
        eval_episodes=args.eval_episodes, checkpoint_every=args.checkpoint_every, log_every=args.log_every,
        buffer_capacity=args.buffer_capacity, max_episode_steps=args.max_episode_steps, progress=not args.no_progress,
        env_kwargs=env_kwargs,
    )
    summary = train_gym(gym_run, cfg.agent, buffer_factory(cfg.agent), seed=cfg.seed, metrics=cfg.metrics,
                        run_config=run_config(cfg))
    final = summary["final_eval"]
    if final:
        print(f"final evaluation return {final['return_mean']:.1f} ± {final['return_std']:.1f} "
              f"(best {summary['best_eval_return']:.1f})"
              + (f", success rate {summary['final_success_rate']:.0%}" if summary["final_success_rate"] is not None else "")
              + f" after {summary['env_steps']} env steps, "
              f"{summary['offline_steps']} offline updates, {summary['wall_time_s']:.0f} s")
    print(f"run directory: {out} (metrics.jsonl, learning_curve.png, checkpoints/)")
    return 0
