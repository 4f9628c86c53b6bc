"""Off2On balanced replay building blocks: the sum tree, the union priorities (P0, ring
overwrite, running-max default) and the density-ratio network on two known Gaussians."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agent import density_ratio as dr
from agent.prioritized import SumTree, UnionPriorities, initial_online_priority, online_probability

try:
    from scipy.stats import chisquare, spearmanr
except ImportError:  # pragma: no cover - scipy is in the venv; keep a numpy fallback anyway
    chisquare = None

    def spearmanr(a, b):
        ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
        return (np.corrcoef(ra, rb)[0, 1], None)


def _chi_square_p(counts: np.ndarray, probabilities: np.ndarray) -> float:
    """p-value of observed counts against the probabilities (slots of probability 0 must be empty)."""
    assert np.all(counts[probabilities == 0] == 0), "a slot of priority 0 was drawn"
    keep = probabilities > 0
    expected = counts.sum() * probabilities[keep] / probabilities[keep].sum()
    if chisquare is not None:
        return float(chisquare(counts[keep], expected).pvalue)
    # Wilson–Hilferty normal approximation of the chi-square tail.
    stat = float(np.sum((counts[keep] - expected) ** 2 / expected))
    k = keep.sum() - 1
    z = ((stat / k) ** (1 / 3) - (1 - 2 / (9 * k))) / np.sqrt(2 / (9 * k))
    from math import erfc, sqrt
    return 0.5 * erfc(z / sqrt(2))


def _brute_force_tree(leaf_values: np.ndarray, leaves: int) -> np.ndarray:
    """The whole heap rebuilt from its leaves, level by level, pairing children as the tree does."""
    tree = np.zeros(2 * leaves)
    tree[leaves:leaves + leaf_values.size] = leaf_values
    width = leaves
    while width > 1:
        start = width
        width //= 2
        tree[width:start] = tree[start:2 * start:2] + tree[start + 1:2 * start:2]
    return tree


# --- sum tree --------------------------------------------------------------------------------------

@pytest.mark.parametrize("capacity", [1, 37, 1024, 1500])
def test_sum_tree_vectorised_update_matches_brute_force(capacity):
    rng = np.random.default_rng(capacity)
    tree = SumTree(capacity)
    assert tree.leaves >= capacity and tree.leaves & (tree.leaves - 1) == 0
    reference = np.zeros(capacity)
    for _ in range(20):
        k = int(rng.integers(1, 3 * capacity + 2))
        indices = rng.integers(0, capacity, size=k)  # with repeats
        values = rng.exponential(size=k) * (rng.random(k) > 0.2)  # some zeros
        tree.update(indices, values)
        # Repeats: the last value written for an index wins.
        for i, v in zip(indices, values, strict=True):
            reference[i] = v
        np.testing.assert_array_equal(tree.priorities(np.arange(capacity)), reference)
        np.testing.assert_array_equal(tree.tree[1:], _brute_force_tree(reference, tree.leaves)[1:])
        assert tree.total == pytest.approx(reference.sum(), rel=1e-12, abs=1e-12)
        for k_prefix in {0, capacity // 3, capacity}:
            assert tree.prefix_sum(k_prefix) == pytest.approx(reference[:k_prefix].sum(), rel=1e-12, abs=1e-12)


def test_sum_tree_rejects_bad_input():
    tree = SumTree(8)
    with pytest.raises(IndexError):
        tree.update(np.array([8]), np.array([1.0]))
    with pytest.raises(ValueError):
        tree.update(np.array([0]), np.array([-1.0]))
    with pytest.raises(ValueError):
        tree.update(np.array([0]), np.array([np.nan]))
    with pytest.raises(ValueError):
        tree.sample(4, np.random.default_rng(0))  # all zero


def test_sum_tree_frequencies_match_priorities_chi_square():
    rng = np.random.default_rng(0)
    capacity, n = 50, 200_000
    tree = SumTree(capacity)
    priorities = rng.exponential(size=capacity)
    priorities[[3, 17, 49]] = 0.0
    tree.update(np.arange(capacity), priorities)
    counts = np.bincount(tree.sample(n, rng, stratified=False), minlength=capacity)
    assert _chi_square_p(counts, priorities) > 1e-3

    # After an update of a third of the slots (one of them raised from 0 to the largest).
    changed = rng.choice(capacity, size=capacity // 3, replace=False)
    priorities[changed] = rng.exponential(size=changed.size) * 3
    priorities[3] = priorities.max() * 2
    tree.update(changed, priorities[changed])
    tree.update(np.array([3]), priorities[[3]])
    counts = np.bincount(tree.sample(n, rng, stratified=False), minlength=capacity)
    assert _chi_square_p(counts, priorities) > 1e-3
    # A wrong expectation is rejected by the same test (it has the power to fail).
    assert _chi_square_p(counts, np.where(priorities > 0, 1.0, 0.0)) < 1e-3


def test_stratified_draws_count_exactly_and_come_shuffled():
    rng = np.random.default_rng(1)
    capacity, n = 40, 4000
    tree = SumTree(capacity)
    priorities = rng.exponential(size=capacity)
    tree.update(np.arange(capacity), priorities)
    draws = tree.sample(n, rng)
    counts = np.bincount(draws, minlength=capacity)
    # One draw per stratum of width total/n: a slot's count is within 2 of n * p_i, always.
    assert np.all(np.abs(counts - n * priorities / priorities.sum()) <= 2)
    # The strata come out shuffled: the first and second halves of a draw look alike (unshuffled,
    # the first half would hold only the low slots).
    low = draws < capacity // 2
    assert abs(low[: n // 2].mean() - low[n // 2:].mean()) < 0.1


# --- union of offline set and online ring ---------------------------------------------------------

@pytest.mark.parametrize("rho", [0.5, 0.75])
def test_p0_gives_the_first_online_samples_probability_rho(rho):
    rng = np.random.default_rng(int(rho * 100))
    m, k, n = 20_000, 1000, 200_000
    union = UnionPriorities(m, online_capacity=5000, rho=rho)
    assert union.p0 == pytest.approx(m / 1000 * rho / (1 - rho))
    union.append_online(k)
    assert union.online_probability == pytest.approx(rho, abs=1e-12)
    draw = union.sample(n, rng, stratified=False)
    # Independent draws: the online fraction is Binomial(n, rho)/n, std sqrt(rho(1-rho)/n) ~ 1e-3;
    # 5 std leaves a false alarm below 1e-6. P0 with M/100 instead of M/1000 would give 0.91/0.97.
    tolerance = 5 * np.sqrt(rho * (1 - rho) / n)
    assert abs(draw.online_fraction - rho) < tolerance
    assert np.all(draw.index[draw.online] < k) and np.all(draw.index[~draw.online] < m)
    np.testing.assert_allclose(draw.probabilities[draw.online], union.p0 / union.total)
    np.testing.assert_allclose(draw.probabilities[~draw.online], 1.0 / union.total)
    # Fewer online samples: n_on P0 / (n_on P0 + M), below rho.
    small = UnionPriorities(m, 5000, rho)
    small.append_online(100)
    assert small.online_probability == pytest.approx(online_probability(100, small.p0, m))
    assert small.online_probability < rho


def test_union_ring_overwrite_and_running_max_default():
    rng = np.random.default_rng(3)
    m, c = 300, 100
    union = UnionPriorities(m, c, rho=0.5)
    p0 = initial_online_priority(m, 0.5)
    assert union.default_priority == p0
    assert np.all(union.online_slots(union.append_online(60)) == m + np.arange(60))

    # Used samples take their new priorities; the default follows the largest one (offline too).
    draw = union.sample(256, rng)
    new = rng.uniform(0.01, 5.0, size=256)
    assert union.update(draw, new) == 256
    expected_default = max(p0, new.max())
    assert union.default_priority == pytest.approx(expected_default)
    # Priorities below the default never lower it.
    union.update(union.sample(64, rng), np.full(64, 1e-3))
    assert union.default_priority == pytest.approx(expected_default)

    # Wrap the ring: slots 0..19 are overwritten and take the default priority again.
    before = union.tree.priorities(union.online_slots(np.arange(20, 60))).copy()
    written = union.append_online(60)
    np.testing.assert_array_equal(written, np.r_[60:100, 0:20])
    np.testing.assert_allclose(union.tree.priorities(union.online_slots(np.arange(60, 100))), expected_default)
    np.testing.assert_allclose(union.tree.priorities(union.online_slots(np.arange(20))), expected_default)
    np.testing.assert_array_equal(union.tree.priorities(union.online_slots(np.arange(20, 60))), before)

    # A priority fed back after its slot was overwritten is dropped (the new sample keeps its default).
    stale = union.sample(512, rng)
    hit = np.unique(stale.index[stale.online & (stale.index < 10)])
    assert hit.size
    union.write_online(np.arange(10), valid=np.arange(10) % 2 == 0)  # odd slots: not a usable transition
    applied = union.update(stale, np.full(512, 1e-3))
    assert applied == 512 - np.count_nonzero(stale.online & (stale.index < 10))
    slots = np.arange(10)
    np.testing.assert_allclose(union.tree.priorities(union.online_slots(slots)),
                               np.where(slots % 2 == 0, expected_default, 0.0))

    # After all that, draws still follow the tree's priorities (chi-square over the union).
    everything = np.arange(m + c)
    probabilities = union.tree.priorities(everything)
    counts = np.bincount(union.sample(300_000, rng, stratified=False).slots, minlength=m + c)
    assert _chi_square_p(counts, probabilities) > 1e-3
    online_mass = probabilities[m:].sum() / probabilities.sum()
    assert union.online_probability == pytest.approx(online_mass, rel=1e-12)


# --- density ratio -----------------------------------------------------------------------------

def test_js_f_prime_and_conjugate():
    y = jnp.logspace(-3, 3, 200)  # float32: beyond 1e3, y f'(y) - f(y) cancels too many digits
    f, fp = dr.js_f(y), dr.js_f_prime(y)
    # f' is the derivative of f.
    np.testing.assert_allclose(jax.vmap(jax.grad(dr.js_f))(y), fp, rtol=1e-4, atol=1e-5)
    # Fenchel–Young equality at t = f'(y): f*(f'(y)) = y f'(y) - f(y), for both forms of f*.
    np.testing.assert_allclose(dr.js_f_star(fp), y * fp - f, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dr.js_f_star_of_f_prime(y), y * fp - f, rtol=1e-4, atol=1e-4)
    # f* is the supremum: f*(t) >= t y - f(y) on a grid, attained near y = e^t / (2 - e^t).
    grid = np.logspace(-6, 6, 20001)
    f_grid = np.asarray(dr.js_f(jnp.asarray(grid)))
    for t in (-3.0, -0.5, 0.0, 0.4, 0.6):
        assert float(dr.js_f_star(t)) == pytest.approx(np.max(t * grid - f_grid), abs=1e-4)


def test_self_normalised_priorities_temper_and_normalise():
    rng = np.random.default_rng(5)
    w = rng.exponential(size=64) + 0.05
    offline_w = rng.exponential(size=256) + 0.05
    for temperature in (1.0, dr.TEMPERATURE_MANIPULATION, dr.TEMPERATURE_LOCOMOTION):
        p = np.asarray(dr.self_normalised_priorities(w, offline_w, temperature, bounds=None))
        # Ratios between priorities are the ratios of w to the power 1/T ...
        np.testing.assert_allclose(temperature * np.log(p[1:] / p[0]), np.log(w[1:] / w[0]), rtol=1e-4, atol=1e-4)
        # ... and the offline set's own priorities average to 1.
        p_off = np.asarray(dr.self_normalised_priorities(offline_w, offline_w, temperature, bounds=None))
        assert p_off.mean() == pytest.approx(1.0, abs=1e-5)
    clipped = np.asarray(dr.self_normalised_priorities(np.array([0.0, 1.0, 1e30]), offline_w, 1.0))
    assert clipped[0] == pytest.approx(dr.REFERENCE_PRIORITY_BOUNDS[0])
    assert clipped[-1] == pytest.approx(dr.REFERENCE_PRIORITY_BOUNDS[1])


@pytest.mark.parametrize("output", ["softplus", "relu"])
def test_density_ratio_ranks_like_the_true_ratio(output):
    # offline N(0, I), online N(mu, I): log r(x) = mu.x - |mu|^2 / 2, so the true ratio ranks by mu.x.
    rng = np.random.default_rng(0)
    mu = np.array([1.0, -0.5, 0.5, 0.0])
    state = dr.create_density_ratio(jax.random.PRNGKey(0), 4, hidden=(64, 64), output=output)
    w0 = np.asarray(dr.ratios(state, rng.normal(size=(32, 4))))
    np.testing.assert_allclose(w0, 1.0, atol=0.05)  # starts at w ~ 1, the offline priority
    for _ in range(300):
        state, metrics = dr.update(state, rng.normal(size=(256, 4)) + mu, rng.normal(size=(256, 4)))
    assert int(state.step) == 300
    assert all(np.isfinite(float(v)) for v in metrics.values())

    def true_ratio(x):
        return np.exp(x @ mu - mu @ mu / 2)

    # The bound on held-out samples: below the true 2 JS (it is a lower bound; Monte-Carlo slack
    # 0.03) and most of the way up to it (the ReLU output of the reference trains noisier).
    on, off = rng.normal(size=(20_000, 4)) + mu, rng.normal(size=(20_000, 4))
    true_2js = np.mean(dr.js_f_prime(true_ratio(on))) - np.mean(dr.js_f_star_of_f_prime(true_ratio(off)))
    bound = -float(dr.js_loss(dr.ratios(state, on), dr.ratios(state, off)))
    assert {"softplus": 0.8, "relu": 0.4}[output] * true_2js < bound < true_2js + 0.03

    held_out = np.concatenate([rng.normal(size=(1000, 4)), rng.normal(size=(1000, 4)) + mu])
    w = np.asarray(dr.ratios(state, held_out))
    assert np.all(w >= 0)
    assert spearmanr(w, true_ratio(held_out))[0] >= 0.9

    offline = rng.normal(size=(4000, 4))
    w_off = dr.ratios(state, offline)
    p_off = np.asarray(dr.self_normalised_priorities(w_off, w_off, bounds=None))
    assert p_off.mean() == pytest.approx(1.0, abs=1e-5)
