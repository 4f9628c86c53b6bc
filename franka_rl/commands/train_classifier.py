"""`franka-rl train-classifier`: train the reward classifier on labelled frames and report on it."""

from __future__ import annotations

import argparse
from pathlib import Path

from franka_rl.cli import UserError, add_config_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-classifier",
        help="train the success classifier on record-rewards data, pick its threshold, report",
        description=(
            "Train the reward classifier (a frozen image backbone per camera and a small head) on "
            "frames recorded by `franka-rl record-rewards`. Whole episodes are held out for "
            "validation; the threshold is the lowest whose validation false-positive rate is at "
            "most classifier.target_fpr. Writes the model (classifier.msgpack + classifier.json), "
            "metrics.json, metrics.jsonl/tensorboard (training curves) and roc.png, confusion.png, "
            "worst_frames.png to --out (docs/reward_classifier.md)."
        ),
        epilog=(
            "examples:\n"
            "  franka-rl train-classifier --data runs/reward_frames --out runs/classifier\n"
            "  franka-rl train-classifier --data runs/rewards_a --data runs/rewards_b \\\n"
            "      classifier.target_fpr=0.005 classifier.steps=5000"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--data", action="append", required=True, metavar="DIR",
                        help="episode directory with labelled frames (repeat for several)")
    parser.add_argument("--out", default=None,
                        help="output directory (default: classifier.model_dir or <output_dir>/classifier)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a classifier already in --out (otherwise that is an error)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)


def check_config(cfg) -> None:
    from reward_classifier.config import POOLINGS

    c = cfg.classifier
    if not c.image_keys:
        raise UserError("classifier.image_keys is empty: name the cameras to classify from, e.g. [wrist_1,wrist_2]")
    if c.pooling not in POOLINGS:
        raise UserError(f"classifier.pooling must be one of {POOLINGS}, got '{c.pooling}'")
    if not 0.0 <= c.target_fpr <= 1.0 or not 0.0 <= c.min_threshold < 1.0:
        raise UserError("classifier.target_fpr must be in [0, 1] and classifier.min_threshold in [0, 1)")
    if c.steps < 1 or c.batch_size < 2 or c.eval_every < 1 or c.feature_batch_size < 1:
        raise UserError("classifier.steps, eval_every, feature_batch_size must be >= 1 and batch_size >= 2")


def run(args: argparse.Namespace) -> int:
    from franka_rl.config import load_config

    cfg = load_config(args.config, list(args.overrides))
    check_config(cfg)
    from franka_rl.assemble import check_backbone_weights

    check_backbone_weights(cfg, policy=False, classifier=True)  # before reading the frames
    out = Path(args.out or cfg.classifier.model_dir or Path(cfg.output_dir) / "classifier")

    from reward_classifier.saved_model import META_FILE

    if (out / META_FILE).exists() and not args.overwrite:
        raise UserError(f"{out} already holds a classifier; pass --overwrite to replace it, or choose another --out")

    from agent.metrics import MetricsWriter
    from reward_classifier.data import load_labelled_frames
    from reward_classifier.report import write_report
    from reward_classifier.saved_model import save_classifier
    from reward_classifier.train import train_classifier

    frames = load_labelled_frames(args.data, cfg.classifier.image_keys)
    positives = int(frames.labels.sum())
    print(f"{len(frames)} frames ({positives} success, {len(frames) - positives} failure) in "
          f"{len(set(frames.episode.tolist()))} episodes; labels from {frames.label_sources}")
    from franka_rl.assemble import run_config

    with MetricsWriter(out, wandb=cfg.metrics.wandb, config=run_config(cfg), job_type="train-classifier") as writer:
        trained = train_classifier(frames, cfg.classifier, log=writer.log, progress=not args.quiet)
    save_classifier(out, trained.backbone_params, trained.head_params,
                    {**trained.metadata, "trained_on": [str(Path(d).resolve()) for d in args.data]})
    extra = {k: v for k, v in trained.report.items() if k not in ("threshold",)}
    metrics = write_report(out, trained.validation, trained.validation_probabilities, trained.metadata["threshold"],
                           {**extra, "split": "validation", "data": [str(d) for d in args.data]},
                           title="validation (held-out episodes)")
    print(f"validation ({metrics['episodes']} held-out episodes, {metrics['positives']} success / "
          f"{metrics['negatives']} failure frames): balanced accuracy {metrics['balanced_accuracy']:.4f}, "
          f"ROC AUC {metrics['roc_auc']:.4f}, precision {metrics['precision']:.4f}, recall {metrics['recall']:.4f}, "
          f"threshold {metrics['threshold']:.4f} for FPR {metrics['fpr']:.4f} (target {cfg.classifier.target_fpr})")
    print(f"wrote the classifier, metrics.json, roc.png, confusion.png, worst_frames.png to {out}")
    return 0
