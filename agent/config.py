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
IQL_Q_AGGREGATIONS = ("subsample", "min", "mean")


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
class IQLConfig:
    """IQL offline pre-training (Kostrikov et al. 2021; ALGORITHMS.md lists IQL as an initialisation
    of WSRL): a value net V(s) regressed to an expectile of Q(s, a), Q regressed to
    r' + discount * mask * V(s'), the actor by advantage-weighted regression onto the data actions.
    Offline only: the WSRL switch turns it off online (agent/iql.py, docs/agent.md)."""

    enabled: bool = False
    # tau of the expectile loss |tau - 1(Q - V < 0)| (Q - V)^2. 0.7: the IQL authors' kitchen
    # config and wsrl's kitchen_iql/adroit_iql/locomotion_iql (0.9 for antmaze).
    expectile: float = 0.7
    # beta, the inverse temperature of the actor weights exp(beta * (Q - V)). 0.5: the IQL authors'
    # kitchen config and wsrl's kitchen_iql/adroit_iql; **choice** (3.0 locomotion, 10.0 antmaze).
    temperature: float = 0.5
    # The weights are clipped at this value (IQL's and wsrl's 100).
    adv_clip: float = 100.0
    # Adam rate of V (IQL authors and wsrl: 3e-4, as actor and critic).
    value_lr: float = 3e-4
    # **choice**: Q(s, a) for V's regression and the advantage, from the target critics: "subsample"
    # = min over agent.sac.critic_subsample members drawn without replacement (the TD target's rule;
    # with 2 critics IQL's clipped double Q), "min" over every member (wsrl's IQL, which has 2), "mean".
    q_aggregation: str = "subsample"


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
class Off2OnConfig:
    """Off2On (Lee et al. 2021): an ensemble of CQL agents pre-trained independently, fine-tuned
    online with SAC on balanced replay (agent/off2on.py, docs/agent.md "Off2On")."""

    enabled: bool = False
    # N: independently initialised agents, pre-trained on their own offline batches, acting as one
    # (mean of the members' Gaussian means and stds). 4: the paper's manipulation setting (5: locomotion).
    ensemble_size: int = 4
    # rho: the first `reference_count` online samples are drawn with probability rho, through the
    # default priority P0 = (M / reference_count) * rho / (1 - rho). The paper: 0.5 or 0.75.
    rho: float = 0.5
    reference_count: int = 1000
    # T in the priority w^(1/T) / E_offline[w^(1/T)]: 2.5 the paper's manipulation value (5: locomotion).
    priority_temperature: float = 2.5
    # w_psi: MLP on (encoder features, action), trained by the JS bound on uniform batches of
    # `ratio_batch_size` online and as many offline samples each env step (paper: 256, Adam 3e-4, (256, 128)).
    ratio_hidden_dims: list[int] = field(default_factory=lambda: [256, 128])
    ratio_lr: float = 3e-4
    ratio_batch_size: int = 256
    # **choice**: "softplus" (smooth, never stuck at 0) or "relu" (the reference code's output layer).
    ratio_output: str = "softplus"
    # The paper takes more training steps on the first online samples: `early_updates` learner
    # steps per env step while the online buffer holds fewer than `reference_count` transitions (1 = off).
    early_updates: int = 5


@dataclass
class AgentConfig:
    reward: RewardConfig = field(default_factory=RewardConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    sac: SACConfig = field(default_factory=SACConfig)
    cql: CQLConfig = field(default_factory=CQLConfig)
    iql: IQLConfig = field(default_factory=IQLConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)
    off2on: Off2OnConfig = field(default_factory=Off2OnConfig)


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
    net, enc, sac, cql, iql, online = cfg.network, cfg.encoder, cfg.sac, cfg.cql, cfg.iql, cfg.online
    off2on = cfg.off2on
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
        (0.0 < iql.expectile < 1.0, f"agent.iql.expectile must be in (0, 1), got {iql.expectile}"),
        (math.isfinite(iql.temperature) and iql.temperature >= 0,
         f"agent.iql.temperature must be finite and >= 0, got {iql.temperature}"),
        (math.isfinite(iql.adv_clip) and iql.adv_clip > 0, f"agent.iql.adv_clip must be finite and > 0, got {iql.adv_clip}"),
        _learning_rate("iql.value_lr", iql.value_lr),
        (iql.q_aggregation in IQL_Q_AGGREGATIONS,
         f"agent.iql.q_aggregation must be one of {IQL_Q_AGGREGATIONS}, got '{iql.q_aggregation}'"),
        (not (iql.enabled and cql.enabled),
         "agent.iql.enabled and agent.cql.enabled are both true: IQL pre-training has no CQL penalty; set "
         "agent.cql.enabled=false (--preset wsrl_iql) or agent.iql.enabled=false"),
        (online.offline_ratio == -1 or 0.0 <= online.offline_ratio <= 1.0,
         "agent.online.offline_ratio must be in [0, 1] or -1 (proportional)"),
        (online.warmup_steps >= 0, "agent.online.warmup_steps must be >= 0"),
        (off2on.ensemble_size >= 1, f"agent.off2on.ensemble_size must be >= 1, got {off2on.ensemble_size}"),
        (0.0 < off2on.rho < 1.0, f"agent.off2on.rho must be in (0, 1), got {off2on.rho}"),
        (off2on.reference_count >= 1, f"agent.off2on.reference_count must be >= 1, got {off2on.reference_count}"),
        (math.isfinite(off2on.priority_temperature) and off2on.priority_temperature > 0,
         f"agent.off2on.priority_temperature must be finite and > 0, got {off2on.priority_temperature}"),
        _dims("off2on.ratio_hidden_dims", off2on.ratio_hidden_dims),
        _learning_rate("off2on.ratio_lr", off2on.ratio_lr),
        (off2on.ratio_batch_size >= 1, f"agent.off2on.ratio_batch_size must be >= 1, got {off2on.ratio_batch_size}"),
        (off2on.ratio_output in ("softplus", "relu"),
         f"agent.off2on.ratio_output must be 'softplus' or 'relu', got '{off2on.ratio_output}'"),
        (off2on.early_updates >= 1, f"agent.off2on.early_updates must be >= 1, got {off2on.early_updates}"),
        (not (off2on.enabled and iql.enabled),
         "agent.off2on.enabled and agent.iql.enabled are both true: Off2On pre-trains CQL agents; set "
         "agent.iql.enabled=false"),
    ]
    for ok, message in checks:
        if not ok:
            raise AgentConfigError(message)
