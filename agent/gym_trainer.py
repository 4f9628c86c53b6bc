"""Train the agent on a state-based gymnasium env: online SAC/REDQ, offline CQL/Cal-QL/IQL,
then online fine-tuning (WSRL, or RLPD-style mixing) — the same agent and update as on the robot.

    run = GymRun(env_id="Pendulum-v1", algo="sac", env_steps=20_000, run_dir=Path("runs/pendulum"))
    summary = train_gym(run, cfg.agent, buffer_factory(cfg.agent), seed=0)

Phases:
1. offline (only with `offline_data` and `offline_steps` > 0): `offline_steps` single updates
   (one critic + one actor step each, the Cal-QL recipe; with IQL also one value step) on
   batches of the offline data;
2. online (`env_steps` > 0): one learner step (utd critic updates, one actor update) per env
   step. From scratch, the first `random_steps` act uniformly at random. After offline
   pre-training, WSRL: the frozen pre-trained policy acts (stochastically) for
   `agent.online.warmup_steps`, no updates before the online buffer holds them, and the CQL term
   is dropped unless `agent.online.keep_cql` (IQL and its value net always). Batches draw
   `agent.online.offline_ratio` of their samples from the offline data (0 = WSRL, 0.5 = RLPD,
   -1 = proportional).

The run directory gets metrics.jsonl + tensorboard/ (agent.metrics), checkpoints/ (orbax),
config.yaml is written by the caller, learning_curve.png and summary.json at the end.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import jax
import numpy as np

from agent import off2on
from agent.checkpoint import AgentCheckpointer
from agent.config import AgentConfig
from agent.core import (
    Agent,
    create_agent,
    eval_actions,
    frozen_feature_fn,
    sample_actions,
    uses_feature_cache,
)
from agent.data.episodes import Episode
from agent.data.replay_buffer import BufferFactory, ReplayBuffer
from agent.gym_env import agent_observations, make_gym_env, normalize_actions, source_spaces
from agent.iql import update as iql_update
from agent.metrics import MetricsConfig, MetricsWriter, read_metrics
from agent.sac import learner_step, update
from agent.sampling import sample_batches
from agent.wsrl import policy_drift, updates_allowed, wsrl_switch
from robot_env.errors import UserError

ALGOS = ("sac", "redq", "calql", "cql", "iql")
OFFLINE_ALGOS = ("calql", "cql", "iql")

#: Settings train-gym applies over the config file (the robot's defaults do not fit gym tasks):
#: dense rewards as the env gives them, gym's usual discount, the raw state fed to the MLPs.
GYM_DEFAULTS = (
    "agent.reward.scale=1.0",
    "agent.reward.bias=0.0",
    "agent.reward.sparse=false",
    "agent.sac.discount=0.99",
    "agent.encoder.proprio_dim=0",
)

#: What each --algo sets (before the user's own overrides).
ALGO_OVERRIDES: dict[str, tuple[str, ...]] = {
    # Plain SAC: two critics, the target takes their min (clipped double Q).
    "sac": ("agent.network.num_critics=2", "agent.sac.critic_subsample=2", "agent.cql.enabled=false"),
    # REDQ: the config's ensemble (10 members by default), min over 2 drawn members.
    "redq": ("agent.cql.enabled=false",),
    "calql": ("agent.cql.enabled=true", "agent.cql.calql_bound=true"),
    "cql": ("agent.cql.enabled=true", "agent.cql.calql_bound=false"),
    # IQL pre-training (expectile V, AWR actor; agent.iql.*), then WSRL as after Cal-QL.
    "iql": ("agent.cql.enabled=false", "agent.iql.enabled=true"),
}


class TrainGymError(UserError, ValueError):
    """A train-gym run that cannot start as asked; the message says what to change."""


@dataclass(frozen=True)
class GymRun:
    """What to run (the hyperparameters live in AgentConfig)."""

    env_id: str
    run_dir: Path
    algo: str = "sac"
    env_steps: int = 20_000
    random_steps: int = 1_000
    offline_data: str | None = None
    offline_steps: int = 0
    eval_every: int = 2_000
    eval_episodes: int = 5
    checkpoint_every: int = 0
    log_every: int = 500
    buffer_capacity: int = 1_000_000
    # Override the env's registered time limit (None: keep it).
    max_episode_steps: int | None = None
    progress: bool = True
    # Keyword arguments for gymnasium.make (--env-kwargs).
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)


def algo_overrides(algo: str) -> list[str]:
    if algo not in ALGO_OVERRIDES:
        raise TrainGymError(f"--algo must be one of {ALGOS}, got '{algo}'")
    return list(ALGO_OVERRIDES[algo])


# ------------------------------------------------------------------------------------------ data


def load_offline_episodes(source: str, env: gym.Env, report: Callable[[str], None] = print) -> list[Episode]:
    """Episodes from an episode-store directory, a LeRobot dataset folder or a local Minari dataset id, mapped to the agent's
    observation dict and [-1, 1] actions with the env's own spaces."""
    observation_space, action_space = source_spaces(env)
    if Path(source).is_dir():  # an episode directory or a LeRobotDataset v3 folder
        from agent.data.sources import DataSourceError, read_source

        try:
            episodes = read_source(source, report=report)
        except DataSourceError as exc:
            raise TrainGymError(str(exc)) from None
        if not episodes:
            raise TrainGymError(f"{source} holds no loadable episode (episode_*.npz, or a LeRobot dataset)")
    else:
        from agent.data.minari_io import MinariError, import_minari

        if "/" not in source:
            raise TrainGymError(f"--offline-data '{source}' is neither a directory nor a Minari dataset id "
                                "(namespace/name-v0)")
        try:
            episodes = list(import_minari(source))
        except MinariError as exc:
            raise TrainGymError(str(exc)) from None
        if not episodes:
            raise TrainGymError(f"Minari dataset '{source}' has no episodes")
    mapped = []
    for index, episode in enumerate(episodes):
        raw = episode.observations
        observations = raw["state"] if isinstance(observation_space, gym.spaces.Box) and set(raw) == {"state"} else raw
        try:
            obs = agent_observations(observations, observation_space, batch_dims=1)
        except (KeyError, ValueError) as exc:
            raise TrainGymError(f"offline episode {index} does not fit the env's observations "
                                f"{observation_space} ({type(exc).__name__}: {exc})") from None
        expected = env.observation_space
        for key, space in expected.spaces.items():
            if key not in obs or obs[key].shape[1:] != space.shape:
                got = None if key not in obs else obs[key].shape[1:]
                raise TrainGymError(f"offline episode {index}: observation '{key}' has shape {got}, the env "
                                    f"{space.shape}; is this data from another env?")
        if episode.actions.shape[1:] != action_space.shape:
            raise TrainGymError(f"offline episode {index}: actions of shape {episode.actions.shape[1:]}, the env "
                                f"{action_space.shape}")
        mapped.append(dataclasses.replace(episode, observations=obs,
                                          actions=normalize_actions(episode.actions, action_space)))
    return mapped


def reward_kind_warning(rewards: np.ndarray, sparse: bool) -> str | None:
    """A warning when agent.reward.sparse does not fit the rewards seen (MC returns would be wrong)."""
    rewards = np.asarray(rewards)
    binary = bool(np.all((rewards == 0) | (rewards == 1)))
    if sparse and not binary:
        return ("agent.reward.sparse=true but the rewards are not 0/1: every episode without a positive "
                "reward gets the failure return. Set agent.reward.sparse=false for a dense-reward env")
    return None


def _buffer(new_buffer: BufferFactory, observation_space: gym.spaces.Dict, action_dim: int,
            capacity: int, feature_fn: Callable[[np.ndarray], np.ndarray] | None = None) -> ReplayBuffer:
    spec = {k: (s.shape, s.dtype) for k, s in observation_space.spaces.items()}
    return new_buffer(spec, action_dim, capacity, feature_fn=feature_fn)


# ------------------------------------------------------------------------------------------ acting


@jax.jit
def _explore(agent: Agent, observation: dict, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    key, sub = jax.random.split(key)
    sample = off2on.ensemble_sample_actions if off2on.is_ensemble(agent) else sample_actions
    return sample(agent, jax.tree.map(lambda x: x[None], observation), sub)[0], key


def episode_success(info: Mapping[str, Any]) -> bool | None:
    """The env's success flag of an episode's last step: `info["is_success"]`, else `info["success"]`;
    None when the env gives neither."""
    for key in ("is_success", "success"):
        if key in info:
            return bool(np.asarray(info[key]).any())
    return None


def evaluate(agent: Agent, env: gym.Env, episodes: int, seed: int) -> dict[str, float]:
    """Mean/std of the env's own return over `episodes` with the deterministic (mean) policy, and
    `success_rate` (see `episode_success`) when the env reports success."""
    returns, lengths, successes = [], [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, steps, done, info = 0.0, 0, False, {}
        mean_action = off2on.ensemble_eval_actions if off2on.is_ensemble(agent) else eval_actions
        while not done:
            action = np.asarray(mean_action(agent, jax.tree.map(lambda x: x[None], obs))[0])
            obs, reward, terminated, truncated, info = env.step(action)
            total += float(reward)
            steps += 1
            done = terminated or truncated
        returns.append(total)
        lengths.append(steps)
        success = episode_success(info)
        if success is not None:
            successes.append(success)
    result = {"return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)),
              "return_min": float(np.min(returns)), "length": float(np.mean(lengths))}
    if successes:
        result["success_rate"] = float(np.mean(successes))
    return result


def _eval_line(where: str, result: Mapping[str, float]) -> str:
    line = f"eval at {where}: return {result['return_mean']:.1f} ± {result['return_std']:.1f}"
    return line + (f", success rate {result['success_rate']:.0%}" if "success_rate" in result else "")


def _eval_postfix(result: Mapping[str, float]) -> dict[str, str]:
    postfix = {"eval": f"{result['return_mean']:.1f}"}
    if "success_rate" in result:
        postfix["success"] = f"{result['success_rate']:.0%}"
    return postfix


# ------------------------------------------------------------------------------------------ loop


def _scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


class _Progress:
    """A progress bar (rate and ETA; plain lines off a terminal) with the latest evaluation in its
    postfix; silent when disabled."""

    def __init__(self, enabled: bool, total: int, desc: str, unit: str):
        self._bar = None
        if enabled and total > 0:
            from robot_env.progress import progress

            self._bar = progress(total=total, desc=desc, unit=unit, smoothing=0.05)

    def update(self, n: int = 1, **postfix) -> None:
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)

    def write(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def train_gym(run: GymRun, cfg: AgentConfig, new_buffer: BufferFactory, seed: int = 0,
              log: Callable[[str], None] = print, *, metrics: MetricsConfig | None = None,
              run_config: Mapping[str, Any] | None = None) -> dict:
    """Run the phases of the module docstring; returns the summary also written to summary.json.
    `metrics` (the config's `metrics:`) adds Weights & Biases, with `run_config` as its run config."""
    if run.algo not in ALGOS:
        raise TrainGymError(f"--algo must be one of {ALGOS}, got '{run.algo}'")
    if cfg.iql.enabled != (run.algo == "iql"):
        raise TrainGymError("agent.iql.enabled (--preset wsrl_iql) is IQL pre-training: give --algo iql" if cfg.iql.enabled
                            else "--algo iql needs agent.iql.enabled=true")
    if run.offline_steps and not run.offline_data:
        raise TrainGymError("--offline-steps needs --offline-data (an episode directory or a Minari dataset id)")
    if run.algo in OFFLINE_ALGOS and not (run.offline_data and run.offline_steps > 0):
        raise TrainGymError(f"--algo {run.algo} is offline pre-training: give --offline-data and --offline-steps")
    if run.offline_data and run.algo in ("sac", "redq") and cfg.online.offline_ratio == 0:
        raise TrainGymError("--offline-data with --algo sac/redq is RLPD-style mixing: set "
                            "agent.online.offline_ratio (e.g. 0.5), or use --algo calql to pre-train on it")
    ensemble = bool(cfg.off2on.enabled)
    if ensemble and not (run.offline_data and run.offline_steps > 0 and run.algo in ("calql", "cql")):
        raise TrainGymError("agent.off2on.enabled (--preset off2on) pre-trains an ensemble of CQL agents and fine-tunes "
                            "it on balanced replay: give --algo cql (or calql), --offline-data and --offline-steps")
    if run.eval_every < 1 or run.eval_episodes < 1:
        raise TrainGymError("--eval-every and --eval-episodes must be at least 1")

    limit = {**run.env_kwargs, **({"max_episode_steps": run.max_episode_steps} if run.max_episode_steps else {})}
    env = make_gym_env(run.env_id, seed=seed, **limit)
    eval_env = make_gym_env(run.env_id, seed=seed + 1, **limit)
    action_dim = int(env.action_space.shape[0])
    run_dir = Path(run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    example, _ = env.reset(seed=seed)
    agent = (off2on.create_ensemble if ensemble else create_agent)(cfg, example, action_dim, seed=seed)
    # Frozen image backbone: the buffers store each frame's features once (as the robot learner
    # does), so the updates never run the backbone; frames stay in the buffer for the episodes.
    feature_cache = uses_feature_cache(agent)
    initial_agent = off2on.member(agent, 0) if ensemble else agent  # its frozen backbone every later agent keeps
    feature_fn = frozen_feature_fn(lambda: initial_agent) if feature_cache else None

    offline_buffer = None
    if run.offline_data:
        episodes = load_offline_episodes(run.offline_data, env, report=log)
        warning = reward_kind_warning(np.concatenate([e.rewards for e in episodes]), cfg.reward.sparse)
        if warning:
            log(f"warning: {warning}")
        capacity = sum(len(e) + 1 for e in episodes)
        offline_buffer = _buffer(new_buffer, env.observation_space, action_dim, capacity, feature_fn)
        for episode in episodes:
            offline_buffer.add_episode_record(episode)
        log(f"offline data: {len(episodes)} episodes, {offline_buffer.num_transitions} transitions from "
            f"{run.offline_data}")

    bootstrap = bool(cfg.reward.bootstrap_on_truncation)
    rng = np.random.default_rng(seed)
    checkpointer = AgentCheckpointer(run_dir / "checkpoints", max_to_keep=3)
    batch_size, utd = int(cfg.sac.batch_size), int(cfg.sac.utd)
    evaluations: list[dict] = []
    started = time.perf_counter()

    saved_steps: set[int] = set()

    def save(step: int, phase: str) -> None:
        if step in saved_steps:
            return
        saved_steps.add(step)
        checkpointer.save(step, agent, cfg, extra={"env_id": run.env_id, "algo": run.algo, "phase": phase,
                                                   "env_steps": env_steps_done, "offline_steps": offline_done})

    env_steps_done = offline_done = 0
    interrupted: KeyboardInterrupt | None = None
    try:
        with MetricsWriter(run_dir, wandb=metrics.wandb if metrics else None, config=run_config,
                           job_type="train-gym") as writer:
            # -------------------------------------------------------------- offline pre-training
            if offline_buffer is not None and run.offline_steps > 0:
                progress = _Progress(run.progress, run.offline_steps, f"offline {run.algo}", "update")
                offline_update = iql_update if cfg.iql.enabled else update
                try:
                    for step in range(1, run.offline_steps + 1):
                        if ensemble:  # every member on its own batch, one compiled update for all
                            batch = off2on.member_batches(offline_buffer, off2on.ensemble_size(agent), batch_size, rng,
                                                          bootstrap_on_truncation=bootstrap, frames=not feature_cache)
                            agent, metrics = off2on.ensemble_update(agent, batch)
                            metrics = off2on.mean_over_members(metrics)
                        else:
                            batch = sample_batches(None, offline_buffer, rng, batch_size, 1, 1.0,
                                                   bootstrap_on_truncation=bootstrap, frames=not feature_cache)
                            agent, metrics = offline_update(agent, jax.tree.map(lambda x: x[0], batch))
                        offline_done = step
                        if step % run.log_every == 0 or step == run.offline_steps:
                            writer.log(step, _scalars(metrics), prefix="offline")
                        postfix = {}
                        if step % run.eval_every == 0 or step == run.offline_steps:
                            result = evaluate(agent, eval_env, run.eval_episodes, seed + 10_000)
                            writer.log(step, result, prefix="offline_eval")
                            evaluations.append({"phase": "offline", "step": step, **result})
                            progress.write(_eval_line(f"offline update {step}", result))
                            postfix = _eval_postfix(result)
                        if run.checkpoint_every and step % run.checkpoint_every == 0:
                            save(step, "offline")
                        progress.update(1, **postfix)
                except KeyboardInterrupt:
                    save(offline_done, "offline-interrupted")
                    progress.write(f"interrupted: checkpoint of offline update {offline_done} in {checkpointer.directory}")
                    raise
                finally:
                    progress.close()
                save(offline_done, "offline")

            # -------------------------------------------------------------- online
            pretrained = offline_done > 0
            if pretrained:
                frozen = agent
                agent = off2on.switch_online(agent, cfg.online) if ensemble else wsrl_switch(agent, cfg.online)
                warmup = int(cfg.online.warmup_steps)
            else:
                frozen = None
                warmup = int(run.random_steps)
            online_buffer = _buffer(new_buffer, env.observation_space, action_dim, min(run.buffer_capacity, run.env_steps + 2),
                                    feature_fn) if run.env_steps > 0 else None
            mixing = offline_buffer is not None and cfg.online.offline_ratio != 0 and not ensemble
            balanced = density = None
            if ensemble and online_buffer is not None:
                balanced = off2on.BalancedReplay(offline_buffer, online_buffer, cfg.off2on,
                                                 bootstrap_on_truncation=bootstrap, frames=not feature_cache)
                density = off2on.DensityStep(cfg.off2on, agent, balanced, rng, seed)
                auroc_key = jax.random.PRNGKey(seed + 2)
            act_key = jax.random.PRNGKey(seed + 1)
            progress = _Progress(run.progress, run.env_steps, f"online {run.env_id}", "step")
            obs, _ = env.reset(seed=seed)
            episode_return, episode_length, episodes_done, reward_warned = 0.0, 0, 0, False
            last_eval = None
            try:
                for step in range(1, run.env_steps + 1):
                    if step <= warmup and frozen is not None:
                        action, act_key = _explore(frozen, obs, act_key)
                        action = np.asarray(action)
                    elif step <= warmup:
                        action = env.action_space.sample()
                    else:
                        action, act_key = _explore(agent, obs, act_key)
                        action = np.asarray(action)
                    next_obs, reward, terminated, truncated, _ = env.step(action)
                    online_buffer.insert(obs, action, float(reward), next_obs, terminated, truncated)
                    episode_return += float(reward)
                    episode_length += 1
                    obs = next_obs
                    env_steps_done = step
                    if terminated or truncated:
                        writer.log(step, {"return": episode_return, "length": episode_length}, prefix="train_episode")
                        if not reward_warned and online_buffer.num_transitions:
                            warning = reward_kind_warning(online_buffer.all_transitions()["raw_rewards"], cfg.reward.sparse)
                            if warning:
                                progress.write(f"warning: {warning}")
                            reward_warned = True
                        episodes_done += 1
                        episode_return, episode_length = 0.0, 0
                        obs, _ = env.reset()

                    ready = online_buffer.num_transitions > 0 or mixing
                    if balanced is not None and updates_allowed(step, warmup):
                        # Off2On: more learner steps on the first online samples (the paper's 5x).
                        repeats = (int(cfg.off2on.early_updates)
                                   if online_buffer.num_transitions < cfg.off2on.reference_count else 1)
                        for _ in range(repeats):
                            drawn = balanced.sample(batch_size, utd, rng)
                            agent, metrics = off2on.ensemble_learner_step(agent, drawn.batches)
                            balance = density(agent, drawn)
                        if step % run.log_every == 0:
                            metrics = {**_scalars(off2on.mean_over_members(metrics)), **balance}
                            if online_buffer.num_transitions:
                                states = balanced.uniform(online_buffer, batch_size, rng)
                                auroc_key, sub = jax.random.split(auroc_key)
                                metrics["off2on/q_auroc"] = float(off2on.q_auroc(agent, states["observations"],
                                                                                 states["actions"], sub))
                            writer.log(step, metrics, prefix="train")
                    elif ready and updates_allowed(step, warmup):
                        batches = sample_batches(online_buffer, offline_buffer if mixing else None, rng, batch_size,
                                                 utd, cfg.online.offline_ratio, bootstrap_on_truncation=bootstrap,
                                                 frames=not feature_cache)
                        agent, metrics = learner_step(agent, batches)
                        if step % run.log_every == 0:
                            if frozen is not None:  # WSRL forgetting diagnostics (online states unless mixing)
                                states = jax.tree.map(lambda x: x[-1], batches["observations"])
                                metrics = {**metrics, **policy_drift(agent, frozen.actor.params, states)}
                            writer.log(step, _scalars(metrics), prefix="train")
                    if step % run.eval_every == 0 or step == run.env_steps:
                        last_eval = evaluate(agent, eval_env, run.eval_episodes, seed + 10_000)
                        elapsed = time.perf_counter() - started
                        writer.log(step, {**last_eval, "wall_time_s": elapsed, "episodes": episodes_done}, prefix="eval")
                        evaluations.append({"phase": "online", "step": step, "wall_time_s": elapsed, **last_eval})
                        progress.write(_eval_line(f"env step {step}", last_eval))
                    if run.checkpoint_every and step % run.checkpoint_every == 0:
                        save(offline_done + step, "online")
                    progress.update(1, **(_eval_postfix(last_eval) if last_eval else {}))
            except KeyboardInterrupt:
                save(offline_done + env_steps_done, "online-interrupted")
                progress.write(f"interrupted: checkpoint of env step {env_steps_done} in {checkpointer.directory}")
                raise
            finally:
                progress.close()
                env.close()
                eval_env.close()
            if run.env_steps > 0:
                save(offline_done + env_steps_done, "online")
    except KeyboardInterrupt as exc:  # Ctrl-C: the checkpoint is saved above; summary and curve below
        interrupted = exc


    summary = {
        "env_id": run.env_id, "algo": run.algo, "seed": seed,
        "env_steps": env_steps_done, "offline_steps": offline_done,
        "wall_time_s": time.perf_counter() - started,
        "final_eval": evaluations[-1] if evaluations else None,
        "best_eval_return": max((e["return_mean"] for e in evaluations), default=None),
        "final_success_rate": evaluations[-1].get("success_rate") if evaluations else None,
        "evaluations": evaluations,
        "checkpoints": str(run_dir / "checkpoints"),
        "interrupted": interrupted is not None,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    title = f"{run.algo} on {run.env_id}" + (" (interrupted)" if interrupted is not None else "")
    plot_learning_curve(run_dir / "metrics.jsonl", run_dir / "learning_curve.png", title=title)
    if interrupted is not None:
        log(f"interrupted: summary.json and learning_curve.png written to {run_dir}")
        raise interrupted
    return summary


# ------------------------------------------------------------------------------------------ plots


def plot_learning_curve(metrics_path: Path, out_path: Path, title: str = "") -> Path:
    """Evaluation return (mean ± std over the eval episodes) vs env steps, and vs offline updates
    when there was an offline phase; one panel per phase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    panels = [(prefix, label) for prefix, label in (("offline_eval", "offline updates"), ("eval", "env steps"))
              if any(f"{prefix}/return_mean" in r for r in rows)]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6 * max(1, len(panels)), 4), squeeze=False)
    for ax, (prefix, label) in zip(axes[0], panels, strict=False):
        points = [(r["step"], r[f"{prefix}/return_mean"], r.get(f"{prefix}/return_std") or 0.0)
                  for r in rows if r.get(f"{prefix}/return_mean") is not None]
        steps, mean, std = (np.array(v, float) for v in zip(*points, strict=True))
        ax.plot(steps, mean, marker="o", label="deterministic policy")
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
        ax.set_xlabel(label)
        ax.set_ylabel("evaluation return")
        ax.grid(alpha=0.3)
        ax.set_title(f"{title} ({prefix.replace('_', ' ')})" if title else prefix)
        success = [(r["step"], r[f"{prefix}/success_rate"]) for r in rows if r.get(f"{prefix}/success_rate") is not None]
        if success:  # the env reports success (info["is_success"] / info["success"])
            twin = ax.twinx()
            twin.plot(*zip(*success, strict=True), marker="s", color="tab:green", label="success rate")
            twin.set_ylim(-0.05, 1.05)
            twin.set_ylabel("success rate")
            twin.legend(loc="lower right")
    if not panels:
        axes[0][0].text(0.5, 0.5, "no evaluation yet", ha="center", va="center")
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def eval_returns(metrics_path: Path, prefix: str = "eval") -> list[tuple[int, float]]:
    """(step, mean eval return) pairs of a run's metrics.jsonl."""
    return [(int(r["step"]), float(r[f"{prefix}/return_mean"])) for r in read_metrics(metrics_path)
            if r.get(f"{prefix}/return_mean") is not None and not math.isnan(r[f"{prefix}/return_mean"])]
