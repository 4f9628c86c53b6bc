"""What a fresh process compiles to build an agent: every command (actor, learner, eval, pretrain)
pays it before its first step, on a CPU in seconds per compile."""

from __future__ import annotations

import os
import subprocess
import sys

_BUILD_AN_AGENT = r"""
import numpy as np
from jax import monitoring

compiles = []
monitoring.register_event_duration_secs_listener(
    lambda event, seconds, **_: compiles.append(seconds) if event == "/jax/core/compile/backend_compile_duration" else None)

from agent.config import AgentConfig
from agent.core import create_agent

cfg = AgentConfig()
cfg.network.critic_hidden_dims = cfg.network.actor_hidden_dims = [16, 16]
cfg.encoder.proprio_dim = 0
create_agent(cfg, {"state": np.zeros(5, np.float32)}, 3, seed=0)
print(len(compiles))
"""


def test_a_fresh_process_compiles_each_network_init_once_not_each_operation():
    # Built op by op, the networks' inits compiled every primitive on its own (about 90 compiles
    # for this agent, ~9 s); compiled whole, the agent takes a few dozen, mostly tiny ones.
    env = {name: value for name, value in os.environ.items() if not name.startswith("JAX_COMPILATION_CACHE")}
    child = subprocess.run([sys.executable, "-c", _BUILD_AN_AGENT], env={**env, "JAX_PLATFORMS": "cpu"},
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr
    compiles = int(child.stdout.split()[-1])
    assert compiles <= 45, f"building a tiny agent compiled {compiles} programs"
