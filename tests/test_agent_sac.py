"""SAC/REDQ core: member subsampling, the TD target and time limits, UTD, a learning sanity check."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agent.config import AgentConfig, AgentConfigError, validate_agent_config
from agent.core import create_agent, encode, eval_actions, policy
from agent.networks import tanh_gaussian_sample
from agent.sac import learner_step, sample_members, stack_batches, td_target

STATE_DIM, ACTION_DIM, B = 3, 2, 8


def tiny_cfg() -> AgentConfig:
    cfg = AgentConfig()
    cfg.network.critic_hidden_dims = [32, 32]
    cfg.network.actor_hidden_dims = [32, 32]
    cfg.encoder.proprio_dim = 0
    return cfg


@pytest.fixture(scope="module")
def agent():
    return create_agent(tiny_cfg(), {"state": np.zeros(STATE_DIM, np.float32)}, ACTION_DIM)


def _batch(rng, masks=None, rewards=None):
    obs = {"state": rng.normal(size=(B, STATE_DIM)).astype(np.float32)}
    nxt = {"state": rng.normal(size=(B, STATE_DIM)).astype(np.float32)}
    return {
        "observations": obs,
        "next_observations": nxt,
        "actions": rng.uniform(-1, 1, (B, ACTION_DIM)).astype(np.float32),
        "rewards": np.zeros(B, np.float32) if rewards is None else rewards,
        "masks": np.ones(B, np.float32) if masks is None else masks,
    }


def test_member_subsampling_never_repeats():
    draws = jax.vmap(lambda k: sample_members(k, 10, 2))(jax.random.split(jax.random.PRNGKey(0), 2000))
    draws = np.asarray(draws)
    assert np.all(draws[:, 0] != draws[:, 1])
    assert set(np.unique(draws)) == set(range(10))  # every member gets drawn
    many = np.asarray(sample_members(jax.random.PRNGKey(1), 10, 10))
    assert sorted(many) == list(range(10))


def test_td_target_is_min_over_two_drawn_members_and_bootstraps_truncation(agent):
    rng = np.random.default_rng(0)
    # Raw success reward 1 on step 0 (shaped: 0); step 1 terminal (mask 0); others truncated or mid-episode (mask 1).
    rewards = np.zeros(B, np.float32)
    rewards[0] = 1.0
    masks = np.ones(B, np.float32)
    masks[1] = 0.0
    batch = _batch(rng, masks=masks, rewards=rewards)
    key = jax.random.PRNGKey(7)
    target, _ = jax.jit(td_target)(agent, batch, key, None)

    # Independent recomputation: same draws from the same key.
    k_act, k_sub = jax.random.split(key)
    feats = encode(agent, agent.critic.params, batch["next_observations"])
    mean, log_std = policy(agent, agent.actor.params, feats)
    a_next, _ = tanh_gaussian_sample(k_act, mean, log_std, (1,))
    idx = np.asarray(sample_members(k_sub, 10, 2))
    t_feats = encode(agent, agent.target_critic_params, batch["next_observations"])
    q_all = np.asarray(agent.nets.critic.apply({"params": agent.target_critic_params["q"]}, t_feats, a_next[0]))
    expected_next = q_all[idx].min(axis=0)
    shaped = rewards - 1.0  # robot default: scale 1, bias -1
    expected = shaped + 0.98 * masks * expected_next
    np.testing.assert_allclose(np.asarray(target), expected, rtol=1e-5, atol=1e-6)
    assert np.asarray(target)[1] == pytest.approx(-1.0)  # terminal: no bootstrap
    assert not np.isclose(q_all.min(axis=0), expected_next).all()  # not the min over all 10


def test_learner_step_runs_utd_critic_updates_and_one_actor_update(agent):
    rng = np.random.default_rng(1)
    batches = stack_batches([_batch(rng) for _ in range(4)])
    new, metrics = learner_step(agent, batches)
    assert int(new.critic.step) == int(agent.critic.step) + 4
    assert int(new.actor.step) == int(agent.actor.step) + 1
    assert int(new.temperature.step) == int(agent.temperature.step) + 1
    for name in ("critic_loss", "actor_loss", "temperature", "entropy", "q_data", "target_q"):
        assert np.isfinite(float(metrics[name])), name
    # Polyak: targets moved towards the critics, by tau.
    t0 = jax.tree.leaves(agent.target_critic_params)[0]
    t1 = jax.tree.leaves(new.target_critic_params)[0]
    assert not np.allclose(t0, t1)
    with pytest.raises(AgentConfigError, match="utd=4"):
        learner_step(agent, stack_batches([_batch(rng) for _ in range(3)]))


def test_config_validation_names_the_key():
    cfg = tiny_cfg()
    cfg.sac.critic_subsample = 11
    with pytest.raises(AgentConfigError, match="critic_subsample"):
        validate_agent_config(cfg)
    cfg = tiny_cfg()
    cfg.sac.actor_q_aggregation = "median"
    with pytest.raises(AgentConfigError, match="actor_q_aggregation"):
        validate_agent_config(cfg)


def test_sac_solves_a_one_step_continuous_bandit():
    """Reward 1 - 4 (a - 0.6)^2 for a one-step episode: the mean action must find 0.6."""
    cfg = tiny_cfg()
    cfg.network.num_critics = 4
    cfg.reward.bias = 0.0
    cfg.sac.utd = 2
    cfg.sac.actor_lr = cfg.sac.critic_lr = cfg.sac.temperature_lr = 3e-3
    agent = create_agent(cfg, {"state": np.ones(1, np.float32)}, 1, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(600):
        a = rng.uniform(-1, 1, (2, 32, 1)).astype(np.float32)
        obs = {"state": np.ones((2, 32, 1), np.float32)}
        batch = {"observations": obs, "next_observations": obs, "actions": a,
                 "rewards": (1 - 4 * (a[..., 0] - 0.6) ** 2).astype(np.float32), "masks": np.zeros((2, 32), np.float32)}
        agent, metrics = learner_step(agent, batch)
    best = float(eval_actions(agent, {"state": jnp.ones((1, 1))})[0, 0])
    assert best == pytest.approx(0.6, abs=0.15), metrics
