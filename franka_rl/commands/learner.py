"""`franka-rl learner`: the training process of online fine-tuning; `franka-rl transport-keys`:
CURVE certificates for actor/learner links that leave the host."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from franka_rl.cli import add_config_arguments

    parser = subparsers.add_parser(
        "learner",
        help="train online from the actors' transitions (WSRL by default), publishing parameters",
        description=(
            "Listen for actors (transport.bind_host:transport.port), store their transitions in the replay "
            "buffer exactly once, hold updates until agent.online.warmup_steps online transitions (WSRL "
            "warm-up), then run learner steps (agent.sac.utd critic updates + one actor update each), "
            "publish parameters every learner.publish_every_steps and checkpoint the agent, the buffer and "
            "the transport bookkeeping atomically. Restarted with the same learner.run_dir it resumes from "
            "its last checkpoint and the actors resend what that checkpoint lacks. Ctrl-C or SIGTERM stops "
            "with a final checkpoint. See docs/processes.md."
        ),
        epilog=(
            "examples:\n"
            "  franka-rl learner --pretrained runs/pretrain/checkpoints        # WSRL from a Cal-QL checkpoint\n"
            "  franka-rl learner agent.online.warmup_steps=0                    # SAC from scratch\n"
            "  franka-rl learner --preset rlpd --offline-data runs/demos         # RLPD: half of each batch offline\n"
            "  franka-rl learner transport.bind_host='*' transport.curve=true \\\n"
            "      transport.curve_server_secret_file=keys/learner.key_secret \\\n"
            "      transport.curve_authorized_clients_dir=keys/authorized_actors"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--pretrained", default=None, metavar="DIR",
                        help="start from this pre-trained checkpoint directory (WSRL); without it, from scratch")
    parser.add_argument("--offline-data", nargs="+", default=(), metavar="DIR",
                        help="episode directories, LeRobotDataset v3 folders or minari:<id>, mixed into every "
                             "batch per agent.online.offline_ratio")
    parser.set_defaults(handler=run)

    keys = subparsers.add_parser(
        "transport-keys",
        help="write CURVE certificates for the learner and actors (links that leave the host)",
        description=("Write learner.key/.key_secret, one certificate per actor, and authorized_actors/ with the "
                     "actors' public keys (authorized_actors/<id>.key reserves actor id <id> for that key). "
                     "Secret files are created with mode 0600, public ones 0644. Give the learner its "
                     ".key_secret and authorized_actors/, each actor its own .key_secret and learner.key (see "
                     "docs/processes.md, CURVE). A learner bound to a non-loopback address requires them."),
        epilog="example: franka-rl transport-keys keys --actors actor-0 actor-1",
    )
    keys.add_argument("directory")
    keys.add_argument("--actors", nargs="+", default=["actor-0"], help="actor ids to make certificates for")
    keys.set_defaults(handler=run_keys)



def start_online_process() -> None:
    """What the actor and the learner both set up first: one-line errors, and logs on stderr."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("agent").setLevel(logging.INFO)  # joins, rejections, resends; not JAX/orbax chatter


def run(args: argparse.Namespace) -> int:
    from agent.stop_signals import install_stop_handlers
    from franka_rl.assemble import build_learner
    from franka_rl.config import load_config
    from teleop.recording import StatusLine

    start_online_process()
    cfg = load_config(args.config, args.overrides)
    learner = build_learner(cfg, pretrained_dir=args.pretrained, offline_dirs=args.offline_data)
    install_stop_handlers(learner.request_stop)
    counters = learner.run(StatusLine(interval_s=cfg.learner.status_interval_s))
    last_checkpoint = learner.checkpointer.latest_step()
    print(f"learner stopped after {counters.steps} learner steps; {learner.online_transitions} transitions stored "
          f"({counters.duplicates} duplicates dropped); last checkpoint {last_checkpoint} in "
          f"{learner.checkpointer.directory}")
    write_summary(Path(learner.run_dir) / SUMMARY_FILE, {
        "learner_steps": int(counters.steps), "transitions_stored": int(learner.online_transitions),
        "duplicates_dropped": int(counters.duplicates), "last_checkpoint": last_checkpoint,
        "checkpoint_dir": str(learner.checkpointer.directory), "finished_at": time.time(),
    })
    return 0


#: What a learner that stopped cleanly leaves in its run directory: the pipeline checks that what
#: the actor produced was stored, from this file rather than from the learner's log.
SUMMARY_FILE = "learner_summary.json"


def write_summary(path: Path, summary: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        tmp.replace(path)
    except OSError as exc:  # a full disk: the checkpoint matters, this file only reports on it
        tmp.unlink(missing_ok=True)
        print(f"learner: could not write {path} ({exc.strerror})", file=sys.stderr)


def run_keys(args: argparse.Namespace) -> int:
    from agent.transport.security import generate_keys

    written = generate_keys(args.directory, list(args.actors))
    for name, path in written.items():
        print(f"{name}: {path}")
    print(f"admitted actors (learner's transport.curve_authorized_clients_dir): {args.directory}/authorized_actors")
    return 0
