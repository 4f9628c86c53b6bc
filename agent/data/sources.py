"""One loader for every offline-data source: it detects the format and yields this project's episodes.

    episodes = read_source("runs/demos")                 # episode directory (episode_*.npz)
    episodes = read_source("hub_cache/peg_lerobot")      # LeRobotDataset v3 folder (meta/info.json)
    episodes = read_source("runs/demos/episode_000003.npz")
    episodes = read_source("minari:franka/peg-demos-v0") # local Minari dataset
    episodes = read_source("serl_demos.pkl", trust_pickle=True)   # SERL pickle: runs code, trusted only

Pre-training (`agent.pretrain.load_offline_episodes`) and the learner's `--offline-data` read
through it, so each accepts every format above.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from agent.data.episodes import CorruptEpisodeError, Episode, EpisodeStore, load_episode
from agent.data.lerobot_io import (
    ANY_LAYOUT,
    ExpectedLayout,
    LeRobotError,
    is_lerobot_dataset,
    read_lerobot,
)
from robot_env.errors import UserError

MINARI_PREFIX = "minari:"
PICKLE_SUFFIXES = (".pkl", ".pickle")
FORMATS = ("episodes", "lerobot", "episode-file", "minari", "serl-pickle")


class DataSourceError(UserError, ValueError):
    """A data source that does not exist or cannot be read; says what to give instead."""


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def detect_format(source: str | os.PathLike) -> str:
    """One of FORMATS for `source`; DataSourceError if it is none of them."""
    text = str(source)
    if text.startswith(MINARI_PREFIX):
        return "minari"
    path = Path(text)
    if not path.exists():
        raise DataSourceError(f"data path {path} does not exist (give episode directories, episode files, "
                              f"LeRobot dataset folders, SERL *.pkl files or {MINARI_PREFIX}<dataset id>)")
    if path.is_dir():
        return "lerobot" if is_lerobot_dataset(path) else "episodes"
    if path.suffix in PICKLE_SUFFIXES:
        return "serl-pickle"
    return "episode-file"


def read_source(source: str | os.PathLike, *, trust_pickle: bool = False,
                report: Callable[[str], None] = _warn, skipped: list[tuple[str, str]] | None = None,
                layout: ExpectedLayout = ANY_LAYOUT) -> list[Episode]:
    """The episodes of `source`, whatever its format. Corrupt episode files are reported and
    appended to `skipped`; a source that cannot be read at all is a DataSourceError. `layout`
    (cameras, state and action size of the run) is checked where a format needs mapping (LeRobot)."""
    skipped = [] if skipped is None else skipped
    kind = detect_format(source)
    text = str(source)
    if kind == "minari":
        from agent.data.minari_io import MinariError, import_minari

        try:
            return list(import_minari(text[len(MINARI_PREFIX):], report=report))
        except MinariError as exc:
            raise DataSourceError(str(exc)) from None
    path = Path(text)
    if kind == "lerobot":
        try:
            return list(read_lerobot(path, layout=layout, report=report))
        except LeRobotError as exc:
            raise DataSourceError(f"{path}: {exc}") from None
    if kind == "episodes":
        store = EpisodeStore(path, report=report)
        episodes = list(store.episodes())
        skipped.extend((str(p), reason) for p, reason in store.skipped)
        return episodes
    if kind == "serl-pickle":
        from agent.data.serl import (
            PICKLE_WARNING,
            SerlImportError,
            SerlLayoutError,
            load_serl_pickle,
            serl_transitions_to_episodes,
        )

        if not trust_pickle:
            raise DataSourceError(f"{path} is a pickle. {PICKLE_WARNING}; pass --trust-pickle to load it")
        try:
            return serl_transitions_to_episodes(load_serl_pickle(path, trusted=True), origin=str(path))
        except SerlLayoutError as exc:
            raise DataSourceError(
                f"{path}: {exc}. Those are options of the import: `franka-rl dataset import-serl {path} --out DIR "
                "--trust-pickle --config YOUR_CELL.yaml` (or --state-as-is), then pass DIR") from None
        except SerlImportError as exc:
            raise DataSourceError(str(exc)) from None
    try:
        return [load_episode(path)]
    except CorruptEpisodeError as exc:
        skipped.append((str(path), exc.reason))
        report(f"skipping {exc}")
        return []
