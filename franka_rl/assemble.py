"""The assembly point: every command builds its env, agent, buffers, actor and learner here, once.

The packages below (`robot_env`, `sim`, `teleop`, `agent`, `reward_classifier`) never see the root
config. This module reads it and hands each part the objects it needs and its own section:

    env = build_env(cfg, "actor")                  # twin or arm, classifier, interventions
    agent = build_agent(cfg, env)                  # networks sized from the env's spaces
    buffer = build_buffer(cfg.agent, spec, action_dim, capacity)   # G on the agent's own reward
    learner = build_learner(cfg, pretrained_dir=..., offline_dirs=...)
    actor = build_actor(cfg, env)

Heavy imports (JAX, MuJoCo, franky) happen inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import OmegaConf

from agent.returns import RewardShaping
from franka_rl.config import Config
from robot_env.errors import ConfigError

if TYPE_CHECKING:
    import gymnasium as gym

    from agent.actor import Actor
    from agent.core import Agent
    from agent.data.replay_buffer import BufferFactory, ReplayBuffer
    from agent.learner import Learner
    from teleop.devices import TeleopDevice

#: What an env is built for. The reward classifier (`classifier.enabled`) and interventions
#: (`actor.intervention`) are the actor's: recording and evaluation judge success by the task (the
#: twin's ground truth; the pose check or the operator's mark on the arm), and recording drives
#: its teleop device itself.
ENV_PURPOSES = ("record-demos", "record-rewards", "actor", "eval")

ObservationSpec = dict[str, tuple[tuple[int, ...], np.dtype]]


# ------------------------------------------------------------------------------------ identity


def run_config(cfg: Config) -> dict[str, Any]:
    """The whole config as plain data, for a metrics backend's run config (metrics.wandb)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg))


def config_hash(cfg: Config) -> str:
    """Short stable hash of everything that defines the task and the data it produces.

    Output locations, the seed, and how a run is carried out are left out: the teleop device and
    recording targets, the processes' transport/actor/learner settings, the pre-training and
    evaluation schedules, where the reward comes from (the classifier on the actor only), where
    metrics go, and the preset's name (its effect is in `agent`). Two runs of the same setup share a hash, so an actor
    with the classifier switched on passes the learner's handshake, and demos recorded with a
    SpaceMouse and with the keyboard carry the same hash.
    """
    tree = OmegaConf.to_container(OmegaConf.structured(cfg))
    for volatile in ("output_dir", "seed", "teleop", "record", "transport", "actor", "learner",
                     "pretrain", "eval", "classifier", "agent_preset", "metrics"):
        tree.pop(volatile, None)
    text = OmegaConf.to_yaml(OmegaConf.create(tree))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------ env


def env_spaces(cfg: Config) -> tuple[gym.spaces.Dict, gym.spaces.Box]:
    """The spaces of the env `build_env(cfg, ...)` drives, without building it (the learner's
    host has no robot). The classifier and intervention wrappers leave the spaces unchanged."""
    from robot_env import wrapped_spaces

    return wrapped_spaces(cfg.task, cfg.env)


def observation_spec(cfg: Config) -> tuple[ObservationSpec, int]:
    """(key -> (shape, dtype), action size) of the env `cfg` describes."""
    observation_space, action_space = env_spaces(cfg)
    spec = {k: (tuple(space.shape), np.dtype(space.dtype)) for k, space in observation_space.spaces.items()}
    return spec, int(np.prod(action_space.shape))


def build_device(cfg: Config, env: gym.Env | None = None) -> TeleopDevice:
    """The teleop device `teleop.device` names (the scripted expert drives the env given)."""
    from teleop.registry import make_device

    return make_device(cfg.teleop, action_frame=cfg.env.action_frame, env=env, seed=cfg.seed)


def build_env(cfg: Config, purpose: str, *, render: bool = False) -> gym.Env:
    """The env a command drives: the twin (`mode=sim`) or the arm (`mode=real`); for the actor,
    then the reward classifier when `classifier.enabled` and teleop interventions when
    `actor.intervention`. Innermost first: env -> classifier -> interventions. `render`: the twin's overview camera for videos when there are no wrist
    cameras. Whatever was opened is closed again if a later part fails."""
    if purpose not in ENV_PURPOSES:
        raise ValueError(f"purpose must be one of {ENV_PURPOSES}, got '{purpose}'")
    if cfg.mode == "sim":
        import sim

        env = sim.make_env(cfg, render_mode="rgb_array" if render else None)
    else:
        from robot_env.real import make_real_env

        env = make_real_env(cfg)
    try:
        if purpose == "actor" and cfg.classifier.enabled:
            from reward_classifier import wrap_with_classifier

            model_dir = cfg.classifier.model_dir or str(Path(cfg.output_dir) / "classifier")
            env = wrap_with_classifier(env, cfg.classifier, model_dir)
        if purpose == "actor" and cfg.actor.intervention:
            from teleop.intervention import InterventionWrapper

            env = InterventionWrapper(env, build_device(cfg, env), hold_over_steps=cfg.teleop.hold_over_steps)
    except BaseException:
        env.close()
        raise
    return env


# ------------------------------------------------------------------------------------ agent


def example_observation(spec: ObservationSpec) -> dict[str, np.ndarray]:
    return {k: np.zeros(shape, dtype) for k, (shape, dtype) in spec.items()}


def warn_random_backbone(cfg: Config, report: Callable[[str], None] = print) -> None:
    """On the arm, a frozen image backbone must carry pretrained weights: a random frozen ResNet
    gives the policy and the classifier features that mean little. Said once, loudly."""
    if cfg.mode != "real":
        return
    enc = cfg.agent.encoder
    if cfg.env.cameras and enc.freeze_backbone and not enc.pretrained_path:
        report(f"WARNING: mode=real with cameras {list(cfg.env.cameras)} but agent.encoder.pretrained_path is empty: "
               f"the policy's frozen {enc.backbone} backbone has RANDOM weights. Run `franka-rl weights fetch "
               f"{enc.backbone}` and set agent.encoder.pretrained_path to the file it prints (docs/hardware.md, "
               "'Pretrained weights')")
    clf = cfg.classifier
    if clf.enabled and not clf.pretrained_path:
        report(f"WARNING: classifier.enabled but classifier.pretrained_path is empty: the reward classifier was "
               f"trained on a RANDOM frozen {clf.backbone} unless its saved model says otherwise; fetch weights with "
               f"`franka-rl weights fetch {clf.backbone}` and retrain it with classifier.pretrained_path set")


def check_backbone_weights(cfg: Config, *, policy: bool = True, classifier: bool = False) -> None:
    """Before any hardware is opened or any compute starts: a pretrained backbone file the config
    names (`agent.encoder.pretrained_path` when `policy` and the env has cameras,
    `classifier.pretrained_path` when `classifier`) must exist, else one line says to run
    `franka-rl weights fetch` (or to set the key to '' and accept a random backbone)."""
    from agent.pretrained import PretrainedWeightsError, missing_file_message

    wanted = []
    if policy and cfg.env.cameras and cfg.agent.encoder.pretrained_path:
        wanted.append(("agent.encoder.pretrained_path", cfg.agent.encoder.pretrained_path, cfg.agent.encoder.backbone))
    if classifier and cfg.classifier.pretrained_path:
        wanted.append(("classifier.pretrained_path", cfg.classifier.pretrained_path, cfg.classifier.backbone))
    for key, path, backbone in wanted:
        if not Path(path).expanduser().is_file():
            raise PretrainedWeightsError(missing_file_message(Path(path).expanduser(), backbone, key))


def build_agent(cfg: Config, env: gym.Env | None = None, *, seed: int | None = None) -> Agent:
    """A fresh agent sized from `env`'s spaces (or, without an env, from the config's); with
    agent.off2on.enabled, the stacked ensemble of agent/off2on.py."""
    from agent.core import create_agent
    from agent.off2on import create_ensemble

    if env is not None:
        spec = {k: (tuple(s.shape), np.dtype(s.dtype)) for k, s in env.observation_space.spaces.items()}
        action_dim = int(np.prod(env.action_space.shape))
    else:
        spec, action_dim = observation_spec(cfg)
    make = create_ensemble if cfg.agent.off2on.enabled else create_agent
    return make(cfg.agent, example_observation(spec), action_dim, seed=cfg.seed if seed is None else seed)


# ------------------------------------------------------------------------------------ buffers


def reward_shaping(agent_cfg: Any) -> RewardShaping:
    """The reward settings behind every Monte-Carlo return, from the agent's own config."""
    return RewardShaping.from_agent_config(agent_cfg)


def buffer_factory(agent_cfg: Any) -> BufferFactory:
    """Makes (and loads) replay buffers with the agent's reward shaping bound: what trainers
    receive to make the buffers they size."""
    from agent.data.replay_buffer import BufferFactory

    return BufferFactory(reward_shaping(agent_cfg))


def build_buffer(agent_cfg: Any, spec: ObservationSpec, action_dim: int, capacity: int,
                 **kwargs: Any) -> ReplayBuffer:
    return buffer_factory(agent_cfg)(spec, action_dim, capacity, **kwargs)


# ------------------------------------------------------------------------------------ processes


def _check_online_env(cfg: Config) -> None:
    if cfg.env.history_horizon != 1:
        raise ConfigError("env.history_horizon > 1 stacks observations, which the agent's encoder does not "
                          "read; set env.history_horizon=1 for actor/learner runs")


def build_learner(cfg: Config, *, pretrained_dir: str | None = None, offline_dirs: Sequence[str] = (),
                  endpoint: str | None = None, report: Callable[[str], None] = print) -> Learner:
    """The learner of `cfg`: its agent (fresh, or the pre-trained one through the WSRL switch),
    buffers with the agent's reward shaping, the handshake's spec and hash, its run folder."""
    from agent.devices import use_device
    from agent.learner import Learner
    from agent.wsrl import start_online_from_checkpoint, wsrl_switch

    _check_online_env(cfg)
    check_backbone_weights(cfg)
    report(f"learner: {use_device(cfg.learner.device, 'learner.device')}")
    warn_random_backbone(cfg, report)
    spec, action_dim = observation_spec(cfg)
    if cfg.agent.off2on.enabled:  # the stacked ensemble; the switch is applied to its shared settings
        from agent.checkpoint import restore_agent
        from agent.off2on import switch_online

        pretrained = restore_agent(pretrained_dir, build_agent(cfg), None, cfg.agent)[0] if pretrained_dir else None
        online = switch_online(pretrained if pretrained is not None else build_agent(cfg), cfg.agent.online)
    elif pretrained_dir:
        online, pretrained, _ = start_online_from_checkpoint(pretrained_dir, cfg.agent, example_observation(spec),
                                                             action_dim)
    else:
        online, pretrained = wsrl_switch(build_agent(cfg), cfg.agent.online), None
    return Learner(
        online, cfg.agent, cfg.learner, cfg.transport,
        observation_spec=spec, action_dim=action_dim, new_buffer=buffer_factory(cfg.agent),
        config_hash=config_hash(cfg), run_dir=Path(cfg.learner.run_dir or Path(cfg.output_dir) / "learner"),
        seed=cfg.seed, pretrained=pretrained, offline_dirs=offline_dirs, endpoint=endpoint, report=report,
        metrics=cfg.metrics, run_config=run_config(cfg),
    )


def build_actor(cfg: Config, env: gym.Env, *, endpoint: str | None = None,
                report: Callable[[str], None] = print, clock: Callable[[], float] | None = None) -> Actor:
    """The actor of `cfg` driving `env` (from `build_env(cfg, "actor")`)."""
    import time

    from agent.actor import Actor

    _check_online_env(cfg)
    warn_random_backbone(cfg, report)
    acfg = cfg.actor
    return Actor(
        env, build_agent(cfg, env), acfg, cfg.transport,
        config_hash=config_hash(cfg), seed=cfg.seed,
        episodes_dir=Path(acfg.episodes_dir or Path(cfg.output_dir) / "actors" / acfg.actor_id / "episodes"),
        episode_metadata={"task": cfg.task.name, "mode": cfg.mode, "control_hz": cfg.env.control_hz,
                          "cameras": list(cfg.env.cameras)},
        endpoint=endpoint, report=report, clock=clock or time.monotonic,
    )


__all__ = [
    "ENV_PURPOSES",
    "build_actor",
    "build_agent",
    "build_buffer",
    "build_device",
    "build_env",
    "build_learner",
    "buffer_factory",
    "check_backbone_weights",
    "config_hash",
    "env_spaces",
    "example_observation",
    "observation_spec",
    "reward_shaping",
    "warn_random_backbone",
]
