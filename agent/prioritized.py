"""Prioritised sampling for Off2On's balanced replay (Lee et al. 2021): a vectorised sum tree
and the priorities of the union of an offline set and a growing online ring.

`SumTree` holds one non-negative priority per slot and draws slots with probability
priority / total. Every operation works on whole index arrays, level by level, so a batch of
k updates or n draws costs O(k log N) / O(n log N) numpy work and no Python loop over k or n.

`UnionPriorities` lays the offline set (slots 0..M-1) and the online ring (slots M..M+C-1) out
in one tree, the way the reference code keeps one prioritised buffer for both. Offline
transitions start at priority 1; a newly written online transition starts at the *default
priority*, which is P0 = (M / 1000) * rho / (1 - rho) until priorities set after use exceed it
(then it is their running maximum). See docs/agent.md, "Balanced replay (Off2On) — building
blocks", for the maths and where each default comes from. Nothing here knows about
transitions: the caller maps slots to its own buffers and feeds back the new priorities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The reference (shlee94/Off2OnRL, batch_rl_algorithm.py) sets the initial default priority
# so that about `rho` of the draws are online once this many online samples exist.
REFERENCE_ONLINE_COUNT = 1000


def _as_indices(indices: np.ndarray, capacity: int) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"indices must be integers, got {idx.dtype}")
    idx = idx.astype(np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= capacity):
        raise IndexError(f"indices must lie in [0, {capacity}), got [{idx.min()}, {idx.max()}]")
    return idx


def _last_occurrence(indices: np.ndarray) -> np.ndarray:
    """Positions of the last occurrence of each distinct index: a repeated index in one update
    takes its last value (numpy leaves the winner of a duplicated fancy assignment unspecified)."""
    _, first_from_end = np.unique(indices[::-1], return_index=True)
    return indices.size - 1 - first_from_end


class SumTree:
    """Priorities of `capacity` slots in a binary sum tree (float64, one flat array).

    Layout: a 1-indexed heap over `leaves` = the next power of two >= capacity. Node i has
    children 2i and 2i+1, node 1 is the root (the total), leaf j sits at node leaves + j, and
    node 0 is unused. Padding leaves (j >= capacity) stay 0, so they are never drawn.

    Every internal node is recomputed as the sum of its two children (never by adding a
    delta), so the sums carry no drift however many updates there are, and a parent with a
    positive sum always has a child with a positive sum (the descent relies on it).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.leaves = 1 << (self.capacity - 1).bit_length()
        self.depth = self.leaves.bit_length() - 1  # edges from the root to a leaf
        self.tree = np.zeros(2 * self.leaves, np.float64)

    @property
    def total(self) -> float:
        return float(self.tree[1])

    def priorities(self, indices: np.ndarray) -> np.ndarray:
        """The priorities of slots `indices` (float64, same shape)."""
        shape = np.shape(indices)
        return self.tree[self.leaves + _as_indices(indices, self.capacity)].reshape(shape)

    def probabilities(self, indices: np.ndarray) -> np.ndarray:
        """Probability that one draw picks each of `indices` (priority / total)."""
        total = self.total
        if total <= 0.0:
            raise ValueError("every priority is 0: nothing can be drawn")
        return self.priorities(indices) / total

    def update(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        """Set the priorities of slots `indices` (repeats: the last value wins), then recompute
        their ancestors one tree level at a time."""
        idx = _as_indices(indices, self.capacity)
        values = np.asarray(priorities, np.float64)
        values = np.broadcast_to(values, idx.shape) if values.ndim == 0 else values.reshape(-1)
        if values.shape != idx.shape:
            raise ValueError(f"{values.size} priorities for {idx.size} indices")
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise ValueError("priorities must be finite and >= 0")
        if idx.size == 0:
            return
        keep = _last_occurrence(idx)
        idx, values = idx[keep], values[keep]
        self.tree[self.leaves + idx] = values
        nodes = np.unique((self.leaves + idx) >> 1)
        for _ in range(self.depth):
            self.tree[nodes] = self.tree[2 * nodes] + self.tree[2 * nodes + 1]
            nodes = np.unique(nodes >> 1)

    def prefix_sum(self, k: int) -> float:
        """Sum of the priorities of slots 0..k-1, from O(log N) nodes: walking up from leaf k,
        each time the node is a right child its left sibling's whole subtree lies before k."""
        if not 0 <= k <= self.capacity:
            raise IndexError(f"k must lie in [0, {self.capacity}], got {k}")
        if k == self.leaves:
            return self.total
        node, acc = self.leaves + k, 0.0
        while node > 1:
            if node & 1:
                acc += float(self.tree[node - 1])
            node >>= 1
        return acc

    def find(self, targets: np.ndarray) -> np.ndarray:
        """The slot whose cumulative-priority interval holds each target in [0, total).

        All targets walk down together, one level per step. At each node a target goes right when
        it is past the left child's sum and the right child has mass; it then subtracts the left
        sum. Guarding on the right child's mass means a target rounded up to `total` (or a last
        ulp of float error) still ends on a slot of positive priority, never on a 0 one.
        """
        u = np.array(targets, np.float64).reshape(-1)
        node = np.ones(u.shape, np.int64)
        for _ in range(self.depth):
            left_sum = self.tree[2 * node]
            right = (u >= left_sum) & (self.tree[2 * node + 1] > 0.0)
            u = np.where(right, u - left_sum, u)
            node = 2 * node + right
        return node - self.leaves

    def sample(self, n: int, rng: np.random.Generator, *, stratified: bool = True) -> np.ndarray:
        """`n` slots drawn with probability priority / total (with replacement).

        stratified=True (the default, as the reference): [0, total) is cut into n equal strata and
        one uniform target is drawn in each, so every slot's expected count is exactly
        n * p_i and the batch's counts vary less than independent draws'. The draws are then put
        in a random order: strata come out sorted by slot, and a caller that splits one draw into
        several minibatches (one per UTD group) must not get the offline slots in the first and
        the online ones in the last. stratified=False: n independent draws (multinomial counts).
        """
        total = self.total
        if total <= 0.0:
            raise ValueError("every priority is 0: nothing can be drawn")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if stratified:
            targets = (np.arange(n) + rng.random(n)) * (total / max(n, 1))
            return rng.permutation(self.find(targets))
        return self.find(rng.random(n) * total)


def initial_online_priority(offline_size: int, rho: float,
                            reference_count: int = REFERENCE_ONLINE_COUNT) -> float:
    """P0 = (M / K) * rho / (1 - rho), K = `reference_count` (1000 in the reference).

    With the M offline slots at priority 1 and n_on online slots at P0, one draw is online with
    probability n_on * P0 / (n_on * P0 + M); at n_on = K that is exactly rho (K * P0 = M rho/(1-rho),
    so the ratio is [rho/(1-rho)] / [rho/(1-rho) + 1] = rho). Below K it is less, above K more.
    """
    if offline_size < 1:
        raise ValueError(f"offline_size must be >= 1, got {offline_size}")
    if not 0.0 < rho < 1.0:
        raise ValueError(f"rho must be in (0, 1), got {rho}")
    if reference_count < 1:
        raise ValueError(f"reference_count must be >= 1, got {reference_count}")
    return offline_size / reference_count * rho / (1.0 - rho)


def online_probability(n_online: int, p0: float, offline_size: int, offline_priority: float = 1.0) -> float:
    """P(one draw is online) with n_online slots at p0 and offline_size slots at offline_priority."""
    online = n_online * p0
    return online / (online + offline_size * offline_priority)


@dataclass(frozen=True)
class UnionDraw:
    """One prioritised draw from the union: for each sample, its slot in the union tree, whether
    it is online, its index inside its own buffer (offline index, or online ring slot), the
    probability that one draw picks that slot (for metrics or importance weights), and the
    write generation of its slot (so a priority fed back after the slot was overwritten is
    dropped, see `UnionPriorities.update`)."""

    slots: np.ndarray  # int64, union slot: offline i -> i, online ring slot j -> M + j
    online: np.ndarray  # bool
    index: np.ndarray  # int64, index within its buffer
    probabilities: np.ndarray  # float64
    generations: np.ndarray  # int64, write generation of the slot when drawn (0 for offline)

    @property
    def online_fraction(self) -> float:
        return float(np.mean(self.online)) if self.online.size else 0.0


class UnionPriorities:
    """Priorities over an offline set of M slots and an online ring of C slots, in one SumTree.

    - Offline slot i (union slot i) starts at `offline_priority` (1), or 0 where `offline_valid`
      is False (a slot that starts no usable transition). M in P0 counts the valid ones.
    - Writing online ring slot j (union slot M + j), new or overwriting, gives it the current
      `default_priority`, or 0 where the caller says it is not a valid transition start; an
      overwritten slot forgets the priority its previous sample had earned.
    - After a sample is used the caller sets its new priority (`update`); `default_priority`
      is max(P0, every priority set by `update` so far): it never falls, as in the reference's
      `SegmentTree.max` (starts at P0 once the offline data is loaded, then max with each batch
      of new priorities; offline ones count too). So the rho statement of
      `initial_online_priority` holds before the first update; afterwards new online samples
      enter at the highest priority seen, to be drawn soon (PER's rule).

    The caller owns the ring (e.g. agent/data/replay_buffer.py's slots and cursor) and reports
    the slots it wrote with `write_online`; `append_online` is a cursor of its own for callers
    that write the ring strictly in order.
    """

    def __init__(self, offline_size: int, online_capacity: int, rho: float = 0.5, *,
                 offline_priority: float = 1.0, reference_count: int = REFERENCE_ONLINE_COUNT,
                 offline_valid: np.ndarray | None = None) -> None:
        if online_capacity < 1:
            raise ValueError(f"online_capacity must be >= 1, got {online_capacity}")
        if not offline_priority > 0:
            raise ValueError(f"offline_priority must be > 0, got {offline_priority}")
        valid = np.ones(offline_size, bool) if offline_valid is None else np.asarray(offline_valid, bool)
        if valid.shape != (offline_size,):
            raise ValueError(f"offline_valid must have shape ({offline_size},), got {valid.shape}")
        self.offline_size = int(offline_size)
        self.online_capacity = int(online_capacity)
        self.offline_priority = float(offline_priority)
        self.p0 = initial_online_priority(int(valid.sum()), rho, reference_count)
        self.default_priority = self.p0
        self.tree = SumTree(self.offline_size + self.online_capacity)
        self.tree.update(np.arange(self.offline_size), np.where(valid, self.offline_priority, 0.0))
        self._generation = np.zeros(self.online_capacity, np.int64)  # bumped on each write
        self._cursor = 0
        self.online_written = 0  # online writes so far (append_online and write_online)

    @property
    def total(self) -> float:
        return self.tree.total

    @property
    def online_probability(self) -> float:
        """P(one draw is online) now: the online slots' share of the total priority."""
        total = self.tree.total
        if total <= 0.0:
            return 0.0
        return max(total - self.tree.prefix_sum(self.offline_size), 0.0) / total

    def online_slots(self, ring_slots: np.ndarray) -> np.ndarray:
        """Union slots of online ring slots."""
        return self.offline_size + _as_indices(ring_slots, self.online_capacity)

    def write_online(self, ring_slots: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Ring slots just (over)written: they take the default priority (0 where not `valid`)."""
        slots = _as_indices(ring_slots, self.online_capacity)
        ok = np.ones(slots.shape, bool) if valid is None else np.broadcast_to(np.asarray(valid, bool).reshape(-1),
                                                                              slots.shape)
        self.tree.update(self.offline_size + slots, np.where(ok, self.default_priority, 0.0))
        np.add.at(self._generation, slots, 1)
        self.online_written += int(slots.size)

    def append_online(self, count: int, valid: np.ndarray | None = None) -> np.ndarray:
        """Write `count` samples at the ring's cursor (wrapping); returns the ring slots written
        (when count > C the earlier ones of this call are overwritten within it)."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        slots = (self._cursor + np.arange(count)) % self.online_capacity
        self.write_online(slots, valid)
        self._cursor = int((self._cursor + count) % self.online_capacity)
        return slots

    def sample(self, n: int, rng: np.random.Generator, *, stratified: bool = True) -> UnionDraw:
        """`n` samples from the union with probability priority / total (see SumTree.sample)."""
        slots = self.tree.sample(n, rng, stratified=stratified)
        online = slots >= self.offline_size
        index = np.where(online, slots - self.offline_size, slots)
        generations = np.where(online, self._generation[np.where(online, index, 0)], 0)
        return UnionDraw(slots, online, index, self.tree.probabilities(slots), generations)

    def update(self, draw: UnionDraw, priorities: np.ndarray) -> int:
        """Set the new priorities of a draw's samples after use; returns how many were set.

        Online samples whose slot was overwritten since the draw are skipped: the new sample there
        keeps its default priority instead of inheriting the old one's. The default priority then
        rises to the largest priority set, if that is above it.
        """
        values = np.asarray(priorities, np.float64).reshape(-1)
        if values.shape != draw.slots.shape:
            raise ValueError(f"{values.size} priorities for {draw.slots.size} samples")
        current = np.where(draw.online, draw.generations == self._generation[np.where(draw.online, draw.index, 0)],
                           True)
        self.tree.update(draw.slots[current], values[current])
        if np.any(current):
            self.default_priority = max(self.default_priority, float(values[current].max()))
        return int(np.count_nonzero(current))
