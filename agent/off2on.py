"""Off2On (Lee et al. 2021, "Offline-to-Online RL via Balanced Replay and Pessimistic Q-Ensemble").

Three parts, each compiled like the rest of the agent:

- **A pessimistic Q-ensemble.** N agents (`agent.off2on.ensemble_size`) stacked on a leading axis
  of every array leaf: one `Agent` pytree whose static networks and settings are shared. Offline,
  `ensemble_update` is `jax.vmap` of the CQL update over members, each on its own batch (the
  paper pre-trains them independently); online, `ensemble_learner_step` is `vmap` of the SAC
  learner step over members on one shared balanced-replay batch. No Python loop over members.
- **Ensemble acting.** The members' Gaussian policies combine into one Gaussian: the mean of the
  members' means and the mean of their standard deviations, then tanh (`ensemble_policy`).
  The Q of the ensemble is the mean over members and their critics (`ensemble_q`).
- **Balanced replay.** `BalancedReplay` draws the union of the offline data and the online ring
  by priority (agent/prioritized.py's sum tree) and `DensityStep` trains the density-ratio net
  w_psi(s, a) ~ d_online / d_offline (agent/density_ratio.py) on uniform batches from each buffer;
  the samples of each update batch then take the self-normalised priority w^(1/T) / E_off[w^(1/T)].

docs/agent.md, "Off2On", has the keys, their defaults and which are the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from agent import density_ratio
from agent.batches import to_agent_batch
from agent.config import AgentConfig, Off2OnConfig, OnlineConfig
from agent.core import (
    Agent,
    create_agent,
    encode,
    ensemble_eval_actions,
    ensemble_policy,
    ensemble_sample_actions,
    is_ensemble,
    member_axes,
)
from agent.data.replay_buffer import ReplayBuffer
from agent.prioritized import UnionDraw, UnionPriorities
from agent.sac import _learner_step, full_update
from agent.sampling import stack_leading
from agent.wsrl import wsrl_switch

Batch = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# The ensemble as one pytree


def stack_members(members: list[Agent]) -> Agent:
    """N agents built from one config -> one agent whose array leaves have a leading axis N; the
    frozen backbone (if any) is member 0's, shared."""
    shared = members[0].frozen_backbone
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[m.replace(frozen_backbone={}) for m in members])
    return stacked.replace(frozen_backbone=shared)


def member(ensemble: Agent, index: int) -> Agent:
    """Member `index` of a stacked ensemble, as an ordinary agent (sharing the frozen backbone)."""
    picked = jax.tree.map(lambda x: x[index], ensemble.replace(frozen_backbone={}))
    return picked.replace(frozen_backbone=ensemble.frozen_backbone)


def ensemble_size(ensemble: Agent) -> int:
    return int(ensemble.critic.step.shape[0])


def mean_over_members(metrics: dict) -> dict:
    """Per-member metrics (N,) of an ensemble update -> their mean."""
    return {k: jnp.mean(v, axis=0) for k, v in metrics.items()}


def create_ensemble(cfg: AgentConfig, example_observation: dict, action_dim: int, seed: int = 0,
                    backbone_params: Any = None) -> Agent:
    """`cfg.off2on.ensemble_size` agents initialised from different keys (member i of run seed s
    from seed s * N + i, so no two members of two seeds share one), stacked. The pretrained
    backbone is read once: the members after the first take member 0's."""
    size = int(cfg.off2on.ensemble_size)
    first = create_agent(cfg, example_observation, action_dim, seed=seed * size, backbone_params=backbone_params)
    if backbone_params is None and first.spec.image_keys:
        backbone_params = first.frozen_backbone or first.critic.params["backbone"]
    rest = [create_agent(cfg, example_observation, action_dim, seed=seed * size + i, backbone_params=backbone_params)
            for i in range(1, size)]
    return stack_members([first, *rest])


@jax.jit
def ensemble_update(ensemble: Agent, batches: Batch) -> tuple[Agent, dict]:
    """One critic + actor + temperature update of every member, each on its own batch: batches
    carry a leading member axis (N, B, ...). The offline phase (CQL per member)."""
    axes = member_axes(ensemble)
    return jax.vmap(full_update, in_axes=(axes, 0), out_axes=(axes, 0))(ensemble, batches)


def _ensemble_learner_step(ensemble: Agent, batches: Batch) -> tuple[Agent, dict]:
    axes = member_axes(ensemble)
    return jax.vmap(_learner_step, in_axes=(axes, None), out_axes=(axes, 0))(ensemble, batches)


@jax.jit
def ensemble_pretrain_step(ensemble: Agent, batches: Batch) -> tuple[Agent, dict]:
    """`learner_step` of every member on its own (utd, B, ...) batches: batches (N, utd, B, ...).
    Offline pre-training (CQL per member, each on independent draws, as the paper's N runs)."""
    axes = member_axes(ensemble)
    return jax.vmap(_learner_step, in_axes=(axes, 0), out_axes=(axes, 0))(ensemble, batches)


ensemble_learner_step = jax.jit(_ensemble_learner_step)
ensemble_learner_step.__doc__ = """`learner_step` (utd - 1 critic updates, one full update) of every
member on the same (utd, B, ...) batches. The online phase (SAC on balanced replay)."""


# ---------------------------------------------------------------------------------------------
# Acting and values


def ensemble_q(ensemble: Agent, observations: dict, actions: jax.Array) -> jax.Array:
    """Q(s, a) averaged over members and each member's critics: (B,)."""

    def one(agent: Agent) -> jax.Array:
        features = encode(agent, agent.critic.params, observations)
        return agent.nets.critic.apply({"params": agent.critic.params["q"]}, features, actions).mean(axis=0)

    return jnp.mean(jax.vmap(one, in_axes=(member_axes(ensemble),))(ensemble), axis=0)


def auroc(positive: jax.Array, negative: jax.Array) -> jax.Array:
    """P(a positive score > a negative score), ties counting one half (the Mann–Whitney AUROC)."""
    diff = positive[:, None] - negative[None, :]
    return jnp.mean((diff > 0).astype(jnp.float32) + 0.5 * (diff == 0).astype(jnp.float32))


@jax.jit
def q_auroc(ensemble: Agent, observations: dict, actions: jax.Array, key: jax.Array) -> jax.Array:
    """The paper's check that the ensemble ranks the actions taken above random ones: AUROC of
    Q(s, a_taken) against Q(s, a ~ U[-1, 1]^d) on the same states (0.5: no preference)."""
    uniform = jax.random.uniform(key, actions.shape, actions.dtype, -1.0, 1.0)
    return auroc(ensemble_q(ensemble, observations, actions), ensemble_q(ensemble, observations, uniform))


# ---------------------------------------------------------------------------------------------
# Density ratio


def _ratio_inputs(ensemble: Agent, observations: dict, actions: jax.Array) -> jax.Array:
    # Features from member 0's encoder (the paper: the value network's encoder), without gradient.
    lead = member(ensemble, 0)
    features = jax.lax.stop_gradient(encode(lead, lead.critic.params, observations))
    return jnp.concatenate([features, actions.astype(jnp.float32)], axis=-1)


ratio_inputs = jax.jit(_ratio_inputs)


@partial(jax.jit, static_argnames=("temperature",))
def _density_step(state: density_ratio.DensityRatio, ensemble: Agent, online: tuple, offline: tuple, drawn: tuple,
                  temperature: float) -> tuple[density_ratio.DensityRatio, jax.Array, dict]:
    """One w_psi update on (observations, actions) of a uniform online and offline batch, then the
    priorities of the drawn samples ((utd, B) flattened to (utd * B,))."""
    state, metrics = density_ratio.update(state, _ratio_inputs(ensemble, *online), _ratio_inputs(ensemble, *offline))
    offline_w = density_ratio.ratios(state, _ratio_inputs(ensemble, *offline))
    observations, actions = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), drawn)
    priorities = density_ratio.self_normalised_priorities(
        density_ratio.ratios(state, _ratio_inputs(ensemble, observations, actions)), offline_w, temperature)
    return state, priorities, metrics


def _pair(batch: Batch) -> tuple:
    # Only what w_psi reads, so batches with other keys share one compiled step.
    return batch["observations"], batch["actions"]


def compile_density_step(step: DensityStep, ensemble: Agent, flat: Batch, drawn: Batch) -> jax.Array:
    """Compile (and run, discarding the result) the w_psi step for batches shaped like `flat`
    (B, ...) and draws like `drawn` (utd, B, ...); `step`'s state is untouched."""
    n = int(step.cfg.ratio_batch_size)
    sized = jax.tree.map(lambda x: np.resize(np.asarray(x), (n, *np.shape(x)[1:])), flat)
    _, priorities, _ = _density_step(step.state, ensemble, _pair(sized), _pair(sized), _pair(drawn),
                                     float(step.cfg.priority_temperature))
    return priorities


def create_ratio_state(cfg: Off2OnConfig, ensemble: Agent, example_batch: Batch, seed: int) -> density_ratio.DensityRatio:
    width = int(ratio_inputs(ensemble, example_batch["observations"], example_batch["actions"]).shape[-1])
    return density_ratio.create_density_ratio(jax.random.PRNGKey(seed), width, tuple(cfg.ratio_hidden_dims),
                                              float(cfg.ratio_lr), output=cfg.ratio_output)


# ---------------------------------------------------------------------------------------------
# Balanced replay over (offline buffer) ∪ (online buffer)


@dataclass
class BalancedDraw:
    batches: Batch  # (utd, B, ...) agent batches, offline samples first within the draw
    draw: UnionDraw  # the union slots, in the batches' flattened order

    @property
    def offline_fraction(self) -> float:
        return 1.0 - self.draw.online_fraction


class BalancedReplay:
    """Prioritised sampling over the union of an offline buffer and an online ring buffer.

    Slots are the buffers' own: offline slot i is union slot i, online ring slot j is union slot
    M + j (M = the offline buffer's capacity; slots that start no transition have priority 0).
    The online buffer validates a transition when its episode ends (or a chunk commits); `sync`
    gives each slot that became valid since the last call the default priority, and priority 0 to
    each that stopped being valid (overwritten), before every draw.
    """

    def __init__(self, offline: ReplayBuffer, online: ReplayBuffer, cfg: Off2OnConfig, *,
                 bootstrap_on_truncation: bool = True, frames: bool = True) -> None:
        if offline.num_transitions == 0:
            raise ValueError("balanced replay needs offline data: the offline buffer holds no transition")
        self.offline, self.online = offline, online
        self.priorities = UnionPriorities(offline.capacity, online.capacity, float(cfg.rho),
                                          reference_count=int(cfg.reference_count),
                                          offline_valid=offline.valid_mask())
        self._seen_valid = np.zeros(online.capacity, bool)
        self._bootstrap, self._frames = bool(bootstrap_on_truncation), bool(frames)

    def sync(self) -> None:
        valid = self.online.valid_mask()
        changed = np.flatnonzero(valid != self._seen_valid)
        if changed.size:
            self.priorities.write_online(changed, valid[changed])
            self._seen_valid[changed] = valid[changed]

    def sample(self, batch_size: int, groups: int, rng: np.random.Generator) -> BalancedDraw:
        """`groups` batches of `batch_size` drawn by priority, stacked for `ensemble_learner_step`."""
        self.sync()
        draw = self.priorities.sample(batch_size * groups, rng)
        off, on = np.flatnonzero(~draw.online), np.flatnonzero(draw.online)
        order = np.concatenate([off, on])
        draw = UnionDraw(*(np.asarray(field)[order] for field in (draw.slots, draw.online, draw.index,
                                                                   draw.probabilities, draw.generations)))
        parts = []
        if off.size:
            parts.append(self.offline.batch(draw.index[: off.size], frames=self._frames))
        if on.size:
            parts.append(self.online.batch(draw.index[off.size:], frames=self._frames))
        sample = parts[0] if len(parts) == 1 else _concatenate(parts)
        # Shuffle the offline-first order across the utd groups so each group mixes like the draw.
        permutation = rng.permutation(batch_size * groups)
        sample = _take(sample, permutation)
        draw = UnionDraw(*(np.asarray(field)[permutation] for field in (draw.slots, draw.online, draw.index,
                                                                         draw.probabilities, draw.generations)))
        batch = to_agent_batch(sample, bootstrap_on_truncation=self._bootstrap)
        return BalancedDraw(stack_leading(batch, groups), draw)

    def uniform(self, buffer: ReplayBuffer, n: int, rng: np.random.Generator) -> Batch:
        return to_agent_batch(buffer.sample(n, rng, frames=self._frames), bootstrap_on_truncation=self._bootstrap)

    def set_priorities(self, drawn: BalancedDraw, priorities: np.ndarray) -> int:
        return self.priorities.update(drawn.draw, np.asarray(priorities, np.float64))


def _concatenate(parts: list[dict]) -> dict:
    first = parts[0]
    return {k: (_concatenate([p[k] for p in parts]) if isinstance(v, dict) else np.concatenate([p[k] for p in parts]))
            for k, v in first.items()}


def _take(sample: dict, order: np.ndarray) -> dict:
    return {k: (_take(v, order) if isinstance(v, dict) else np.asarray(v)[order]) for k, v in sample.items()}


class DensityStep:
    """The density-ratio net and the priority refresh of one learner step."""

    def __init__(self, cfg: Off2OnConfig, ensemble: Agent, replay: BalancedReplay, rng: np.random.Generator,
                 seed: int) -> None:
        self.cfg, self.replay, self.rng = cfg, replay, rng
        self.state = create_ratio_state(cfg, ensemble, replay.uniform(replay.offline, 1, rng), seed)

    def __call__(self, ensemble: Agent, drawn: BalancedDraw) -> dict[str, float]:
        """Train w_psi once, set the drawn samples' priorities; returns the step's metrics."""
        if self.replay.online.num_transitions == 0:
            return {"off2on/offline_fraction": drawn.offline_fraction}
        n = int(self.cfg.ratio_batch_size)
        online = self.replay.uniform(self.replay.online, n, self.rng)
        offline = self.replay.uniform(self.replay.offline, n, self.rng)
        self.state, priorities, metrics = _density_step(self.state, ensemble, _pair(online), _pair(offline),
                                                        _pair(drawn.batches), float(self.cfg.priority_temperature))
        priorities = np.asarray(priorities)
        self.replay.set_priorities(drawn, priorities)
        is_online = drawn.draw.online
        out = {k: float(v) for k, v in metrics.items()}
        out["off2on/offline_fraction"] = drawn.offline_fraction
        out["off2on/priority_online_mean"] = float(priorities[is_online].mean()) if is_online.any() else float("nan")
        out["off2on/priority_offline_mean"] = (float(priorities[~is_online].mean()) if (~is_online).any()
                                               else float("nan"))
        out["off2on/online_probability"] = self.replay.priorities.online_probability
        return out


def member_batches(buffer: ReplayBuffer, members: int, batch_size: int, rng: np.random.Generator, *,
                   groups: int = 0, bootstrap_on_truncation: bool = True, frames: bool = True) -> Batch:
    """Independent uniform batches for each member, stacked (N, B, ...), or (N, groups, B, ...) for
    `groups` > 0 (utd batches per member): one buffer draw of N * groups * B."""
    sample = to_agent_batch(buffer.sample(members * max(groups, 1) * batch_size, rng, frames=frames),
                            bootstrap_on_truncation=bootstrap_on_truncation)
    batches = stack_leading(sample, members)
    if groups:
        batches = jax.tree.map(lambda x: x.reshape(members, groups, batch_size, *x.shape[2:]), batches)
    return batches


def switch_online(ensemble: Agent, online: OnlineConfig) -> Agent:
    """The ensemble with WSRL's switch applied (CQL off unless `online.keep_cql`). The settings are
    static and shared by all members, so the switch is computed once, on member 0's spec."""
    return ensemble.replace(spec=wsrl_switch(member(ensemble, 0), online).spec)


__all__ = [
    "BalancedDraw",
    "BalancedReplay",
    "DensityStep",
    "auroc",
    "create_ensemble",
    "ensemble_eval_actions",
    "ensemble_learner_step",
    "ensemble_policy",
    "ensemble_pretrain_step",
    "ensemble_q",
    "ensemble_sample_actions",
    "ensemble_size",
    "ensemble_update",
    "is_ensemble",
    "mean_over_members",
    "member",
    "member_batches",
    "switch_online",
    "q_auroc",
    "stack_members",
]
