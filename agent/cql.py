"""The CQL penalty with Cal-QL's bound, as a pure function of Q-values (ALGORITHMS.md).

For each member i and data pair (s, a, G), with N sampled actions of each kind:
  values = [Q_i(s, a_unif) - d*log(0.5),
            max(Q_i(s, a_pi(s)),  G) - log pi(a_pi(s)|s),
            max(Q_i(s, a_pi(s')), G) - log pi(a_pi(s')|s')]        (the max only with Cal-QL)
  ood_i  = T * logsumexp(values / T)
  diff_i = ood_i - Q_i(s, a_data)
The penalty is alpha * mean over batch and members of diff (members may be masked).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def cql_diff(
    q_data: jax.Array,
    q_uniform: jax.Array,
    q_policy: jax.Array,
    q_next_policy: jax.Array,
    log_prob_policy: jax.Array,
    log_prob_next_policy: jax.Array,
    mc_returns: jax.Array | None,
    *,
    action_dim: int,
    temperature: float = 1.0,
    importance_sampling: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """diff (E, B) and metrics.

    Shapes: q_data (E, B); q_uniform, q_policy, q_next_policy (E, B, N); log-probs (B, N);
    mc_returns (B,) or None (None = plain CQL, no bound).
    """
    metrics: dict[str, jax.Array] = {
        "cql_q_uniform": jnp.mean(q_uniform),
        "cql_q_policy": jnp.mean(q_policy),
        "cql_q_next_policy": jnp.mean(q_next_policy),
    }
    if mc_returns is not None:
        bound = mc_returns[None, :, None]
        policy_values = jnp.concatenate([q_policy, q_next_policy], axis=-1)
        metrics["calql_bound_rate"] = jnp.mean((policy_values < bound).astype(jnp.float32))
        q_policy = jnp.maximum(q_policy, bound)
        q_next_policy = jnp.maximum(q_next_policy, bound)
    if importance_sampling:
        q_uniform = q_uniform - action_dim * np.log(0.5)
        q_policy = q_policy - log_prob_policy[None]
        q_next_policy = q_next_policy - log_prob_next_policy[None]
    values = jnp.concatenate([q_uniform, q_policy, q_next_policy], axis=-1)
    ood = temperature * jax.nn.logsumexp(values / temperature, axis=-1)
    diff = ood - q_data
    metrics.update(cql_ood_values=jnp.mean(ood), cql_diff=jnp.mean(diff))
    return diff, metrics
