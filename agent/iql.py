"""IQL offline pre-training (Kostrikov et al. 2021) on the agent's own networks.

The same encoder, critic ensemble, target critics and tanh-Gaussian actor as SAC/CQL, plus a
value net V(s) (`agent.value`, built when `agent.iql.enabled`). One update on a batch, every
loss from the same (pre-update) state:

    Q̂(s, a)  = aggregate over target critics of Q̄_i(s, a_data)         (agent.iql.q_aggregation)
    V loss   = mean |τ − 1(Q̂ − V(s) < 0)| · (Q̂ − V(s))²                  (expectile τ)
    Q loss   = mean over members of (Q_i(s, a_data) − y)²,  y = r' + γ·m·V(s')
    π loss   = −mean w · log π(a_data|s),  w = min(exp(β·(Q̂ − V(s))), adv_clip)

then the Polyak update of the target critics (agent.sac.tau). Q's loss trains the encoder (with
its dropout), as SAC's critic loss does; V and the actor read its features with a stop-gradient.
No sampled actions are involved: IQL never queries Q outside the data. The SAC temperature and
the CQL multiplier are left as they are.

`iql_learner_step(agent, batches)` takes `agent.sac.utd` batches stacked on a leading axis, as
`agent.sac.learner_step` does: utd − 1 value + critic updates (lax.scan), then one update of all
three, compiled together.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from agent.config import AgentConfigError
from agent.core import Agent, Params, encode, has_value_net, policy
from agent.networks import tanh_gaussian_log_prob
from agent.sac import (
    Batch,
    _augment,
    _frozen_maps,
    _q,
    _soft_update,
    critic_loss,
    sample_members,
    shaped_rewards,
)


def expectile_loss(diff: jax.Array, expectile: float) -> jax.Array:
    """|τ − 1(diff < 0)| · diff², elementwise, for diff = target − prediction: an under-estimate
    (diff > 0) weighs τ, an over-estimate 1 − τ, so τ > 0.5 pulls the prediction above the mean."""
    weight = jnp.where(diff > 0, expectile, 1.0 - expectile)
    return weight * diff**2


def awr_weights(advantage: jax.Array, temperature: float, clip: float) -> jax.Array:
    """Advantage-weighted regression weights min(exp(β·A), clip)."""
    return jnp.minimum(jnp.exp(temperature * advantage), clip)


def value_of(agent: Agent, value_params: Params, features: jax.Array) -> jax.Array:
    return agent.nets.value.apply({"params": value_params}, features)


def aggregate_q(agent: Agent, qs: jax.Array, key: jax.Array) -> jax.Array:
    """One Q(s, a) per sample from the members' values qs (E, B), by agent.iql.q_aggregation."""
    how = agent.spec.iql.q_aggregation
    if how == "mean":
        return qs.mean(axis=0)
    if how == "min":
        return qs.min(axis=0)
    idx = sample_members(key, agent.spec.num_critics, agent.spec.sac.critic_subsample)
    return qs[idx].min(axis=0)


def _check(agent: Agent) -> None:
    if not agent.spec.iql.enabled or not has_value_net(agent):
        raise AgentConfigError("the IQL update needs an agent built with agent.iql.enabled=true (it has the value "
                               "network); use --preset wsrl_iql")


def iql_update(agent: Agent, batch: Batch, update_actor: bool = True) -> tuple[Agent, dict]:
    """One IQL update of V and Q (and the actor when `update_actor`), then the Polyak step."""
    _check(agent)
    spec = agent.spec
    iql = spec.iql
    rng, k_aug, k_agg, k_loss = jax.random.split(agent.rng, 4)
    if spec.encoder.augment and spec.image_keys:
        batch = _augment(agent, batch, k_aug)
    obs_maps, next_maps = _frozen_maps(agent, batch)
    observations, actions = batch["observations"], batch["actions"]

    features = jax.lax.stop_gradient(encode(agent, agent.critic.params, observations, maps=obs_maps))
    next_features = jax.lax.stop_gradient(encode(agent, agent.critic.params, batch["next_observations"],
                                                 maps=next_maps))
    target_maps = obs_maps if spec.encoder.freeze_backbone else None
    target_features = encode(agent, agent.target_critic_params, observations, maps=target_maps)
    q_data = jax.lax.stop_gradient(
        aggregate_q(agent, _q(agent, agent.target_critic_params["q"], target_features, actions), k_agg))

    # V: the expectile of the target critics' Q at the data action.
    def value_loss(value_params):
        v = value_of(agent, value_params, features)
        loss = jnp.mean(expectile_loss(q_data - v, iql.expectile))
        return loss, {"value_loss": loss, "v": v.mean(), "value_mse": jnp.mean((q_data - v) ** 2)}

    value_grads, value_metrics = jax.grad(value_loss, has_aux=True)(agent.value.params)

    # Q: regression onto r' + γ·m·V(s') with the current V (no sampled next action).
    v_next = value_of(agent, agent.value.params, next_features)
    rewards = shaped_rewards(agent, batch["rewards"])
    target = jax.lax.stop_gradient(rewards + spec.sac.discount * batch["masks"] * v_next)
    (_, critic_metrics), critic_grads = jax.value_and_grad(critic_loss, has_aux=True)(
        agent.critic.params, agent, batch, target, None, obs_maps, k_loss)
    metrics = {**critic_metrics, **value_metrics, "target_q": target.mean(), "reward": rewards.mean()}

    actor = agent.actor
    if update_actor:
        advantage = q_data - value_of(agent, agent.value.params, features)
        weights = jax.lax.stop_gradient(awr_weights(advantage, iql.temperature, iql.adv_clip))

        def actor_loss(actor_params):
            mean, log_std = policy(agent, actor_params, features)
            log_prob = tanh_gaussian_log_prob(mean, log_std, actions)
            loss = -jnp.mean(weights * log_prob)
            return loss, {"actor_loss": loss, "behavior_log_prob": log_prob.mean(),
                          "behavior_mse": jnp.mean(jnp.sum((jnp.tanh(mean) - actions) ** 2, axis=-1)),
                          "policy_std": jnp.exp(log_std).mean()}

        actor_grads, actor_metrics = jax.grad(actor_loss, has_aux=True)(actor.params)
        actor = actor.apply_gradients(grads=actor_grads)
        metrics.update(actor_metrics, adv_mean=advantage.mean(), adv_max=advantage.max(),
                       awr_weight_mean=weights.mean(),
                       awr_weight_clipped=jnp.mean((weights >= iql.adv_clip).astype(jnp.float32)))

    critic = agent.critic.apply_gradients(grads=critic_grads)
    agent = agent.replace(
        critic=critic, actor=actor, value=agent.value.apply_gradients(grads=value_grads), rng=rng,
        target_critic_params=_soft_update(agent.target_critic_params, critic.params, spec.sac.tau),
    )
    return agent, metrics


def _value_critic_update(agent: Agent, batch: Batch) -> tuple[Agent, dict]:
    return iql_update(agent, batch, update_actor=False)


def _iql_learner_step(agent: Agent, batches: Batch) -> tuple[Agent, dict]:
    _check(agent)
    utd = agent.spec.sac.utd
    lengths = {x.shape[0] for x in jax.tree.leaves(batches)}
    if lengths != {utd}:
        raise AgentConfigError(f"iql_learner_step needs batches stacked on a leading axis of length utd={utd}, "
                               f"got {lengths}")
    if utd > 1:
        agent, _ = jax.lax.scan(_value_critic_update, agent, jax.tree.map(lambda x: x[:-1], batches))
    return iql_update(agent, jax.tree.map(lambda x: x[-1], batches))


iql_learner_step = jax.jit(_iql_learner_step)
iql_learner_step.__doc__ = """utd - 1 value + critic updates then one full IQL update, compiled together."""

update = jax.jit(iql_update, static_argnames=("update_actor",))
update.__doc__ = """One IQL update (V, Q, actor, Polyak) on one batch (no UTD stacking)."""


__all__ = ["awr_weights", "aggregate_q", "expectile_loss", "iql_learner_step", "iql_update", "update"]
