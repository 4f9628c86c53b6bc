"""`franka-rl pipeline`: the whole recipe in the twin (franka_rl/pipeline.py, docs/pipeline.md)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _names(values: list[str] | None) -> list[str]:
    return [name for value in values or [] for name in value.split(",") if name]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pipeline",
        help="the whole recipe in the twin: demos, classifier, Cal-QL, WSRL actor + learner, evaluation, report",
        description=(
            "Run every stage of the recipe in the MuJoCo twin as the real commands, in order: "
            "demos (scripted expert) and a mixed-quality offline dataset, reward frames and the "
            "reward classifier, Cal-QL pre-training and its evaluation, WSRL online with a learner and "
            "an actor (rewarded by the classifier) as two processes, evaluation of the learner's "
            "checkpoints at online-step marks from spread initial poses; then write <out>/report/. "
            "A stage whose <out>/<stage>/DONE.json exists is skipped; each stage logs to "
            "<out>/logs/<stage>.log. Sizes come from a profile in configs/pipeline/ (cpu, full)."
        ),
        epilog=(
            "examples:\n"
            "  franka-rl pipeline --profile cpu --out runs/pipeline\n"
            "  franka-rl pipeline --out runs/pipeline --force pretrain      # redo pre-training and what follows\n"
            "  franka-rl pipeline --out runs/pipeline --stages eval_online  # only re-evaluate\n"
            "  franka-rl pipeline --profile full --compare --seeds 0 1 2 --out runs/compare\n"
            "  franka-rl pipeline --profile cpu --set online_steps=1000 sim.hole_clearance=0.0015"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pipeline_arguments(parser, default_out="runs/pipeline")
    parser.set_defaults(handler=run)


def add_pipeline_arguments(parser: argparse.ArgumentParser, *, default_out: str) -> None:
    """The pipeline's options; `franka-rl demo` takes the same ones."""
    parser.add_argument("--profile", default="cpu",
                        help="configs/pipeline/<NAME>.yaml or a path to a profile file (default: cpu)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a profile key, e.g. --set online_steps=1000 (repeatable)")
    parser.add_argument("--out", default=default_out, help=f"output folder (default: {default_out})")
    parser.add_argument("--config", default=None,
                        help="YAML config of every stage (default: configs/peg_insertion_sim.yaml)")
    parser.add_argument("--stages", action="append", metavar="A,B",
                        help="run only these stages (demos, offline, rewards, classifier, pretrain, "
                             "eval_pretrain, online, eval_online); the report is always written")
    parser.add_argument("--force", action="append", metavar="STAGE",
                        help="rerun this stage even if it is done (repeatable or comma-separated)")
    parser.add_argument("--compare", action="store_true",
                        help="run the online stage and its evaluation for every method "
                             "(wsrl, rlpd, calql_finetune, wsrl_nowarmup) over --seeds, sharing stages 1-3")
    parser.add_argument("--methods", nargs="+", default=None, metavar="PRESET",
                        help="methods of --compare (default: wsrl rlpd calql_finetune wsrl_nowarmup)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="seeds of the online stage (default: 0; with --compare: 0 1 2)")
    parser.add_argument("--quiet", action="store_true", help="do not echo the stages' output (logs only)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides given to every stage, after the profile's")


def run(args: argparse.Namespace) -> int:
    from franka_rl.config import agent_presets, load_config
    from franka_rl.pipeline import (
        COMPARE_METHODS,
        PipelineError,
        PipelinePlan,
        check_stage_selectors,
        load_profile,
        run_pipeline,
    )

    only, force = _names(args.stages), _names(args.force)
    check_stage_selectors(only, "--stages")
    check_stage_selectors(force, "--force")
    profile = load_profile(args.profile, [item for item in args.set])
    # Check the config and every override now, before hours of stages, with the same loader.
    cfg = load_config(args.config, [*profile.overrides, *args.overrides])
    if cfg.mode != "sim":
        raise PipelineError("the pipeline runs in the MuJoCo twin: use a config with mode: sim")
    if profile.use_classifier and not cfg.env.cameras:
        raise PipelineError("the reward classifier needs cameras: set env.cameras or "
                            "--set use_classifier=false (ground-truth reward online)")
    methods = args.methods or (list(COMPARE_METHODS) if args.compare else ["wsrl"])
    unknown = sorted(set(methods) - set(agent_presets()))
    if unknown:
        raise PipelineError(f"unknown method(s) {unknown}; available presets: {', '.join(agent_presets())}")
    seeds = args.seeds or ([0, 1, 2] if args.compare else [0])
    plan = PipelinePlan(out=Path(args.out), profile=profile, config=args.config, overrides=list(args.overrides))
    report = run_pipeline(plan, methods=methods, seeds=seeds, force=force,
                          only=only, echo=not args.quiet)
    print(f"report: {report / 'results.md'}")
    return 0
