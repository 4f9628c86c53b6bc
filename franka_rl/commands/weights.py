"""`franka-rl weights`: fetch, convert and inspect ImageNet-pretrained image backbones."""

from __future__ import annotations

import argparse
import sys

FETCH_EPILOG = """examples:
  franka-rl weights fetch resnet10                   # SERL's ResNet-10, checked against the pinned sha256
  franka-rl weights fetch resnet18                   # torchvision's ResNet-18 (its published sha256 prefix is checked)
  franka-rl weights fetch resnet18 --dest /mnt/usb   # into a folder to carry to an offline robot PC
The converted file's path is printed on stdout; put it into agent.encoder.pretrained_path and
classifier.pretrained_path (configs/peg_insertion_real.yaml already names the default cache's
resnet10.npz). Cache: --dest, else $FRANKA_RL_WEIGHTS_DIR, else ~/.cache/franka_rl/weights."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "weights",
        help="download, verify and convert ImageNet-pretrained backbones (SERL ResNet-10, torchvision ResNet-18)",
        description="Pretrained image backbones for the policy's and the classifier's frozen encoder "
                    "(docs/hardware.md, 'Pretrained weights').",
        epilog="example: franka-rl weights fetch resnet18   (franka-rl weights ACTION --help for each action)",
    )
    sub = parser.add_subparsers(dest="weights_command", metavar="ACTION")
    sub.required = True

    fetch = sub.add_parser(
        "fetch",
        help="download published weights, verify the sha256 pin, convert, print the path",
        description="Download a published backbone (needs internet), verify its sha256 against the pin "
                    "(a mismatch deletes the download), convert it into this project's .npz and print its path.",
        epilog=FETCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fetch.add_argument("name", metavar="NAME",
                       help="resnet10 (SERL's ResNet-10), resnet18 or resnet34 (torchvision)")
    fetch.add_argument("--dest", default=None, metavar="DIR",
                       help="folder for the download and the converted file (default: $FRANKA_RL_WEIGHTS_DIR "
                            "or ~/.cache/franka_rl/weights)")
    fetch.add_argument("--url", default=None, help="download from this URL instead (a mirror of the same file)")
    fetch.add_argument("--sha256", default=None, metavar="HEX",
                       help="the file's full sha256: replaces the registry's pin (e.g. the sha256 of a copy you "
                            "already trust)")
    fetch.add_argument("--timeout", type=float, default=30.0, metavar="S",
                       help="seconds without data before the download is abandoned (default 30)")
    fetch.set_defaults(handler=run_fetch)

    convert = sub.add_parser(
        "convert",
        help="convert a local SERL pickle or torchvision state dict into this project's .npz",
        description="Convert a weights file you already have (SERL's resnet10_params.pkl, a torchvision "
                    "state dict) into this project's .npz, checked against the network. A pickle runs code "
                    "when loaded: convert only files you trust.",
        epilog="example: franka-rl weights convert ~/Downloads/resnet10_params.pkl --backbone resnet10 "
               "--out ~/.cache/franka_rl/weights/resnet10.npz",
    )
    convert.add_argument("src", help="SERL pickle (resnet10) or torchvision .pth (resnet18/34)")
    convert.add_argument("--backbone", required=True, choices=["resnet10", "resnet18", "resnet34"])
    convert.add_argument("--out", default=None, metavar="FILE",
                         help="the .npz to write (default: SRC with the suffix .npz)")
    convert.set_defaults(handler=run_convert)

    info = sub.add_parser(
        "info",
        help="show a converted file's record and check it against the network",
        description="Print a converted weights file's backbone, source, sha256 and size, and check every "
                    "parameter's shape against the backbone it names.",
        epilog="example: franka-rl weights info ~/.cache/franka_rl/weights/resnet10.npz",
    )
    info.add_argument("file", help="a .npz written by `weights fetch` or `weights convert`")
    info.set_defaults(handler=run_info)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _config_hint(path) -> None:
    from pathlib import Path

    from agent.weights import default_native_path

    _say(f"set agent.encoder.pretrained_path and classifier.pretrained_path to {path}")
    if Path(path).resolve() == Path(default_native_path(Path(path).stem)).expanduser().resolve():
        _say("(configs/peg_insertion_real.yaml already names this path for resnet10)")


def run_fetch(args: argparse.Namespace) -> int:
    from agent.weights import fetch_weights

    path = fetch_weights(args.name, dest=args.dest, url=args.url, sha256=args.sha256, timeout=args.timeout,
                         progress=sys.stderr.isatty(), report=_say)
    _config_hint(path)
    print(path)
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from agent.pretrained import PretrainedWeightsError
    from agent.weights import convert_file

    src = Path(args.src).expanduser()
    out = Path(args.out).expanduser() if args.out else src.with_suffix(".npz")
    if out.resolve() == src.resolve():
        raise PretrainedWeightsError(f"{src} is already an .npz; pass --out for the converted file")
    path = convert_file(src, args.backbone, out)
    _config_hint(path)
    print(path)
    return 0


def run_info(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from agent.pretrained import check_backbone_params, flatten_params, load_native

    path = Path(args.file).expanduser()
    params, meta = load_native(path)
    flat = flatten_params(params)
    check_backbone_params(params, meta["backbone"], str(path))
    count = sum(int(np.prod(v.shape)) for v in flat.values())
    for key in ("backbone", "name", "source_url", "source_file", "source_sha256", "conversion_version"):
        print(f"{key}: {meta.get(key, '')}")
    print(f"parameters: {count:,} in {len(flat)} arrays; every shape matches {meta['backbone']}")
    return 0
