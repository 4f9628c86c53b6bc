"""The agent's configuration: every hyperparameter of ALGORITHMS.md, with its default.

Items ALGORITHMS.md marks **choice** are keys here (search for "choice"); docs/agent.md lists them.
The tree hangs under the root config as `agent:` (see franka_rl/config.py), and a preset in
`configs/agents/*.yaml` overrides parts of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from robot_env.errors import ConfigError

_ACTIVATIONS = ("tanh", "relu", "gelu", "swish", "elu")
BACKBONES = ("resnet10", "resnet18", "resnet34")


@dataclass
class RewardConfig:
    """Shaping of the stored raw reward: r' = scale * r + bias (robot: failure -1, success 0)."""

    scale: float = 1.0
    bias: float = -1.0
    # Sparse 0/1 task: an episode with no success gets G = r'_neg / (1 - discount) everywhere.
    sparse: bool = True
    # **choice**: a truncated (time-limit) step is not terminal for the TD target, so it
    # bootstraps; the robot reference treated timeouts as terminal (set false to reproduce).
    bootstrap_on_truncation: bool = True


@dataclass
class NetworkConfig:
    """Actor and critic MLPs (Dense -> LayerNorm -> activation in every hidden layer)."""

    # "mlp": hidden_dims; "residual": input Dense width, blocks of LN -> Dense block_width ->
    # act -> Dense width (added to the input), then act -> Dense width.
    critic_arch: str = "mlp"
    critic_hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    actor_arch: str = "mlp"
    actor_hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    residual_width: int = 256
    residual_block_width: int = 1024
    residual_blocks: int = 2
    # The robot runs used tanh.
    activation: str = "tanh"
    layer_norm: bool = True
    # Size E of the critic ensemble (vmapped).
    num_critics: int = 10
    # The policy's std is kept in [std_min, std_max].
    std_min: float = 1e-5
    std_max: float = 5.0


@dataclass
class EncoderConfig:
    """Observation encoder: a shared image backbone, one head per camera, a proprio head."""

    state_key: str = "state"
    # Image keys used when present in the observation; a state-only env simply has none.
    image_keys: list[str] = field(default_factory=lambda: ["wrist_1", "wrist_2"])
    backbone: str = "resnet10"
    # Local weights file ("" = random initialisation): the .npz `franka-rl weights fetch NAME`
    # prints (~ is expanded), or a published file as it is (resnet10: SERL's resnet10_params.pkl;
    # resnet18/34: a torchvision state dict, .pth). Nothing is downloaded at run time.
    pretrained_path: str = ""
    # Frozen by default: features can then be cached per stored frame (docs/agent.md).
    freeze_backbone: bool = True
    # Image-space random shift (pad `augment_pad` px with edge values, random crop back),
    # independently for s and s'. Only on the trainable path: a frozen, cached backbone
    # cannot see augmented pixels.
    augment: bool = False
    augment_pad: int = 4
    spatial_features: int = 8
    image_dropout: float = 0.1
    image_head_dim: int = 256
    # Proprio head Dense -> LayerNorm -> tanh; 0 feeds the state vector in unchanged.
    proprio_dim: int = 64


@dataclass
class SACConfig:
    discount: float = 0.98
    tau: float = 0.005
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    temperature_lr: float = 3e-4
    init_temperature: float = 0.01
    # H_target = -target_entropy_scale * d. **choice**: 0.5 (SERL, wsrl-robot online) or 1.0 (wsrl).
    target_entropy_scale: float = 0.5
    # **choice**: include -alpha * log pi(a'|s') in the TD target (default off).
    backup_entropy: bool = False
    # REDQ: the target is the min over this many target critics drawn without replacement.
    critic_subsample: int = 2
    # **choice**: aggregate the ensemble for the actor loss by "mean" (REDQ/RLPD/SERL) or "min" (wsrl).
    actor_q_aggregation: str = "mean"
    # Max-target backup: draw k next actions, take the max over them of the subsampled min.
    max_target_backup: bool = False
    max_target_num_actions: int = 10
    batch_size: int = 256
    # Critic:actor update ratio; per learner step, utd - 1 critic-only updates, then one full update.
    utd: int = 4
    # **choice**: evaluation acts with the mean action (HIL-SERL evaluates stochastically).
    deterministic_eval: bool = True


@dataclass
class CQLConfig:
    """The CQL penalty and Cal-QL's bound (ALGORITHMS.md, "CQL and Cal-QL")."""

    enabled: bool = False
    # Cal-QL's change: policy-sampled Q values are lower-bounded by the Monte-Carlo return.
    calql_bound: bool = True
    alpha: float = 5.0
    n_actions: int = 10
    temperature: float = 1.0
    importance_sampling: bool = True
    # **choice**: 0 applies the penalty to every member; k > 0 to k random members per update (wsrl: 2).
    penalty_members: int = 0
    # Lagrange variant: learn alpha so that the mean CQL diff matches target_action_gap.
    lagrange: bool = False
    target_action_gap: float = 0.8
    alpha_lr: float = 3e-4
    init_lagrange_alpha: float = 1.0


@dataclass
class OnlineConfig:
    """Online phase: WSRL (default), RLPD/SERL and Cal-QL fine-tuning differ only in these keys."""

    # WSRL drops the CQL term online; Cal-QL fine-tuning keeps it with `cql_alpha`.
    keep_cql: bool = False
    cql_alpha: float = 0.5
    # Fraction of each batch drawn from offline data; -1 = proportional to the buffers' sizes.
    offline_ratio: float = 0.0
    # WSRL warm-up: act with the frozen pre-trained policy for this many env steps, no updates.
    warmup_steps: int = 5000


@dataclass
class AgentConfig:
    reward: RewardConfig = field(default_factory=RewardConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    sac: SACConfig = field(default_factory=SACConfig)
    cql: CQLConfig = field(default_factory=CQLConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)


class AgentConfigError(ConfigError):
    """An agent setting that cannot work; the message names the key."""


def _learning_rate(key: str, value: float) -> tuple[bool, str]:
    # An optimiser takes a negative or NaN rate without complaint and then climbs the loss or
    # fills the parameters with NaN, so a bad rate must stop the run before it starts.
    return math.isfinite(value) and value > 0, f"agent.{key} must be a finite number > 0, got {value}"


def _dims(key: str, dims: list[int]) -> tuple[bool, str]:
    return bool(dims) and all(d >= 1 for d in dims), f"agent.{key} must be a non-empty list of sizes >= 1, got {list(dims)}"


def validate_agent_config(cfg: AgentConfig) -> None:
    """Raise AgentConfigError naming the first key whose value cannot work."""
    net, enc, sac, cql, online = cfg.network, cfg.encoder, cfg.sac, cfg.cql, cfg.online
    checks = [
        (math.isfinite(cfg.reward.scale) and cfg.reward.scale != 0,
         f"agent.reward.scale must be a finite non-zero number, got {cfg.reward.scale}"),
        (math.isfinite(cfg.reward.bias), f"agent.reward.bias must be finite, got {cfg.reward.bias}"),
        _learning_rate("sac.actor_lr", sac.actor_lr),
        _learning_rate("sac.critic_lr", sac.critic_lr),
        _learning_rate("sac.temperature_lr", sac.temperature_lr),
        _learning_rate("cql.alpha_lr", cql.alpha_lr),
        _dims("network.critic_hidden_dims", net.critic_hidden_dims),
        _dims("network.actor_hidden_dims", net.actor_hidden_dims),
        (min(net.residual_width, net.residual_block_width) >= 1 and net.residual_blocks >= 0,
         "agent.network.residual_width and residual_block_width must be >= 1, residual_blocks >= 0"),
        (bool(enc.state_key), "agent.encoder.state_key must not be empty"),
        (enc.augment_pad >= 0, f"agent.encoder.augment_pad must be >= 0, got {enc.augment_pad}"),
        (enc.spatial_features >= 1, f"agent.encoder.spatial_features must be >= 1, got {enc.spatial_features}"),
        (0.0 <= enc.image_dropout < 1.0, f"agent.encoder.image_dropout must be in [0, 1), got {enc.image_dropout}"),
        (enc.image_head_dim >= 1, f"agent.encoder.image_head_dim must be >= 1, got {enc.image_head_dim}"),
        (enc.proprio_dim >= 0, f"agent.encoder.proprio_dim must be >= 0 (0 = raw state), got {enc.proprio_dim}"),
        (math.isfinite(sac.target_entropy_scale) and sac.target_entropy_scale >= 0,
         f"agent.sac.target_entropy_scale must be finite and >= 0, got {sac.target_entropy_scale}"),
        (math.isfinite(cql.alpha) and cql.alpha >= 0, f"agent.cql.alpha must be finite and >= 0, got {cql.alpha}"),
        (math.isfinite(cql.target_action_gap), f"agent.cql.target_action_gap must be finite, got {cql.target_action_gap}"),
        (math.isfinite(online.cql_alpha) and online.cql_alpha >= 0,
         f"agent.online.cql_alpha must be finite and >= 0, got {online.cql_alpha}"),
        (net.critic_arch in ("mlp", "residual"), "agent.network.critic_arch must be 'mlp' or 'residual'"),
        (net.actor_arch in ("mlp", "residual"), "agent.network.actor_arch must be 'mlp' or 'residual'"),
        (net.activation in _ACTIVATIONS, f"agent.network.activation must be one of {_ACTIVATIONS}"),
        (net.num_critics >= 1, "agent.network.num_critics must be >= 1"),
        (0 < net.std_min < net.std_max, "agent.network.std_min must be in (0, std_max)"),
        (enc.backbone in BACKBONES, f"agent.encoder.backbone must be one of {BACKBONES}"),
        (0.0 <= sac.discount < 1.0, "agent.sac.discount must be in [0, 1)"),
        (0.0 < sac.tau <= 1.0, "agent.sac.tau must be in (0, 1]"),
        (1 <= sac.critic_subsample <= net.num_critics,
         "agent.sac.critic_subsample must be between 1 and agent.network.num_critics"),
        (sac.actor_q_aggregation in ("mean", "min"), "agent.sac.actor_q_aggregation must be 'mean' or 'min'"),
        (sac.utd >= 1, "agent.sac.utd must be >= 1"),
        (sac.batch_size >= 1, "agent.sac.batch_size must be >= 1"),
        (sac.max_target_num_actions >= 1, "agent.sac.max_target_num_actions must be >= 1"),
        (sac.init_temperature > 0, "agent.sac.init_temperature must be > 0"),
        (cql.n_actions >= 1, "agent.cql.n_actions must be >= 1"),
        (cql.temperature > 0, "agent.cql.temperature must be > 0"),
        (0 <= cql.penalty_members <= net.num_critics,
         "agent.cql.penalty_members must be between 0 (all) and agent.network.num_critics"),
        (cql.init_lagrange_alpha > 0, "agent.cql.init_lagrange_alpha must be > 0"),
        (online.offline_ratio == -1 or 0.0 <= online.offline_ratio <= 1.0,
         "agent.online.offline_ratio must be in [0, 1] or -1 (proportional)"),
        (online.warmup_steps >= 0, "agent.online.warmup_steps must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise AgentConfigError(message)
