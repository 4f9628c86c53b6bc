"""Reward shaping, Monte-Carlo returns and episode splitting (ALGORITHMS.md, "Rewards")."""

import numpy as np
import pytest

from agent.returns import (
    episode_mc_returns,
    mc_returns,
    observation_discontinuity,
    shape_rewards,
    sparse_failure_return,
    split_episodes,
)

GAMMA = 0.9


def test_shape_rewards_robot_default():
    np.testing.assert_allclose(shape_rewards(np.array([0, 0, 1]), 1.0, -1.0), [-1, -1, 0])
    assert shape_rewards(np.array([0, 1]), 2.0, 0.5).dtype == np.float32
    np.testing.assert_allclose(shape_rewards(np.array([0, 1]), 2.0, 0.5), [0.5, 2.5])


def test_successful_episode_returns_on_shaped_reward():
    raw = np.array([0, 0, 0, 1])
    term = np.array([0, 0, 0, 1])
    shaped = shape_rewards(raw, 1.0, -1.0)
    g = mc_returns(shaped, term, GAMMA)
    expected = [-1 - GAMMA - GAMMA**2, -1 - GAMMA, -1, 0]
    np.testing.assert_allclose(g, expected, rtol=1e-6)
    # The pitfall: G on raw 0/1 rewards is a different (positive) number.
    g_raw = mc_returns(raw.astype(np.float32), term, GAMMA)
    assert np.all(g_raw > g)


def test_failed_sparse_episode_gets_failure_return_everywhere():
    failure = sparse_failure_return(1.0, -1.0, GAMMA)
    assert failure == pytest.approx(-10.0)
    g = mc_returns(np.full(5, -1.0), np.zeros(5), GAMMA, sparse_failure_return=failure)
    np.testing.assert_allclose(g, np.full(5, -10.0))
    with pytest.raises(ValueError):
        sparse_failure_return(1.0, -1.0, 1.0)


def test_truncated_episode_sums_to_the_end():
    # Dense task, truncated (not terminated): G stops at the last step, no bootstrap in G.
    g = mc_returns(np.array([1.0, 1.0, 1.0]), np.zeros(3), GAMMA)
    np.testing.assert_allclose(g, [1 + GAMMA + GAMMA**2, 1 + GAMMA, 1], rtol=1e-6)


def test_terminated_cuts_the_sum():
    g = mc_returns(np.array([1.0, 1.0, 5.0]), np.array([0, 1, 0]), GAMMA)
    np.testing.assert_allclose(g, [1 + GAMMA, 1, 5], rtol=1e-6)


def test_mc_returns_length_mismatch():
    with pytest.raises(ValueError, match="differ"):
        mc_returns(np.zeros(3), np.zeros(4), GAMMA)


def test_split_on_terminated_truncated_and_discontinuity():
    term = np.array([0, 1, 0, 0, 0, 0, 0, 0])
    trunc = np.array([0, 0, 0, 1, 0, 0, 0, 0])
    gap = np.array([0, 0, 0, 0, 0, 1, 0, 0])
    assert split_episodes(term, trunc) == [slice(0, 2), slice(2, 4)]
    assert split_episodes(term, trunc, gap) == [slice(0, 2), slice(2, 4), slice(4, 6)]
    assert split_episodes(term, trunc, gap, keep_incomplete=True)[-1] == slice(6, 8)
    assert split_episodes(np.zeros(0), np.zeros(0)) == []


def test_observation_discontinuity():
    obs = np.array([[0.0], [1.0], [2.0], [10.0]])
    next_obs = np.array([[1.0], [2.0], [3.0], [11.0]])
    np.testing.assert_array_equal(observation_discontinuity(next_obs, obs), [False, False, True, False])


def test_several_episodes_back_to_back_and_files_in_order():
    # Two "files" recorded in order: a success, then a failure, then a truncated success.
    file_a = dict(raw=[0, 0, 1, 0, 0], term=[0, 0, 1, 0, 0], trunc=[0, 0, 0, 0, 1])
    file_b = dict(raw=[0, 1], term=[0, 1], trunc=[0, 0])
    raw = np.concatenate([file_a["raw"], file_b["raw"]])
    term = np.concatenate([file_a["term"], file_b["term"]])
    trunc = np.concatenate([file_a["trunc"], file_b["trunc"]])
    g, valid = episode_mc_returns(raw, term, trunc, scale=1.0, bias=-1.0, discount=GAMMA, sparse=True)
    assert valid.all()
    np.testing.assert_allclose(g[:3], [-1 - GAMMA, -1, 0], rtol=1e-6)
    np.testing.assert_allclose(g[3:5], [-10, -10], rtol=1e-6)
    np.testing.assert_allclose(g[5:], [-1, 0], rtol=1e-6)
    # Loading the files in the wrong order changes G: order matters.
    raw_swapped = np.concatenate([file_b["raw"], file_a["raw"]])
    term_swapped = np.concatenate([file_b["term"], file_a["term"]])
    trunc_swapped = np.concatenate([file_b["trunc"], file_a["trunc"]])
    g_swapped, _ = episode_mc_returns(
        raw_swapped, term_swapped, trunc_swapped, scale=1.0, bias=-1.0, discount=GAMMA, sparse=True
    )
    assert not np.allclose(g_swapped, g)


def test_incomplete_tail_is_not_valid():
    g, valid = episode_mc_returns(
        np.array([0, 1, 0, 0]), np.array([0, 1, 0, 0]), np.zeros(4), scale=1.0, bias=-1.0, discount=GAMMA, sparse=True
    )
    np.testing.assert_array_equal(valid, [True, True, False, False])
    assert np.isnan(g[2:]).all()


def test_dense_task_failure_rule_not_applied():
    g, _ = episode_mc_returns(
        np.array([0.5, 0.0]), np.array([0, 0]), np.array([0, 1]), scale=1.0, bias=0.0, discount=GAMMA, sparse=False
    )
    np.testing.assert_allclose(g, [0.5, 0.0])


def test_episode_files_load_in_recorded_order_with_their_own_returns(tmp_path):
    """Files numbered past 999999 sort after 999999 (numerically, not by name), and each
    episode's G comes from its own rewards: a success, a failure, then a truncated success."""
    from agent.data import EpisodeStore, ReplayBuffer
    from agent.data.episodes import write_episode_file
    from agent.data.synthetic import synthetic_episode
    from agent.returns import RewardShaping

    rng = np.random.default_rng(0)
    recorded = [synthetic_episode(rng, 3, cameras=(), success=True, episode_index=0),
                synthetic_episode(rng, 4, cameras=(), success=False, episode_index=1),
                synthetic_episode(rng, 2, cameras=(), success=True, episode_index=2)]
    recorded[2].terminated[:] = False
    recorded[2].truncated[-1] = True  # reached the goal on the time limit's last step
    for number, episode in zip((999_999, 1_000_000, 1_000_001), recorded, strict=True):
        write_episode_file(episode, tmp_path / f"episode_{number:06d}.npz")
    assert sorted(p.name for p in tmp_path.iterdir())[0] == "episode_1000000.npz"  # name order differs

    store = EpisodeStore(tmp_path)
    assert [p.name for p in store.paths()] == ["episode_999999.npz", "episode_1000000.npz", "episode_1000001.npz"]
    buffer = ReplayBuffer.from_store(tmp_path, 64, shaping=RewardShaping(scale=1.0, bias=-1.0, discount=GAMMA,
                                                                         sparse=True))
    batch = buffer.all_transitions()
    np.testing.assert_array_equal(batch["episode_ids"], batch["observations"]["state"][:, 0])  # loaded in order
    by_episode = {e: batch["mc_returns"][batch["episode_ids"] == e] for e in range(3)}
    np.testing.assert_allclose(by_episode[0], [-1 - GAMMA, -1, 0], rtol=1e-6)
    np.testing.assert_allclose(by_episode[1], np.full(4, -1 / (1 - GAMMA)), rtol=1e-6)
    np.testing.assert_allclose(by_episode[2], [-1, 0], rtol=1e-6)
    # The stream function gives the same G over the concatenated files.
    g, valid = episode_mc_returns(
        np.concatenate([e.rewards for e in recorded]), np.concatenate([e.terminated for e in recorded]),
        np.concatenate([e.truncated for e in recorded]), scale=1.0, bias=-1.0, discount=GAMMA, sparse=True)
    assert valid.all()
    np.testing.assert_allclose(g, batch["mc_returns"], rtol=1e-6)
