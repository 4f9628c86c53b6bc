"""Checkpoints (round trip, resume, architecture mismatch), the WSRL switch and RLPD batches."""

import jax
import numpy as np
import pytest

from agent.checkpoint import (
    MANIFEST_NAME,
    AgentCheckpointer,
    CheckpointCorruptError,
    CheckpointError,
    CheckpointMismatchError,
)
from agent.config import AgentConfig, OnlineConfig
from agent.core import create_agent
from agent.rlpd import mix_batches, offline_batch_size
from agent.sac import learner_step, stack_batches
from agent.wsrl import policy_drift, start_online_from_checkpoint, updates_allowed, wsrl_switch

STATE_DIM, ACTION_DIM, B = 3, 2, 8


def _cfg(hidden=32):
    cfg = AgentConfig()
    cfg.network.critic_hidden_dims = [hidden, hidden]
    cfg.network.actor_hidden_dims = [32, 32]
    cfg.network.num_critics = 4
    cfg.encoder.proprio_dim = 8
    cfg.cql.enabled = True
    cfg.cql.n_actions = 3
    cfg.sac.utd = 2
    return cfg


EXAMPLE = {"state": np.zeros(STATE_DIM, np.float32)}


def _batches(seed, utd=2):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(utd):
        obs = {"state": rng.normal(size=(B, STATE_DIM)).astype(np.float32)}
        nxt = {"state": rng.normal(size=(B, STATE_DIM)).astype(np.float32)}
        out.append({"observations": obs, "next_observations": nxt,
                    "actions": rng.uniform(-1, 1, (B, ACTION_DIM)).astype(np.float32),
                    "rewards": rng.integers(0, 2, B).astype(np.float32), "masks": np.ones(B, np.float32),
                    "mc_returns": -rng.uniform(0, 5, B).astype(np.float32)})
    return stack_batches(out)


def _assert_same_leaves(a, b):
    leaves_a = jax.tree_util.tree_flatten_with_path(a)[0]
    leaves_b = jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for (path, x), y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def pretrained():
    cfg = _cfg()
    agent = create_agent(cfg, EXAMPLE, ACTION_DIM)
    for i in range(2):  # non-trivial optimizer moments and step counters
        agent, _ = learner_step(agent, _batches(i))
    return cfg, agent


def test_round_trip_restores_every_leaf_and_resumes_latest(tmp_path, pretrained):
    cfg, agent = pretrained
    ckpt = AgentCheckpointer(tmp_path / "ckpt", max_to_keep=2)
    ckpt.save(10, agent, cfg, extra={"env_steps": 123})
    ckpt.save(20, agent, cfg, extra={"env_steps": 456})
    ckpt.save(30, agent, cfg, extra={"env_steps": 789})
    assert ckpt.all_steps() == [20, 30] and ckpt.latest_step() == 30
    # No temporary directories are left behind.
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["20", "30"]
    restored, extra = AgentCheckpointer(tmp_path / "ckpt").restore(create_agent(cfg, EXAMPLE, ACTION_DIM, seed=5))
    assert extra == {"env_steps": 789}
    _assert_same_leaves(agent, restored)
    # The restored agent keeps training exactly like the original.
    a1, m1 = learner_step(agent, _batches(9))
    a2, m2 = learner_step(restored, _batches(9))
    assert float(m1["critic_loss"]) == float(m2["critic_loss"])


def test_a_reader_sees_only_finished_steps_while_a_save_is_in_flight(tmp_path, pretrained):
    """Orbax shows a step's folder before the manifest is written: a reader polling a live run
    (eval, the pipeline) must take the newest finished step, not fail on the one being saved."""
    cfg, agent = pretrained
    writer = AgentCheckpointer(tmp_path / "ckpt", max_to_keep=None)
    writer.save(10, agent, cfg, extra={"transitions": 10})
    seen = {}

    def reader_looks(step_directory):  # the writer is between orbax's finish and the manifest
        reader = AgentCheckpointer(tmp_path / "ckpt", max_to_keep=None)
        seen["all"], seen["finished"] = reader.all_steps(), reader.finished_steps()
        with pytest.raises(CheckpointCorruptError, match="still being written"):
            reader.read_meta(20)
        seen["extra"] = reader.read_meta(seen["finished"][-1])["extra"]

    writer.save(20, agent, cfg, extra={"transitions": 20}, before_manifest=reader_looks)
    assert seen == {"all": [10, 20], "finished": [10], "extra": {"transitions": 10}}
    assert AgentCheckpointer(tmp_path / "ckpt").finished_steps() == [10, 20]
    # A writer killed mid-save leaves a step without its manifest: never finished.
    (writer.step_directory(20) / MANIFEST_NAME).unlink()
    assert AgentCheckpointer(tmp_path / "ckpt").finished_steps() == [10]


def test_restoring_into_another_architecture_names_the_part(tmp_path, pretrained):
    cfg, agent = pretrained
    ckpt = AgentCheckpointer(tmp_path / "ckpt")
    ckpt.save(1, agent, cfg)
    other_cfg = _cfg(hidden=16)
    with pytest.raises(CheckpointMismatchError) as info:
        ckpt.restore(create_agent(other_cfg, EXAMPLE, ACTION_DIM), config=other_cfg)
    message = str(info.value)
    assert "critic.params.q" in message
    assert "agent.network.critic_hidden_dims: checkpoint [32, 32], now [16, 16]" in message
    assert "actor" not in message.split("\n")[0]  # the actor fits
    # A different observation (state size) is named too.
    with pytest.raises(CheckpointMismatchError, match="proprio_dense"):
        ckpt.restore(create_agent(cfg, {"state": np.zeros(7, np.float32)}, ACTION_DIM))


def test_missing_and_corrupt_checkpoints(tmp_path, pretrained):
    cfg, agent = pretrained
    with pytest.raises(CheckpointError, match="no checkpoint"):
        AgentCheckpointer(tmp_path / "empty").restore(agent)
    ckpt = AgentCheckpointer(tmp_path / "ckpt")
    step_dir = ckpt.save(3, agent, cfg)
    for path in step_dir.rglob("*"):
        if path.is_file() and "meta" not in str(path.relative_to(step_dir)):
            path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        ckpt.restore(agent)


def test_wsrl_switch_keeps_the_whole_state_and_drops_cql(tmp_path, pretrained):
    cfg, agent = pretrained
    AgentCheckpointer(tmp_path / "pre").save(7, agent, cfg)
    online, frozen, _ = start_online_from_checkpoint(tmp_path / "pre", cfg, EXAMPLE, ACTION_DIM)
    _assert_same_leaves(agent, online)  # actor, critics, targets, temperature, Adam moments, RNG
    _assert_same_leaves(agent, frozen)
    assert agent.spec.cql.enabled and not online.spec.cql.enabled
    batches = _batches(3)
    _, m_off = learner_step(agent, batches)
    _, m_on = learner_step(online, batches)
    assert "cql_diff" in m_off and "cql_diff" not in m_on
    assert float(m_on["critic_loss"]) == pytest.approx(float(m_on["td_loss"]))
    # Cal-QL fine-tuning keeps the term with the online alpha.
    calql_ft = wsrl_switch(agent, OnlineConfig(keep_cql=True, cql_alpha=0.5))
    assert calql_ft.spec.cql.enabled and calql_ft.spec.cql.alpha == 0.5
    # Drift diagnostics are zero against itself and positive after an update.
    obs = batches["observations"]
    obs0 = jax.tree.map(lambda x: x[0], obs)
    same = policy_drift(online, frozen.actor.params, obs0)
    assert float(same["drift_action_mse"]) == 0.0 and abs(float(same["drift_kl"])) < 1e-5
    moved, _ = learner_step(online, batches)
    assert float(policy_drift(moved, frozen.actor.params, obs0)["drift_kl"]) > 0.0
    assert not updates_allowed(4999, 5000) and updates_allowed(5000, 5000)


def test_rlpd_mixed_batches():
    off = {"observations": {"state": np.zeros((3, 2), np.float32)}, "rewards": np.zeros(3, np.float32)}
    on = {"observations": {"state": np.ones((5, 2), np.float32)}, "rewards": np.ones(5, np.float32)}
    mixed = mix_batches(off, on)
    assert mixed["observations"]["state"].shape == (8, 2)
    np.testing.assert_array_equal(mixed["rewards"], [0, 0, 0, 1, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="structure"):
        mix_batches(off, {"rewards": np.ones(5, np.float32)})
    assert offline_batch_size(256, 0.5, 1000, 10) == 128
    assert offline_batch_size(256, -1, 300, 100) == 192
    assert offline_batch_size(256, 0.5, 0, 10) == 0
    assert offline_batch_size(256, 0.5, 10, 0) == 256
    with pytest.raises(ValueError):
        offline_batch_size(256, 1.5, 10, 10)


def test_opening_a_folder_while_its_learner_prunes_a_step_looks_again(tmp_path, monkeypatch):
    """A reader (eval, a test polling a live learner) scanning the folder while the learner deletes
    an old step sees that step vanish mid-scan; that is not a disk error: it scans again."""
    import orbax.checkpoint as ocp

    from agent.checkpoint import AgentCheckpointer, CheckpointWriteError

    real, calls = ocp.CheckpointManager, []

    def vanishing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise FileNotFoundError(2, "No such file or directory", str(tmp_path / "checkpoints" / "18"))
        return real(*args, **kwargs)

    (tmp_path / "checkpoints").mkdir()
    monkeypatch.setattr(ocp, "CheckpointManager", vanishing_once)
    assert AgentCheckpointer(tmp_path / "checkpoints").latest_step() is None and len(calls) == 2

    def always_missing(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "x")

    monkeypatch.setattr(ocp, "CheckpointManager", always_missing)
    with pytest.raises(CheckpointWriteError, match="cannot create the checkpoint folder"):
        AgentCheckpointer(tmp_path / "checkpoints")
