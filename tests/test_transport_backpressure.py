"""Bounded memory and no storms: the learner's receive queue pushes back on its actors (nothing
lost, nothing stored twice), open episodes are bounded, an over-long episode is refused with a
clear message, a dead transport stops the learner, and a starved learner does not set off a
HELLO / resend storm."""

import multiprocessing as mp
import time

import numpy as np
import pytest
from test_learner import chunk as learner_chunk
from test_learner import close_learners, deliver, make_learner  # noqa: F401  (an autouse fixture)
from test_learner import config as learner_config
from transport_peers import StallingRelay, cfg, client, server, thread_stack, wait_for  # noqa: E402

from agent.transport import TransportError
from agent.transport.fuzzing import valid_chunk
from agent.transport.protocol import MessageType, decode


def store_in_order(srv, stored: dict, timeout=0.05) -> int:
    """A learner: store sequence stored_through + 1 only; return how many it took."""
    taken = 0
    for delivery in srv.receive(timeout=timeout):
        mark = stored.setdefault(delivery.stream, [])
        if delivery.sequence == len(mark) + 1:
            mark.append(delivery.sequence)
            taken += 1
        srv.ack(delivery.stream, stored_through=len(mark), resend=delivery.sequence > len(mark) + 1)
    return taken


def store_and_count(srv, stored: dict) -> int:
    """Store what is waiting, in order; return how many chunks are stored in all."""
    store_in_order(srv, stored)
    return sum(map(len, stored.values()))


def test_a_full_receive_queue_pushes_back_and_nothing_is_lost_or_doubled():
    c = cfg(max_queued_messages=3)
    with server(c) as srv, client(c) as cli:
        assert wait_for(lambda: cli.state == "up")
        rng = np.random.default_rng(0)
        for _ in range(20):
            cli.send(valid_chunk(rng))
        assert wait_for(lambda: srv.stats()["deferred_busy"] > 0)
        time.sleep(0.3)  # the learner is busy elsewhere: the queue stays at its bound
        assert srv.stats()["queued_messages"] <= 3 and cli.busy_pauses > 0
        stored: dict = {}
        assert wait_for(lambda: store_and_count(srv, stored) == 20)
        assert list(stored.values()) == [list(range(1, 21))]
        assert wait_for(cli.all_stored)
        assert srv.stats()["queued_messages"] == 0 and srv.stats()["queued_bytes"] == 0


def test_a_lost_last_chunk_is_retransmitted_after_the_timeout():
    """A message lost on the wire with nothing sent after it (the actor's last chunk before it
    stops, or a REJECT dropped by a full ROUTER queue) leaves no gap for the learner to see: the
    actor's retransmission timer must send it again, or the actor waits for it forever."""
    c = cfg(heartbeat_interval_s=0.05, heartbeat_timeout_s=0.4)
    with server(c) as srv, client(c) as cli:
        assert wait_for(lambda: cli.state == "up")
        rng = np.random.default_rng(0)
        stored: dict = {}
        for _ in range(3):
            cli.send(valid_chunk(rng))
        assert wait_for(lambda: store_and_count(srv, stored) == 3)
        original, dropped = cli._try_send, []

        def lossy(dealer, frames):  # the first transmission of chunk 4 vanishes
            message = decode(frames)
            if not dropped and message.type == MessageType.TRANSITIONS and message.sequence == 4:
                dropped.append(4)
                return True
            return original(dealer, frames)

        cli._try_send = lossy
        cli.send(valid_chunk(rng))
        assert wait_for(lambda: store_and_count(srv, stored) == 4,
                        timeout=10.0)
        assert dropped == [4] and cli.retransmission_timeouts >= 1
        assert list(stored.values()) == [[1, 2, 3, 4]]
        assert wait_for(cli.all_stored)


def test_a_full_queue_costs_no_flood_of_duplicates_or_acks():
    """A backlog meeting a full receive queue: the actor resends from where the learner's queue
    ended (not from what it stored), and each run of duplicates or each gap costs one ACK, so the
    learner's replies cannot crowd out its parameters. The old behaviour (resend everything after
    `stored_through` on every pause, an ACK per duplicate) sent hundreds of duplicates here."""
    c = cfg(max_queued_messages=4, heartbeat_interval_s=0.05, heartbeat_timeout_s=1.0)
    with server(c) as srv, client(c) as cli:
        assert wait_for(lambda: cli.state == "up")
        rng = np.random.default_rng(0)
        for _ in range(60):
            cli.send(valid_chunk(rng))
        assert wait_for(lambda: srv.stats()["deferred_busy"] > 0)
        stored: dict = {}
        deadline = time.monotonic() + 30
        while sum(map(len, stored.values())) < 60 and time.monotonic() < deadline:
            store_in_order(srv, stored, timeout=0.02)
            time.sleep(0.02)  # a slow learner: the queue keeps filling up
        assert list(stored.values()) == [list(range(1, 61))]
        assert wait_for(cli.all_stored)
        stats = srv.stats()
        assert stats["duplicates_dropped"] <= 60, stats
        assert cli.resends <= 2 * 60, cli.resends


# ----------------------------------------------------------------------------------- learner store


def test_an_episode_longer_than_the_buffer_is_refused_with_a_clear_message(tmp_path):
    learner = make_learner(learner_config(tmp_path, "learner.buffer_capacity=8", "task.max_episode_steps=7"))
    try:
        assert deliver(learner, "a0/x", 1, learner_chunk(0, 0, 4))
        assert not deliver(learner, "a0/x", 2, learner_chunk(0, 4, 4))  # 8 steps need 9 slots: no exception
        assert learner.books["a0/x"].refused and "learner.buffer_capacity" in learner.books["a0/x"].refused
        assert learner.server.rejected_by_reason() == {"episode_too_long": 1}
        assert learner.buffer.open_steps("a0/x") == 0  # the open part was dropped, not kept growing
        assert not deliver(learner, "a0/x", 2, learner_chunk(0, 4, 1, end=True))  # refused for good
        assert deliver(learner, "a1/y", 1, learner_chunk(0, 0, 3, end=True))  # other actors go on
    finally:
        learner.server.close()


def test_open_episodes_are_bounded_and_an_evicted_one_is_resent(tmp_path):
    learner = make_learner(learner_config(tmp_path, "transport.max_open_episodes=2"))
    try:
        for i, stream in enumerate(["a0/x", "a1/y", "a2/z"]):
            assert deliver(learner, stream, 1, learner_chunk(i, 0, 3))
            time.sleep(0.01)
        assert sum(learner.buffer.open_steps(s) for s in ("a0/x", "a1/y", "a2/z")) == 6
        assert learner.buffer.open_steps("a0/x") == 0 and learner.counters.evicted == 1
        assert learner.books["a0/x"].stored_through == 0  # so its actor resends chunk 1
        assert learner.server.watermarks()["a0/x"].stored_through == 0
        assert deliver(learner, "a0/x", 1, learner_chunk(0, 0, 3))  # the resend is stored
    finally:
        learner.server.close()


def test_the_learner_stops_loudly_when_its_transport_thread_dies(tmp_path, monkeypatch):
    learner = make_learner(learner_config(tmp_path, "agent.online.warmup_steps=1000000"))

    def broken(*args):
        raise RuntimeError("poller exploded")

    monkeypatch.setattr(learner.server, "_serve_once", broken)
    started = time.monotonic()
    with pytest.raises(TransportError, match="thread stopped"):
        learner.run()
    assert time.monotonic() - started < 60


# ----------------------------------------------------------------------------------- storms


def _hog(seconds: float) -> None:
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        x += 1


def test_a_starved_learner_gets_no_hello_or_resend_storm():
    """The learner's thread stalls for 3 s (longer than the heartbeat timeout) while two CPU hogs
    keep both cores busy. The actor goes down and knocks with HELLO: with back-off a handful of
    times, not every interval; once the learner answers, only one WELCOME triggers a resend, and
    every chunk is stored exactly once.

    Before the actor replaced connections whose HELLOs go unanswered (`reopen_after_s`), 2 of 7
    full-suite runs saw the learner answer the queued HELLOs while the actor stayed down for 10 s;
    the cause on that connection was not found. Should it happen again, the failure message names
    the HELLOs, handshakes, new connections and where both threads are."""
    c = cfg(heartbeat_interval_s=0.05, heartbeat_timeout_s=0.5, reconnect_max_s=2.0)
    hogs = [mp.get_context("spawn").Process(target=_hog, args=(8.0,), daemon=True) for _ in range(2)]
    for hog in hogs:
        hog.start()
    try:
        with server(c) as srv, client(c) as cli:
            assert wait_for(lambda: cli.state == "up")
            rng = np.random.default_rng(0)
            stored: dict = {}
            for _ in range(5):
                cli.send(valid_chunk(rng))
            assert wait_for(lambda: store_and_count(srv, stored) == 5)
            resends_before = cli.resends  # a starved start can already cost one re-handshake's resend
            original = srv._serve_once
            stall_until = time.monotonic() + 3.0

            def starved(*args):
                if time.monotonic() < stall_until:
                    time.sleep(stall_until - time.monotonic())
                return original(*args)

            srv._serve_once = starved
            srv._wake()
            for _ in range(10):  # produced while the learner is starved
                cli.send(valid_chunk(rng))
            assert wait_for(lambda: cli.state == "down", timeout=3.0)
            hellos_before = cli.hellos_sent
            assert wait_for(lambda: cli.state == "up", timeout=10.0), (
                f"still {cli.state}: {cli.hellos_sent - hellos_before} HELLOs sent since down, "
                f"{srv.stats()['handshakes']} handshakes, {cli.socket_reopens} new connections, last word from "
                f"the learner {time.monotonic() - cli._last_heard:.1f} s ago; now at\n"
                f"{thread_stack(cli._thread)}{thread_stack(srv._thread)}")
            time.sleep(0.5)  # every queued HELLO has been answered before the learner stores anything
            hellos = cli.hellos_sent - hellos_before
            assert hellos <= 8, f"{hellos} HELLOs during a 3 s stall (interval 0.05 s)"
            assert srv.stats()["handshakes"] <= 1 + 8
            assert wait_for(lambda: store_and_count(srv, stored) == 15,
                            timeout=15.0)
            assert wait_for(lambda: cli.state == "up" and cli.all_stored())
            resends = cli.resends - resends_before
            assert resends <= 12, f"{resends} chunks resent for 10 unstored"
            assert list(stored.values()) == [list(range(1, 16))]  # each once, in order
    finally:
        for hog in hogs:
            hog.terminate()
            hog.join()


def test_a_connection_that_carries_nothing_is_replaced():
    """The TCP connection stays open but stops carrying messages (a stalled relay): ZeroMQ sees
    nothing wrong, so without help the actor would knock into it forever. Once its HELLOs have gone
    unanswered for `reopen_after_s` it opens a new connection, and every chunk is stored once."""
    c = cfg(heartbeat_interval_s=0.05, heartbeat_timeout_s=0.3, reconnect_max_s=0.4)
    with server(c) as srv, StallingRelay(c.port) as relay, \
            client(c, endpoint=f"tcp://127.0.0.1:{relay.port}") as cli:
        assert wait_for(lambda: cli.state == "up")
        rng, stored = np.random.default_rng(0), {}
        for number in range(6):
            if number == 3:
                assert wait_for(lambda: store_and_count(srv, stored) == 3)
                relay.stall()
            cli.send(valid_chunk(rng))
        assert wait_for(lambda: cli.state == "down", timeout=5.0)
        assert wait_for(lambda: cli.state == "up", timeout=15.0)
        assert cli.socket_reopens >= 1 and relay.connections >= 2
        assert wait_for(lambda: store_and_count(srv, stored) == 6)
        assert wait_for(lambda: cli.all_stored())
        assert list(stored.values()) == [[1, 2, 3, 4, 5, 6]]


def test_a_burst_of_hello_required_sends_one_hello():
    """A learner restarted on the same port answers every message of the not-yet-aware actor with
    REJECT hello_required: the actor handshakes once, not once per refusal."""
    c = cfg(heartbeat_interval_s=4.0, heartbeat_timeout_s=10.0, reconnect_max_s=4.0)
    first = server(c)
    rng = np.random.default_rng(0)
    with client(c) as cli:
        try:
            assert wait_for(lambda: cli.state == "up")
        finally:
            first.close()
        # Recorded while no learner listens: the actor holds them (its socket sends only over a
        # live connection), so the reconnect releases all of them in one burst. Sent after the
        # reconnect instead, a loaded machine lets the first REJECT in between and no burst happens.
        time.sleep(0.5)
        for _ in range(30):
            cli.send(valid_chunk(rng))
        assert cli.unacked_transitions == 30 and cli.state == "up"
        hellos_before = cli.hellos_sent
        with server(c) as second:
            stored: dict = {}
            assert wait_for(lambda: (store_in_order(second, stored), sum(map(len, stored.values())))[1] == 30,
                            timeout=20.0)
            assert cli.state == "up"  # the link never timed out: only the refusals told the actor
            assert second.stats().get("rejected/order", 0) >= 5, second.stats()  # the burst happened
            assert cli.hellos_sent - hellos_before <= 2 and second.stats()["handshakes"] <= 2, second.stats()
            assert list(stored.values()) == [list(range(1, 31))]


def test_a_restarted_actor_speaks_for_its_earlier_incarnation_only_where_the_learner_knew_it():
    """A recovery HELLO is welcomed beside the actor's live stream when the learner's registry
    lists the stream, its chunks are stored exactly once (what the learner held is dropped as
    duplicates); an unknown stream or one still connected is refused, and the live one is untouched."""
    c = cfg(heartbeat_interval_s=0.05, heartbeat_timeout_s=0.5)
    registered: list[str] = []
    with server(c, known_streams={"a0/old"}, on_new_stream=registered.append) as srv:
        with client(c) as live:
            assert wait_for(lambda: live.state == "up")
            assert registered == [f"a0/{live.incarnation}"]  # recorded before the WELCOME
            srv.ack("a0/old", stored_through=2)  # the learner already holds chunks 1-2 of the old stream
            rng = np.random.default_rng(0)
            with client(c, incarnation="old", recovery=True) as old:
                assert wait_for(lambda: old.state == "up") and old.stored_through == 2
                old.preload(1, [valid_chunk(rng) for _ in range(4)])
                stored: dict = {"a0/old": [1, 2]}
                assert wait_for(lambda: (store_in_order(srv, stored), len(stored["a0/old"]))[1] == 4)
                assert stored["a0/old"] == [1, 2, 3, 4] and wait_for(old.all_stored)
                with client(c, incarnation=live.incarnation, recovery=True) as impostor:
                    assert wait_for(lambda: impostor.state == "refused")
                    assert "still connected" in impostor.refusal
            with client(c, incarnation="never-seen", recovery=True) as unknown:
                assert wait_for(lambda: unknown.state == "refused") and "never welcomed" in unknown.refusal
            live.send(valid_chunk(rng))
            assert wait_for(lambda: (store_in_order(srv, stored), len(stored.get(f"a0/{live.incarnation}", [])))[1]
                            == 1)
            assert live.state == "up"
