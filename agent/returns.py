"""Reward shaping and Monte-Carlo returns, exactly as ALGORITHMS.md specifies.

The stored reward is raw (the task's or the classifier's 0/1 success); the agent trains on
r' = scale * r + bias, so the Monte-Carlo return G that Cal-QL uses as a lower bound must be
computed on r' too. Computing G on the raw 0/1 rewards while training on r - 1 makes the Cal-QL
bound active almost everywhere and cancels the conservative push-down.

Conventions (ALGORITHMS.md, "Rewards and Monte-Carlo returns"):
- episode boundaries are `terminated`, `truncated`, and any discontinuity (the next observation
  of step t differs from the observation of step t + 1);
- within one episode G_t = r'_t + discount * (1 - terminated_t) * G_{t+1}, with G = 0 after the
  last step (a truncated last step therefore ends the sum: nothing is known beyond it);
- a sparse-task episode without a success reward gets G_t = r'_neg / (1 - discount) everywhere: it
  would have gone on failing. Success here is read off the reward stream itself (a raw reward > 0,
  i.e. r' above r'_neg), never off `info["success"]`: behind a reward classifier the two disagree,
  and G must describe the rewards the critic is trained on.

`RewardShaping` bundles the four settings so that a buffer cannot be built with some of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def shape_rewards(raw: np.ndarray, scale: float, bias: float) -> np.ndarray:
    """r' = scale * r + bias, as float32."""
    return (scale * np.asarray(raw, dtype=np.float64) + bias).astype(np.float32)


def sparse_failure_return(scale: float, bias: float, discount: float) -> float:
    """G of every step of a failed sparse episode: r'_neg / (1 - discount), r'_neg = scale*0 + bias."""
    if not 0.0 <= discount < 1.0:
        raise ValueError(f"discount must be in [0, 1), got {discount}")
    del scale  # the failure reward is raw 0, which the scale does not change
    return float(bias) / (1.0 - discount)


def mc_returns(
    shaped_rewards: np.ndarray,
    terminated: np.ndarray,
    discount: float,
    sparse_failure_return: float | None = None,
) -> np.ndarray:
    """Monte-Carlo returns of ONE episode, as float32.

    If `sparse_failure_return` is given (the caller passes r'_neg / (1 - discount) for a sparse
    episode that had no success), every G equals it. Otherwise
    G_t = r'_t + discount * (1 - terminated_t) * G_{t+1}, with G after the last step = 0.
    """
    rewards = np.asarray(shaped_rewards, dtype=np.float64).reshape(-1)
    done = np.asarray(terminated, dtype=bool).reshape(-1)
    if rewards.shape != done.shape:
        raise ValueError(f"rewards {rewards.shape} and terminated {done.shape} differ in length")
    if sparse_failure_return is not None:
        return np.full(rewards.shape, sparse_failure_return, dtype=np.float32)
    returns = np.empty_like(rewards)
    future = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        future = rewards[t] + discount * (0.0 if done[t] else 1.0) * future
        returns[t] = future
    return returns.astype(np.float32)


def split_episodes(
    terminated: np.ndarray,
    truncated: np.ndarray,
    discontinuity: np.ndarray | None = None,
    *,
    keep_incomplete: bool = False,
) -> list[slice]:
    """Slices of consecutive transitions that form one episode each, in order.

    Step t ends an episode when `terminated[t]`, `truncated[t]` or `discontinuity[t]` (the next
    observation of step t is not the observation of step t + 1) is true. A trailing run of steps
    that does not end on a boundary is an episode still in progress: it is dropped unless
    `keep_incomplete` (its Monte-Carlo returns would be wrong).
    """
    ends = np.asarray(terminated, dtype=bool).reshape(-1) | np.asarray(truncated, dtype=bool).reshape(-1)
    if discontinuity is not None:
        gap = np.asarray(discontinuity, dtype=bool).reshape(-1)
        if gap.shape != ends.shape:
            raise ValueError(f"discontinuity {gap.shape} and terminated {ends.shape} differ in length")
        ends = ends | gap
    slices: list[slice] = []
    start = 0
    for end in np.flatnonzero(ends):
        slices.append(slice(start, int(end) + 1))
        start = int(end) + 1
    if keep_incomplete and start < len(ends):
        slices.append(slice(start, len(ends)))
    return slices


def observation_discontinuity(next_obs: np.ndarray, obs: np.ndarray, atol: float = 0.0) -> np.ndarray:
    """discontinuity[t] = next_obs[t] != obs[t + 1] (last step: False), for arrays stacked on axis 0."""
    next_obs = np.asarray(next_obs)
    obs = np.asarray(obs)
    gap = np.zeros(len(obs), dtype=bool)
    if len(obs) > 1:
        a = next_obs[:-1].reshape(len(obs) - 1, -1).astype(np.float64)
        b = obs[1:].reshape(len(obs) - 1, -1).astype(np.float64)
        gap[:-1] = ~np.all(np.abs(a - b) <= atol, axis=1)
    return gap


@dataclass(frozen=True)
class RewardShaping:
    """How raw rewards become the critic's reward, and so how G is computed: r' = scale * r + bias,
    discounted by `discount`; `sparse`: an episode with no success reward gets the failure return."""

    scale: float
    bias: float
    discount: float
    sparse: bool

    def __post_init__(self) -> None:
        if not 0.0 <= self.discount < 1.0:
            raise ValueError(f"discount must be in [0, 1), got {self.discount}")

    @classmethod
    def from_agent_config(cls, cfg: Any) -> RewardShaping:
        """The agent's own settings (`agent.reward.*` and `agent.sac.discount`): the only mapping
        from config to shaping, so buffers and the update cannot disagree."""
        return cls(scale=float(cfg.reward.scale), bias=float(cfg.reward.bias),
                   discount=float(cfg.sac.discount), sparse=bool(cfg.reward.sparse))

    def shape(self, raw: np.ndarray) -> np.ndarray:
        return shape_rewards(raw, self.scale, self.bias)

    @property
    def failure_return(self) -> float:
        return sparse_failure_return(self.scale, self.bias, self.discount)

    def episode_returns(self, raw_rewards: np.ndarray, terminated: np.ndarray) -> np.ndarray:
        """G of ONE complete episode, from its raw rewards alone."""
        raw = np.asarray(raw_rewards, np.float64).reshape(-1)
        failed = self.sparse and not bool(np.any(raw > 0))
        return mc_returns(self.shape(raw), terminated, self.discount, self.failure_return if failed else None)

    def as_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "bias": self.bias, "discount": self.discount, "sparse": self.sparse}


def episode_mc_returns(
    raw_rewards: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    *,
    scale: float,
    bias: float,
    discount: float,
    sparse: bool,
    discontinuity: np.ndarray | None = None,
    keep_incomplete: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Shape, split and compute G over a stream of transitions (possibly many episodes).

    Returns (G, valid): G per step (float32) and a mask of the steps that belong to a completed
    episode (steps of a dropped incomplete tail have valid = False and G = NaN).
    For a sparse task an episode is a failure when none of its rewards is a success reward; failed
    episodes get the sparse-failure return everywhere (`RewardShaping.episode_returns`).
    """
    shaping = RewardShaping(scale=scale, bias=bias, discount=discount, sparse=sparse)
    raw = np.asarray(raw_rewards).reshape(-1)
    done = np.asarray(terminated, dtype=bool).reshape(-1)
    returns = np.full(raw.shape, np.nan, dtype=np.float32)
    valid = np.zeros(raw.shape, dtype=bool)
    for episode in split_episodes(done, truncated, discontinuity, keep_incomplete=keep_incomplete):
        returns[episode] = shaping.episode_returns(raw[episode], done[episode])
        valid[episode] = True
    return returns, valid
