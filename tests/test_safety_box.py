"""The safety box never lets a target out, and orientation clipping has no ±π wrap."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from robot_env.config import TaskConfig
from robot_env.safety import SafetyBox

BOX = SafetyBox.from_task(TaskConfig())

finite = st.floats(-3.0, 3.0, allow_nan=False)
positions = st.lists(finite, min_size=3, max_size=3).map(np.array)
rotvecs = st.lists(st.floats(-np.pi, np.pi, allow_nan=False), min_size=3, max_size=3).map(np.array)


@settings(max_examples=300, deadline=None)
@given(positions, rotvecs)
def test_clip_always_lands_inside_and_is_idempotent(position, rotvec):
    quat = Rotation.from_rotvec(rotvec).as_quat()
    clipped_position, clipped_quat, _ = BOX.clip(position, quat)
    assert BOX.contains(clipped_position, clipped_quat, tolerance=1e-7)
    again_position, again_quat, clipped_again = BOX.clip(clipped_position, clipped_quat)
    np.testing.assert_allclose(again_position, clipped_position)
    assert abs(abs(np.dot(again_quat, clipped_quat)) - 1.0) < 1e-9


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3).map(np.array),
    st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3).map(np.array),
)
def test_targets_inside_pass_unchanged(position_fraction, rotation_fraction):
    position = np.clip(
        BOX.position_low + position_fraction * (BOX.position_high - BOX.position_low),
        BOX.position_low,
        BOX.position_high,
    )
    rotvec = BOX.rotation_low + rotation_fraction * (BOX.rotation_high - BOX.rotation_low)
    quat = (BOX.nominal_rotation * Rotation.from_rotvec(rotvec)).as_quat()
    clipped_position, clipped_quat, was_clipped = BOX.clip(position, quat)
    assert not was_clipped
    np.testing.assert_array_equal(clipped_position, position)
    np.testing.assert_array_equal(clipped_quat, quat)


def test_peg_down_roll_across_pi_is_not_clipped():
    # Peg pointing down: base-frame roll ≈ π. A small tilt either way crosses Euler's ±π wrap
    # (roll = π − 0.05 and roll = −π + 0.05); both are 0.05 rad from nominal and must pass.
    for roll in (np.pi - 0.05, -np.pi + 0.05):
        quat = Rotation.from_euler("xyz", [roll, 0.0, 0.0]).as_quat()
        position = (BOX.position_low + BOX.position_high) / 2
        _, clipped_quat, was_clipped = BOX.clip(position, quat)
        assert not was_clipped, roll
        assert abs(abs(np.dot(clipped_quat, quat)) - 1.0) < 1e-12


def test_large_tilt_is_clipped_to_the_bound():
    quat = (BOX.nominal_rotation * Rotation.from_rotvec([0.5, 0.0, 0.0])).as_quat()
    _, clipped_quat, was_clipped = BOX.clip((BOX.position_low + BOX.position_high) / 2, quat)
    assert was_clipped
    np.testing.assert_allclose(BOX.relative_rotvec(clipped_quat), [BOX.rotation_high[0], 0, 0], atol=1e-9)
