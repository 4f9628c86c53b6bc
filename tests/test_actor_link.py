"""An actor whose learner does not answer says so in words, within seconds, naming the address
and what to check, and takes no step meanwhile (the arm holds its pose)."""

from __future__ import annotations

import socket
import time

import jax
import pytest

from agent.transport.security import TransportError
from franka_rl.assemble import build_actor, build_env
from franka_rl.config import load_config


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_learner_is_reported_with_its_address_and_what_to_check(tmp_path):
    port = unused_port()
    cfg = load_config(None, [
        "env.cameras=[]", f"output_dir={tmp_path}", "transport.host=127.0.0.45", f"transport.port={port}",
        "actor.first_params_timeout_s=7", "agent.network.critic_hidden_dims=[16]",
        "agent.network.actor_hidden_dims=[16]", "agent.network.num_critics=2", "agent.encoder.proprio_dim=0"])
    env = build_env(cfg, "actor")
    lines: list[tuple[float, str]] = []
    started = time.monotonic()
    steps = []
    original_step = env.step
    env.step = lambda action: steps.append(action) or original_step(action)
    try:
        actor = build_actor(cfg, env, report=lambda line: lines.append((time.monotonic() - started, line)))
        with pytest.raises(TransportError, match="no parameters from the learner"):
            actor.run()
    finally:
        env.close()
    reports = [(t, line) for t, line in lines if "no answer from the learner" in line]
    assert reports, lines
    # The wait starts once the policy is compiled (before it, a loaded machine spends seconds on the
    # compile); the first report comes 5 s into it, before the 7 s first-parameters timeout.
    waiting_from = next(t for t, line in lines if "policy compiled" in line)
    first_at, text = reports[0]
    assert first_at - waiting_from < 7.0
    assert f"tcp://127.0.0.45:{port}" in text and "bind_host" in text and "firewall" in text
    assert "holds its pose" in text and steps == []


def test_the_warm_up_compiles_the_stochastic_policy_the_loop_uses_with_swapped_parameters(tmp_path):
    from agent.core import act, sample_actions
    from agent.param_sync import acting_params_from_arrays, export_acting_params, with_acting_params

    cfg = load_config(None, [
        "env.cameras=[]", f"output_dir={tmp_path}", f"transport.port={unused_port()}",
        "agent.network.critic_hidden_dims=[12]", "agent.network.actor_hidden_dims=[12]",
        "agent.network.num_critics=2", "agent.encoder.proprio_dim=0"])
    env = build_env(cfg, "actor")
    try:
        actor = build_actor(cfg, env, report=lambda line: None)
        before = sample_actions._cache_size()
        assert actor.warm_up() > 0
        assert sample_actions._cache_size() == before + 1  # the warm-up compiled the path ...
        observation, _ = env.reset(seed=0)
        swapped = with_acting_params(actor._template, acting_params_from_arrays(
            actor._template, export_acting_params(actor.agent)))  # as a PARAMS message from the learner
        key = actor._key
        for agent in (actor.agent, swapped):
            key, sub = jax.random.split(key)
            act(agent, observation, sub)
        assert sample_actions._cache_size() == before + 1  # ... that real steps then take: no compile
    finally:
        env.close()
        actor.client.close()
