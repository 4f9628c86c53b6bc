"""Data-parallel learner step (agent/sharding.py) on two forced host devices.

The two-device checks run in a child process: XLA_FLAGS=--xla_force_host_platform_device_count=2
must be set before JAX starts, and this test process's JAX runtime (one CPU device, shared by the
other tests) must stay as it is. The child is this file run as a script.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from agent.offline_config import EvalConfig, PretrainConfig, validate_offline_config
from agent.process_config import (
    LearnerConfig,
    ProcessConfigError,
    TransportConfig,
    validate_process_config,
)
from robot_env.errors import ConfigError


def test_two_device_sharded_step_equals_the_single_device_step():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    child = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stdout + child.stderr
    assert "sharded step ok" in child.stdout


def test_negative_device_counts_are_config_errors_naming_the_key():
    with pytest.raises(ProcessConfigError, match="learner.devices"):
        validate_process_config(TransportConfig(), learner=LearnerConfig(devices=-1))
    with pytest.raises(ConfigError, match="pretrain.devices"):
        validate_offline_config(PretrainConfig(devices=-2), EvalConfig())


def test_one_device_is_the_plain_learner_step():
    from agent.sac import learner_step
    from agent.sharding import ShardingError, data_parallel_step

    step, how = data_parallel_step(0, 33, "learner.devices")  # this process sees one CPU device
    assert step is learner_step and "1 device" in how
    with pytest.raises(ShardingError, match="learner.devices=2 but JAX sees 1"):
        data_parallel_step(2, 32, "learner.devices")


# ------------------------------------------------------------------------------ the child process


def _tiny_agent():
    from agent.config import AgentConfig
    from agent.core import create_agent

    cfg = AgentConfig()
    cfg.network.critic_hidden_dims = [16, 16]
    cfg.network.actor_hidden_dims = [16, 16]
    cfg.network.num_critics = 4
    cfg.sac.critic_subsample = 2
    cfg.sac.batch_size = 8
    cfg.sac.utd = 2
    cfg.cql.enabled, cfg.cql.calql_bound, cfg.cql.n_actions = True, True, 2  # the pretrain (Cal-QL) path too
    cfg.encoder.proprio_dim = 0
    return create_agent(cfg, {"state": np.zeros(5, np.float32)}, 3, seed=0)


def _batches(rng: np.random.Generator, utd: int, batch: int) -> dict:
    def obs():
        return {"state": rng.normal(size=(utd, batch, 5)).astype(np.float32)}

    return {"observations": obs(), "next_observations": obs(),
            "actions": rng.uniform(-1, 1, (utd, batch, 3)).astype(np.float32),
            "rewards": rng.normal(size=(utd, batch)).astype(np.float32),
            "masks": (rng.uniform(size=(utd, batch)) > 0.1).astype(np.float32),
            "mc_returns": rng.normal(size=(utd, batch)).astype(np.float32)}


def _child() -> None:
    import jax

    from agent.sac import learner_step
    from agent.sharding import DataParallelStep, ShardingError, data_parallel_step, is_replicated

    assert len(jax.local_devices()) == 2, jax.local_devices()
    step, how = data_parallel_step(0, 8, "learner.devices")  # 0 = all local devices
    assert isinstance(step, DataParallelStep) and len(step.devices) == 2, how

    placed = step.place_batches(_batches(np.random.default_rng(0), 2, 8))
    shards = placed["actions"].addressable_shards
    assert [s.data.shape for s in shards] == [(2, 4, 3), (2, 4, 3)], [s.data.shape for s in shards]
    assert {s.device for s in shards} == set(jax.local_devices())

    single = sharded = _tiny_agent()
    rng = np.random.default_rng(1)
    for _ in range(3):  # a few steps: optimizer moments, targets and RNG carry over
        batches = _batches(rng, 2, 8)
        single, single_metrics = learner_step(single, batches)
        sharded, sharded_metrics = step(sharded, batches)
        assert is_replicated(sharded, 2)
        for name in single_metrics:
            np.testing.assert_allclose(np.asarray(sharded_metrics[name]), np.asarray(single_metrics[name]),
                                       rtol=1e-4, atol=1e-5, err_msg=name)
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)

    try:
        data_parallel_step(0, 7, "learner.devices")
    except ShardingError as exc:
        message = str(exc)
        assert "\n" not in message and "agent.sac.batch_size=7" in message and "learner.devices" in message, message
    else:
        raise AssertionError("batch 7 over 2 devices was accepted")
    print("sharded step ok")


if __name__ == "__main__":
    _child()
