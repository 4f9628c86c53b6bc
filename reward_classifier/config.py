"""Configuration of the reward classifier: its model, training, threshold rule and reward wrapper.

Hangs under the root config as `classifier:` (franka_rl/config.py). `train-classifier` and
`eval-classifier` read the model and training keys; the actor reads `enabled`, `model_dir` and
the wrapper keys when it wraps the env with `reward_classifier.wrap_with_classifier`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from agent.config import BACKBONES
from robot_env.errors import ConfigError

POOLINGS = ("spatial", "mean", "flatten")


@dataclass
class ClassifierConfig:
    # The actor replaces the task's reward and termination with the classifier's (model_dir).
    enabled: bool = False
    # A trained classifier (train-classifier's output directory). Empty: <output_dir>/classifier.
    model_dir: str = ""

    # --- Model: one frozen backbone shared by the cameras, per-camera pooling, then the head
    # Dense hidden_dim -> dropout -> LayerNorm -> ReLU -> Dense 1 (a logit).
    image_keys: list[str] = field(default_factory=lambda: ["wrist_1", "wrist_2"])
    backbone: str = "resnet10"
    # Local backbone weights ("" = random initialisation, saved with the model): the .npz
    # `franka-rl weights fetch NAME` prints, or a published file. Nothing is downloaded at run time.
    pretrained_path: str = ""
    # How each camera's feature map becomes a vector: "spatial" (learned spatial embeddings,
    # as the agent's encoder), "mean" (global average) or "flatten" (every cell kept).
    pooling: str = "spatial"
    spatial_features: int = 8
    hidden_dim: int = 256
    dropout: float = 0.1

    # --- Training (on cached backbone features: the backbone is frozen, so each frame's features
    # are computed once).
    learning_rate: float = 1e-4
    # Balanced: half positives, half negatives.
    batch_size: int = 256
    steps: int = 1500
    # Fraction of episodes (not frames) held out for validation and the threshold.
    validation_fraction: float = 0.2
    eval_every: int = 250
    # Frames per backbone call when building the feature cache.
    feature_batch_size: int = 128
    # Crop augmentation on the frozen path: this many random-shift copies of every training frame
    # (pad `augment_pad` px with edge values, crop back at a random offset, each camera on its
    # own) go through the backbone once and join the cache, labelled as their originals. Each
    # copy costs one more backbone pass over the training frames. 0 = off (enough in the twin);
    # on the robot, where the cameras shift a little between sessions, 2-4 is a sound start.
    augment_copies: int = 0
    augment_pad: int = 4
    seed: int = 0

    # --- Threshold: the lowest probability threshold whose false-positive rate on the validation
    # split is at most target_fpr, but never below min_threshold.
    target_fpr: float = 0.01
    min_threshold: float = 0.5

    # --- Reward wrapper.
    # Use this threshold instead of the one stored with the model (None: the stored one).
    threshold: float | None = None
    # Success only after this many consecutive frames above the threshold (1: the first one).
    debounce_steps: int = 1
    # Also require the TCP within pose_tolerance_m of the task's target position.
    pose_check: bool = False
    # 0: the task's success_position_tolerance. The twin counts success from 2 cm deep, 1 cm
    # above the target pose, so a pose check there needs about 0.012.
    pose_tolerance_m: float = 0.0


def validate_classifier_config(cfg: ClassifierConfig) -> None:
    """Raise ConfigError naming the first `classifier.*` value that cannot work."""
    checks = [
        (bool(cfg.image_keys), "classifier.image_keys must name at least one camera"),
        (cfg.backbone in BACKBONES, f"classifier.backbone must be one of {BACKBONES}, got '{cfg.backbone}'"),
        (cfg.pooling in POOLINGS, f"classifier.pooling must be one of {POOLINGS}, got '{cfg.pooling}'"),
        (cfg.spatial_features >= 1, f"classifier.spatial_features must be >= 1, got {cfg.spatial_features}"),
        (cfg.hidden_dim >= 1, f"classifier.hidden_dim must be >= 1, got {cfg.hidden_dim}"),
        (0 <= cfg.dropout < 1, f"classifier.dropout must be in [0, 1), got {cfg.dropout}"),
        (math.isfinite(cfg.learning_rate) and cfg.learning_rate > 0,
         f"classifier.learning_rate must be a finite number > 0, got {cfg.learning_rate}"),
        # Balanced batches: half positives, half negatives, so at least one of each.
        (cfg.batch_size >= 2, f"classifier.batch_size must be >= 2, got {cfg.batch_size}"),
        (cfg.steps >= 1, f"classifier.steps must be >= 1, got {cfg.steps}"),
        (0 < cfg.validation_fraction < 1,
         f"classifier.validation_fraction must be in (0, 1), got {cfg.validation_fraction}"),
        (cfg.eval_every >= 1, f"classifier.eval_every must be >= 1, got {cfg.eval_every}"),
        (cfg.feature_batch_size >= 1, f"classifier.feature_batch_size must be >= 1, got {cfg.feature_batch_size}"),
        (cfg.augment_copies >= 0, f"classifier.augment_copies must be >= 0, got {cfg.augment_copies}"),
        (cfg.augment_pad >= 0, f"classifier.augment_pad must be >= 0, got {cfg.augment_pad}"),
        (0 <= cfg.target_fpr <= 1, f"classifier.target_fpr must be in [0, 1], got {cfg.target_fpr}"),
        (0 <= cfg.min_threshold < 1, f"classifier.min_threshold must be in [0, 1), got {cfg.min_threshold}"),
        (cfg.threshold is None or 0 <= cfg.threshold < 1,
         f"classifier.threshold must be null (the stored one) or in [0, 1), got {cfg.threshold}"),
        (cfg.debounce_steps >= 1, f"classifier.debounce_steps must be >= 1, got {cfg.debounce_steps}"),
        (cfg.pose_tolerance_m >= 0, f"classifier.pose_tolerance_m must be >= 0 (0 = the task's), got {cfg.pose_tolerance_m}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
