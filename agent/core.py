"""The agent as an immutable pytree, its construction, observation encoding and acting.

`Agent` holds arrays only as pytree leaves (parameters, optimizer moments, target critics,
temperature, RNG); the networks and the update's hyperparameters are static fields, so a jitted
function that takes an `Agent` recompiles only when the architecture or a setting changes.

Observations are dicts: `state` (float vector) and uint8 (H, W, 3) images under the configured
image keys. An image entry may instead hold cached backbone features (float, (h, w, 512)) when
the backbone is frozen: see `encode_frames` and docs/agent.md, "Feature cache".
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training.train_state import TrainState

from agent.config import AgentConfig, AgentConfigError, validate_agent_config
from agent.networks import QEnsemble, TanhGaussianPolicy, Trunk, ValueNetwork, tanh_gaussian_sample
from agent.vision import ObservationEncoder, ResNetBackbone, make_backbone

Params = Any


@functools.cache
def _frozen_class(cls: type) -> type:
    return dataclasses.make_dataclass(f"Frozen{cls.__name__}", [f.name for f in dataclasses.fields(cls)],
                                      frozen=True)


def frozen_section(section: Any) -> Any:
    """A hashable, read-only copy of a config dataclass with the same attribute names (lists
    become tuples, numbers take their annotated type), so a jitted function can take it static."""
    hints = typing.get_type_hints(type(section))
    values = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, list):
            value = tuple(value)
        elif hints.get(f.name) in (float, int, bool):
            value = hints[f.name](value)
        values[f.name] = value
    return _frozen_class(type(section))(**values)


@dataclass(frozen=True)
class UpdateSpec:
    """Everything the jitted functions need besides arrays (hashable, static under jit): the
    observation layout and read-only copies of the agent config's sections, so a new
    hyperparameter is one field in agent/config.py and its use, nothing copied by hand."""

    action_dim: int
    image_keys: tuple[str, ...]
    state_key: str | None
    reward: Any
    network: Any
    encoder: Any
    sac: Any
    cql: Any
    iql: Any

    @classmethod
    def from_config(cls, cfg: AgentConfig, action_dim: int, image_keys: tuple[str, ...],
                    state_key: str | None) -> UpdateSpec:
        return cls(
            action_dim=int(action_dim), image_keys=tuple(image_keys), state_key=state_key,
            **{name: frozen_section(getattr(cfg, name)) for name in ("reward", "network", "encoder", "sac", "cql",
                                                                         "iql")},
        )

    @property
    def num_critics(self) -> int:
        return self.network.num_critics

    @property
    def target_entropy(self) -> float:
        return -self.sac.target_entropy_scale * self.action_dim


@dataclass(frozen=True)
class Networks:
    encoder: ObservationEncoder
    critic: QEnsemble
    target_subset: QEnsemble  # same member architecture, `critic_subsample` members
    actor: TanhGaussianPolicy
    backbone: ResNetBackbone | None
    value: ValueNetwork  # IQL's V(s); it has parameters only in an agent built with agent.iql.enabled


@struct.dataclass
class Agent:
    actor: TrainState
    # params: {"encoder": heads, "q": ensemble} plus "backbone" when the backbone trains.
    critic: TrainState
    target_critic_params: Params
    temperature: TrainState  # params: {"log_temperature": ()}
    lagrange: TrainState  # params: {"log_alpha": ()}; used only by the CQL Lagrange variant
    frozen_backbone: Params  # backbone params when frozen, else {}
    # IQL's value net V(s) (a TrainState) when built with agent.iql.enabled, else {}: an empty dict
    # has no leaves, so other agents' pytrees and checkpoints are as before. The WSRL switch drops it.
    value: Any
    rng: jax.Array
    nets: Networks = struct.field(pytree_node=False)
    spec: UpdateSpec = struct.field(pytree_node=False)

    @property
    def step(self) -> jax.Array:
        return self.critic.step


@functools.lru_cache(maxsize=64)
def adam(learning_rate: float) -> optax.GradientTransformation:
    """One optimizer object per learning rate: agents built alike share jit caches."""
    return optax.adam(learning_rate)


def _trunk(cfg: AgentConfig, arch: str, hidden: list[int]) -> Trunk:
    net = cfg.network
    return Trunk(arch, tuple(hidden), net.residual_width, net.residual_block_width, net.residual_blocks,
                 net.activation, net.layer_norm)


def build_networks(cfg: AgentConfig, action_dim: int, image_keys: tuple[str, ...]) -> Networks:
    net, enc = cfg.network, cfg.encoder
    critic_trunk = _trunk(cfg, net.critic_arch, net.critic_hidden_dims)
    return Networks(
        encoder=ObservationEncoder(image_keys, enc.spatial_features, enc.image_dropout, enc.image_head_dim,
                                   enc.proprio_dim),
        critic=QEnsemble(critic_trunk, net.num_critics),
        target_subset=QEnsemble(critic_trunk, cfg.sac.critic_subsample),
        actor=TanhGaussianPolicy(_trunk(cfg, net.actor_arch, net.actor_hidden_dims), action_dim,
                                 net.std_min, net.std_max),
        backbone=make_backbone(enc.backbone) if image_keys else None,
        value=ValueNetwork(critic_trunk),
    )


def observation_keys(cfg: AgentConfig, example_observation: dict) -> tuple[tuple[str, ...], str | None]:
    """(image keys, state key or None) that the agent reads from observations like this one."""
    enc = cfg.encoder
    if not isinstance(example_observation, dict):
        raise AgentConfigError("observations must be dicts (wrap a vector observation as {'state': obs})")
    image_keys = tuple(k for k in enc.image_keys if k in example_observation)
    state_key = enc.state_key if enc.state_key in example_observation else None
    unknown = sorted(set(example_observation) - set(image_keys) - {enc.state_key})
    if unknown:
        raise AgentConfigError(
            f"observation keys {unknown} are not used by the agent: add image keys to agent.encoder.image_keys "
            f"or set agent.encoder.state_key (now '{enc.state_key}')"
        )
    if not image_keys and state_key is None:
        raise AgentConfigError("the observation has neither the state key nor any configured image key")
    for key in image_keys:
        shape = np.shape(example_observation[key])
        if len(shape) != 3 or shape[-1] != 3:
            raise AgentConfigError(f"observation '{key}' must be an (H, W, 3) image, got shape {shape}")
    return image_keys, state_key


@partial(jax.jit, static_argnums=0, static_argnames="static")
def init_variables(module: Any, key: jax.Array, *args: Any, static: tuple = ()) -> Params:
    """`module.init(key, *args, *static)` compiled as one program. Called eagerly, an init compiles
    every primitive in it on its own: a fresh process spent ~9 s of a 12 s `create_agent` of a tiny
    MLP agent on 91 such compiles (2-core CPU), and every command (actor, learner, eval) pays it at
    start. Modules hash by their fields, so equal networks share the compiled init."""
    return module.init(key, *args, *static)


@partial(jax.jit, static_argnums=0, static_argnames="static")
def apply_module(module: Any, variables: Params, *args: Any, static: tuple = ()) -> Any:
    """`module.apply(variables, *args, *static)` compiled as one program (see `init_variables`)."""
    return module.apply(variables, *args, *static)


def create_agent(
    cfg: AgentConfig,
    example_observation: dict,
    action_dim: int,
    seed: int = 0,
    backbone_params: Params | None = None,
) -> Agent:
    """A freshly initialised agent for single observations like `example_observation` (no batch axis).

    Backbone weights come from `backbone_params` if given, else from
    `cfg.encoder.pretrained_path` if set, else a random initialisation.
    """
    validate_agent_config(cfg)
    image_keys, state_key = observation_keys(cfg, example_observation)
    nets = build_networks(cfg, action_dim, image_keys)
    spec = UpdateSpec.from_config(cfg, action_dim, image_keys, state_key)
    rng = jax.random.PRNGKey(seed)
    rng, k_backbone, k_encoder, k_critic, k_actor = jax.random.split(rng, 5)

    obs = {k: jnp.asarray(v)[None] for k, v in example_observation.items()}
    maps: dict[str, jax.Array] = {}
    if image_keys:
        if backbone_params is None and cfg.encoder.pretrained_path:
            from agent.pretrained import load_backbone_params

            backbone_params = load_backbone_params(cfg.encoder.pretrained_path, cfg.encoder.backbone)
        if backbone_params is None:
            backbone_params = init_variables(nets.backbone, k_backbone, obs[image_keys[0]].astype(jnp.uint8))["params"]
        for key in image_keys:
            shape = jax.eval_shape(lambda p, x: nets.backbone.apply({"params": p}, x), backbone_params,
                                   obs[key].astype(jnp.uint8))
            maps[key] = jnp.zeros(shape.shape, jnp.float32)
    state = obs[state_key].astype(jnp.float32) if state_key else None
    encoder_params = init_variables(nets.encoder, k_encoder, maps, state, static=(False,)).get("params", {})
    features = apply_module(nets.encoder, {"params": encoder_params}, maps, state, static=(False,))
    actions = jnp.zeros((1, action_dim), jnp.float32)
    q_params = init_variables(nets.critic, k_critic, features, actions)["params"]
    actor_params = init_variables(nets.actor, k_actor, features)["params"]

    critic_params = {"encoder": encoder_params, "q": q_params}
    frozen: Params = {}
    if image_keys:
        if cfg.encoder.freeze_backbone:
            frozen = backbone_params
        else:
            critic_params["backbone"] = backbone_params

    value: Any = {}
    if cfg.iql.enabled:
        # Its own key from the critic's, so the other networks initialise as without IQL.
        value_params = init_variables(nets.value, jax.random.fold_in(k_critic, 1), features)["params"]
        value = TrainState.create(apply_fn=None, params=value_params, tx=adam(float(cfg.iql.value_lr)))

    sac = cfg.sac
    return Agent(
        actor=TrainState.create(apply_fn=None, params=actor_params, tx=adam(float(sac.actor_lr))),
        critic=TrainState.create(apply_fn=None, params=critic_params, tx=adam(float(sac.critic_lr))),
        target_critic_params=jax.tree.map(jnp.array, critic_params),
        temperature=TrainState.create(
            apply_fn=None,
            params={"log_temperature": jnp.asarray(np.log(sac.init_temperature), jnp.float32)},
            tx=adam(float(sac.temperature_lr)),
        ),
        lagrange=TrainState.create(
            apply_fn=None,
            params={"log_alpha": jnp.asarray(np.log(cfg.cql.init_lagrange_alpha), jnp.float32)},
            tx=adam(float(cfg.cql.alpha_lr)),
        ),
        frozen_backbone=frozen,
        value=value,
        rng=rng,
        nets=nets,
        spec=spec,
    )


def replace_spec(agent: Agent, section: str, **changes) -> Agent:
    """The same state with some settings of one config section changed, e.g.
    `replace_spec(agent, "cql", enabled=False)` (WSRL drops the CQL term online)."""
    updated = dataclasses.replace(getattr(agent.spec, section), **changes)
    return agent.replace(spec=dataclasses.replace(agent.spec, **{section: updated}))


# ---------------------------------------------------------------------------------------------
# Encoding


def backbone_params_of(agent: Agent, critic_params: Params) -> Params:
    return critic_params["backbone"] if "backbone" in critic_params else agent.frozen_backbone


def feature_maps(agent: Agent, backbone_params: Params, observations: dict) -> dict[str, jax.Array]:
    """Backbone feature maps per camera: uint8 images are encoded, float entries are cached features."""
    maps = {}
    for key in agent.spec.image_keys:
        x = observations[key]
        if x.dtype == jnp.uint8:
            fm = agent.nets.backbone.apply({"params": backbone_params}, x)
            maps[key] = jax.lax.stop_gradient(fm) if agent.spec.encoder.freeze_backbone else fm
        else:
            if not agent.spec.encoder.freeze_backbone:
                raise AgentConfigError(
                    f"observation '{key}' holds cached features, but the backbone is trainable "
                    "(agent.encoder.freeze_backbone=false): give raw uint8 images"
                )
            maps[key] = x.astype(jnp.float32)
    return maps


def encode(
    agent: Agent,
    critic_params: Params,
    observations: dict,
    *,
    train: bool = False,
    rng: jax.Array | None = None,
    maps: dict[str, jax.Array] | None = None,
) -> jax.Array:
    """Observation features from the critic's encoder (heads + proprio); `maps` skips the backbone."""
    if maps is None:
        maps = feature_maps(agent, backbone_params_of(agent, critic_params), observations)
    spec = agent.spec
    state = observations[spec.state_key].astype(jnp.float32) if spec.state_key else None
    rngs = {"dropout": rng} if train else {}
    return agent.nets.encoder.apply({"params": critic_params["encoder"]}, maps, state, train, rngs=rngs)


@partial(jax.jit, static_argnames=("backbone",))
def encode_frames(params: Params, frames_uint8: jax.Array, backbone: str = "resnet10") -> jax.Array:
    """Backbone features of uint8 frames (..., H, W, 3) -> float32 (..., h, w, 512).

    This is what the replay buffer stores per frame for the frozen-backbone feature cache.
    """
    return make_backbone(backbone).apply({"params": params}, frames_uint8)


@jax.jit
def _encode_with(agent: Agent, frames_uint8: jax.Array) -> jax.Array:
    return agent.nets.backbone.apply({"params": agent.frozen_backbone}, frames_uint8)


def agent_encode_frames(agent: Agent, frames_uint8: np.ndarray | jax.Array) -> jax.Array:
    """The agent's own frozen backbone applied to frames (..., H, W, 3) -> (..., h, w, 512)."""
    if agent.nets.backbone is None:
        raise AgentConfigError("this agent has no image keys, so there is no backbone to encode frames")
    if not agent.spec.encoder.freeze_backbone:
        raise AgentConfigError("features can only be cached for a frozen backbone (agent.encoder.freeze_backbone)")
    return _encode_with(agent, jnp.asarray(frames_uint8, jnp.uint8))


def frozen_feature_fn(get_agent: Callable[[], Agent]) -> Callable[[np.ndarray], np.ndarray]:
    """A replay buffer's `feature_fn` for the feature cache: the frozen backbone of `get_agent()`,
    read at call time (the learner passes its current agent, so a restored one after a resume)."""
    return lambda frames: np.asarray(agent_encode_frames(get_agent(), frames))


def uses_feature_cache(agent: Agent) -> bool:
    """True when a buffer may store per-frame backbone features instead of raw images."""
    return bool(agent.spec.image_keys) and agent.spec.encoder.freeze_backbone and not agent.spec.encoder.augment


# ---------------------------------------------------------------------------------------------
# Acting


def policy(agent: Agent, actor_params: Params, features: jax.Array) -> tuple[jax.Array, jax.Array]:
    return agent.nets.actor.apply({"params": actor_params}, features)


@jax.jit
def sample_actions(agent: Agent, observations: dict, key: jax.Array) -> jax.Array:
    """Stochastic actions for a batch of observations."""
    features = encode(agent, agent.critic.params, observations)
    mean, log_std = policy(agent, agent.actor.params, features)
    actions, _ = tanh_gaussian_sample(key, mean, log_std)
    return actions


@jax.jit
def eval_actions(agent: Agent, observations: dict) -> jax.Array:
    """Deterministic actions tanh(mean) for a batch of observations."""
    features = encode(agent, agent.critic.params, observations)
    mean, _ = policy(agent, agent.actor.params, features)
    return jnp.tanh(mean)


# ---------------------------------------------------------------------------------------------
# Ensembles (Off2On, agent/off2on.py): N agents stacked on a leading axis of every array leaf but
# the frozen backbone, which all members share (one copy, one encoding of each frame).


def is_ensemble(agent: Agent) -> bool:
    """A stacked ensemble has a step counter per member; an ordinary agent one scalar."""
    return np.ndim(agent.critic.step) == 1


def member_axes(agent: Agent) -> Agent:
    """`jax.vmap`'s in_axes/out_axes for an ensemble: axis 0 everywhere but the shared backbone."""
    return jax.tree.map(lambda _: 0, agent.replace(frozen_backbone={})).replace(frozen_backbone=None)


def ensemble_policy(ensemble: Agent, observations: dict) -> tuple[jax.Array, jax.Array]:
    """(mean, log_std) before tanh of the ensemble's one Gaussian: the members' means averaged and
    their standard deviations averaged (**choice**: the paper acts with "the ensemble's policy"
    and gives no rule; averaging std keeps a typical member's exploration instead of shrinking it)."""

    def one(agent: Agent) -> tuple[jax.Array, jax.Array]:
        return policy(agent, agent.actor.params, encode(agent, agent.critic.params, observations))

    means, log_stds = jax.vmap(one, in_axes=(member_axes(ensemble),))(ensemble)
    return jnp.mean(means, axis=0), jnp.log(jnp.mean(jnp.exp(log_stds), axis=0))


@jax.jit
def ensemble_sample_actions(ensemble: Agent, observations: dict, key: jax.Array) -> jax.Array:
    mean, log_std = ensemble_policy(ensemble, observations)
    actions, _ = tanh_gaussian_sample(key, mean, log_std)
    return actions


@jax.jit
def ensemble_eval_actions(ensemble: Agent, observations: dict) -> jax.Array:
    mean, _ = ensemble_policy(ensemble, observations)
    return jnp.tanh(mean)


def act(agent: Agent, observation: dict, key: jax.Array | None = None, deterministic: bool = False) -> np.ndarray:
    """One action for one (unbatched) observation, as a NumPy array; an ensemble acts as one."""
    obs = {k: np.asarray(v)[None] for k, v in observation.items()}
    ensemble = is_ensemble(agent)
    if deterministic or key is None:
        return np.asarray((ensemble_eval_actions if ensemble else eval_actions)(agent, obs)[0])
    return np.asarray((ensemble_sample_actions if ensemble else sample_actions)(agent, obs, key)[0])


def has_value_net(agent: Agent) -> bool:
    """Whether the agent carries IQL's value network (built with agent.iql.enabled)."""
    return isinstance(agent.value, TrainState)


def temperature_value(agent: Agent) -> jax.Array:
    return jnp.exp(agent.temperature.params["log_temperature"])


def count_params(tree: Params) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


__all__ = [
    "Agent",
    "Networks",
    "UpdateSpec",
    "act",
    "agent_encode_frames",
    "create_agent",
    "encode",
    "encode_frames",
    "ensemble_eval_actions",
    "ensemble_policy",
    "ensemble_sample_actions",
    "eval_actions",
    "feature_maps",
    "has_value_net",
    "is_ensemble",
    "member_axes",
    "replace_spec",
    "sample_actions",
    "uses_feature_cache",
]
