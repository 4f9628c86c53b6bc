"""The reward classifier: a frozen backbone and a small head that label success from the wrist
cameras; its training, evaluation report and the reward wrapper the actor puts on the env.

    wrapped = wrap_with_classifier(env, cfg.classifier)   # reward/termination from the classifier

Commands: `franka-rl train-classifier`, `franka-rl eval-classifier` (docs/reward_classifier.md).
JAX is imported only by the modules that need it (model, train, saved_model).
"""

from __future__ import annotations

from reward_classifier.config import ClassifierConfig
from reward_classifier.wrapper import RewardClassifierWrapper, tcp_pose_check, wrap_with_classifier

__all__ = ["ClassifierConfig", "RewardClassifierWrapper", "tcp_pose_check", "wrap_with_classifier"]
