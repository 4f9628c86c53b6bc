"""SAC with a REDQ ensemble, the optional CQL / Cal-QL penalty, and the UTD learner step.

Batch layout (all arrays share the leading batch axis B):
    observations, next_observations: dict of arrays (see agent/core.py)
    actions (B, d) in [-1, 1]; rewards (B,) RAW (the update shapes them: r' = scale*r + bias);
    masks (B,) = 1 - terminated (a truncated step keeps mask 1 and bootstraps, by default);
    mc_returns (B,) Monte-Carlo returns on the shaped reward (needed with the Cal-QL bound).

`learner_step(agent, batches)` takes batches stacked on a leading axis of length utd: it runs
utd - 1 critic-only updates (lax.scan) then one full update (critic, actor, temperature), all
in one compiled function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from agent.config import AgentConfigError
from agent.core import Agent, Params, encode, feature_maps, policy, temperature_value
from agent.cql import cql_diff
from agent.networks import tanh_gaussian_sample
from agent.vision import random_shift

Batch = dict


def sample_members(key: jax.Array, num_members: int, num: int) -> jax.Array:
    """`num` distinct member indices out of `num_members` (sampling without replacement)."""
    return jax.random.permutation(key, num_members)[:num]


def _subset(params: Params, idx: jax.Array) -> Params:
    return jax.tree.map(lambda p: p[idx], params)


def shaped_rewards(agent: Agent, raw: jax.Array) -> jax.Array:
    return agent.spec.reward.scale * raw + agent.spec.reward.bias


def _augment(agent: Agent, batch: Batch, key: jax.Array) -> Batch:
    spec = agent.spec
    out = dict(batch)
    for field in ("observations", "next_observations"):
        obs = dict(batch[field])
        for cam in spec.image_keys:
            if obs[cam].dtype != jnp.uint8:
                raise AgentConfigError(
                    f"agent.encoder.augment needs raw uint8 images, but '{cam}' holds cached features"
                )
            key, sub = jax.random.split(key)
            obs[cam] = random_shift(sub, obs[cam], spec.encoder.augment_pad)
        out[field] = obs
    return out


def _frozen_maps(agent: Agent, batch: Batch) -> tuple[dict | None, dict | None]:
    """Feature maps of s and s' computed once per update when the backbone is frozen."""
    if not agent.spec.image_keys or not agent.spec.encoder.freeze_backbone:
        return None, None
    return (feature_maps(agent, agent.frozen_backbone, batch["observations"]),
            feature_maps(agent, agent.frozen_backbone, batch["next_observations"]))


def _q(agent: Agent, q_params: Params, features: jax.Array, actions: jax.Array, subset: bool = False) -> jax.Array:
    """Q of every member; features (B, F) are broadcast over any extra leading action axes."""
    features = jnp.broadcast_to(features, actions.shape[:-1] + features.shape[-1:])
    net = agent.nets.target_subset if subset else agent.nets.critic
    return net.apply({"params": q_params}, features, actions)


def td_target(agent: Agent, batch: Batch, key: jax.Array, next_maps: dict | None) -> tuple[jax.Array, dict]:
    """y = r' + discount * mask * min over a random subset of target critics of Q(s', a')."""
    spec = agent.spec
    k_act, k_sub = jax.random.split(key)
    next_obs = batch["next_observations"]
    next_features = encode(agent, agent.critic.params, next_obs, maps=next_maps)
    target_maps = next_maps if spec.encoder.freeze_backbone else None
    target_features = encode(agent, agent.target_critic_params, next_obs, maps=target_maps)
    mean, log_std = policy(agent, agent.actor.params, next_features)
    k = spec.sac.max_target_num_actions if spec.sac.max_target_backup else 1
    next_actions, next_log_probs = tanh_gaussian_sample(k_act, mean, log_std, (k,))  # (k, B, d), (k, B)
    idx = sample_members(k_sub, spec.num_critics, spec.sac.critic_subsample)
    q_next = _q(agent, _subset(agent.target_critic_params["q"], idx), target_features, next_actions, subset=True)
    q_next = q_next.min(axis=0)  # (k, B)
    best = jnp.argmax(q_next, axis=0)  # k = 1: index 0
    q_next = jnp.take_along_axis(q_next, best[None], axis=0)[0]
    log_prob = jnp.take_along_axis(next_log_probs, best[None], axis=0)[0]
    if spec.sac.backup_entropy:
        q_next = q_next - temperature_value(agent) * log_prob
    rewards = shaped_rewards(agent, batch["rewards"])
    target = rewards + spec.sac.discount * batch["masks"] * q_next
    return jax.lax.stop_gradient(target), {"target_q": target.mean(), "reward": rewards.mean()}


def _cql_samples(agent: Agent, batch: Batch, key: jax.Array, obs_maps: dict | None,
                 next_maps: dict | None) -> dict:
    """Uniform and policy actions for the CQL penalty (no gradient to the policy or the encoder)."""
    spec = agent.spec
    n, d = spec.cql.n_actions, spec.action_dim
    k_unif, k_pi, k_next = jax.random.split(key, 3)
    params = jax.lax.stop_gradient(agent.critic.params)
    features = encode(agent, params, batch["observations"], maps=obs_maps)
    next_features = encode(agent, params, batch["next_observations"], maps=next_maps)
    batch_size = features.shape[0]
    mean, log_std = policy(agent, agent.actor.params, features)
    a_pi, logp_pi = tanh_gaussian_sample(k_pi, mean, log_std, (n,))
    mean_n, log_std_n = policy(agent, agent.actor.params, next_features)
    a_next, logp_next = tanh_gaussian_sample(k_next, mean_n, log_std_n, (n,))
    a_unif = jax.random.uniform(k_unif, (n, batch_size, d), minval=-1.0, maxval=1.0)
    return jax.lax.stop_gradient({
        "uniform": a_unif, "policy": a_pi, "next_policy": a_next,
        "log_prob_policy": logp_pi.T, "log_prob_next_policy": logp_next.T,  # (B, N)
    })


def critic_loss(
    critic_params: Params,
    agent: Agent,
    batch: Batch,
    target: jax.Array,
    cql_actions: dict | None,
    obs_maps: dict | None,
    key: jax.Array,
) -> tuple[jax.Array, dict]:
    """Mean over members and batch of (Q_i - y)^2, plus the (Cal-)CQL penalty when enabled."""
    spec = agent.spec
    k_drop, k_members = jax.random.split(key)
    features = encode(agent, critic_params, batch["observations"], train=True, rng=k_drop, maps=obs_maps)
    q = _q(agent, critic_params["q"], features, batch["actions"])  # (E, B)
    td_loss = jnp.mean((q - target[None]) ** 2)
    metrics = {"td_loss": td_loss, "q_data": q.mean(), "q_std_members": q.std(axis=0).mean()}
    if "mc_returns" in batch:
        metrics["mc_return"] = batch["mc_returns"].mean()
        metrics["q_minus_mc"] = (q - batch["mc_returns"][None]).mean()
    loss = td_loss
    if cql_actions is not None:
        if spec.cql.calql_bound and "mc_returns" not in batch:
            raise AgentConfigError("the Cal-QL bound needs 'mc_returns' in every batch (agent.cql.calql_bound)")

        def q_all(actions):  # (N, B, d) -> (E, B, N)
            return jnp.moveaxis(_q(agent, critic_params["q"], features, actions), 1, 2)

        diff, cql_metrics = cql_diff(
            q, q_all(cql_actions["uniform"]), q_all(cql_actions["policy"]), q_all(cql_actions["next_policy"]),
            cql_actions["log_prob_policy"], cql_actions["log_prob_next_policy"],
            batch["mc_returns"] if spec.cql.calql_bound else None,
            action_dim=spec.action_dim, temperature=spec.cql.temperature,
            importance_sampling=spec.cql.importance_sampling,
        )
        member_diff = diff.mean(axis=1)  # (E,)
        if spec.cql.penalty_members:
            idx = sample_members(k_members, spec.num_critics, spec.cql.penalty_members)
            penalised = member_diff[idx].mean()
        else:
            penalised = member_diff.mean()
        if spec.cql.lagrange:
            alpha = jax.lax.stop_gradient(cql_lagrange_alpha(agent))
            penalty = alpha * (penalised - spec.cql.target_action_gap)
        else:
            alpha = spec.cql.alpha
            penalty = alpha * penalised
        loss = loss + penalty
        metrics.update(cql_metrics, cql_penalty=penalty, cql_alpha=jnp.asarray(alpha),
                       cql_penalised_diff=penalised)
    metrics["critic_loss"] = loss
    return loss, metrics


def cql_lagrange_alpha(agent: Agent) -> jax.Array:
    return jnp.clip(jnp.exp(agent.lagrange.params["log_alpha"]), 0.0, 1e6)


def _soft_update(target: Params, online: Params, tau: float) -> Params:
    return jax.tree.map(lambda t, o: (1.0 - tau) * t + tau * o, target, online)


def critic_gradients(agent: Agent, batch: Batch) -> tuple[jax.Array, Params, dict, jax.Array]:
    """The critic loss (TD + the (Cal-)CQL penalty), its gradient, the metrics and the next RNG
    for `batch`: the one gradient computation `update_critic` applies and the tests inspect."""
    spec = agent.spec
    if spec.iql.enabled:
        raise AgentConfigError("the SAC update got an agent with agent.iql.enabled: IQL is offline pre-training "
                               "(agent.iql.iql_learner_step); switch the agent online with agent.wsrl.wsrl_switch")
    rng, k_aug, k_target, k_cql, k_loss = jax.random.split(agent.rng, 5)
    if spec.encoder.augment and spec.image_keys:
        batch = _augment(agent, batch, k_aug)
    obs_maps, next_maps = _frozen_maps(agent, batch)
    target, target_metrics = td_target(agent, batch, k_target, next_maps)
    cql_actions = _cql_samples(agent, batch, k_cql, obs_maps, next_maps) if spec.cql.enabled else None
    (loss, metrics), grads = jax.value_and_grad(critic_loss, has_aux=True)(
        agent.critic.params, agent, batch, target, cql_actions, obs_maps, k_loss
    )
    return loss, grads, {**metrics, **target_metrics}, rng


def update_critic(agent: Agent, batch: Batch) -> tuple[Agent, dict]:
    """One critic (and CQL Lagrange) gradient step and a Polyak target update."""
    spec = agent.spec
    _, grads, metrics, rng = critic_gradients(agent, batch)
    critic = agent.critic.apply_gradients(grads=grads)
    target_params = _soft_update(agent.target_critic_params, critic.params, spec.sac.tau)
    lagrange = agent.lagrange
    if spec.cql.enabled and spec.cql.lagrange:
        gap = jax.lax.stop_gradient(metrics["cql_penalised_diff"]) - spec.cql.target_action_gap

        def lagrange_loss(params):
            return -jnp.clip(jnp.exp(params["log_alpha"]), 0.0, 1e6) * gap

        lagrange = lagrange.apply_gradients(grads=jax.grad(lagrange_loss)(lagrange.params))
    agent = agent.replace(critic=critic, target_critic_params=target_params, lagrange=lagrange, rng=rng)
    return agent, metrics


def update_actor(agent: Agent, batch: Batch) -> tuple[Agent, dict]:
    """Actor step on mean(alpha * log pi - Q_agg) (encoder features stop-gradient), then temperature."""
    spec = agent.spec
    rng, k_aug, k_act = jax.random.split(agent.rng, 3)
    if spec.encoder.augment and spec.image_keys:
        batch = _augment(agent, batch, k_aug)
    features = jax.lax.stop_gradient(encode(agent, agent.critic.params, batch["observations"]))
    alpha = temperature_value(agent)

    def actor_loss(actor_params):
        mean, log_std = policy(agent, actor_params, features)
        actions, log_prob = tanh_gaussian_sample(k_act, mean, log_std)
        qs = _q(agent, agent.critic.params["q"], features, actions)
        q = qs.mean(axis=0) if spec.sac.actor_q_aggregation == "mean" else qs.min(axis=0)
        loss = jnp.mean(alpha * log_prob - q)
        return loss, {"actor_loss": loss, "entropy": -log_prob.mean(), "actor_q": q.mean(),
                      "policy_std": jnp.exp(log_std).mean()}

    grads, metrics = jax.grad(actor_loss, has_aux=True)(agent.actor.params)
    actor = agent.actor.apply_gradients(grads=grads)
    entropy = jax.lax.stop_gradient(metrics["entropy"])

    def temperature_loss(params):
        return jnp.exp(params["log_temperature"]) * (entropy - spec.target_entropy)

    temp_grads = jax.grad(temperature_loss)(agent.temperature.params)
    temperature = agent.temperature.apply_gradients(grads=temp_grads)
    metrics["temperature"] = alpha
    metrics["temperature_loss"] = temperature_loss(agent.temperature.params)
    return agent.replace(actor=actor, temperature=temperature, rng=rng), metrics


def full_update(agent: Agent, batch: Batch) -> tuple[Agent, dict]:
    agent, critic_metrics = update_critic(agent, batch)
    agent, actor_metrics = update_actor(agent, batch)
    return agent, {**critic_metrics, **actor_metrics}


def _learner_step(agent: Agent, batches: Batch) -> tuple[Agent, dict]:
    utd = agent.spec.sac.utd
    lengths = {x.shape[0] for x in jax.tree.leaves(batches)}
    if lengths != {utd}:
        raise AgentConfigError(f"learner_step needs batches stacked on a leading axis of length utd={utd}, got {lengths}")
    if utd > 1:
        head = jax.tree.map(lambda x: x[:-1], batches)
        agent, _ = jax.lax.scan(update_critic, agent, head)
    return full_update(agent, jax.tree.map(lambda x: x[-1], batches))


learner_step = jax.jit(_learner_step)
learner_step.__doc__ = """utd - 1 critic updates then one full update, compiled together."""

update = jax.jit(full_update)
update.__doc__ = """One critic + actor + temperature update on one batch (no UTD stacking)."""


def stack_batches(batches: list[Batch]) -> Batch:
    """Stack utd batches on a new leading axis for `learner_step`."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *batches)


def _critic_loss_and_grads(agent: Agent, batch: Batch) -> tuple[jax.Array, Params, dict]:
    loss, grads, metrics, _ = critic_gradients(agent, batch)
    return loss, grads, metrics


critic_loss_and_grads = jax.jit(_critic_loss_and_grads)
critic_loss_and_grads.__doc__ = """`critic_gradients` compiled, without the RNG: what the next `update_critic` would apply."""
