"""Settings of the two commands that run outside the online loop: `pretrain` and `eval`.

They hang under the root config as `pretrain:` and `eval:` (franka_rl/config.py). The algorithm's
own hyperparameters (CQL alpha, Cal-QL bound, networks) stay under `agent:`.
"""

from __future__ import annotations

from dataclasses import dataclass

from robot_env.errors import ConfigError


@dataclass
class PretrainConfig:
    """Offline pre-training (`franka-rl pretrain`, agent/pretrain.py)."""

    # Gradient steps; the robot reference converged around 200k (ALGORITHMS.md).
    steps: int = 200_000
    # Critic updates per gradient step (utd - 1 critic-only, then one full update), as
    # agent.sac.utd online. The Cal-QL reference pre-trains with 1.
    utd: int = 1
    # Episodes held out of training, to measure calibration (Q against the Monte-Carlo return).
    holdout_episodes: int = 4
    # Held-out episodes drawn as Q-and-G curves in the calibration plot.
    plot_episodes: int = 3
    log_every: int = 1000
    checkpoint_every: int = 10_000
    keep_checkpoints: int = 3
    # Replay-buffer slots; 0 = exactly what the dataset needs.
    buffer_capacity: int = 0
    # Where the updates run: "auto", "gpu" (refuse to start without one) or "cpu" (agent/devices.py).
    device: str = "auto"
    # Local devices of that backend sharing every step, batch split over them (agent/sharding.py;
    # 0 = all of them).
    devices: int = 0


@dataclass
class EvalConfig:
    """Evaluation (`franka-rl eval`, agent/evaluation.py)."""

    episodes: int = 20
    # How initial poses are spread over the task's reset range (±reset_position_noise,
    # ±reset_yaw_noise): "lhs" = a seeded Latin hypercube over (x, y, z, yaw) offsets (every
    # axis evenly covered), "random" = the env's own uniform sampling.
    spread: str = "lhs"
    # Episodes written into the video (wrist cameras side by side).
    video_episodes: int = 4


# How eval spreads initial poses (agent.evaluation reads it from here: it imports JAX, a config must not).
SPREADS = ("lhs", "random")


def validate_offline_config(pretrain: PretrainConfig, evaluation: EvalConfig) -> None:
    """Raise ConfigError naming the first `pretrain.*` or `eval.*` value that cannot work."""
    checks = [
        (pretrain.steps >= 1, "pretrain.steps must be >= 1"),
        (pretrain.utd >= 1, "pretrain.utd must be >= 1"),
        (pretrain.holdout_episodes >= 0, "pretrain.holdout_episodes must be >= 0"),
        (pretrain.plot_episodes >= 0, "pretrain.plot_episodes must be >= 0"),
        (pretrain.log_every >= 1, "pretrain.log_every must be >= 1"),
        (pretrain.checkpoint_every >= 1, "pretrain.checkpoint_every must be >= 1"),
        (pretrain.keep_checkpoints >= 1, "pretrain.keep_checkpoints must be >= 1"),
        (pretrain.buffer_capacity == 0 or pretrain.buffer_capacity >= 2,
         "pretrain.buffer_capacity must be 0 (fit the dataset) or >= 2"),
        (pretrain.devices >= 0, "pretrain.devices must be >= 0 (0 = all local devices)"),
        (evaluation.episodes >= 1, f"eval.episodes must be >= 1, got {evaluation.episodes}"),
        (evaluation.spread in SPREADS, f"eval.spread must be one of {SPREADS}, got '{evaluation.spread}'"),
        (evaluation.video_episodes >= 0, f"eval.video_episodes must be >= 0, got {evaluation.video_episodes}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
