"""IQL pre-training (agent/iql.py): the expectile loss, the clipped AWR weights, a short pre-train
through `agent.pretrain.pretrain` with `--preset wsrl_iql`, and the WSRL online start from it."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agent.config import AgentConfigError
from agent.iql import awr_weights, expectile_loss

STATE_DIM, ACTION_DIM = 5, 2
TINY = [
    "agent.network.critic_hidden_dims=[16,16]",
    "agent.network.actor_hidden_dims=[16,16]",
    "agent.network.num_critics=2",
    "agent.encoder.proprio_dim=0",
    "agent.sac.batch_size=32",
    "pretrain.steps=40",
    "pretrain.log_every=10",
    "pretrain.checkpoint_every=20",
    "pretrain.holdout_episodes=1",
]


def _expectile_by_grid(x: np.ndarray, tau: float) -> float:
    """Brute force: the v on a fine grid with the least mean asymmetric squared error."""
    grid = np.linspace(x.min(), x.max(), 20001)
    diff = x[None, :] - grid[:, None]
    loss = np.where(diff > 0, tau, 1 - tau) * diff**2
    return float(grid[np.argmin(loss.mean(axis=1))])


def _expectile_by_fixed_point(x: np.ndarray, tau: float) -> float:
    """The tau-expectile solves tau * E[(x - v)+] = (1 - tau) * E[(v - x)+]; bisection on v."""
    lo, hi = float(x.min()), float(x.max())
    for _ in range(100):
        v = 0.5 * (lo + hi)
        excess = tau * np.maximum(x - v, 0).mean() - (1 - tau) * np.maximum(v - x, 0).mean()
        lo, hi = (v, hi) if excess > 0 else (lo, v)
    return 0.5 * (lo + hi)


def test_expectile_loss_is_asymmetric_the_right_way():
    rng = np.random.default_rng(0)
    x = rng.exponential(1.0, 400).astype(np.float32)  # skewed, so the expectiles spread out
    diff = x - 0.3
    # tau = 0.5 is half the squared error
    np.testing.assert_allclose(expectile_loss(jnp.asarray(diff), 0.5), 0.5 * diff**2, rtol=1e-6)
    # an under-estimate (target above the prediction) weighs tau, an over-estimate 1 - tau
    np.testing.assert_allclose(expectile_loss(jnp.asarray([2.0, -2.0]), 0.9), [0.9 * 4.0, 0.1 * 4.0], rtol=1e-6)
    # The minimiser of the loss as written (gradient descent, one compiled loop per tau) is the
    # tau-expectile of a brute-force solver.
    @jax.jit
    def minimise(tau):
        grad = jax.grad(lambda v: jnp.mean(expectile_loss(jnp.asarray(x) - v, tau)))
        return jax.lax.fori_loop(0, 3000, lambda _, v: v - 0.5 * grad(v), jnp.float32(0.0))

    for tau in (0.1, 0.5, 0.7, 0.9):
        v = minimise(jnp.float32(tau))
        reference = _expectile_by_fixed_point(x.astype(np.float64), tau)
        assert abs(float(v) - reference) < 1e-3, (tau, float(v), reference)
        assert abs(_expectile_by_grid(x.astype(np.float64), tau) - reference) < 1e-3
    high = _expectile_by_fixed_point(x.astype(np.float64), 0.9)
    assert high > x.mean() + 0.3  # tau -> 0.9 sits well above the mean (the "soft max" of IQL)


def test_awr_weights_are_exp_beta_advantage_clipped_at_100():
    adv = jnp.asarray([-3.0, 0.0, 0.5, 2.0, 50.0])
    w = np.asarray(awr_weights(adv, 3.0, 100.0))
    np.testing.assert_allclose(w[:3], np.exp(3.0 * np.array([-3.0, 0.0, 0.5])), rtol=1e-6)
    assert w[3] == 100.0 and w[4] == 100.0  # exp(6) = 403 and exp(150) both clip
    assert np.isfinite(np.asarray(awr_weights(jnp.asarray([1e4]), 10.0, 100.0))).all()


@pytest.fixture(scope="module")
def iql_run(tmp_path_factory):
    """A 40-step IQL pre-train on synthetic state-only episodes, from `--preset wsrl_iql`."""
    from agent.data.synthetic import synthetic_episode
    from agent.pretrain import OfflineDataset, pretrain
    from franka_rl.assemble import buffer_factory
    from franka_rl.config import load_config

    cfg = load_config(overrides=TINY, preset="wsrl_iql")
    rng = np.random.default_rng(0)
    episodes = [synthetic_episode(rng, 12, cameras=(), state_dim=STATE_DIM, action_dim=ACTION_DIM,
                                  success=i % 2 == 0, episode_index=i) for i in range(8)]
    out = tmp_path_factory.mktemp("iql")
    summary = pretrain(cfg.agent, cfg.pretrain, OfflineDataset(episodes, ["synthetic"]), out,
                       new_buffer=buffer_factory(cfg.agent), progress=False, run_info={"agent_preset": "wsrl_iql"})
    example = {k: v[0] for k, v in episodes[0].observations.items()}
    return cfg, summary, out, example, episodes


def test_iql_pretrain_learns_v_and_writes_checkpoints(iql_run):
    from agent.batches import to_agent_batch
    from agent.checkpoint import restore_agent
    from agent.core import create_agent, has_value_net
    from agent.iql import update
    from agent.metrics import read_metrics
    from franka_rl.assemble import buffer_factory

    cfg, summary, out, example, episodes = iql_run
    assert summary["algorithm"] == "IQL" and summary["steps"] == 40
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == ["20", "40"]
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "pretrain/value_loss" in r]
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    for key in ("pretrain/critic_loss", "pretrain/actor_loss", "pretrain/awr_weight_mean", "pretrain/v"):
        assert np.isfinite(rows[-1][key])
    assert "pretrain/cql_diff" not in rows[-1]  # no CQL term

    trained, extra = restore_agent(out / "checkpoints", create_agent(cfg.agent, example, ACTION_DIM))
    assert extra["algorithm"] == "IQL" and has_value_net(trained) and int(trained.value.step) == 40
    # V learned the expectile of the trained Q: its loss on data is below a fresh V's on the same Q.
    buffer = buffer_factory(cfg.agent).from_episodes(episodes, 200)
    batch = to_agent_batch(buffer.sample(128, np.random.default_rng(1), frames=True))
    fresh_value = create_agent(cfg.agent, example, ACTION_DIM, seed=7).value
    _, m_trained = update(trained, batch)
    _, m_fresh = update(trained.replace(value=fresh_value), batch)
    assert float(m_trained["value_loss"]) < 0.5 * float(m_fresh["value_loss"]), (m_trained["value_loss"],
                                                                                   m_fresh["value_loss"])


def test_wsrl_starts_online_from_the_iql_checkpoint_and_acts(iql_run, tmp_path):
    from agent.batches import to_agent_batch
    from agent.checkpoint import (
        AgentCheckpointer,
        CheckpointMismatchError,
        restore_agent,
        state_dict,
    )
    from agent.core import act, create_agent, has_value_net
    from agent.sac import learner_step, stack_batches
    from agent.wsrl import start_online_from_checkpoint
    from franka_rl.assemble import buffer_factory

    cfg, _, out, example, episodes = iql_run
    online, frozen, extra = start_online_from_checkpoint(out / "checkpoints", cfg.agent, example, ACTION_DIM)
    assert extra["pretrain_step"] == 40
    assert not online.spec.iql.enabled and not has_value_net(online) and not online.spec.cql.enabled
    assert frozen.spec.iql.enabled and has_value_net(frozen)
    # Actor, critics, target critics (and their moments) are the pre-trained ones, one to one.
    reference, _ = restore_agent(out / "checkpoints", create_agent(cfg.agent, example, ACTION_DIM))
    for name in ("actor", "critic", "target_critic_params", "temperature"):
        for a, b in zip(jax.tree.leaves(state_dict(online)[name]), jax.tree.leaves(state_dict(reference)[name]),
                        strict=True):
            np.testing.assert_array_equal(a, b)
    action = act(online, example, jax.random.PRNGKey(0))
    assert action.shape == (ACTION_DIM,) and np.all(np.abs(action) <= 1)
    # The online phase is SAC: one UTD step runs on the switched agent, and refuses the IQL one.
    buffer = buffer_factory(cfg.agent).from_episodes(episodes, 200)
    rng = np.random.default_rng(2)
    batches = stack_batches([to_agent_batch(buffer.sample(32, rng, frames=True)) for _ in range(online.spec.sac.utd)])
    stepped, metrics = learner_step(online, batches)
    assert np.isfinite(float(metrics["critic_loss"])) and int(stepped.critic.step) == 40 + online.spec.sac.utd
    with pytest.raises(AgentConfigError, match="agent.iql.enabled"):
        learner_step(frozen, batches)
    # An online (value-less) checkpoint: eval's value_optional restore takes it into an IQL template;
    # the strict restore names the key that differs.
    AgentCheckpointer(tmp_path / "online").save(5, online, cfg.agent)
    template = create_agent(cfg.agent, example, ACTION_DIM)
    restored, _ = AgentCheckpointer(tmp_path / "online").restore(template, value_optional=True)
    assert not has_value_net(restored)
    with pytest.raises(CheckpointMismatchError) as info:
        AgentCheckpointer(tmp_path / "online").restore(template)
    assert "value" in str(info.value)


def test_pretrain_takes_exactly_one_method():
    from agent.pretrain import PretrainError, algorithm_label, validate_pretrain_config
    from franka_rl.config import load_config

    cfg = load_config(preset="wsrl_iql")
    validate_pretrain_config(cfg.agent, cfg.pretrain)
    assert algorithm_label(cfg.agent) == "IQL"
    cfg.agent.cql.enabled = True
    with pytest.raises(PretrainError) as info:
        validate_pretrain_config(cfg.agent, cfg.pretrain)
    message = str(info.value)
    assert "agent.cql.enabled" in message and "agent.iql.enabled" in message and "\n" not in message
    cfg.agent.cql.enabled = cfg.agent.iql.enabled = False
    with pytest.raises(PretrainError, match="agent.iql.enabled=true"):
        validate_pretrain_config(cfg.agent, cfg.pretrain)


@pytest.mark.parametrize("override, key", [
    ("agent.iql.expectile=1.0", "agent.iql.expectile"),
    ("agent.iql.temperature=-1", "agent.iql.temperature"),
    ("agent.iql.adv_clip=0", "agent.iql.adv_clip"),
    ("agent.iql.q_aggregation=max", "agent.iql.q_aggregation"),
    ("agent.cql.enabled=true", "agent.cql.enabled"),
])
def test_bad_iql_settings_name_the_key(override, key):
    from agent.config import validate_agent_config
    from franka_rl.config import load_config

    try:
        cfg = load_config(overrides=[override], preset="wsrl_iql")
    except Exception as exc:  # the root config validates the agent section too
        assert key in str(exc)
        return
    with pytest.raises(AgentConfigError, match=key.replace(".", r"\.")):
        validate_agent_config(cfg.agent)


def test_train_gym_pretrains_with_iql_then_fine_tunes_with_sac(tmp_path):
    """`train-gym --algo iql`: offline IQL updates (value, critic, actor), then WSRL online — SAC
    on the switched agent, IQL and its value net dropped; an IQL config with another --algo, or
    --algo iql without IQL, is one refusal."""
    from test_gym_trainer import _random_pendulum_episodes, tiny_config

    from agent.gym_trainer import GymRun, TrainGymError, train_gym
    from agent.metrics import read_metrics
    from franka_rl.assemble import buffer_factory

    data = tmp_path / "episodes"
    _random_pendulum_episodes(data, episodes=2)
    cfg = tiny_config(cql={"enabled": False}, iql={"enabled": True}, online={"warmup_steps": 10}, sac={"utd": 1})
    run = GymRun(env_id="Pendulum-v1", run_dir=tmp_path / "run", algo="iql", env_steps=40, offline_data=str(data),
                 offline_steps=20, eval_every=20, eval_episodes=1, log_every=10, max_episode_steps=20, progress=False)
    summary = train_gym(run, cfg, buffer_factory(cfg), seed=0, log=lambda message: None)
    rows = read_metrics(run.run_dir / "metrics.jsonl")
    offline = [r for r in rows if "offline/critic_loss" in r]
    assert [r["step"] for r in offline] == [10, 20]
    assert all(np.isfinite(r["offline/value_loss"]) for r in offline)
    online = [r for r in rows if "train/critic_loss" in r]
    assert online and not any("train/value_loss" in r for r in online)  # online it is SAC
    assert summary["offline_steps"] == 20 and summary["env_steps"] == 40

    for algo, enabled, message in (("calql", True, "--algo iql"), ("iql", False, "agent.iql.enabled=true")):
        bad = tiny_config(iql={"enabled": enabled})
        with pytest.raises(TrainGymError, match=message):
            train_gym(dataclasses.replace(run, algo=algo, run_dir=tmp_path / algo), bad, buffer_factory(bad),
                      log=lambda message: None)
