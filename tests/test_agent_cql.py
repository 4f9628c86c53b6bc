"""The CQL penalty and Cal-QL's bound, checked against ALGORITHMS.md's formula in NumPy, through
the gradient function the real critic update applies (`critic_gradients`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agent.config import AgentConfig
from agent.core import create_agent, encode, policy
from agent.cql import cql_diff
from agent.networks import tanh_gaussian_log_prob
from agent.returns import mc_returns, shape_rewards
from agent.sac import (
    _cql_samples,
    critic_gradients,
    critic_loss_and_grads,
    learner_step,
    stack_batches,
    update_critic,
)

STATE_DIM, ACTION_DIM, B = 3, 2, 8


def _logsumexp(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    return (m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)))[..., 0]


def numpy_calql_diff(q_data, q_unif, q_pi, q_next, logp_pi, logp_next, g, d, temp=1.0):
    """ALGORITHMS.md, steps 3-6, written independently in NumPy (g=None: plain CQL)."""
    q_pi, q_next = q_pi.astype(np.float64), q_next.astype(np.float64)
    rate = None
    if g is not None:
        policy_vals = np.concatenate([q_pi, q_next], -1)
        rate = float(np.mean(policy_vals < g[None, :, None]))
        q_pi = np.maximum(q_pi, g[None, :, None])
        q_next = np.maximum(q_next, g[None, :, None])
    vals = np.concatenate(
        [q_unif - d * np.log(0.5), q_pi - logp_pi[None], q_next - logp_next[None]], axis=-1
    )
    ood = temp * _logsumexp(vals / temp)
    return ood - q_data, ood, rate


def test_hand_computed_single_value():
    # One member, one state, N = 1, d = 1. Uniform Q 0, pi(s) Q 2 (log pi 0.5), pi(s') Q -1 (log pi -0.5), G = 0.
    args = dict(
        q_data=jnp.array([[1.0]]), q_uniform=jnp.array([[[0.0]]]), q_policy=jnp.array([[[2.0]]]),
        q_next_policy=jnp.array([[[-1.0]]]), log_prob_policy=jnp.array([[0.5]]),
        log_prob_next_policy=jnp.array([[-0.5]]),
    )
    diff, metrics = cql_diff(**args, mc_returns=jnp.array([0.0]), action_dim=1)
    # Bound: -1 -> max(-1, 0) = 0 (one of the two policy values replaced).
    # Values: 0 + log 2, 2 - 0.5, 0 + 0.5.
    expected = np.log(np.exp(np.log(2.0)) + np.exp(1.5) + np.exp(0.5)) - 1.0
    assert float(diff[0, 0]) == pytest.approx(expected, rel=1e-6)
    assert float(metrics["calql_bound_rate"]) == pytest.approx(0.5)
    # Without the bound (CQL), the s' value is -1 + 0.5.
    diff_cql, metrics_cql = cql_diff(**args, mc_returns=None, action_dim=1)
    assert float(diff_cql[0, 0]) == pytest.approx(np.log(2.0 + np.exp(1.5) + np.exp(-0.5)) - 1.0, rel=1e-6)
    assert "calql_bound_rate" not in metrics_cql
    # Temperature 2: 2 * logsumexp(values / 2).
    diff_t, _ = cql_diff(**args, mc_returns=None, action_dim=1, temperature=2.0)
    vals = np.array([np.log(2.0), 1.5, -0.5])
    assert float(diff_t[0, 0]) == pytest.approx(2 * np.log(np.exp(vals / 2).sum()) - 1.0, rel=1e-6)


def _cfg(calql=True, **cql):
    cfg = AgentConfig()
    cfg.network.critic_hidden_dims = [32, 32]
    cfg.network.actor_hidden_dims = [32, 32]
    cfg.network.num_critics = 4
    cfg.encoder.proprio_dim = 0
    cfg.cql.enabled = True
    cfg.cql.calql_bound = calql
    cfg.cql.n_actions = 5
    for key, value in cql.items():
        setattr(cfg.cql, key, value)
    return cfg


def _batch(seed=0, g=None):
    rng = np.random.default_rng(seed)
    obs = {"state": rng.normal(size=(B, STATE_DIM)).astype(np.float32)}
    nxt = {"state": rng.normal(size=(B, STATE_DIM)).astype(np.float32)}
    return {
        "observations": obs,
        "next_observations": nxt,
        "actions": rng.uniform(-1, 1, (B, ACTION_DIM)).astype(np.float32),
        "rewards": rng.integers(0, 2, B).astype(np.float32),
        "masks": np.ones(B, np.float32),
        "mc_returns": (rng.normal(size=B) * 0.2).astype(np.float32) if g is None else np.full(B, g, np.float32),
    }


def _agent(cfg, seed=0):
    return create_agent(cfg, {"state": np.zeros(STATE_DIM, np.float32)}, ACTION_DIM, seed=seed)


def test_calql_penalty_equals_numpy_formula_on_fixed_networks():
    cfg = _cfg(calql=True)
    agent = _agent(cfg)
    batch = _batch()
    loss, _, metrics = critic_loss_and_grads(agent, batch)

    # Recreate the penalty's sampled actions with the same key the loss used.
    _, _, _, k_cql, _ = jax.random.split(agent.rng, 5)
    samples = jax.jit(_cql_samples)(agent, batch, k_cql, None, None)
    params = agent.critic.params
    feats = jax.jit(encode)(agent, params, batch["observations"])
    apply_q = jax.jit(lambda a: agent.nets.critic.apply({"params": params["q"]}, feats, a))

    def q_of(actions):  # (N, B, d) -> (E, B, N) through the fixed network
        return np.stack([np.asarray(apply_q(a)) for a in actions], axis=-1)

    # The sampled log-probs are the policy's own density of those actions.
    for key, obs in (("policy", "observations"), ("next_policy", "next_observations")):
        mean, log_std = policy(agent, agent.actor.params, jax.jit(encode)(agent, params, batch[obs]))
        logp = np.stack([np.asarray(tanh_gaussian_log_prob(mean, log_std, a)) for a in samples[key]], -1)
        # arctanh loses float32 precision next to +-1: compare where the action is not saturated.
        inside = np.all(np.abs(np.moveaxis(np.asarray(samples[key]), 0, 1)) < 0.99, axis=-1)
        assert inside.mean() > 0.5
        np.testing.assert_allclose(logp[inside], np.asarray(samples[f"log_prob_{key}"])[inside], atol=2e-3)

    q_data = np.asarray(apply_q(batch["actions"]))
    diff, ood, rate = numpy_calql_diff(
        q_data, q_of(samples["uniform"]), q_of(samples["policy"]), q_of(samples["next_policy"]),
        np.asarray(samples["log_prob_policy"]), np.asarray(samples["log_prob_next_policy"]),
        batch["mc_returns"], ACTION_DIM,
    )
    assert 0.0 < rate < 1.0  # the fixture exercises both sides of the bound
    assert float(metrics["calql_bound_rate"]) == pytest.approx(rate, abs=1e-6)
    assert float(metrics["cql_diff"]) == pytest.approx(diff.mean(), abs=1e-4)
    assert float(metrics["cql_ood_values"]) == pytest.approx(ood.mean(), abs=1e-4)
    assert float(metrics["cql_penalty"]) == pytest.approx(cfg.cql.alpha * diff.mean(), abs=5e-4)
    assert float(loss) == pytest.approx(float(metrics["td_loss"]) + cfg.cql.alpha * diff.mean(), abs=5e-4)


def test_calql_with_bound_off_equals_cql():
    batch = _batch(g=-1e6)  # a bound that never binds
    cal = _agent(_cfg(calql=True))
    cql = _agent(_cfg(calql=False))
    loss_cal, grads_cal, m_cal = critic_loss_and_grads(cal, batch)
    loss_cql, grads_cql, m_cql = critic_loss_and_grads(cql, batch)
    assert float(m_cal["calql_bound_rate"]) == 0.0
    assert float(loss_cal) == pytest.approx(float(loss_cql), rel=1e-6)
    for a, b in zip(jax.tree.leaves(grads_cal), jax.tree.leaves(grads_cql), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # And a bound that always binds changes the penalty.
    loss_high, _, m_high = critic_loss_and_grads(cal, _batch(g=1e3))
    assert float(m_high["calql_bound_rate"]) == 1.0
    assert float(loss_high) > float(loss_cql) + 100


def test_mc_return_on_raw_reward_breaks_the_bound():
    """The reference robot code's bug: G on raw 0/1 rewards while training on r - 1."""
    gamma = 0.9
    raw = np.zeros(10)
    raw[-1] = 1.0
    term = raw.copy()
    g_shaped = mc_returns(shape_rewards(raw, 1.0, -1.0), term, gamma)  # in [-6.1, 0]
    g_raw = mc_returns(raw, term, gamma)  # in [0.39, 1]
    # Q-values of a critic trained on r' = r - 1 live around -1/(1-gamma) .. 0; take -3.
    q = jnp.full((1, 10, 4), -3.0)
    common = dict(q_data=jnp.full((1, 10), -3.0), q_uniform=q, q_policy=q, q_next_policy=q,
                  log_prob_policy=jnp.zeros((10, 4)), log_prob_next_policy=jnp.zeros((10, 4)), action_dim=1)
    _, right = cql_diff(**common, mc_returns=jnp.asarray(g_shaped))
    _, wrong = cql_diff(**common, mc_returns=jnp.asarray(g_raw))
    assert float(wrong["calql_bound_rate"]) == 1.0  # active everywhere: no push-down left
    assert float(right["calql_bound_rate"]) == pytest.approx(np.mean(g_shaped > -3.0))
    assert float(right["calql_bound_rate"]) < 0.5


def test_penalty_on_a_random_subset_of_members():
    batch = _batch()
    subset = critic_loss_and_grads(_agent(_cfg(calql=True, penalty_members=2)), batch)[2]
    full = critic_loss_and_grads(_agent(_cfg(calql=True)), batch)[2]
    # Same networks and samples: the subset's diff is a mean over 2 of the 4 members.
    assert float(subset["cql_diff"]) == pytest.approx(float(full["cql_diff"]), rel=1e-6)
    assert float(subset["cql_penalised_diff"]) != pytest.approx(float(full["cql_penalised_diff"]), rel=1e-9)


def test_lagrange_alpha_moves_toward_the_target_gap():
    cfg = _cfg(calql=False, lagrange=True, target_action_gap=-100.0, alpha_lr=0.1)
    cfg.sac.utd = 1
    agent = _agent(cfg)
    before = float(jnp.exp(agent.lagrange.params["log_alpha"]))
    agent, metrics = learner_step(agent, stack_batches([_batch()]))
    after = float(jnp.exp(agent.lagrange.params["log_alpha"]))
    # diff >> gap: the multiplier grows to push Q down harder.
    assert float(metrics["cql_penalised_diff"]) > -100.0
    assert after > before


def test_update_critic_applies_the_calql_gradient():
    """The step `update_critic` takes is the optimizer applied to the gradient the tests above
    check, and the bound changes that step (a bound that always binds vs plain CQL)."""
    batch = _batch(g=1e3)
    cal, cql = _agent(_cfg(calql=True)), _agent(_cfg(calql=False))
    _, grads, metrics, _ = jax.jit(critic_gradients)(cal, batch)
    stepped, step_metrics = jax.jit(update_critic)(cal, batch)
    expected = cal.critic.apply_gradients(grads=grads).params
    for a, b in zip(jax.tree.leaves(stepped.critic.params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert float(step_metrics["calql_bound_rate"]) == float(metrics["calql_bound_rate"]) == 1.0
    stepped_cql, cql_metrics = jax.jit(update_critic)(cql, batch)
    assert "calql_bound_rate" not in cql_metrics
    assert float(step_metrics["cql_penalty"]) > float(cql_metrics["cql_penalty"]) + 100
    moved = [np.abs(np.asarray(a) - np.asarray(b)).max()
             for a, b in zip(jax.tree.leaves(stepped.critic.params), jax.tree.leaves(stepped_cql.critic.params), strict=True)]
    assert max(moved) > 1e-6
