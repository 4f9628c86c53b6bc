"""Learner bookkeeping in-process: exactly-once storage, checkpoint + resume, the warm-up gate,
offline mixing, the NaN guard (more in tests/test_faults.py), and which parameters travel to the
actors."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agent.core import act, create_agent
from agent.data.episodes import EpisodeRecorder, EpisodeStore, make_metadata
from agent.learner import LearnerError
from agent.param_sync import (
    apply_acting_params,
    backbone_digest,
    export_acting_params,
    trainable_acting_params,
)
from agent.sac import learner_step
from agent.transport.protocol import TransitionChunk
from agent.transport.server import Delivery
from franka_rl.assemble import build_env, build_learner, example_observation, observation_spec
from franka_rl.config import load_config

STATE_DIM, ACTION_DIM = 19, 6


def config(tmp_path, *extra):
    return load_config(None, [
        "env.cameras=[]", f"output_dir={tmp_path}", "learner.tensorboard=false", "agent.online.warmup_steps=6",
        "agent.network.critic_hidden_dims=[32,32]", "agent.network.actor_hidden_dims=[32,32]",
        "agent.network.num_critics=2", "agent.encoder.proprio_dim=0", "agent.sac.batch_size=8", "agent.sac.utd=2",
        *extra])


_OPEN_LEARNERS: list = []


@pytest.fixture(autouse=True)
def close_learners():
    """A failed assertion must not leave a learner's transport threads running (pytest would
    hang at exit instead of reporting the failure)."""
    yield
    while _OPEN_LEARNERS:
        _OPEN_LEARNERS.pop().server.close()


def make_learner(cfg, **kw):
    kw.setdefault("report", lambda message: None)
    learner = build_learner(cfg, **kw)
    _OPEN_LEARNERS.append(learner)
    return learner


def chunk(episode, step, steps, end=False, seed=0, rewards=None, success=None):
    rng = np.random.default_rng(1000 * episode + step + seed)
    terminated = np.zeros(steps, bool)
    terminated[-1] = end
    first = {"state": rng.normal(size=STATE_DIM).astype(np.float32)} if step == 0 else None
    rewards = np.zeros(steps, np.float32) if rewards is None else np.asarray(rewards, np.float32)
    success = np.zeros(steps, bool) if success is None else np.asarray(success, bool)
    return TransitionChunk(episode, step, rng.uniform(-1, 1, (steps, ACTION_DIM)).astype(np.float32),
                           rewards, terminated, np.zeros(steps, bool), np.zeros(steps, bool),
                           success, {"state": rng.normal(size=(steps, STATE_DIM)).astype(np.float32)},
                           first)


def deliver(learner, stream, sequence, c):
    return learner.store(Delivery(stream, stream.split("/")[0], sequence, c))


def test_spec_from_config_matches_the_twin(tmp_path):
    import sim

    cfg = config(tmp_path, "env.cameras=[wrist_1]", "env.image_height=32", "env.image_width=32")
    spec, action_dim = observation_spec(cfg)
    env = sim.make_env(cfg)
    try:
        assert {k: (tuple(s.shape), s.dtype) for k, s in env.observation_space.spaces.items()} == spec
        assert env.action_space.shape == (action_dim,)
    finally:
        env.close()


def test_each_chunk_is_stored_once_and_a_checkpoint_resumes_the_bookkeeping(tmp_path):
    cfg = config(tmp_path)
    learner = make_learner(cfg)
    stream = "a0/x"
    assert deliver(learner, stream, 1, chunk(0, 0, 3))
    assert not deliver(learner, stream, 1, chunk(0, 0, 3))  # duplicate of a resend
    assert not deliver(learner, stream, 3, chunk(0, 5, 2))  # gap: asks for a resend
    assert deliver(learner, stream, 2, chunk(0, 3, 2, end=True))
    assert deliver(learner, stream, 3, chunk(1, 0, 4))  # episode 1 still open
    book = learner.books[stream]
    assert (book.stored_through, book.committed_through, book.transitions_stored) == (3, 2, 9)
    assert learner.counters.duplicates == 1 and learner.counters.gaps == 1
    assert learner.buffer.num_transitions == 5 and learner.warmup_done
    learner.checkpoint()
    learner.server.close()

    # The restarted learner holds what the checkpoint holds: the completed episode only, so the
    # actor resends from chunk 3, which starts episode 1 again.
    resumed = make_learner(cfg)
    book = resumed.books[stream]
    assert (book.stored_through, book.committed_through, book.transitions_stored) == (2, 2, 5)
    assert resumed.buffer.num_transitions == 5
    assert resumed.server.watermarks()[stream].stored_through == 2
    assert deliver(resumed, stream, 3, chunk(1, 0, 4))
    assert deliver(resumed, stream, 4, chunk(1, 4, 1, end=True))
    assert resumed.online_transitions == 10 and resumed.buffer.num_transitions == 10
    # An actor that no longer holds chunks 1..7 (an earlier learner checkpointed them) moves the
    # stream past them; its next episode is stored.
    assert not resumed.store(Delivery("a1/y", "a1", 7, None))
    assert resumed.books["a1/y"].stored_through == 7 and resumed.counters.skipped == 7
    assert deliver(resumed, "a1/y", 8, chunk(0, 0, 2, end=True))
    resumed.server.close()


def test_warmup_gate_then_updates_publish_finite_params(tmp_path):
    learner = make_learner(config(tmp_path))
    assert deliver(learner, "a0/x", 1, chunk(0, 0, 5, end=True))
    assert not learner.warmup_done and not learner.can_update()
    assert deliver(learner, "a0/x", 2, chunk(1, 0, 1, end=True))
    assert learner.warmup_done and learner.can_update()
    learner.compile_update()  # what run() does during the warm-up
    compiled = learner_step._cache_size()
    before = export_acting_params(learner.agent)
    metrics = learner.update()
    assert learner_step._cache_size() == compiled  # the real batches hit the compiled step
    assert np.isfinite(metrics["critic_loss"])
    after = export_acting_params(learner.agent)
    assert any(not np.array_equal(before[k], after[k]) for k in before if k.startswith("actor/"))
    learner.publish()
    assert learner.counters.params_version == 1

    poisoned = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), learner.agent.actor.params)
    learner.agent = learner.agent.replace(actor=learner.agent.actor.replace(params=poisoned))
    with pytest.raises(LearnerError, match="not finite"):
        learner.publish()
    # A step from a poisoned state is skipped, not kept (tests/test_faults.py covers the rest).
    assert learner.update() is None and learner.counters.skipped_nonfinite == 1
    learner.server.close()


def test_prefetched_batches_are_the_ones_the_next_step_would_have_sampled(tmp_path):
    """learner.prefetch samples step k+1's batches while step k computes: same batches in the
    same order as sampling after each step (same parameters), placed on the device ahead."""
    learners = {on: make_learner(config(tmp_path / str(on), f"learner.prefetch={str(on).lower()}"))
                for on in (True, False)}
    for learner in learners.values():
        deliver(learner, "a0/x", 1, chunk(0, 0, 5, end=True))
        deliver(learner, "a0/x", 2, chunk(1, 0, 4, end=True))
        learner.agent = learners[True].agent  # same start
    fetched = {on: 0 for on in learners}
    for on, learner in learners.items():
        sample = learner._sample_batches

        def counting(sample=sample, on=on):
            fetched[on] += 1
            return sample()
        learner._sample_batches = counting
        for _ in range(3):
            assert learner.update() is not None
    assert fetched == {True: 4, False: 3}  # one batch ahead
    prefetched = learners[True]._prefetched
    assert prefetched is not None and all(isinstance(x, jax.Array) for x in jax.tree.leaves(prefetched))
    assert learners[False]._prefetched is None
    a, b = (export_acting_params(learners[on].agent) for on in (True, False))
    assert all(np.array_equal(a[k], b[k]) for k in a)

    # A skipped (non-finite) step drops the batch fetched with it: it may hold the poison.
    learner = learners[True]
    poisoned = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), learner.agent.actor.params)
    learner.agent = learner.agent.replace(actor=learner.agent.actor.replace(params=poisoned))
    assert learner.update() is None and learner._prefetched is None


@pytest.mark.parametrize("data_format", ["episodes", "lerobot"])
def test_offline_data_is_mixed_into_each_batch(tmp_path, data_format):
    store = EpisodeStore(tmp_path / "demos", create=True)
    rng = np.random.default_rng(0)
    for _ in range(2):
        recorder = EpisodeRecorder(store)
        recorder.start({"state": np.zeros(STATE_DIM, np.float32)}, make_metadata(task="peg_insertion", source="teleop"))
        for step in range(5):
            recorder.add(rng.uniform(-1, 1, ACTION_DIM), float(step == 4), {"state": np.full(STATE_DIM, 7.0, np.float32)},
                         step == 4, False)
    cfg = config(tmp_path, "agent.online.offline_ratio=0.5")
    with pytest.raises(LearnerError, match="--offline-data"):
        make_learner(cfg)
    offline = tmp_path / "demos"
    if data_format == "lerobot":  # --offline-data takes a LeRobotDataset v3 folder as it is
        from agent.data.lerobot_io import export_lerobot

        export_lerobot(store.episodes(), tmp_path / "demos_lerobot", fps=10)
        offline = tmp_path / "demos_lerobot"
    learner = make_learner(cfg, offline_dirs=[str(offline)])
    assert learner.offline.num_transitions == 10
    deliver(learner, "a0/x", 1, chunk(0, 0, 6, end=True))
    from agent.sampling import sample_batches

    batches = sample_batches(learner.buffer, learner.offline, learner.rng, 8, 2, 0.5)
    assert batches["actions"].shape == (2, 8, ACTION_DIM)
    from_offline = np.all(batches["observations"]["state"] == 0.0, axis=-1) | \
        np.all(batches["next_observations"]["state"] == 7.0, axis=-1)
    assert from_offline.sum(axis=1).tolist() == [4, 4]
    learner.update()
    learner.server.close()


def test_acting_params_travel_without_the_frozen_backbone_and_act_identically(tmp_path):
    cfg = config(tmp_path, "agent.encoder.proprio_dim=16").agent
    obs = {"state": np.linspace(-1, 1, STATE_DIM).astype(np.float32)}
    source = create_agent(cfg, obs, ACTION_DIM, seed=1)
    # A frozen backbone (a stand-in tree here) stays home: only trainable parts travel.
    source = source.replace(frozen_backbone={"conv": {"kernel": jnp.ones((3, 3))}})
    assert backbone_digest(source) and backbone_digest(source.replace(frozen_backbone={})) == ""
    # An actor's agent as it starts: other trainable parameters.
    target = source.replace(actor=source.actor.replace(params=jax.tree.map(jnp.zeros_like, source.actor.params)),
                            critic=source.critic.replace(params=jax.tree.map(jnp.zeros_like, source.critic.params)))
    arrays = export_acting_params(source)
    assert {k.split("/")[0] for k in arrays} == {"actor", "encoder"}
    assert set(trainable_acting_params(source)) == {"actor", "encoder"}
    assert not np.allclose(act(target, obs), act(source, obs))
    target = apply_acting_params(target, arrays)
    np.testing.assert_allclose(act(target, obs), act(source, obs), rtol=1e-6)
    wrong = dict(arrays)
    name = next(k for k in wrong if k.startswith("actor/"))
    wrong[name] = wrong[name][..., :1]
    with pytest.raises(ValueError, match=name):
        apply_acting_params(target, wrong)
    with pytest.raises(ValueError, match="not part of this agent"):
        apply_acting_params(target, {**arrays, "actor/extra": np.zeros(1, np.float32)})


def test_example_observation_fits_the_spec(tmp_path):
    spec, _ = observation_spec(config(tmp_path, "env.cameras=[wrist_1,wrist_2]"))
    example = example_observation(spec)
    assert example["wrist_2"].shape == (128, 128, 3) and example["wrist_2"].dtype == np.uint8


@pytest.mark.slow  # builds a ResNet-10 and compiles an update through the image heads
def test_camera_learner_caches_backbone_features_and_trains_on_them(tmp_path):
    cfg = config(tmp_path, "env.cameras=[wrist_1]", "env.image_height=32", "env.image_width=32",
                 "agent.encoder.image_head_dim=16", "agent.encoder.spatial_features=2")
    learner = make_learner(cfg)
    assert learner.feature_cache and learner.buffer.has_features
    rng = np.random.default_rng(0)
    steps = 6
    c = chunk(0, 0, steps, end=True)
    c.next_observations["wrist_1"] = rng.integers(0, 255, (steps, 32, 32, 3), dtype=np.uint8)
    c.first_observation["wrist_1"] = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    assert deliver(learner, "a0/x", 1, c)
    assert learner.buffer.sample(2, rng, frames=False)["observations"]["wrist_1_features"].dtype == np.float16
    learner.compile_update()  # with the cached features' dtype: the real batches reuse it
    compiled = learner_step._cache_size()
    assert np.isfinite(learner.update()["critic_loss"])
    assert learner_step._cache_size() == compiled
    assert not any(k.startswith("backbone") for k in export_acting_params(learner.agent))
    learner.server.close()


def test_starts_from_a_pretrained_checkpoint_in_warmup(tmp_path):
    from agent.checkpoint import save_agent

    cfg = config(tmp_path)
    spec, action_dim = observation_spec(cfg)
    pretrained = create_agent(cfg.agent, example_observation(spec), action_dim, seed=123)
    save_agent(tmp_path / "pretrain", 7, pretrained, cfg.agent)
    learner = make_learner(cfg, pretrained_dir=str(tmp_path / "pretrain"))
    for name, value in export_acting_params(pretrained).items():
        np.testing.assert_array_equal(export_acting_params(learner.agent)[name], value)
    assert learner.pretrained is not None and not learner.agent.spec.cql.enabled
    assert not learner.warmup_done
    learner.server.close()


def test_actor_env_gets_interventions_and_the_classifier_when_configured(tmp_path):
    from teleop.intervention import InterventionWrapper

    env = build_env(config(tmp_path, "actor.intervention=true", "teleop.device=none"), "actor")
    try:
        assert isinstance(env, InterventionWrapper)
        env.reset(seed=0)
        _, _, _, _, info = env.step(np.zeros(ACTION_DIM, np.float32))
        assert info["intervened"] is False and info["executed_action"].shape == (ACTION_DIM,)
    finally:
        env.close()
    from reward_classifier.saved_model import ClassifierLoadError

    with pytest.raises(ClassifierLoadError):
        build_env(config(tmp_path, "classifier.enabled=true", f"classifier.model_dir={tmp_path / 'none'}"), "actor")


def test_the_learner_buffer_computes_g_on_the_agent_shaped_reward(tmp_path):
    """G of what the learner stores is on r' = scale * r + bias with the agent's discount: a failed
    sparse episode gets r'_neg / (1 - gamma), a success the discounted sum of r' (ALGORITHMS.md)."""
    cfg = config(tmp_path, "agent.reward.scale=1.0", "agent.reward.bias=-1.0", "agent.sac.discount=0.9")
    learner = make_learner(cfg)
    assert deliver(learner, "a0/x", 1, chunk(0, 0, 3, end=True))  # rewards 0: a failure
    assert deliver(learner, "a0/x", 2, chunk(1, 0, 3, end=True, rewards=[0, 0, 1]))  # success at the end
    returns = learner.buffer.all_transitions()["mc_returns"]
    np.testing.assert_allclose(returns[:3], -1.0 / (1 - 0.9), rtol=1e-6)
    np.testing.assert_allclose(returns[3:], [-1 - 0.9, -1.0, 0.0], rtol=1e-6)
    learner.server.close()


def test_g_follows_the_reward_stream_not_the_env_success_flag(tmp_path):
    """Behind a reward classifier the actor's rewards and the env's `success` disagree. G must
    describe the rewards the critic trains on: a classifier false positive (reward 1, success
    False) is a success episode; a missed success (reward 0, success True) is a failure."""
    cfg = config(tmp_path, "agent.reward.bias=-1.0", "agent.sac.discount=0.9")
    learner = make_learner(cfg)
    false_positive = chunk(0, 0, 2, end=True, rewards=[0, 1], success=[False, False])
    missed_success = chunk(1, 0, 2, end=True, rewards=[0, 0], success=[False, True])
    assert deliver(learner, "a0/x", 1, false_positive)
    assert deliver(learner, "a0/x", 2, missed_success)
    returns = learner.buffer.all_transitions()["mc_returns"]
    np.testing.assert_allclose(returns[:2], [-1.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(returns[2:], -1.0 / (1 - 0.9), rtol=1e-6)
    learner.server.close()


def test_a_resumed_buffer_saved_under_another_reward_shaping_is_refused(tmp_path):
    cfg = config(tmp_path, "agent.reward.bias=-1.0")
    learner = make_learner(cfg)
    assert deliver(learner, "a0/x", 1, chunk(0, 0, 3, end=True))
    learner.checkpoint()
    learner.server.close()
    with pytest.raises(LearnerError, match="reward shaping"):
        make_learner(config(tmp_path, "agent.reward.bias=0.0"))


def test_a_learner_that_cannot_keep_up_says_so_once_with_rates_device_and_the_utd_reached(tmp_path):
    lines: list[str] = []
    learner = make_learner(config(tmp_path, "agent.sac.utd=2"), report=lines.append)
    assert deliver(learner, "a0/x", 1, chunk(0, 0, 5, end=True))
    assert deliver(learner, "a0/x", 2, chunk(1, 0, 5, end=True))
    assert learner.warmup_done and learner.update() is not None
    assert learner.check_pace() == ""  # opens the first window
    started, transitions, steps = learner._pace_mark
    # 30 transitions arrived over the last 31 s; the learner ran 1 step: far behind one per transition.
    learner._pace_mark = (started - 31.0, transitions - 30, steps - 1)
    text = learner.check_pace()
    assert text and text in lines and "\n" not in text
    assert "cannot keep up" in text and "transitions/s" in text and "GFLOP per step" in text
    assert f"this {jax.devices()[0].platform} device" in text and "instead of 2" in text
    assert "learner.device=gpu" in text
    learner._pace_mark = (time.monotonic() - 31.0, 0, 0)
    assert learner.check_pace() == text and lines.count(text) == 1  # said once
    assert learner.updates_per_transition() == pytest.approx(1 * 2 / (10 - 6))
    learner.server.close()


def test_a_learner_that_keeps_up_says_nothing(tmp_path):
    lines: list[str] = []
    learner = make_learner(config(tmp_path), report=lines.append)
    assert deliver(learner, "a0/x", 1, chunk(0, 0, 7, end=True))
    assert learner.check_pace() == ""
    started, transitions, steps = learner._pace_mark
    learner._pace_mark = (started - 31.0, transitions - 30, steps - 30)  # one step per transition
    assert learner.check_pace() == "" and not learner.behind
    learner.server.close()


def test_a_buffer_that_cannot_fit_in_memory_is_refused_naming_the_key_bytes_and_a_capacity_that_fits(
        tmp_path, monkeypatch):
    import agent.learner as learner_module

    cfg = config(tmp_path, "env.cameras=[wrist_1]", "env.image_height=32", "env.image_width=32",
                 "agent.encoder.image_head_dim=16", "agent.encoder.spatial_features=2",
                 "learner.buffer_capacity=100000")
    # One slot: a 32x32x3 frame, its float16 1x1x512 feature map, the state, action and flags.
    monkeypatch.setattr(learner_module, "available_memory", lambda: 100 * 2**20)
    with pytest.raises(LearnerError) as refused:
        make_learner(cfg)
    text = str(refused.value)
    assert "learner.buffer_capacity=100000 needs" in text and "GiB once full" in text and "100 MiB" not in text
    assert "with the feature cache" in text and "0.1 GiB available" in text and "\n" not in text
    fits = int(text.rsplit("learner.buffer_capacity <= ", 1)[1].split()[0])
    per_slot = int(text.split("(", 1)[1].split()[0])
    assert 3072 + 1024 < per_slot < 3072 + 1024 + 200 and fits == int(0.8 * 100 * 2**20 // per_slot)
    lines: list[str] = []
    monkeypatch.setattr(learner_module, "available_memory", lambda: int(per_slot * 100000 / 0.9))
    learner = make_learner(cfg, report=lines.append)  # 90 % of what is available: a warning
    assert any(line.startswith("warning: learner.buffer_capacity=100000 needs") for line in lines)
    learner.server.close()


def test_resume_restores_cached_features_from_the_snapshot_and_re_encodes_only_for_another_backbone(
        tmp_path, monkeypatch):
    import agent.learner as learner_module

    cfg = config(tmp_path, "env.cameras=[wrist_1]", "env.image_height=32", "env.image_width=32",
                 "agent.encoder.image_head_dim=16", "agent.encoder.spatial_features=2")
    learner = make_learner(cfg)
    rng = np.random.default_rng(0)
    c = chunk(0, 0, 6, end=True)
    c.next_observations["wrist_1"] = rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    c.first_observation["wrist_1"] = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    assert deliver(learner, "a0/x", 1, c)
    assert learner.checkpoint() == 1
    cached = learner.buffer.batch(np.arange(6), frames=False)["observations"]["wrist_1_features"]
    learner.server.close()

    encoded: list[int] = []
    import agent.core as core_module

    real_encode = core_module.agent_encode_frames
    monkeypatch.setattr(core_module, "agent_encode_frames",
                        lambda agent, frames: encoded.append(len(frames)) or real_encode(agent, frames))
    lines: list[str] = []
    resumed = make_learner(cfg, report=lines.append)
    frames_encoded_for_the_probe = sum(encoded)  # the memory check and nothing else: one frame
    assert frames_encoded_for_the_probe <= 1 and resumed.buffer.features_restored
    assert any("no frame encoded" in line for line in lines)
    restored = resumed.buffer.batch(np.arange(6), frames=False)["observations"]["wrist_1_features"]
    np.testing.assert_array_equal(restored, cached)
    resumed.server.close()

    encoded.clear()
    monkeypatch.setattr(learner_module, "backbone_digest", lambda agent: "another-backbone")
    lines.clear()
    again = make_learner(cfg, report=lines.append)
    assert not again.buffer.features_restored and sum(encoded) >= 7  # every stored frame again
    assert any("encoding the frames of checkpoint 1" in line for line in lines)
    np.testing.assert_allclose(again.buffer.batch(np.arange(6), frames=False)["observations"]["wrist_1_features"],
                               cached, rtol=1e-3, atol=1e-3)
    again.server.close()
