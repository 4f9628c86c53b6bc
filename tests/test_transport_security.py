"""Who may claim an actor id, when CURVE is required, and how key files are written and read."""

import logging
import stat

import numpy as np
import pytest
import zmq
from transport_peers import cfg, client, server, wait_for  # noqa: E402

from agent.process_config import (
    LearnerConfig,
    ProcessConfigError,
    validate_process_config,
)
from agent.transport import (
    LearnerServer,
    Message,
    MessageType,
    TransportError,
    encode,
    generate_keys,
)
from agent.transport.fuzzing import (
    ACTION_DIM,
    CONFIG_HASH,
    SPEC,
    hello_fields,
    valid_chunk,
)

# ----------------------------------------------------------------------------------- squatting


@pytest.mark.parametrize("bad", [{"held_from": "1"}, {"held_from": 0}, {"param_version": "x"}])
def test_a_hello_rejected_as_malformed_claims_no_actor_id(bad):
    c = cfg()
    with server(c) as srv:
        squatter = zmq.Context.instance().socket(zmq.DEALER)
        squatter.setsockopt(zmq.LINGER, 0)
        squatter.connect(f"tcp://127.0.0.1:{c.port}")
        try:
            squatter.send_multipart(encode(Message(MessageType.HELLO, actor="actor-0",
                                                   fields=hello_fields("squat-1", **bad))))
            assert wait_for(lambda: srv.rejected == 1)
            assert srv.connected_actors() == []
            with client(c, "actor-0") as real:  # the real actor is not told "already connected"
                assert wait_for(lambda: real.state == "up"), real.refusal
        finally:
            squatter.close()


def _curve_cfgs(tmp_path):
    generate_keys(tmp_path, ["actor-0", "actor-1"])
    server_cfg = cfg(curve=True, curve_server_secret_file=str(tmp_path / "learner.key_secret"),
                     curve_authorized_clients_dir=str(tmp_path / "authorized_actors"))

    def actor_cfg(name):
        return cfg(port=server_cfg.port, curve=True, curve_client_secret_file=str(tmp_path / f"{name}.key_secret"),
                   curve_server_public_file=str(tmp_path / "learner.key"))

    return server_cfg, actor_cfg


def test_with_curve_an_actor_id_is_bound_to_its_key(tmp_path):
    server_cfg, actor_cfg = _curve_cfgs(tmp_path)
    with server(server_cfg) as srv:
        # actor-1's (admitted) key claiming "actor-0": authorized_actors/actor-0.key reserves that id.
        with client(actor_cfg("actor-1"), "actor-0") as impostor:
            assert wait_for(lambda: impostor.state == "refused")
            assert "belongs to" in impostor.refusal
        with client(actor_cfg("actor-0"), "actor-0") as real:
            assert wait_for(lambda: real.state == "up"), real.refusal
            # The same key reconnecting (a restarted actor process) takes over at once.
            with client(actor_cfg("actor-0"), "actor-0") as restarted:
                assert wait_for(lambda: restarted.state == "up"), restarted.refusal
        # An id without a certificate of its name is bound to the first key that claims it.
        with client(actor_cfg("actor-0"), "robot-a") as first:
            assert wait_for(lambda: first.state == "up")
        with client(actor_cfg("actor-1"), "robot-a") as second:
            assert wait_for(lambda: second.state == "refused")
            assert "claimed it first" in second.refusal
        assert srv.rejected_by_reason().get("squat", 0) == 2


# ----------------------------------------------------------------------------------- CURVE required


@pytest.mark.parametrize("host", ["*", "0.0.0.0", "192.168.1.20", "::", "gpu-box"])
def test_a_non_loopback_bind_without_curve_is_refused_in_one_line(host):
    c = cfg(bind_host=host)
    with pytest.raises(ProcessConfigError) as refused:
        validate_process_config(c, learner=LearnerConfig())
    text = str(refused.value)
    assert "\n" not in text
    for key in ("transport.curve=true", "transport.curve_server_secret_file", "transport.curve_authorized_clients_dir",
                "franka-rl transport-keys", "transport.insecure=true"):
        assert key in text
    with pytest.raises(TransportError, match="transport-keys"):
        LearnerServer(c, config_hash=CONFIG_HASH, observation_spec=SPEC, action_dim=ACTION_DIM,
                      endpoint=f"tcp://127.0.0.1:{c.port}").start()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_binds_need_no_curve(host):
    validate_process_config(cfg(bind_host=host), learner=LearnerConfig())


def test_insecure_true_accepts_a_non_loopback_bind_with_a_warning(caplog):
    c = cfg(bind_host="0.0.0.0", insecure=True)
    validate_process_config(c, learner=LearnerConfig())
    with caplog.at_level(logging.WARNING, logger="agent.transport"), server(c):
        pass
    assert any("without CURVE" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------------- key files


def test_secret_keys_are_written_0600_and_public_ones_0644(tmp_path):
    written = generate_keys(tmp_path / "keys", ["actor-0"])
    for secret in written.values():
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    for public in [tmp_path / "keys" / "learner.key", tmp_path / "keys" / "actor-0.key",
                   tmp_path / "keys" / "authorized_actors" / "actor-0.key"]:
        assert stat.S_IMODE(public.stat().st_mode) == 0o644
    public, secret = zmq.auth.load_certificate(written["actor-0"])  # pyzmq reads them
    assert len(public) == 40 and len(secret) == 40
    assert zmq.auth.load_certificate(tmp_path / "keys" / "authorized_actors" / "actor-0.key")[0] == public
    with pytest.raises(TransportError, match="refusing to overwrite"):
        generate_keys(tmp_path / "keys", ["actor-0"])


def test_loading_a_world_readable_secret_key_warns(tmp_path, caplog):
    server_cfg, actor_cfg = _curve_cfgs(tmp_path)
    (tmp_path / "actor-0.key_secret").chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="agent.transport"), server(server_cfg), \
            client(actor_cfg("actor-0"), "actor-0") as cli:
        assert wait_for(lambda: cli.state == "up")
        cli.send(valid_chunk(np.random.default_rng(0)))
    warnings = [r.getMessage() for r in caplog.records if "other users can read it" in r.getMessage()]
    assert len(warnings) == 1 and "actor-0.key_secret" in warnings[0] and "chmod 600" in warnings[0]
