"""`franka-rl dataset`: inspect recorded episodes; import SERL pickles; import/export LeRobot and Minari."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from franka_rl.cli import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dataset",
        help="inspect an episode directory; import SERL pickles; import/export LeRobot and Minari datasets",
        description="Tools for recorded episode directories (see docs/data.md for the format).",
        epilog="example: franka-rl dataset info runs/demos   (franka-rl dataset ACTION --help for each action)",
    )
    sub = parser.add_subparsers(dest="dataset_command", metavar="ACTION")
    sub.required = True

    info = sub.add_parser(
        "info",
        help="episodes, transitions, success and intervention rates, sources, damaged files, a contact sheet",
        description="Summarise an episode directory and write a contact-sheet PNG of sample frames. Every "
                    "episode is decoded and checked against its checksum; damaged files are listed by name.",
        epilog="example: franka-rl dataset info runs/demos --sheet runs/demos_sheet.png",
    )
    info.add_argument("path", help="episode directory")
    info.add_argument("--sheet", default=None,
                      help="contact-sheet PNG to write (default: runs/dataset_info/<dataset folder name>/"
                           "contact_sheet.png, beside the other outputs, never inside the dataset)")
    info.add_argument("--no-sheet", action="store_true", help="do not write a contact sheet")
    info.add_argument("--rows", type=int, default=8, help="sampled frames (rows) in the sheet")
    info.add_argument("--metadata-only", action="store_true",
                      help="read only each file's metadata (fast; damaged frames or arrays go unnoticed)")
    info.set_defaults(handler=run_info)

    serl = sub.add_parser(
        "import-serl",
        help="import SERL / HIL-SERL transition pickles (trusted files only)",
        description=(
            "Convert SERL / HIL-SERL transition pickles (lists of dicts with observations, actions, "
            "next_observations, rewards, masks, dones) into episode files. A pickle can run any code "
            "when loaded: import only files you recorded or trust, and say so with --trust-pickle."
        ),
        epilog="example: franka-rl dataset import-serl peg_20_demos.pkl --out runs/serl_demos --trust-pickle "
               "--rename wrist1=wrist_1 --rename wrist2=wrist_2",
    )
    serl.add_argument("pickles", nargs="+", help="SERL transition pickle file(s), imported in this order")
    serl.add_argument("--out", required=True, help="episode directory to write (appended to if it exists)")
    serl.add_argument("--trust-pickle", action="store_true",
                      help="confirm the pickles come from a source you trust: unpickling runs code (required)")
    # The old name of --trust-pickle (pretrain's flag for the same thing): still accepted, with a notice.
    serl.add_argument("--trusted", dest="trusted_deprecated", action="store_true", help=argparse.SUPPRESS)
    serl.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                      help="rename an observation key, e.g. wrist1=wrist_1 (repeatable)")
    serl.add_argument("--task", default="peg_insertion", help="task name stored in the metadata")
    frame = serl.add_mutually_exclusive_group()
    frame.add_argument("--nominal-pose", type=float, nargs=6, metavar=("X", "Y", "Z", "RX", "RY", "RZ"),
                       help="the task's nominal reset pose (base frame, rotation vector): SERL's base-frame "
                            "state is mapped into our state, which is relative to it (docs/data.md)")
    frame.add_argument("--config", default=None,
                       help="take the nominal pose from this config's task.reset_pose instead")
    frame.add_argument("--state-as-is", action="store_true",
                       help="keep a 19/20-number state untouched (the file already holds our STATE_LAYOUT)")
    serl.add_argument("--gripper-scale", type=float, default=0.08,
                      help="metres of opening per unit of SERL's gripper_pose (0.08: its normalised Franka "
                           "Hand reading; 1 if the width was recorded in metres)")
    serl.set_defaults(handler=run_import_serl)

    lerobot_out = sub.add_parser(
        "export-lerobot",
        help="write an episode directory as a LeRobotDataset v3 folder (parquet + MP4 per camera)",
        description=(
            "Export episodes to a new LeRobotDataset v3 folder: meta/info.json, parquet tables, one MP4 "
            "per camera (H.264; browser-playable yuv420p by default, bit-exact with --lossless). State is "
            "observation.state, actions action, rewards next.reward, plus next.done/terminated/truncated, "
            "next.success and intervened; see docs/data.md."
        ),
        epilog="example: franka-rl dataset export-lerobot runs/demos runs/demos_lerobot --task 'insert the peg'",
    )
    lerobot_out.add_argument("path", metavar="EPISODES_DIR", help="episode directory")
    lerobot_out.add_argument("out", metavar="OUT_DIR", help="new folder for the LeRobot dataset")
    lerobot_out.add_argument("--task", default=None,
                             help="task text for every episode (default: each episode's metadata task)")
    lerobot_out.add_argument("--fps", type=int, default=None,
                             help="frame rate (default: the control rate, control_hz, in the episodes' metadata)")
    lerobot_out.add_argument("--lossless", action="store_true",
                             help="bit-exact video (H.264 RGB, crf 0; larger, not playable in browsers)")
    lerobot_out.set_defaults(handler=run_export_lerobot)

    lerobot_in = sub.add_parser(
        "import-lerobot",
        help="convert a local LeRobotDataset v3 folder into an episode directory",
        description=(
            "Import a LeRobotDataset v3 folder (nothing is downloaded): observation.state -> state, "
            "observation.images.<camera> -> <camera>, action, next.reward, next.done, ... (docs/data.md). "
            "A feature that does not fit the config (state size, a camera not in env.cameras, discrete "
            "actions, an unknown feature) is refused by name: --rename or --drop it."
        ),
        epilog="example: franka-rl dataset import-lerobot downloads/peg_lerobot runs/from_lerobot "
               "--rename top=wrist_1 --drop observation.images.side",
    )
    lerobot_in.add_argument("path", metavar="LEROBOT_DIR", help="LeRobot dataset folder (holds meta/info.json)")
    lerobot_in.add_argument("out", metavar="OUT_EPISODES_DIR",
                            help="episode directory to write (appended to if it exists)")
    lerobot_in.add_argument("--config", default=None,
                            help="config whose cameras, state and action sizes the data must fit (default: the twin)")
    lerobot_in.add_argument("--rename", action="append", default=[], metavar="CAMERA=NAME",
                            help="store LeRobot camera CAMERA (observation.images.CAMERA) as NAME (repeatable)")
    lerobot_in.add_argument("--drop", action="append", default=[], metavar="FEATURE",
                            help="leave this LeRobot feature out (repeatable)")
    lerobot_in.set_defaults(handler=run_import_lerobot)

    export = sub.add_parser(
        "export-minari",
        help="write an episode directory as a Minari dataset (lossless, gzip-compressed HDF5)",
        description=(
            "Export episodes to a new local Minari dataset (frames stored losslessly, gzip-compressed). "
            "Twin recordings (metadata mode 'sim') get the twin's env_spec, built from --config and "
            "KEY=VALUE overrides, so minari's recover_environment() builds the env."
        ),
        epilog="example: franka-rl dataset export-minari runs/demos franka/peg-insertion-demos-v0 "
               "env.image_height=64 env.image_width=64",
    )
    export.add_argument("path", help="episode directory")
    export.add_argument("dataset_id", help="Minari dataset id, e.g. franka/peg-insertion-demos-v0")
    export.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides for the twin's env_spec (the config the episodes were recorded with)")
    export.add_argument("--config", default=None,
                        help="config the episodes were recorded with, for the twin's env_spec (default: the twin)")
    export.add_argument("--minari-root", default=None,
                        help="Minari datasets folder (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)")
    export.add_argument("--description", default="", help="dataset description")
    export.add_argument("--author", default=None, help="dataset author")
    export.set_defaults(handler=run_export_minari)

    imp = sub.add_parser(
        "import-minari",
        help="convert a local Minari dataset into an episode directory",
        description="Import a local Minari dataset (nothing is downloaded) into episode files.",
        epilog="example: franka-rl dataset import-minari franka/peg-insertion-demos-v0 --out runs/imported",
    )
    imp.add_argument("dataset_id", help="Minari dataset id")
    imp.add_argument("--out", required=True, help="episode directory to write (appended to if it exists)")
    imp.add_argument("--minari-root", default=None, help="Minari datasets folder")
    imp.set_defaults(handler=run_import_minari)


def _store(path: str, create: bool = False):
    from agent.data.episodes import EpisodeStore

    try:
        return EpisodeStore(path, create=create)
    except FileNotFoundError:
        raise UserError(f"{path} is not a directory of episodes (episode_*.npz)") from None


def default_sheet_path(dataset: str | os.PathLike) -> Path:
    """Where `dataset info` writes its contact sheet without --sheet: under the default output
    folder, not inside the dataset (a dataset folder is data, and may be read-only or shared)."""
    from franka_rl.config import Config

    return Path(Config.output_dir) / "dataset_info" / (Path(dataset).resolve().name or "dataset") / "contact_sheet.png"


def run_info(args: argparse.Namespace) -> int:
    from agent.data.summary import (
        array_shapes,
        format_shapes,
        format_summary,
        sample_frames,
        summarize,
    )

    store = _store(args.path)
    if not store.paths():
        raise UserError(f"{args.path} holds no episode files (episode_*.npz)")
    summary = summarize(store, verify=not args.metadata_only)
    print(format_summary(summary))
    shapes = array_shapes(store)
    if shapes is not None:
        print(format_shapes(shapes))
    if not args.no_sheet:
        tiles, labels = sample_frames(store, rows=args.rows)
        if tiles:
            from robot_env.media import contact_sheet, save_png

            sheet = Path(args.sheet) if args.sheet else default_sheet_path(args.path)
            save_png(sheet, contact_sheet(tiles, labels))
            print(f"contact sheet      {sheet}")
        else:
            print("contact sheet      - (no camera frames in this dataset)")
    return 0


def _renames(pairs: list[str]) -> dict[str, str]:
    renames = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"--rename '{pair}' is not of the form OLD=NEW")
        old, new = pair.split("=", 1)
        renames[old] = new
    return renames


def run_import_serl(args: argparse.Namespace) -> int:
    from agent.data.serl import (
        PICKLE_WARNING,
        SerlImportError,
        SerlStateMapping,
        load_serl_pickle,
        serl_transitions_to_episodes,
    )

    if args.trusted_deprecated:
        print("franka-rl dataset import-serl: --trusted is deprecated, use --trust-pickle", file=sys.stderr)
    if not (args.trust_pickle or args.trusted_deprecated):
        raise UserError(PICKLE_WARNING + ". If these files are yours, run again with --trust-pickle")
    renames = _renames(args.rename)
    nominal = args.nominal_pose
    if args.config is not None:
        from franka_rl.config import load_config

        nominal = load_config(args.config).task.reset_pose
    try:
        mapping = SerlStateMapping(nominal, gripper_scale=args.gripper_scale) if nominal is not None else None
    except SerlImportError as exc:
        raise UserError(str(exc)) from None
    converted = []
    for path in args.pickles:
        if not Path(path).is_file():
            raise UserError(f"{path} not found")
        try:
            transitions = load_serl_pickle(path, trusted=True)
            episodes = serl_transitions_to_episodes(transitions, rename=renames, task=args.task,
                                                    origin=Path(path).name, state_mapping=mapping,
                                                    state_as_is=args.state_as_is)
        except SerlImportError as exc:
            raise UserError(f"{path}: {exc}") from None
        converted.append((path, len(transitions), episodes))
    # Written only once every file converted, so a refused file leaves no half-imported directory.
    store = _store(args.out, create=True)
    total = 0
    for path, count, episodes in converted:
        for episode in episodes:
            store.write(episode)
        total += len(episodes)
        print(f"{path}: {count} transitions -> {len(episodes)} episodes")
    print(f"wrote {total} episodes to {args.out}")
    return 0


def _minari_root(root: str | None) -> None:
    if root:
        Path(root).mkdir(parents=True, exist_ok=True)
        os.environ["MINARI_DATASETS_PATH"] = str(Path(root).resolve())


def _twin_env_spec(episodes, config: str | None, overrides: list[str]):
    """The twin's EnvSpec for `episodes` when all were recorded in the twin, else None. Refuses a
    config whose cameras or image size differ from the recorded frames."""
    if not episodes or any(e.metadata.get("mode") != "sim" for e in episodes):
        return None
    from franka_rl.config import load_config
    from sim.envs import twin_env_spec

    cfg = load_config(config, overrides)
    first = episodes[0].observations
    cameras = [k for k in first if k != "state"]
    if sorted(cameras) != sorted(cfg.env.cameras) or any(
            first[k].shape[1:3] != (cfg.env.image_height, cfg.env.image_width) for k in cameras):
        sizes = {k: "x".join(map(str, first[k].shape[1:3])) for k in cameras}
        raise UserError(f"the episodes' cameras {sizes} differ from the config's env.cameras {cfg.env.cameras} at "
                        f"{cfg.env.image_height}x{cfg.env.image_width}: give the config they were recorded with "
                        "(--config FILE and KEY=VALUE overrides, e.g. env.image_height=64 env.image_width=64)")
    return twin_env_spec(cfg.task, cfg.env, cfg.sim)


def run_export_minari(args: argparse.Namespace) -> int:
    from agent.data.minari_io import MinariError, export_minari

    store = _store(args.path)
    if not store.paths():
        raise UserError(f"{args.path} holds no episode files (episode_*.npz)")
    _minari_root(args.minari_root)
    episodes = list(store.episodes())
    env_spec = _twin_env_spec(episodes, args.config, args.overrides)
    try:
        dataset = export_minari(episodes, args.dataset_id, description=args.description, author=args.author,
                                env_spec=env_spec)
    except MinariError as exc:
        raise UserError(str(exc)) from None
    print(f"wrote Minari dataset {args.dataset_id}: {dataset.total_episodes} episodes, "
          f"{dataset.total_steps} steps, at {dataset.storage.data_path}")
    print(f"env_spec: {env_spec.id} (recover_environment() builds it)" if env_spec is not None else
          "env_spec: none (not twin recordings: recover_environment() is not available)")
    return 0


def run_export_lerobot(args: argparse.Namespace) -> int:
    from agent.data.lerobot_io import LeRobotError, export_lerobot

    store = _store(args.path)
    if not store.paths():
        raise UserError(f"{args.path} holds no episode files (episode_*.npz)")
    try:
        result = export_lerobot(store.episodes(), args.out, task=args.task, fps=args.fps, lossless=args.lossless)
    except LeRobotError as exc:
        raise UserError(str(exc)) from None
    print(f"wrote LeRobotDataset v3 {result.root}: {result.episodes} episodes, {result.frames} frames "
          f"at {result.fps} fps, tasks {result.tasks}")
    return 0


def run_import_lerobot(args: argparse.Namespace) -> int:
    from agent.data.lerobot_io import (
        LeRobotError,
        is_lerobot_dataset,
        layout_from_spaces,
        read_lerobot,
    )
    from franka_rl.config import load_config
    from robot_env import wrapped_spaces

    if not is_lerobot_dataset(args.path):
        raise UserError(f"{args.path} is not a LeRobot dataset folder (no meta/info.json)")
    cfg = load_config(args.config)
    layout = layout_from_spaces(*wrapped_spaces(cfg.task, cfg.env))
    try:
        # Every episode converted before any is written: a refused feature leaves no half import.
        episodes = list(read_lerobot(args.path, layout=layout, rename=_renames(args.rename), drop=args.drop))
    except LeRobotError as exc:
        raise UserError(f"{args.path}: {exc}") from None
    store = _store(args.out, create=True)
    for episode in episodes:
        store.write(episode)
    print(f"wrote {len(episodes)} episodes ({sum(len(e) for e in episodes)} steps) to {args.out}")
    return 0


def run_import_minari(args: argparse.Namespace) -> int:
    from agent.data.minari_io import MinariError, import_minari

    _minari_root(args.minari_root)
    store = _store(args.out, create=True)
    count = 0
    try:
        for episode in import_minari(args.dataset_id):
            store.write(episode)
            count += 1
    except MinariError as exc:
        raise UserError(str(exc)) from None
    print(f"wrote {count} episodes to {args.out}")
    return 0
