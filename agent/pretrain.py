"""Offline pre-training on recorded data: Cal-QL or CQL (`agent.cql.enabled`, agent/sac.py) or
IQL (`agent.iql.enabled`, agent/iql.py; --preset wsrl_iql), exactly one of them.

    dataset = load_offline_episodes(["runs/demos", "minari:franka/peg-v0", "old.pkl"], trust_pickle=True)
    summary = pretrain(cfg.agent, cfg.pretrain, dataset, "runs/pretrain", new_buffer=buffer_factory(cfg.agent))

A run folder holds `checkpoints/<step>/` (orbax, atomic; what `agent.wsrl.start_online_from_checkpoint`
restores one-to-one), `metrics.jsonl` + `tensorboard/`, `calibration.png` (Q against the
Monte-Carlo return on held-out episodes) and `summary.json`. A run started again in the same
folder resumes from its latest checkpoint.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np

from agent.batches import to_agent_batch
from agent.calibration import calibration_points, calibration_summary, plot_calibration
from agent.checkpoint import AgentCheckpointer
from agent.config import AgentConfig
from agent.core import Agent, agent_encode_frames, create_agent, replace_spec, uses_feature_cache
from agent.data.episodes import Episode
from agent.data.lerobot_io import ANY_LAYOUT, ExpectedLayout
from agent.data.replay_buffer import BufferFactory, ReplayBuffer
from agent.data.sources import MINARI_PREFIX, PICKLE_SUFFIXES, DataSourceError, read_source  # noqa: F401  (MINARI_PREFIX, PICKLE_SUFFIXES: kept importable from here)
from agent.iql import _iql_learner_step, iql_learner_step
from agent.metrics import MetricsConfig, MetricsWriter
from agent.off2on import create_ensemble, ensemble_pretrain_step, ensemble_size, member_batches
from agent.offline_config import PretrainConfig
from agent.sac import learner_step, stack_batches
from agent.sharding import data_parallel_step
from robot_env.errors import UserError
from robot_env.progress import format_duration, format_rate, say
from robot_env.progress import progress as progress_bar


class DatasetError(UserError, ValueError):
    """Offline data that cannot be used (missing, unreadable, inconsistent); says what to do."""


class PretrainError(UserError, ValueError):
    """A pre-training setting that cannot work; names the key."""


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


@dataclass
class OfflineDataset:
    """Episodes from one or more sources, in the order given, and the files that were skipped."""

    episodes: list[Episode]
    sources: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def transitions(self) -> int:
        return sum(len(e) for e in self.episodes)

    @property
    def successes(self) -> int:
        return sum(e.success for e in self.episodes)


def load_offline_episodes(paths: Sequence[str], *, trust_pickle: bool = False,
                          report: Callable[[str], None] = _warn,
                          layout: ExpectedLayout = ANY_LAYOUT) -> OfflineDataset:
    """Episodes from episode directories, single episode files, LeRobotDataset v3 folders (mapped
    and checked against `layout`), SERL pickles (`*.pkl`, only with `trust_pickle`: unpickling runs
    code) and local Minari datasets (`minari:<dataset id>`); see `agent.data.sources`.

    Corrupt episode files are reported, listed in `skipped` and left out; a source that cannot be
    read at all is a DatasetError."""
    episodes: list[Episode] = []
    skipped: list[tuple[str, str]] = []
    for source in paths:
        found = _load_source(str(source), trust_pickle, report, skipped, layout)
        episodes.extend(e for e in found if len(e) > 0)
    if not episodes:
        raise DatasetError(f"no usable episodes in {', '.join(map(str, paths))}: record demos first "
                           "(franka-rl record-demos) or check the paths")
    keys = sorted(episodes[0].observations)
    for episode in episodes:
        if sorted(episode.observations) != keys or episode.actions.shape[1] != episodes[0].actions.shape[1]:
            origin = episode.metadata.get("imported_from") or episode.metadata.get("task", "?")
            raise DatasetError(
                f"episodes disagree: observation keys {sorted(episode.observations)} / action dim "
                f"{episode.actions.shape[1]} (from {origin}) vs {keys} / {episodes[0].actions.shape[1]}; "
                "pre-train on data recorded with one env config"
            )
    return OfflineDataset(episodes, [str(p) for p in paths], skipped)


def _load_source(source: str, trust_pickle: bool, report: Callable[[str], None],
                 skipped: list[tuple[str, str]], layout: ExpectedLayout) -> list[Episode]:
    try:
        return read_source(source, trust_pickle=trust_pickle, report=report, skipped=skipped, layout=layout)
    except DataSourceError as exc:
        raise DatasetError(str(exc)) from None


def check_image_size(episodes: Sequence[Episode], image_keys: Sequence[str], height: int, width: int) -> None:
    """Refuse data whose frames differ from the env's image size, before any compute: a policy
    trained on them would meet differently sized frames online (or fail in the encoder)."""
    for index, episode in enumerate(episodes):
        for key in image_keys:
            frames = episode.observations.get(key)
            if frames is not None and tuple(frames.shape[1:3]) != (height, width):
                found = "x".join(str(n) for n in frames.shape[1:3])
                raise DatasetError(f"camera '{key}' in episode {index} is {found} (height x width) but "
                                   f"env.image_height/width are {height}x{width}: record at the env's size or "
                                   f"set env.image_height={frames.shape[1]} env.image_width={frames.shape[2]}")


def split_holdout(episodes: Sequence[Episode], count: int) -> tuple[list[Episode], list[Episode]]:
    """(training, held out): `count` episodes evenly spaced through the recorded order are held out,
    never all of them (at least one episode trains)."""
    count = max(0, min(count, len(episodes) - 1))
    if count == 0:
        return list(episodes), []
    held = set(np.linspace(0, len(episodes) - 1, count + 2)[1:-1].round().astype(int).tolist())
    while len(held) < count:  # rounding collisions on short lists
        held.add(next(i for i in range(len(episodes)) if i not in held))
    return ([e for i, e in enumerate(episodes) if i not in held],
            [e for i, e in enumerate(episodes) if i in held])


def fill_buffer(episodes: Sequence[Episode], new_buffer: BufferFactory, capacity: int = 0,
                agent: Agent | None = None, *, show_progress: bool = False) -> ReplayBuffer:
    """A replay buffer of `episodes` (MC returns with the factory's shaping, the agent's own); with
    a frozen, un-augmented image backbone every frame is encoded once into the feature cache (said
    on stderr, with a progress bar if `show_progress`: minutes on a CPU for a large dataset)."""
    capacity = capacity or sum(len(e) + 1 for e in episodes)
    buffer = new_buffer.from_episodes(
        episodes, capacity, feature_keys=agent.spec.image_keys if agent is not None else None)
    if agent is not None and uses_feature_cache(agent):
        total = buffer.frames_to_encode
        say(f"pretrain: encoding {total} frames ({', '.join(agent.spec.image_keys)}) once with the frozen "
            "backbone into the feature cache (the first batch also compiles the encoder)")
        started = time.monotonic()
        with progress_bar(total=total, desc="encoding frames", unit="frame", disable=not show_progress) as bar:
            buffer.set_feature_fn(lambda frames: np.asarray(agent_encode_frames(agent, frames)),
                                  on_progress=bar.update)
        elapsed = time.monotonic() - started
        say(f"pretrain: encoded {total} frames in {format_duration(elapsed)} ({format_rate(total, elapsed, 'frame')})")
    return buffer


def validate_pretrain_config(cfg: AgentConfig, pcfg: PretrainConfig) -> None:
    checks = [
        (cfg.cql.enabled or cfg.iql.enabled,
         "pre-training needs agent.cql.enabled=true or agent.iql.enabled=true: use --preset wsrl (Cal-QL), cql, "
         "calql_finetune or wsrl_iql (IQL) (rlpd trains from scratch online and has nothing to pre-train)"),
        (not (cfg.cql.enabled and cfg.iql.enabled),
         "pre-training runs one method but agent.cql.enabled and agent.iql.enabled are both true: set "
         "agent.cql.enabled=false for IQL (--preset wsrl_iql) or agent.iql.enabled=false for CQL/Cal-QL"),
        (pcfg.steps >= 1, "pretrain.steps must be >= 1"),
        (pcfg.utd >= 1, "pretrain.utd must be >= 1"),
        (pcfg.holdout_episodes >= 0, "pretrain.holdout_episodes must be >= 0"),
        (pcfg.log_every >= 1, "pretrain.log_every must be >= 1"),
        (pcfg.checkpoint_every >= 1, "pretrain.checkpoint_every must be >= 1"),
        (pcfg.keep_checkpoints >= 1, "pretrain.keep_checkpoints must be >= 1"),
        (pcfg.buffer_capacity >= 0, "pretrain.buffer_capacity must be >= 0 (0 = fit the dataset)"),
    ]
    for ok, message in checks:
        if not ok:
            raise PretrainError(message)


def algorithm_label(cfg: AgentConfig) -> str:
    """What pre-training runs for this config: "IQL", "Cal-QL", "CQL" or "CQL x4" (an Off2On ensemble)."""
    if cfg.iql.enabled:
        return "IQL"
    label = "Cal-QL" if cfg.cql.calql_bound else "CQL"
    return f"{label} x{cfg.off2on.ensemble_size}" if cfg.off2on.enabled else label


def example_observation(episode: Episode) -> dict[str, np.ndarray]:
    return {k: v[0] for k, v in episode.observations.items()}


def _host_metrics(metrics: dict) -> dict[str, float]:
    # An ensemble's metrics have one value per member: their mean.
    return {k: float(np.mean(v)) for k, v in jax.device_get(metrics).items()}


def pretrain(
    cfg: AgentConfig,
    pcfg: PretrainConfig,
    dataset: OfflineDataset,
    run_dir: str | Path,
    *,
    new_buffer: BufferFactory,
    seed: int = 0,
    progress: bool = True,
    run_info: dict[str, Any] | None = None,
    metrics: MetricsConfig | None = None,
    run_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run (or resume) pre-training into `run_dir`; returns the summary also written to summary.json.
    `metrics` (the config's `metrics:`) adds Weights & Biases, with `run_config` and `run_info` as
    its run config. What it does before the first step (encoding, compiling) is said on stderr."""
    validate_pretrain_config(cfg, pcfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    train, held_out = split_holdout(dataset.episodes, pcfg.holdout_episodes)
    action_dim = int(train[0].actions.shape[1])
    ensemble = bool(cfg.off2on.enabled)
    agent = (create_ensemble if ensemble else create_agent)(cfg, example_observation(train[0]), action_dim, seed=seed)
    agent = replace_spec(agent, "sac", utd=int(pcfg.utd))

    checkpointer = AgentCheckpointer(run_dir / "checkpoints", max_to_keep=pcfg.keep_checkpoints)
    start = checkpointer.latest_step() or 0
    if start:
        agent, _ = checkpointer.restore(agent, start, cfg)
        print(f"resuming from {checkpointer.directory}/{start}", file=sys.stderr)
    buffer = fill_buffer(train, new_buffer, pcfg.buffer_capacity, agent, show_progress=progress)
    rng = np.random.default_rng(seed + start)
    batch_size = int(cfg.sac.batch_size)
    bootstrap = bool(cfg.reward.bootstrap_on_truncation)
    frames = not buffer.has_features
    members = ensemble_size(agent) if ensemble else 0
    if ensemble:
        if pcfg.devices > 1:
            raise PretrainError(f"agent.off2on.enabled trains its ensemble on one device (its members are the "
                                f"vmapped axis), not pretrain.devices={pcfg.devices}: set pretrain.devices=1")
        step_fn, how = ensemble_pretrain_step, ""
    elif cfg.iql.enabled:
        step_fn, how = data_parallel_step(pcfg.devices, batch_size, "pretrain.devices",
                                          step=_iql_learner_step, jitted=iql_learner_step)
    else:
        step_fn, how = data_parallel_step(pcfg.devices, batch_size, "pretrain.devices")
    if step_fn not in (learner_step, iql_learner_step, ensemble_pretrain_step):
        say(f"pretrain: {how}")

    def next_batches():
        if ensemble:  # each member its own utd batches: (N, utd, B, ...)
            return member_batches(buffer, members, batch_size, rng, groups=pcfg.utd,
                                  bootstrap_on_truncation=bootstrap, frames=frames)
        return stack_batches([to_agent_batch(buffer.sample(batch_size, rng, frames=frames),
                                             bootstrap_on_truncation=bootstrap) for _ in range(pcfg.utd)])

    extra = {"phase": "pretrain", "algorithm": algorithm_label(cfg), "agent_preset": (run_info or {}).get("agent_preset", ""),
             "data": dataset.sources}
    calibration_set = held_out or train[: max(1, pcfg.holdout_episodes)]
    last_metrics: dict[str, float] = {}
    interrupted = False
    started = time.monotonic()
    step = start
    with MetricsWriter(run_dir, wandb=metrics.wandb if metrics else None,
                       config={**(run_config or {}), **(run_info or {})}, job_type="pretrain") as writer:
        bar = None
        window_start, window_steps = time.monotonic(), 0
        try:
            if step < pcfg.steps:
                updates = "value + critic update(s)" if cfg.iql.enabled else "critic update(s)"
                say(f"pretrain: compiling the learner step ({algorithm_label(cfg)}: {pcfg.utd} {updates} + actor "
                    f"update, batch {batch_size}; the first step, up to a few minutes on a CPU with image encoders)")
            compile_started = time.monotonic()
            while step < pcfg.steps:
                agent, step_metrics = step_fn(agent, next_batches())
                step += 1
                window_steps += 1
                if bar is None:  # the first step compiled: from here the bar's rate and ETA are honest
                    jax.block_until_ready(step_metrics)
                    say(f"pretrain: compiled and ran the first step in "
                        f"{format_duration(time.monotonic() - compile_started)}")
                    bar = progress_bar(total=pcfg.steps, initial=step - 1, desc="pretrain", unit="step",
                                       disable=not progress)
                bar.update(1)
                if step % pcfg.log_every == 0 or step == pcfg.steps:
                    last_metrics = _host_metrics(step_metrics)
                    now = time.monotonic()
                    last_metrics["steps_per_s"] = window_steps / max(now - window_start, 1e-9)
                    window_start, window_steps = now, 0
                    writer.log(step, last_metrics, prefix="pretrain")
                    second = ("value", "value_loss") if cfg.iql.enabled else ("cql_diff", "cql_diff")
                    bar.set_postfix(critic=f"{last_metrics['critic_loss']:.3g}",
                                    **{second[0]: f"{last_metrics.get(second[1], float('nan')):.3g}"},
                                    q_minus_g=f"{last_metrics.get('q_minus_mc', float('nan')):+.3g}")
                if step % pcfg.checkpoint_every == 0 and step < pcfg.steps:
                    checkpointer.save(step, agent, cfg, {**extra, "pretrain_step": step})
                    q, g = calibration_points(agent, calibration_set, cfg.reward.sparse)
                    writer.log(step, calibration_summary(q, g), prefix="calibration")
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if bar is not None:
                bar.close()
        say(f"pretrain: final checkpoint, then calibration on {len(calibration_set)} "
            f"{'held-out' if held_out else 'training'} episode(s)")
        checkpoint_path = checkpointer.save(step, agent, cfg, {**extra, "pretrain_step": step})
        q, g = calibration_points(agent, calibration_set, cfg.reward.sparse)
        calibration = calibration_summary(q, g)
        writer.log(step, calibration, prefix="calibration")
    label = algorithm_label(cfg)
    episode_set = "held-out" if held_out else "training"
    count = len(calibration_set)
    plot = plot_calibration({label: (q, g)}, run_dir / "calibration.png", episodes_to_show=pcfg.plot_episodes,
                            episode_set=episode_set,
                            title=f"{label} after {step} steps, calibration on {count} {episode_set} "
                                  f"episode{'s' if count != 1 else ''}")
    elapsed = time.monotonic() - started
    summary = {
        "steps": step,
        "target_steps": pcfg.steps,
        "interrupted": interrupted,
        "elapsed_s": elapsed,
        "steps_this_run": step - start,
        "steps_per_s": (step - start) / max(elapsed, 1e-9),
        "algorithm": label,
        **(run_info or {}),
        "data": {
            "sources": dataset.sources,
            "episodes": len(dataset.episodes),
            "transitions": dataset.transitions,
            "successes": dataset.successes,
            "train_episodes": len(train),
            "held_out_episodes": len(held_out),
            "skipped_files": [{"path": p, "reason": r} for p, r in dataset.skipped],
            "feature_cache": buffer.has_features,
        },
        "final_metrics": last_metrics,
        "calibration_on": "held-out" if held_out else "training",
        "calibration": calibration,
        "checkpoint": str(checkpoint_path),
        "calibration_plot": str(plot),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
