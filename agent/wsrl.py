"""WSRL: start online fine-tuning from the whole pre-trained state, without the CQL term.

`wsrl_switch` keeps every leaf of the pre-trained agent (actor, critics, target critics,
temperature, optimizer moments, RNG, frozen backbone) and changes only static settings: the CQL
term is dropped (or kept with the online alpha for Cal-QL-style fine-tuning). After IQL
pre-training (`agent.iql.enabled`, --preset wsrl_iql) it also switches IQL off and drops the
value net V, which SAC does not use: the online agent (and its checkpoints, its parameter
messages) is then shaped exactly like one pre-trained with Cal-QL. The learner gates
updates with `updates_allowed` until the online buffer holds the warm-up transitions, which the
actor collects with the frozen pre-trained policy (`act(pretrained, obs, key)`, stochastic).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from agent.config import AgentConfig, OnlineConfig
from agent.core import Agent, Params, create_agent, encode, has_value_net, policy, replace_spec


def wsrl_switch(pretrained: Agent, online: OnlineConfig) -> Agent:
    """The online agent: identical state, CQL dropped unless `online.keep_cql`, IQL (and its
    value net) dropped always: the online phase is SAC."""
    if pretrained.spec.iql.enabled or has_value_net(pretrained):
        pretrained = replace_spec(pretrained.replace(value={}), "iql", enabled=False)
    if online.keep_cql:
        return replace_spec(pretrained, "cql", enabled=True, alpha=float(online.cql_alpha), lagrange=False)
    return replace_spec(pretrained, "cql", enabled=False)


def start_online_from_checkpoint(
    directory: str | Path,
    cfg: AgentConfig,
    example_observation: dict,
    action_dim: int,
    step: int | None = None,
) -> tuple[Agent, Agent, dict]:
    """Restore a pre-trained agent and switch it online.

    Returns (online agent, frozen pre-trained agent for the warm-up and the drift metrics, extra).
    With `cfg.iql.enabled` the checkpoint must hold IQL's value net (it is restored, then
    dropped by the switch); the frozen agent keeps it and the IQL setting, unused.
    """
    from agent.checkpoint import restore_agent

    template = create_agent(cfg, example_observation, action_dim)
    pretrained, extra = restore_agent(directory, template, step, cfg)
    return wsrl_switch(pretrained, cfg.online), pretrained, extra


def updates_allowed(online_transitions: int, warmup_steps: int) -> bool:
    """WSRL gate: no updates until the online buffer holds the warm-up transitions."""
    return online_transitions >= warmup_steps


@jax.jit
def policy_drift(agent: Agent, pretrained_actor_params: Params, observations: dict) -> dict[str, jax.Array]:
    """Forgetting diagnostics on online states: mean-action MSE and KL(current || pre-trained).

    The KL is between the pre-tanh diagonal Gaussians (tanh is a bijection, so it equals the KL
    of the squashed policies). Both policies read the current encoder's features.
    """
    features = encode(agent, agent.critic.params, observations)
    mean, log_std = policy(agent, agent.actor.params, features)
    mean0, log_std0 = policy(agent, pretrained_actor_params, features)
    var, var0 = jnp.exp(2 * log_std), jnp.exp(2 * log_std0)
    kl = jnp.sum(log_std0 - log_std + (var + (mean - mean0) ** 2) / (2 * var0) - 0.5, axis=-1)
    return {
        "drift_action_mse": jnp.mean((jnp.tanh(mean) - jnp.tanh(mean0)) ** 2),
        "drift_kl": jnp.mean(kl),
    }
