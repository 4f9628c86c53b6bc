"""Live transport peers on loopback for the transport tests: a fast-heartbeat config on a free
port, a started learner server and actor client for the fuzzing module's observation layout, and
a bounded wait."""

from __future__ import annotations

import time

from agent.process_config import TransportConfig
from agent.transport import ActorClient, LearnerServer
from agent.transport.fuzzing import ACTION_DIM, CONFIG_HASH, SPEC, free_port


def cfg(**kw) -> TransportConfig:
    return TransportConfig(**{"port": free_port(), "heartbeat_interval_s": 0.05, "heartbeat_timeout_s": 1.0, **kw})


def server(c: TransportConfig, **kw) -> LearnerServer:
    return LearnerServer(c, config_hash=CONFIG_HASH, observation_spec=SPEC, action_dim=ACTION_DIM, **kw).start()


def client(c: TransportConfig, actor_id: str = "a0", **kw) -> ActorClient:
    return ActorClient(c, actor_id=actor_id, config_hash=CONFIG_HASH, observation_spec=SPEC,
                       action_dim=ACTION_DIM, **kw).start()


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
