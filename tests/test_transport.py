"""Transport: wire format, handshake, acks and resend, parameter broadcast, refusals, fuzzing, CURVE."""

import logging
import socket
import struct
import time

import numpy as np
import pytest
import zmq

from agent.process_config import TransportConfig
from agent.transport import (
    PROTOCOL_VERSION,
    ActorClient,
    LearnerServer,
    Message,
    MessageType,
    ProtocolError,
    TransitionChunk,
    decode,
    encode,
    generate_keys,
)
from agent.transport.protocol import PREFIX
from agent.transport.server import LOG_BURST

SPEC = {"state": ((5,), np.float32), "wrist_1": ((8, 8, 3), np.uint8)}
ACTION_DIM = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def transport_cfg(**kw) -> TransportConfig:
    return TransportConfig(port=free_port(), heartbeat_interval_s=0.1, heartbeat_timeout_s=1.0, **kw)


def chunk(episode=0, step=0, steps=2, end=False, rng=None) -> TransitionChunk:
    rng = rng or np.random.default_rng(episode * 100 + step)
    obs = {"state": rng.normal(size=(steps, 5)).astype(np.float32),
           "wrist_1": rng.integers(0, 255, (steps, 8, 8, 3), dtype=np.uint8)}
    first = {"state": np.zeros(5, np.float32), "wrist_1": np.zeros((8, 8, 3), np.uint8)} if step == 0 else None
    terminated = np.zeros(steps, bool)
    terminated[-1] = end
    return TransitionChunk(episode, step, rng.uniform(-1, 1, (steps, ACTION_DIM)).astype(np.float32),
                           np.zeros(steps, np.float32), terminated, np.zeros(steps, bool), np.zeros(steps, bool),
                           np.zeros(steps, bool), obs, first)


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def server(cfg, **kw) -> LearnerServer:
    return LearnerServer(cfg, config_hash="abc", observation_spec=SPEC, action_dim=ACTION_DIM, **kw).start()


def client(cfg, actor_id="a0", config_hash="abc", **kw) -> ActorClient:
    return ActorClient(cfg, actor_id=actor_id, config_hash=config_hash, observation_spec=SPEC,
                       action_dim=ACTION_DIM, **kw).start()


def store_in_order(srv, stored, timeout=3.0):
    """What a learner does: store sequence stored_through + 1 only, ack everything."""
    for delivery in srv.receive(timeout=timeout):
        mark = stored.setdefault(delivery.stream, [])
        if delivery.sequence == len(mark) + 1:
            mark.append(delivery)
        srv.ack(delivery.stream, stored_through=len(mark), resend=delivery.sequence > len(mark) + 1)


# ----------------------------------------------------------------------------------- wire format


def test_round_trip_keeps_arrays_fields_and_sequence():
    c = chunk(episode=3, step=0, steps=4, end=True)
    message = decode(encode(c.to_message("actor-7", 42)))
    assert (message.type, message.sequence, message.actor) == (MessageType.TRANSITIONS, 42, "actor-7")
    back = TransitionChunk.from_message(message, SPEC, ACTION_DIM)
    assert back.episode == 3 and back.step == 0 and len(back) == 4 and back.ends_episode
    np.testing.assert_array_equal(back.next_observations["wrist_1"], c.next_observations["wrist_1"])
    np.testing.assert_array_equal(back.actions, c.actions)
    assert back.first_observation["state"].shape == (5,)


@pytest.mark.parametrize("mutate, match", [
    (lambda f: [b"XXXX" + f[0][4:], *f[1:]], "foreign"),
    (lambda f: [PREFIX.pack(b"FRRL", PROTOCOL_VERSION + 1, 4, 1) + f[0][PREFIX.size:], *f[1:]], "protocol version"),
    (lambda f: [PREFIX.pack(b"FRRL", PROTOCOL_VERSION, 99, 1) + f[0][PREFIX.size:], *f[1:]], "unknown message type"),
    (lambda f: [f[0][:10]], "shorter"),
    (lambda f: [f[0][:-3], *f[1:]], "JSON"),
    (lambda f: f[:-1], "data frames"),
    (lambda f: [*f[:-1], bytes(f[-1])[:-1]], "bytes"),
    (lambda f: [f[0].replace(b'"<f4"', b'"|O8"'), *f[1:]], "dtype"),
])
def test_decode_refuses_malformed_and_foreign_frames(mutate, match):
    frames = [bytes(f) for f in encode(chunk().to_message("a", 1))]
    with pytest.raises(ProtocolError, match=match):
        decode(mutate(frames))


def test_transitions_are_checked_against_the_spec():
    bad = chunk()
    bad.next_observations["state"] = bad.next_observations["state"][:, :4]
    with pytest.raises(ProtocolError, match="state"):
        TransitionChunk.from_message(decode(encode(bad.to_message("a", 1))), SPEC, ACTION_DIM)
    early_end = chunk(steps=3)
    early_end.terminated[0] = True
    with pytest.raises(ProtocolError, match="last step"):
        TransitionChunk.from_message(decode(encode(early_end.to_message("a", 1))), SPEC, ACTION_DIM)
    with pytest.raises(ProtocolError, match="cannot travel"):
        encode(Message(MessageType.PARAMS, arrays={"x": np.array(["text"], dtype=object)}))


# ----------------------------------------------------------------------------------- the link


def test_transitions_arrive_are_acked_and_params_reach_the_actor():
    cfg = transport_cfg()
    with server(cfg) as srv, client(cfg, decode_params=lambda v, arrays: (v, arrays["w"].sum())) as cli:
        assert wait_for(lambda: cli.state == "up")
        for step in range(0, 6, 2):
            cli.send(chunk(step=step, end=step == 4))
        stored = {}
        assert wait_for(lambda: (store_in_order(srv, stored, 0.05), sum(map(len, stored.values())))[1] == 3)
        assert wait_for(lambda: cli.all_stored())
        assert cli.unacked_transitions == 6  # stored but not yet durable
        stream = next(iter(stored))
        srv.ack(stream, durable_through=3)
        assert wait_for(lambda: cli.unacked_transitions == 0)
        srv.publish(5, {"w": np.ones((2, 3), np.float32)})
        assert wait_for(lambda: cli.params_version == 5)
        version, (v, total) = cli.latest_params()
        assert version == 5 and total == 6.0
        assert cli.latest_params() is None  # only newer parameters are returned
        assert srv.connected_actors() == ["a0"]


def test_learner_restart_gets_everything_resent_exactly_once():
    cfg = transport_cfg()
    stored: dict = {}
    cli = client(cfg)
    try:
        srv = server(cfg)
        assert wait_for(lambda: cli.state == "up")
        for seq in range(1, 5):
            cli.send(chunk(step=2 * (seq - 1)))
        assert wait_for(lambda: (store_in_order(srv, stored, 0.05), sum(map(len, stored.values())))[1] == 4)
        stream = next(iter(stored))
        srv.ack(stream, durable_through=2)  # a checkpoint holds 1..2
        srv.close()
        for seq in range(5, 8):  # recorded while the learner is down
            cli.send(chunk(step=2 * (seq - 1)))
        time.sleep(0.3)
        # The restarted learner knows only its checkpoint: 1..2 stored.
        from agent.transport import Watermarks

        srv = server(cfg, watermarks={stream: Watermarks(2, 2)})
        after: dict = {stream: stored[stream][:2]}
        assert wait_for(lambda: (store_in_order(srv, after, 0.05), len(after[stream]))[1] == 7, timeout=8)
        assert [d.sequence for d in after[stream]] == list(range(1, 8))
        assert cli.reconnects == 1
        srv.close()
    finally:
        cli.close()


def test_a_fresh_learner_skips_what_the_actor_no_longer_holds():
    cfg = transport_cfg()
    cli = client(cfg)
    try:
        with server(cfg) as srv:
            assert wait_for(lambda: cli.state == "up")
            for seq in range(1, 4):
                cli.send(chunk(step=2 * (seq - 1)))
            stored: dict = {}
            assert wait_for(lambda: (store_in_order(srv, stored, 0.05), sum(map(len, stored.values())))[1] == 3)
            srv.ack(next(iter(stored)), durable_through=3)  # checkpointed: the actor drops 1..3
            assert wait_for(lambda: cli.unacked_transitions == 0)
        cli.send(chunk(step=0))
        with server(cfg) as fresh:  # another run directory: knows nothing of 1..3
            deliveries = []
            assert wait_for(lambda: (deliveries.extend(fresh.receive(timeout=0.05)), len(deliveries))[1] >= 2)
            assert deliveries[0].chunk is None and deliveries[0].sequence == 3
            assert deliveries[1].sequence == 4 and deliveries[1].chunk is not None
            assert fresh.watermarks()[deliveries[0].stream].stored_through == 3
    finally:
        cli.close()


def test_incompatible_actor_is_refused_with_the_reason():
    cfg = transport_cfg()
    with server(cfg), client(cfg, config_hash="other") as cli:
        assert wait_for(lambda: cli.state == "refused")
        assert "config hash" in cli.refusal


def test_second_actor_joins_and_duplicate_ids_are_refused():
    cfg = transport_cfg()
    with server(cfg) as srv, client(cfg, "a0") as first, client(cfg, "a1") as second:
        assert wait_for(lambda: first.state == "up" and second.state == "up")
        assert wait_for(lambda: srv.connected_actors() == ["a0", "a1"])
        with client(cfg, "a0") as clash:
            assert wait_for(lambda: clash.state == "refused")
            assert "already connected" in clash.refusal


# ----------------------------------------------------------------------------------- hostile input


def test_fuzzed_frames_are_rejected_and_logged_without_a_crash(caplog):
    cfg = transport_cfg()
    rng = np.random.default_rng(0)
    valid = [bytes(f) for f in encode(chunk().to_message("fuzz", 1))]
    hello = [bytes(f) for f in encode(Message(MessageType.HELLO, actor="fuzz", fields={"incarnation": 3}))]
    cases = []
    for i in range(60):
        kind = i % 5
        if kind == 0:  # random bytes, random frame count
            cases.append([rng.bytes(int(rng.integers(0, 64))) for _ in range(int(rng.integers(1, 4)))])
        elif kind == 1:  # a valid message cut short somewhere
            flat = b"".join(valid)
            cases.append([flat[: int(rng.integers(0, len(flat)))]])
        elif kind == 2:  # valid header, truncated data frame
            cases.append([valid[0], *[f[: int(rng.integers(0, max(len(f), 1)))] for f in valid[1:]]])
        elif kind == 3:  # right prefix, garbage JSON
            cases.append([struct.pack("!4sHBxQ", b"FRRL", PROTOCOL_VERSION, 4, 1) + rng.bytes(20)])
        else:  # a HELLO with fields of the wrong type
            cases.append(hello)
    context = zmq.Context.instance()
    with caplog.at_level(logging.WARNING, logger="agent.transport"), server(cfg) as srv:
        fuzzer = context.socket(zmq.DEALER)
        fuzzer.setsockopt(zmq.LINGER, 0)
        fuzzer.connect(f"tcp://127.0.0.1:{cfg.port}")
        for frames in cases:
            fuzzer.send_multipart(frames)
        assert wait_for(lambda: srv.rejected == len(cases), timeout=10), srv.rejected
        fuzzer.close()
        # Still serving: a well-behaved actor gets through.
        with client(cfg) as cli:
            assert wait_for(lambda: cli.state == "up")
            cli.send(chunk())
            assert len(srv.receive(timeout=3.0)) == 1
    # Counted one by one (by reason), logged rate-limited: a flood cannot flood the log.
    assert sum(srv.rejected_by_reason().values()) == len(cases)
    rejections = [r for r in caplog.records if "rejected a message" in r.getMessage()]
    assert 1 <= len(rejections) <= LOG_BURST < len(cases)


def test_curve_admits_known_actors_only(tmp_path):
    generate_keys(tmp_path, ["a0"])
    generate_keys(tmp_path / "stranger", ["intruder"])
    server_cfg = transport_cfg(curve=True, curve_server_secret_file=str(tmp_path / "learner.key_secret"),
                               curve_authorized_clients_dir=str(tmp_path / "authorized_actors"))

    def actor_cfg(secret):
        return TransportConfig(port=server_cfg.port, heartbeat_interval_s=0.1, heartbeat_timeout_s=1.0, curve=True,
                               curve_client_secret_file=str(secret),
                               curve_server_public_file=str(tmp_path / "learner.key"))

    with server(server_cfg) as srv:
        plain = TransportConfig(port=server_cfg.port, heartbeat_interval_s=0.1, heartbeat_timeout_s=1.0)
        with client(plain, "plain") as unauthenticated, \
                client(actor_cfg(tmp_path / "stranger" / "intruder.key_secret"), "intruder") as stranger:
            assert not wait_for(lambda: unauthenticated.state == "up" or stranger.state == "up", timeout=1.5)
            unauthenticated.send(chunk())
            stranger.send(chunk())
            time.sleep(0.3)
            assert srv.receive() == [] and srv.connected_actors() == []
        with client(actor_cfg(tmp_path / "a0.key_secret"), "a0") as admitted:
            assert wait_for(lambda: admitted.state == "up")
            admitted.send(chunk())
            assert len(srv.receive(timeout=3.0)) == 1
