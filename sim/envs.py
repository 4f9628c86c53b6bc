"""Building the twin's env: world, robot, clock, cameras, success and scene reset, wrapped by
`robot_env.make_env` exactly as the real cell is."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import gymnasium as gym
import numpy as np

import robot_env
from robot_env.config import EnvConfig, TaskConfig, validate_env_config, validate_task_config
from robot_env.errors import ConfigError
from robot_env.interfaces import RobotState
from sim.camera import SimCamera, make_renderer
from sim.config import SimConfig, validate_sim_config
from sim.robot import SimClock, SimRobot
from sim.scene import OVERVIEW_CAMERA, WRIST_CAMERAS
from sim.world import SimWorld

OVERVIEW_SIZE = (240, 320)  # height, width of `render()` frames

_SECTIONS = {"task": TaskConfig, "env": EnvConfig, "sim": SimConfig}


def _config_error(message: str) -> Exception:
    return ConfigError(message)


def _apply_overrides(configs: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set `section.key[.sub]` (or a field name that only one section has) on copies of the
    configs, with OmegaConf's type checks; an unknown or ambiguous key is a ConfigError."""
    if not overrides:
        return configs
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    trees = {name: OmegaConf.structured(config) for name, config in configs.items()}
    for key, value in overrides.items():
        section, _, rest = key.partition(".")
        if section not in trees or not rest:
            owners = [
                name
                for name, config in configs.items()
                if key in {f.name for f in dataclasses.fields(config)}
            ]
            if len(owners) != 1:
                where = "several sections" if owners else "no section"
                raise _config_error(
                    f"override '{key}' matches {where} of task/env/sim; name it as section.key "
                    "(e.g. sim.hole_clearance=0.002)"
                )
            section, rest = owners[0], key
        try:
            OmegaConf.update(trees[section], rest, value, merge=True, force_add=False)
        except OmegaConfBaseException as error:
            raise _config_error(
                f"bad override '{key}={value!r}': {str(error).splitlines()[0]}"
            ) from None
    try:
        return {name: OmegaConf.to_object(tree) for name, tree in trees.items()}
    except OmegaConfBaseException as error:
        raise _config_error(f"bad override: {str(error).splitlines()[0]}") from None


def sim_success_fn(world: SimWorld):
    """Ground-truth success: peg tip inside the hole and at least `sim.success_depth` below the
    rim. Extra info: insertion depth, lateral offset and yaw error of the peg."""

    def success(state: RobotState) -> tuple[bool, dict[str, float]]:
        truth = world.ground_truth()
        return truth.success(world.sim.success_depth), {
            "insertion_depth": truth.insertion_depth,
            "lateral_error": float(np.linalg.norm(truth.lateral_offset)),
            "yaw_error": abs(truth.yaw_error),
        }

    return success


def sim_scene_reset(world: SimWorld):
    """Per episode: domain randomisation from the env's rng, then the arm at rest at home."""

    def scene_reset(rng: np.random.Generator) -> None:
        world.randomise(rng)
        world.reset_arm()

    return scene_reset


def overview_render_fn(world: SimWorld):
    """`render()` for humans: a fixed camera looking at the arm and fixture. The renderer is
    created on the first call, so an env that is never rendered never touches OpenGL."""
    renderer = None

    def render() -> np.ndarray:
        nonlocal renderer
        if renderer is None:
            renderer = make_renderer(world, *OVERVIEW_SIZE, world.sim.render_backend)
        renderer.update_scene(world.data, camera=world.camera_ids[OVERVIEW_CAMERA])
        return renderer.render()

    return render


def make_env(
    cfg: Any = None,
    *,
    task: TaskConfig | None = None,
    env: EnvConfig | None = None,
    sim: SimConfig | None = None,
    render_mode: str | None = None,
    state_only: bool = False,
    **overrides: Any,
) -> gym.Env:
    """The twin's peg-insertion env, wrapped per config (`robot_env.make_env`).

    Configs come from `cfg` (anything with `.task`, `.env` and `.sim` sections), else from `task`/`env`/`sim`, else the
    defaults (which `configs/peg_insertion_sim.yaml` repeats). `overrides` set single values, as
    `**{"sim.hole_clearance": 0.002}` or, for a field only one section has, `hole_clearance=0.002`.
    `state_only=True` drops the cameras: no renderer is created (unless `render()` is used).
    """
    configs = {
        "task": copy.deepcopy(
            task if task is not None else (cfg.task if cfg is not None else TaskConfig())
        ),
        "env": copy.deepcopy(
            env if env is not None else (cfg.env if cfg is not None else EnvConfig())
        ),
        "sim": copy.deepcopy(
            sim if sim is not None else (cfg.sim if cfg is not None else SimConfig())
        ),
    }
    configs = _apply_overrides(configs, overrides)
    task_cfg, env_cfg, sim_cfg = configs["task"], configs["env"], configs["sim"]
    # The same checks load_config runs: keyword overrides here bypass it.
    validate_task_config(task_cfg)
    validate_env_config(env_cfg)
    validate_sim_config(sim_cfg)
    if state_only:
        env_cfg = dataclasses.replace(env_cfg, cameras=[])
    unknown = [name for name in env_cfg.cameras if name not in WRIST_CAMERAS]
    if unknown:
        raise _config_error(
            f"env.cameras: the twin has no camera {unknown}; it has {list(WRIST_CAMERAS)}"
        )
    try:
        world = SimWorld(
            task_cfg,
            sim_cfg,
            real_time=env_cfg.real_time,
            offscreen_size=(
                max(env_cfg.image_width, OVERVIEW_SIZE[1]),
                max(env_cfg.image_height, OVERVIEW_SIZE[0]),
            ),
        )
    except ValueError as error:
        raise _config_error(str(error)) from None
    cameras = []
    if env_cfg.cameras:
        # One renderer serves every wrist camera: they share the image size.
        renderer = make_renderer(
            world, env_cfg.image_height, env_cfg.image_width, sim_cfg.render_backend
        )
        last = len(env_cfg.cameras) - 1
        cameras = [
            SimCamera(
                world,
                name,
                env_cfg.image_height,
                env_cfg.image_width,
                renderer,
                close_renderer=i == last,
            )
            for i, name in enumerate(env_cfg.cameras)
        ]
    return robot_env.make_env(
        SimRobot(world),
        cameras,
        SimClock(world),
        task_cfg,
        env_cfg,
        success_fn=sim_success_fn(world),
        scene_reset=sim_scene_reset(world),
        render_fn=overview_render_fn(world),
        render_mode=render_mode,
    )


def make_state_env(cfg: Any = None, **kwargs: Any) -> gym.Env:
    """`make_env(..., state_only=True)`: the entry point of `FrankaPegInsertionSimState-v0`."""
    return make_env(cfg, state_only=True, **kwargs)


def sim_world(env: gym.Env) -> SimWorld:
    """The `SimWorld` behind a (wrapped) twin env; privileged access for experts and tests."""
    robot = getattr(env.unwrapped, "robot", None)
    if not isinstance(robot, SimRobot):
        raise TypeError(
            f"{type(env.unwrapped).__name__} is not the MuJoCo twin (its robot is {type(robot).__name__})"
        )
    return robot.world


def _dotted(prefix: str, value: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for item in dataclasses.fields(value):
            out.update(_dotted(f"{prefix}.{item.name}", getattr(value, item.name)))
        return out
    if isinstance(value, tuple):
        value = list(value)
    return {prefix: value}


def twin_env_spec(task: TaskConfig, env: EnvConfig, sim: SimConfig):
    """The registered twin's `EnvSpec` (`sim.ENV_ID`, or the state-only id without cameras) whose
    kwargs rebuild exactly this configuration: every field of the three sections as a dotted
    override (`{"env.image_height": 64, ...}`), which `make_env` applies. JSON-serialisable, so
    Minari can store it and `minari.load_dataset(...).recover_environment()` can build the env."""
    from sim import ENV_ID, STATE_ENV_ID

    kwargs: dict[str, Any] = {}
    for name, section in (("task", task), ("env", env), ("sim", sim)):
        kwargs.update(_dotted(name, section))
    spec = gym.spec(ENV_ID if env.cameras else STATE_ENV_ID)
    return dataclasses.replace(spec, kwargs=kwargs)
