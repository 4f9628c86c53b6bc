"""`franka-rl eval-classifier`: the classifier's report on any recorded dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from franka_rl.cli import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval-classifier",
        help="report a trained classifier's precision/recall/ROC on recorded episodes",
        description=(
            "Run a classifier trained by `franka-rl train-classifier` on every frame of the given "
            "episode directories and write metrics.json, roc.png, confusion.png and "
            "worst_frames.png. Labels come from frame_info/success_label (record-rewards data), "
            "else info/success, else rewards > 0 (the first frame of an episode counts as failure)."
        ),
        epilog=(
            "examples:\n"
            "  franka-rl eval-classifier --model runs/classifier --data runs/reward_frames_test\n"
            "  franka-rl eval-classifier --model runs/classifier --data runs/demos --threshold 0.9"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, metavar="DIR", help="train-classifier's output directory")
    parser.add_argument("--data", action="append", required=True, metavar="DIR",
                        help="episode directory (repeat for several)")
    parser.add_argument("--out", default=None,
                        help="report directory (default: <model>/eval-<name of the first --data>)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="judge at this probability instead of the model's threshold")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:

    from reward_classifier.data import load_labelled_frames
    from reward_classifier.report import write_report
    from reward_classifier.saved_model import check_cameras, load_classifier, read_metadata

    if args.threshold is not None and not 0.0 <= args.threshold < 1.0:
        raise UserError(f"--threshold must be in [0, 1), got {args.threshold}")
    meta = read_metadata(args.model)
    frames = load_labelled_frames(args.data, meta["image_keys"])
    shapes = {key: frames.images[key].shape[1:] for key in meta["image_keys"]}
    check_cameras(meta, shapes, f"the data in {', '.join(args.data)}", args.model)
    classifier = load_classifier(args.model)
    threshold = args.threshold if args.threshold is not None else classifier.threshold
    from robot_env.progress import progress

    with progress(total=len(frames), desc="classifying", unit="frame", disable=args.quiet) as bar:
        probabilities = classifier.probabilities(frames.images, progress=bar.update)
    out = Path(args.out or Path(args.model) / f"eval-{Path(args.data[0]).resolve().name}")
    metrics = write_report(out, frames, probabilities, threshold,
                           {"model": str(args.model), "data": [str(d) for d in args.data],
                            "label_sources": frames.label_sources, "model_threshold": classifier.threshold},
                           title=f"{Path(args.data[0]).name}")
    print(f"{len(frames)} frames in {metrics['episodes']} episodes ({metrics['positives']} success): "
          f"balanced accuracy {metrics['balanced_accuracy']:.4f}, ROC AUC {metrics['roc_auc']:.4f}, "
          f"precision {metrics['precision']:.4f}, recall {metrics['recall']:.4f}, FPR {metrics['fpr']:.4f} "
          f"at threshold {threshold:.4f}")
    print(f"wrote metrics.json, roc.png, confusion.png, worst_frames.png to {out}")
    return 0
