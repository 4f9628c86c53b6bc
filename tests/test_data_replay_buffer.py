"""Replay buffer: frames stored once, no sample across an episode boundary, MC returns equal the
agent's function on the shaped reward, ring overwrite, features, save/load, build from a store."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.data import EpisodeStore, ReplayBuffer
from agent.data.synthetic import synthetic_episode
from agent.returns import RewardShaping, mc_returns, shape_rewards, sparse_failure_return

SCALE, BIAS, DISCOUNT = 1.0, -1.0, 0.9


def spec(image_size=4):
    return {"state": ((19,), np.float32), "wrist_1": ((image_size, image_size, 3), np.uint8)}


SHAPING = RewardShaping(scale=SCALE, bias=BIAS, discount=DISCOUNT, sparse=True)


def make_buffer(capacity, shaping=SHAPING, **kwargs):
    return ReplayBuffer(spec(), 6, capacity, shaping=shaping, **kwargs)


def expected_returns(episode, sparse=True):
    shaped = shape_rewards(episode.rewards, SCALE, BIAS)
    failed = sparse and not episode.success
    return mc_returns(shaped, episode.terminated, DISCOUNT,
                      sparse_failure_return(SCALE, BIAS, DISCOUNT) if failed else None)


def add(buffer, episode, stepwise):
    if not stepwise:
        buffer.add_episode_record(episode)
        return
    obs = episode.observations
    for t in range(len(episode)):
        buffer.insert({k: v[t] for k, v in obs.items()}, episode.actions[t], episode.rewards[t],
                      {k: v[t + 1] for k, v in obs.items()}, episode.terminated[t],
                      episode.truncated[t], episode.intervened[t])


def check_every_valid_transition(buffer, episodes):
    batch = buffer.all_transitions()
    ep = batch["observations"]["state"][:, 0].astype(int)
    step = batch["observations"]["state"][:, 1].astype(int)
    np.testing.assert_array_equal(batch["next_observations"]["state"][:, 0], ep)
    np.testing.assert_array_equal(batch["next_observations"]["state"][:, 1], step + 1)
    for i in range(len(ep)):
        episode = episodes[ep[i]]
        t = step[i]
        assert t < len(episode)
        np.testing.assert_array_equal(batch["observations"]["wrist_1"][i], episode.observations["wrist_1"][t])
        np.testing.assert_array_equal(batch["next_observations"]["wrist_1"][i], episode.observations["wrist_1"][t + 1])
        np.testing.assert_array_equal(batch["actions"][i], episode.actions[t])
        assert batch["mc_returns"][i] == pytest.approx(expected_returns(episode)[t], abs=1e-5)
        assert batch["masks"][i] == (0.0 if episode.terminated[t] else 1.0)
        assert batch["rewards"][i] == pytest.approx(SCALE * episode.rewards[t] + BIAS)
    return ep, step


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=12),
    successes=st.lists(st.booleans(), min_size=12, max_size=12),
    stepwise=st.lists(st.booleans(), min_size=12, max_size=12),
    capacity=st.integers(10, 40),
    seed=st.integers(0, 2**16),
)
def test_never_samples_across_boundaries_and_returns_match(lengths, successes, stepwise, capacity, seed):
    rng = np.random.default_rng(seed)
    episodes = [synthetic_episode(rng, n, cameras=("wrist_1",), image_size=4, success=successes[i],
                                  episode_index=i) for i, n in enumerate(lengths)]
    buffer = make_buffer(capacity)
    for i, episode in enumerate(episodes):
        add(buffer, episode, stepwise[i])
    ep, step = check_every_valid_transition(buffer, episodes)
    # Completeness: the newest episodes that still fit whole in the ring are fully sampleable.
    room = capacity
    for i in range(len(episodes) - 1, -1, -1):
        room -= len(episodes[i]) + 1
        if room < 0:
            break
        assert np.count_nonzero(ep == i) == len(episodes[i])
    # Random batches only ever contain valid transitions.
    batch = buffer.sample(64, np.random.default_rng(seed))
    np.testing.assert_array_equal(batch["next_observations"]["state"][:, 1],
                                  batch["observations"]["state"][:, 1] + 1)
    np.testing.assert_array_equal(batch["next_observations"]["state"][:, 0],
                                  batch["observations"]["state"][:, 0])


def test_open_episode_is_not_sampled_until_complete():
    rng = np.random.default_rng(0)
    first, second = (synthetic_episode(rng, 5, cameras=("wrist_1",), image_size=4, episode_index=i)
                     for i in range(2))
    buffer = make_buffer(50)
    add(buffer, first, stepwise=True)
    obs = second.observations
    for t in range(3):
        buffer.insert({k: v[t] for k, v in obs.items()}, second.actions[t], 0.0,
                      {k: v[t + 1] for k, v in obs.items()}, False, False)
    assert buffer.open_steps() == 3 and buffer.num_transitions == 5
    batch = buffer.sample(200, rng)
    assert set(batch["observations"]["state"][:, 0].astype(int)) == {0}


def test_discontinuity_closes_the_open_episode_as_truncated():
    rng = np.random.default_rng(0)
    a, b = (synthetic_episode(rng, 4, cameras=("wrist_1",), image_size=4, episode_index=i) for i in range(2))
    buffer = make_buffer(50)
    for episode, steps in ((a, 2), (b, 4)):  # a is cut after 2 steps (e.g. the actor restarted)
        obs = episode.observations
        for t in range(steps):
            buffer.insert({k: v[t] for k, v in obs.items()}, episode.actions[t], episode.rewards[t],
                          {k: v[t + 1] for k, v in obs.items()}, episode.terminated[t], episode.truncated[t])
    batch = buffer.all_transitions()
    assert batch["observations"]["state"][:, 0].tolist() == [0, 0, 1, 1, 1, 1]
    assert batch["truncated"].tolist()[:2] == [False, True]


def test_mc_returns_use_the_shaped_reward_not_the_raw_one():
    rng = np.random.default_rng(0)
    episode = synthetic_episode(rng, 10, cameras=("wrist_1",), image_size=4, success=True)
    buffer = make_buffer(20, RewardShaping(scale=1.0, bias=-1.0, discount=0.9, sparse=True))
    buffer.add_episode_record(episode)
    got = buffer.all_transitions()["mc_returns"]
    np.testing.assert_allclose(got, [-(1 - 0.9 ** (9 - t)) / (1 - 0.9) for t in range(10)], rtol=1e-5)
    # A failed sparse episode gets r'_neg / (1 - discount) everywhere.
    buffer.add_episode_record(synthetic_episode(rng, 4, cameras=("wrist_1",), image_size=4, success=False))
    np.testing.assert_allclose(buffer.all_transitions()["mc_returns"][10:], -10.0, rtol=1e-6)


def test_frames_stored_once_per_step():
    buffer = ReplayBuffer({"state": ((19,), np.float32), "wrist_1": ((128, 128, 3), np.uint8),
                           "wrist_2": ((128, 128, 3), np.uint8)}, 6, 1010, shaping=SHAPING)
    rng = np.random.default_rng(0)
    for i in range(10):
        buffer.add_episode_record(synthetic_episode(rng, 100, image_size=128, success=False, episode_index=i))
    per_transition = buffer.nbytes / buffer.num_transitions
    assert buffer.num_transitions == 1000
    assert per_transition <= 1.05 * 2 * 128 * 128 * 3


def test_ring_overwrite_keeps_later_returns_and_drops_broken_transitions():
    rng = np.random.default_rng(3)
    episodes = [synthetic_episode(rng, 6, cameras=("wrist_1",), image_size=4, success=True, episode_index=i)
                for i in range(3)]
    buffer = make_buffer(16)
    for episode in episodes:
        buffer.add_episode_record(episode)
    # Episode 0 took slots 0-6, 1 took 7-13, 2 wrapped: 14, 15, 0..4 -> episode 0 keeps slots 5, 6
    # (its last observation pair: transition 5 -> 6 intact, transition 4 -> 5 lost its start).
    ep, step = check_every_valid_transition(buffer, episodes)
    assert sorted(zip(ep.tolist(), step.tolist(), strict=True))[:1] == [(0, 5)]
    assert np.count_nonzero(ep == 0) == 1 and np.count_nonzero(ep == 2) == 6


def test_episode_longer_than_capacity_is_refused():
    buffer = make_buffer(5)
    with pytest.raises(ValueError, match="capacity"):
        buffer.add_episode_record(synthetic_episode(np.random.default_rng(0), 5, cameras=("wrist_1",), image_size=4))


def test_feature_cache_is_filled_once_per_frame_and_sampled():
    calls = []

    def encode(frames):
        calls.append(len(frames))
        # A feature map per frame (as a frozen backbone's pre-pooling output), not just a vector.
        return frames.reshape(len(frames), 2, 2, 12).astype(np.float16) + 0.5

    rng = np.random.default_rng(0)
    episodes = [synthetic_episode(rng, 7, cameras=("wrist_1",), image_size=4, episode_index=i) for i in range(3)]
    buffer = make_buffer(100, feature_fn=encode)
    for episode in episodes:
        buffer.add_episode_record(episode)
    assert sum(calls) == 3 * 8  # each stored frame encoded exactly once
    batch = buffer.sample(32, rng, frames=False)
    assert "wrist_1" not in batch["observations"] and "wrist_1_features" in batch["observations"]
    ep = batch["observations"]["state"][:, 0].astype(int)
    step = batch["observations"]["state"][:, 1].astype(int)
    for i in range(32):
        frame = episodes[ep[i]].observations["wrist_1"]
        np.testing.assert_array_equal(batch["observations"]["wrist_1_features"][i], encode(frame[step[i]][None])[0])
        np.testing.assert_array_equal(batch["next_observations"]["wrist_1_features"][i],
                                      encode(frame[step[i] + 1][None])[0])


def test_cached_features_are_stored_as_float16_and_an_overflow_is_refused():
    rng = np.random.default_rng(0)
    episode = synthetic_episode(rng, 5, cameras=("wrist_1",), image_size=4)
    buffer = make_buffer(20, feature_fn=lambda frames: frames.reshape(len(frames), 2, 2, 12) / 7.0)
    buffer.add_episode_record(episode)
    stored = buffer.sample(4, rng, frames=False)["observations"]["wrist_1_features"]
    assert stored.dtype == np.float16 and stored.shape == (4, 2, 2, 12)
    wide = make_buffer(20, feature_fn=lambda frames: np.full((len(frames), 4), 1e6, np.float32))
    with pytest.raises(ValueError, match="beyond float16's range"):
        wide.add_episode_record(episode)
    exact = make_buffer(20, feature_fn=lambda frames: np.full((len(frames), 4), 1e6, np.float32),
                        feature_dtype=np.float32)
    exact.add_episode_record(episode)
    assert exact.sample(2, rng, frames=False)["observations"]["wrist_1_features"].dtype == np.float32


def test_save_load_and_build_from_store(tmp_path):
    rng = np.random.default_rng(0)
    store = EpisodeStore(tmp_path / "eps", create=True)
    episodes = [synthetic_episode(rng, n, cameras=("wrist_1",), image_size=4, episode_index=i)
                for i, n in enumerate([3, 8, 5])]
    for episode in episodes:
        store.write(episode)
    buffer = ReplayBuffer.from_store(tmp_path / "eps", 30, shaping=SHAPING)
    check_every_valid_transition(buffer, episodes)
    buffer.save(tmp_path / "buffer.npz")
    restored = ReplayBuffer.load(tmp_path / "buffer.npz", shaping=SHAPING)
    with pytest.raises(ValueError, match="reward shaping"):
        ReplayBuffer.load(tmp_path / "buffer.npz", shaping=RewardShaping(scale=SCALE, bias=0.0, discount=DISCOUNT,
                                                                         sparse=True))
    a, b = buffer.all_transitions(), restored.all_transitions()
    for key in ("actions", "rewards", "mc_returns", "masks", "indices"):
        np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(a["observations"]["wrist_1"], b["observations"]["wrist_1"])
    # Adding after a reload continues the ring where it stopped.
    extra = synthetic_episode(rng, 4, cameras=("wrist_1",), image_size=4, episode_index=3)
    restored.add_episode_record(extra)
    ep, _ = check_every_valid_transition(restored, [*episodes, extra])
    assert np.count_nonzero(ep == 3) == 4 and restored.num_episodes_added == 4
