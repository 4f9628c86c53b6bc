"""What `franka-rl dataset info` reports: counts, success and intervention rates, and a contact
sheet of sample frames.

By default every episode is decoded in full and checked against its content checksum (format
version 2; version 1 files by the full decode and the zip's CRCs), so a damaged file is named
even when its metadata still reads; `verify=False` reads the metadata entries only (fast)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from agent.data.episodes import CorruptEpisodeError, EpisodeStore, load_episode


def _verified_metadata(store: EpisodeStore):
    """(path, metadata) of every episode that decodes and matches its checksum; others are
    reported and recorded in `store.skipped` by the store."""
    for path in store.paths():
        try:
            episode = load_episode(path)
        except FileNotFoundError:
            continue  # removed while we read
        except CorruptEpisodeError as exc:
            store.skipped.append((path, exc.reason))
            store.report(f"skipping {exc}")
            continue
        yield path, episode.metadata


def summarize(store: EpisodeStore, *, verify: bool = True) -> dict[str, Any]:
    """Statistics from each episode's metadata; with `verify` (default) every file is decoded
    and checked first, so damaged files are listed in `skipped_files` and not counted."""
    lengths, successes, interventions = [], 0, 0
    sources: Counter[str] = Counter()
    tasks: Counter[str] = Counter()
    hashes: Counter[str] = Counter()
    positives = negatives = 0
    for _, metadata in (_verified_metadata(store) if verify else store.metadata()):
        length = int(metadata.get("length", 0))
        lengths.append(length)
        successes += bool(metadata.get("success", False))
        interventions += int(metadata.get("interventions", 0))
        sources[str(metadata.get("source", "?"))] += 1
        tasks[str(metadata.get("task", "?"))] += 1
        hashes[str(metadata.get("config_hash", "") or "-")] += 1
        positives += int(metadata.get("positive_frames", 0))
        negatives += int(metadata.get("negative_frames", 0))
    transitions = int(sum(lengths))
    episodes = len(lengths)
    return {
        "directory": str(store.directory),
        "episodes": episodes,
        "transitions": transitions,
        "successes": successes,
        "success_rate": successes / episodes if episodes else 0.0,
        "length_min": min(lengths) if lengths else 0,
        "length_mean": float(np.mean(lengths)) if lengths else 0.0,
        "length_max": max(lengths) if lengths else 0,
        "intervention_rate": interventions / transitions if transitions else 0.0,
        "sources": dict(sources),
        "tasks": dict(tasks),
        "config_hashes": dict(hashes),
        "positive_frames": positives,
        "negative_frames": negatives,
        "verified": verify,
        "skipped_files": [str(p) for p, _ in store.skipped],
        "incomplete_writes": [str(p) for p in store.incomplete_writes()],
    }


def format_summary(summary: dict[str, Any]) -> str:
    def counts(mapping: dict[str, int]) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(mapping.items())) or "-"

    lines = [
        f"dataset            {summary['directory']}",
        f"episodes           {summary['episodes']}",
        f"transitions        {summary['transitions']}",
        f"successes          {summary['successes']} ({100 * summary['success_rate']:.1f} %)",
        f"episode length     min {summary['length_min']}  mean {summary['length_mean']:.1f}  max {summary['length_max']}",
        f"intervention rate  {100 * summary['intervention_rate']:.1f} % of steps",
        f"sources            {counts(summary['sources'])}",
        f"tasks              {counts(summary['tasks'])}",
        f"config hashes      {counts(summary['config_hashes'])}",
    ]
    if summary["positive_frames"] or summary["negative_frames"]:
        lines.append(f"reward frames      positive {summary['positive_frames']}  negative {summary['negative_frames']}")
    if summary.get("verified"):
        lines.append(f"content            checked (every episode decoded; {len(summary['skipped_files'])} damaged)")
    else:
        lines.append("content            not checked (metadata only)")
    if summary["skipped_files"]:
        lines.append(f"SKIPPED (corrupt)  {', '.join(summary['skipped_files'])}")
    if summary["incomplete_writes"]:
        lines.append(f"incomplete writes  {len(summary['incomplete_writes'])} (from a writer that stopped; ignored)")
    return "\n".join(lines)


def sample_frames(store: EpisodeStore, *, rows: int = 8, seed: int = 0
                  ) -> tuple[list[list[np.ndarray]], list[str]]:
    """Frames for a contact sheet: one row per sampled (episode, step) with every camera's frame,
    and a label per row ("episode_000012 step 7 success"). Empty when there are no frames."""
    paths = store.paths()
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(paths), size=min(rows, len(paths)), replace=False)) if paths else []
    tiles, labels = [], []
    for index in chosen:
        try:
            episode = load_episode(paths[index])
        except CorruptEpisodeError as exc:
            store.report(f"contact sheet: skipping {exc}")
            continue
        cameras = [k for k, v in episode.observations.items() if v.dtype == np.uint8 and v.ndim == 4]
        if not cameras:
            continue
        step = int(rng.integers(0, len(episode) + 1))
        tiles.append([episode.observations[camera][step] for camera in cameras])
        outcome = "success" if episode.success else "failure"
        if "success_label" in episode.frame_info:
            outcome = "label " + ("positive" if episode.frame_info["success_label"][step] else "negative")
        labels.append(f"{paths[index].stem} step {step} {outcome} ({', '.join(cameras)})")
    return tiles, labels


def array_shapes(store: EpisodeStore) -> dict[str, Any] | None:
    """Per-step shapes and dtypes of the first readable episode: {"episode": file name,
    "observations": {key: "(128, 128, 3) uint8", ...}, "action": "(6,) float32"}; None if none loads."""
    for path in store.paths():
        try:
            episode = load_episode(path)
        except CorruptEpisodeError:
            continue

        def describe(array: np.ndarray) -> str:
            return f"{tuple(int(n) for n in array.shape[1:])} {array.dtype}"

        return {"episode": path.name,
                "observations": {key: describe(value) for key, value in episode.observations.items()},
                "action": describe(episode.actions)}
    return None


def format_shapes(shapes: dict[str, Any]) -> str:
    observations = ", ".join(f"{key} {text}" for key, text in shapes["observations"].items())
    return (f"observations       {observations}  (per step, from {shapes['episode']})\n"
            f"action             {shapes['action']}")
