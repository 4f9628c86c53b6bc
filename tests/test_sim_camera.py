"""The twin's wrist cameras: both see the peg and the hole, and the images change with the pose."""

import math

import mujoco
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import sim

SIZE = 64


@pytest.fixture(scope="module")
def env():
    env = sim.make_env(image_height=SIZE, image_width=SIZE)
    env.reset(seed=0)
    yield env
    env.close()


def _pose(env, dx, dy, dyaw, hover):
    """Put the peg tip `hover` above the rim, offset (dx, dy) from the hole, turned by dyaw."""
    base, world = env.unwrapped, sim.sim_world(env)
    hole_top, _ = world.hole_pose()
    base.robot.set_impedance(base.env_cfg.stiff)
    quat = (Rotation.from_rotvec([0, 0, dyaw]) * Rotation.from_rotvec([math.pi, 0, 0])).as_quat()
    base.robot.move_to(hole_top + [dx, dy, world.sim.peg_length_below_tcp + hover], quat)
    return {camera.name: camera.read() for camera in base.cameras}


def _masks(env, camera: str):
    """Ground-truth pixel masks of the peg and the hole (its floor and inner walls)."""
    world = sim.sim_world(env)
    renderer = mujoco.Renderer(world.model, SIZE, SIZE)
    renderer.enable_segmentation_rendering()
    renderer.update_scene(world.data, camera=camera)
    geoms = renderer.render()[..., 0]
    renderer.close()
    hole_material = world.model.material("hole").id
    hole_geoms = np.flatnonzero(world.model.geom_matid == hole_material)
    return geoms == world.model.geom("peg").id, np.isin(geoms, hole_geoms)


def test_frames_have_the_configured_shape_and_sim_timestamp(env):
    for camera in env.unwrapped.cameras:
        frame, stamp = camera.read()
        assert frame.shape == (SIZE, SIZE, 3) and frame.dtype == np.uint8
        assert stamp == env.unwrapped.clock.now()


def test_both_cameras_see_peg_and_hole_and_the_pose_changes_the_images(env):
    misaligned = _pose(env, 0.03, 0.02, 0.3, 0.03)
    masks_misaligned = {name: _masks(env, name) for name in misaligned}
    aligned = _pose(env, 0.0, 0.0, 0.0, 0.005)
    for name in ("wrist_1", "wrist_2"):
        image = misaligned[name][0].astype(float)
        peg, hole = masks_misaligned[name]
        assert peg.mean() > 0.03, f"{name}: peg covers {peg.mean():.1%} of the image"
        assert hole.mean() > 0.005, f"{name}: hole covers {hole.mean():.1%} of the image"
        # The peg is orange, the hole dark: their pixels must be told apart from each other and
        # from the rest of the frame.
        peg_rgb, hole_rgb, rest_rgb = (
            image[peg].mean(0),
            image[hole].mean(0),
            image[~(peg | hole)].mean(0),
        )
        assert peg_rgb[0] - peg_rgb[2] > 80
        assert hole_rgb.mean() < rest_rgb.mean() - 30
        assert image.std() > 20
        difference = np.abs(aligned[name][0].astype(float) - image).mean()
        assert difference > 10, (
            f"{name}: aligned and misaligned frames differ by only {difference:.1f}"
        )
