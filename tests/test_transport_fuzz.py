"""Hostile input against a live learner transport: a seeded corpus (the known triggers plus random
mutations of valid messages), each trigger as a ProtocolError, any handler failure as a counted
rejection, and a dead service thread that stops its owner loudly."""

import numpy as np
import pytest

from agent.process_config import TransportConfig
from agent.transport import LearnerServer, ProtocolError, TransitionChunk, TransportError, decode
from agent.transport.fuzzing import (
    ACTION_DIM,
    CONFIG_HASH,
    MAX_ABS_OBSERVATION,
    SPEC,
    free_port,
    run_corpus,
    transitions,
    triggers,
)
from agent.transport.protocol import PREFIX, Limits, MessageType


def test_hostile_corpus_leaves_the_transport_serving_and_stores_nothing_invalid():
    report = run_corpus(400, seed=0)
    assert report.problems == []
    assert (report.thread_deaths, report.hangs, report.stored_invalid, report.silent) == (0, 0, 0, 0)
    assert report.actor_accepted
    assert report.stored >= 20  # the valid chunks interleaved with the corpus were stored
    assert report.rejected >= len(triggers(np.random.default_rng(0), 1)) - 10
    assert {"framing", "header", "array", "field", "value", "hello", "order"} <= set(report.rejected_by_reason)


def _transitions_triggers():
    rng = np.random.default_rng(0)
    return [(name, frames) for name, frames in triggers(rng, 1)
            if len(frames[0]) >= PREFIX.size and frames[0][:4] == b"FRRL"
            and PREFIX.unpack(frames[0][:PREFIX.size])[2] == MessageType.TRANSITIONS
            and name not in ("other_actor_name", "sequence_zero", "sequence_max")]


@pytest.mark.parametrize("name, frames", _transitions_triggers(), ids=[n for n, _ in _transitions_triggers()])
def test_each_transitions_trigger_is_a_protocol_error(name, frames):
    """Every known trigger is refused as a ProtocolError (a counted rejection), never another
    exception and never a chunk the buffer would store."""
    with pytest.raises(ProtocolError):
        TransitionChunk.from_message(decode(frames), SPEC, ACTION_DIM, max_abs_observation=MAX_ABS_OBSERVATION)


def test_values_are_checked_after_the_cast_to_float32():
    rng = np.random.default_rng(1)
    huge = transitions(rng, 1, rewards=np.full(1, 1e300, np.float64))  # finite as float64, inf as float32
    with pytest.raises(ProtocolError, match="float32"):
        TransitionChunk.from_message(decode(huge), SPEC, ACTION_DIM)
    fine = TransitionChunk.from_message(decode(transitions(rng, 1, rewards=np.full(1, 0.5, np.float64))), SPEC,
                                        ACTION_DIM)
    assert fine.rewards.dtype == np.float32 and fine.rewards[0] == 0.5
    edge = transitions(rng, 1, actions=np.full((1, ACTION_DIM), 1.000001, np.float32))  # rounding: accepted, clipped
    assert TransitionChunk.from_message(decode(edge), SPEC, ACTION_DIM).actions.max() == 1.0


def _server(**kw):
    cfg = TransportConfig(port=free_port(), heartbeat_interval_s=0.05, heartbeat_timeout_s=1.0, **kw)
    return LearnerServer(cfg, config_hash=CONFIG_HASH, observation_spec=SPEC, action_dim=ACTION_DIM).start()


def test_an_unexpected_failure_while_handling_is_a_counted_rejection(monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("a bug, not a protocol error")

    monkeypatch.setattr(TransitionChunk, "from_message", broken)
    report = run_corpus(30, seed=3, check_actor=False)
    assert report.thread_deaths == 0 and report.hangs == 0
    assert report.rejected_by_reason.get("internal", 0) >= 1


def test_a_dead_service_thread_makes_the_owner_stop_loudly(monkeypatch):
    srv = _server()
    try:
        def broken(*args):
            raise RuntimeError("poller exploded")

        monkeypatch.setattr(srv, "_serve_once", broken)
        srv._wake()
        srv._thread.join(10.0)
        assert not srv._thread.is_alive() and isinstance(srv.failure, RuntimeError)
        with pytest.raises(TransportError, match="learner-transport thread stopped"):
            srv.receive(timeout=0.1)
    finally:
        srv.close()


@pytest.mark.parametrize("name, says", [("int_5000_digits", "at most 20"), ("int_4301_digits_in_hello", "at most 20"),
                                        ("nested_lists_100000", "nests"), ("nested_objects_5000", "nests"),
                                        ("shape_0_by_2pow63_empty", "invalid shape"),
                                        ("header_too_large", "exceeds")])
def test_each_parser_limit_names_what_was_exceeded(name, says):
    frames = dict(triggers(np.random.default_rng(0), 1))[name]
    with pytest.raises(ProtocolError, match=says):
        decode(frames, Limits(max_header_bytes=TransportConfig().max_header_bytes) if "large" in name else None)
