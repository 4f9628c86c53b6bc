"""Any Box-action gymnasium env as the agent sees it: dict observations, actions in [-1, 1].

The agent reads dict observations (`state` vector plus uint8 camera frames, see agent/core.py)
and emits actions in [-1, 1]. `make_gym_env` adapts a registered env to that:
- a flat Box observation becomes {"state": float32 vector};
- a Dict observation keeps its (H, W, 3) uint8 entries as images and concatenates every other
  entry, flattened, in sorted key order, into "state"; a Dict nested in it is flattened first,
  its entries named with KEY_SEPARATOR ("observation/robot", "observation/camera");
- the policy's [-1, 1] actions are rescaled affinely to the env's Box bounds (Pendulum: [-2, 2]).

Offline data recorded in the env's own units goes through the same mapping with
`agent_observations` and `normalize_actions`, so the offline and the online batches agree.
"""

from __future__ import annotations

from collections.abc import Mapping

import gymnasium as gym
import numpy as np

from robot_env.errors import UserError


class GymEnvError(UserError, ValueError):
    """An env id or env that train-gym cannot use; the message says what to do."""


#: Joins the keys of a nested Dict observation: {"observation": {"robot": ...}} -> "observation/robot".
KEY_SEPARATOR = "/"


def flatten_space(space: gym.spaces.Dict, prefix: str = "") -> gym.spaces.Dict:
    """A Dict space with every nested Dict replaced by its entries under joined key names."""
    out: dict[str, gym.Space] = {}
    for key, sub in space.spaces.items():
        name = f"{prefix}{key}"
        if isinstance(sub, gym.spaces.Dict):
            out.update(flatten_space(sub, name + KEY_SEPARATOR).spaces)
        else:
            out[name] = sub
    return gym.spaces.Dict(out)


def _flatten_observation(observations: Mapping, space: gym.spaces.Dict, prefix: str = "") -> dict:
    out = {}
    for key, sub in space.spaces.items():
        name = f"{prefix}{key}"
        if not isinstance(sub, gym.spaces.Dict):
            out[name] = observations[name] if name in observations else observations[key]
        elif isinstance(observations.get(key), Mapping):  # nested as the env gives it
            out.update(_flatten_observation(observations[key], sub, name + KEY_SEPARATOR))
        else:  # already flat (e.g. stored episodes): joined names at this level
            out.update(_flatten_observation(observations, sub, name + KEY_SEPARATOR))
    return out


def is_image(shape: tuple[int, ...], dtype: np.dtype) -> bool:
    return np.dtype(dtype) == np.uint8 and len(shape) == 3 and shape[-1] == 3


def _state_keys(space: gym.spaces.Dict) -> list[str]:
    return sorted(k for k, s in space.spaces.items() if not is_image(s.shape, s.dtype))


def agent_observation_space(space: gym.Space) -> gym.spaces.Dict:
    """The dict space `agent_observations` maps observations of `space` into."""
    if isinstance(space, gym.spaces.Box):
        return gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, (int(np.prod(space.shape)),), np.float32)})
    if isinstance(space, gym.spaces.Dict):
        space = flatten_space(space)
        out: dict[str, gym.Space] = {}
        state_size = 0
        for key, sub in space.spaces.items():
            if not isinstance(sub, gym.spaces.Box):
                raise GymEnvError(f"observation entry '{key}' is a {type(sub).__name__}; train-gym needs Box entries")
            if is_image(sub.shape, sub.dtype):
                out[key] = sub
            else:
                state_size += int(np.prod(sub.shape))
        if state_size:
            out["state"] = gym.spaces.Box(-np.inf, np.inf, (state_size,), np.float32)
        return gym.spaces.Dict(out)
    raise GymEnvError(f"observation space {type(space).__name__} is not supported: train-gym needs a Box or a "
                      "Dict of Boxes")


def agent_observations(observations: np.ndarray | Mapping[str, np.ndarray], space: gym.Space,
                       batch_dims: int = 0) -> dict[str, np.ndarray]:
    """Observations of `space` (with `batch_dims` leading axes) as the agent's dict."""
    if isinstance(space, gym.spaces.Box):
        array = np.asarray(observations, np.float32)
        lead = array.shape[:batch_dims]
        return {"state": array.reshape(*lead, -1)}
    if not isinstance(observations, Mapping):
        raise GymEnvError(f"expected a dict observation for a Dict space, got {type(observations).__name__}")
    if any(isinstance(sub, gym.spaces.Dict) for sub in space.spaces.values()):
        observations, space = _flatten_observation(observations, space), flatten_space(space)
    out: dict[str, np.ndarray] = {}
    parts = []
    for key in _state_keys(space):
        value = np.asarray(observations[key], np.float32)
        parts.append(value.reshape(*value.shape[:batch_dims], -1))
    for key, sub in space.spaces.items():
        if is_image(sub.shape, sub.dtype):
            out[key] = np.asarray(observations[key], np.uint8)
    if parts:
        out["state"] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
    return out


def normalize_actions(actions: np.ndarray, space: gym.spaces.Box) -> np.ndarray:
    """Actions in the env's units -> [-1, 1] (the inverse of the rescaling the env wrapper applies)."""
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    scaled = 2.0 * (np.asarray(actions, np.float64) - low) / (high - low) - 1.0
    return np.clip(scaled, -1.0, 1.0).astype(np.float32)


class AgentObservation(gym.ObservationWrapper):
    """Observations as the agent's dict (see the module docstring)."""

    def __init__(self, env: gym.Env, source_action_space: gym.spaces.Box):
        super().__init__(env)
        # Offline data in the env's own units is mapped with these (see `source_spaces`).
        self.source_observation_space = env.observation_space
        self.source_action_space = source_action_space
        self.observation_space = agent_observation_space(env.observation_space)

    def observation(self, observation):
        return agent_observations(observation, self.source_observation_space)


def check_action_space(space: gym.Space, env_id: str) -> gym.spaces.Box:
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise GymEnvError(f"env '{env_id}' has action space {space}; train-gym needs a 1-D Box (continuous actions)")
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        raise GymEnvError(f"env '{env_id}' has unbounded actions {space}; the tanh policy needs finite bounds")
    return space


def make_gym_env(env_id: str, seed: int | None = None, **kwargs) -> gym.Env:
    """The registered env `env_id`, adapted to the agent (dict observations, actions in [-1, 1])."""
    try:
        env = gym.make(env_id, **kwargs)
    except gym.error.Error as exc:
        raise GymEnvError(
            f"cannot make gymnasium env '{env_id}': {str(exc).rstrip('.')}. "
            "List the registered ids with `python -c \"import gymnasium; gymnasium.pprint_registry()\"`"
        ) from None
    except TypeError as exc:  # a keyword argument the env does not take (--env-kwargs)
        raise GymEnvError(f"cannot make gymnasium env '{env_id}' with keyword arguments {sorted(kwargs)} "
                          f"(--env-kwargs): {exc}") from None
    except ModuleNotFoundError as exc:
        raise GymEnvError(f"gymnasium env '{env_id}' needs the module '{exc.name}', which is not installed") from None
    source_actions = check_action_space(env.action_space, env_id)
    if not (np.allclose(source_actions.low, -1.0) and np.allclose(source_actions.high, 1.0)):
        shape = source_actions.shape
        env = gym.wrappers.RescaleAction(env, np.full(shape, -1.0, np.float32), np.full(shape, 1.0, np.float32))
    env = AgentObservation(env, source_actions)
    if seed is not None:
        env.action_space.seed(seed)
    return env


def source_spaces(env: gym.Env) -> tuple[gym.Space, gym.spaces.Box]:
    """The env's own (observation, action) spaces, before the agent adaptations of `make_gym_env`."""
    adapter = env
    while not isinstance(adapter, AgentObservation):
        if not isinstance(adapter, gym.Wrapper):
            raise GymEnvError("this env was not made by make_gym_env")
        adapter = adapter.env
    return adapter.source_observation_space, adapter.source_action_space
