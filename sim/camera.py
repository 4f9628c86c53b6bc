"""`SimCamera`: a wrist camera of the twin, rendered with `mujoco.Renderer` when it is read."""

from __future__ import annotations

import mujoco
import numpy as np

from robot_env.interfaces import CameraError
from sim.rendering import RenderingUnavailable, require_backend
from sim.world import SimWorld


def make_renderer(
    world: SimWorld, height: int, width: int, backend: str = "auto"
) -> mujoco.Renderer:
    """An offscreen renderer with the twin's flags (shadows per `sim.shadows`, no reflections)."""
    require_backend(backend)
    try:
        renderer = mujoco.Renderer(world.model, height=height, width=width)
    except Exception as error:  # MuJoCo raises plain exceptions for GL/context failures.
        raise RenderingUnavailable(
            f"could not create a {width}x{height} MuJoCo renderer ({error}); check that the "
            "OpenGL backend works (MUJOCO_GL) or run the state-only env"
        ) from error
    flags = renderer.scene.flags
    flags[mujoco.mjtRndFlag.mjRND_SHADOW] = world.sim.shadows
    flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
    flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = False
    return renderer


class SimCamera:
    """Renders the named MJCF camera from the world's current state on each `read()`; the
    timestamp is the sim time of that state, so a frame is never stale."""

    def __init__(
        self,
        world: SimWorld,
        name: str,
        height: int,
        width: int,
        renderer: mujoco.Renderer | None = None,
        close_renderer: bool | None = None,
    ):
        """`renderer` may be shared between cameras of one size; the camera that gets
        `close_renderer=True` releases it (by default, a camera closes only a renderer it made)."""
        if name not in world.camera_ids:
            raise CameraError(f"the twin has no camera '{name}'; it has {sorted(world.camera_ids)}")
        if height <= 0 or width <= 0:
            raise CameraError(f"camera '{name}': image size must be positive, got {height}x{width}")
        self.name = name
        self.world = world
        self._camera_id = world.camera_ids[name]
        self._owns_renderer = renderer is None if close_renderer is None else close_renderer
        self._renderer = (
            renderer
            if renderer is not None
            else make_renderer(world, height, width, world.sim.render_backend)
        )
        if (self._renderer.height, self._renderer.width) != (height, width):
            raise CameraError(
                f"camera '{name}': renderer is {self._renderer.height}x{self._renderer.width}, not {height}x{width}"
            )
        self._option = mujoco.MjvOption()

    def read(self) -> tuple[np.ndarray, float]:
        if self._renderer is None:
            raise CameraError(f"camera '{self.name}' was closed")
        self._renderer.update_scene(
            self.world.data, camera=self._camera_id, scene_option=self._option
        )
        return self._renderer.render(), float(self.world.data.time)

    def close(self) -> None:
        if self._renderer is not None and self._owns_renderer:
            self._renderer.close()
        self._renderer = None
