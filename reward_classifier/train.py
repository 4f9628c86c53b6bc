"""Training the success head on cached backbone features, and choosing its threshold.

The backbone is frozen, so each frame goes through it once (the feature cache; crop augmentation
adds random-shift copies of the training frames to that cache, each encoded once); one jitted step
then trains the head on a balanced batch (half successes, half failures) with binary
cross-entropy and Adam. Validation is on held-out episodes; the threshold is picked there for
the target false-positive rate (metrics.threshold_for_fpr).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState

from agent.vision import random_shift
from reward_classifier.config import ClassifierConfig
from reward_classifier.data import LabelledFrames, split_by_episode
from reward_classifier.metrics import classification_report, threshold_for_fpr
from reward_classifier.model import (
    SuccessHead,
    compute_features,
    init_backbone,
    init_head,
    make_feature_fn,
    make_head,
)


@dataclass
class TrainedClassifier:
    backbone_params: dict
    head_params: dict
    metadata: dict[str, Any]
    validation: LabelledFrames
    validation_probabilities: np.ndarray
    report: dict[str, Any]


def bce_loss(head: SuccessHead, params: dict, features: dict, labels: jax.Array, key: jax.Array) -> jax.Array:
    logits = head.apply({"params": params}, features, train=True, rngs={"dropout": key})
    return optax.sigmoid_binary_cross_entropy(logits, labels).mean()


def make_update_fn(head: SuccessHead) -> Callable:
    """jitted (state, features {camera: (N, h, w, c)}, labels (N,), batch indices, key) ->
    (state, loss). The cache stays on the device; only indices cross over each step."""

    @jax.jit
    def update(state: TrainState, features: dict, labels: jax.Array, indices: jax.Array, key: jax.Array):
        batch = {k: v[indices] for k, v in features.items()}
        loss, grads = jax.value_and_grad(lambda p: bce_loss(head, p, batch, labels[indices], key))(state.params)
        return state.apply_gradients(grads=grads), loss

    return update


def make_predict_fn(head: SuccessHead) -> Callable:
    @jax.jit
    def predict(params: dict, features: dict) -> jax.Array:
        return jax.nn.sigmoid(head.apply({"params": params}, features, train=False))

    return predict


def predict_in_batches(predict, params: dict, features: dict[str, np.ndarray], batch_size: int = 1024) -> np.ndarray:
    count = len(next(iter(features.values())))
    out = [np.asarray(predict(params, {k: v[s:s + batch_size] for k, v in features.items()}))
           for s in range(0, count, batch_size)]
    return np.concatenate(out) if out else np.zeros(0)


def balanced_indices(rng: np.random.Generator, positives: np.ndarray, negatives: np.ndarray,
                     batch_size: int) -> np.ndarray:
    half = batch_size // 2
    return np.concatenate([rng.choice(positives, half), rng.choice(negatives, batch_size - half)])


def shifted_copies(images: np.ndarray, copies: int, pad: int, key: jax.Array) -> np.ndarray:
    """`copies` random-shift versions of uint8 frames (N, H, W, 3), stacked copy after copy:
    (copies * N, H, W, 3). Each is the edge-padded frame cropped back at a random offset."""
    keys = jax.random.split(key, copies)
    return np.concatenate([np.asarray(random_shift(k, jnp.asarray(images), pad)) for k in keys])


def train_classifier(frames: LabelledFrames, cfg: ClassifierConfig, *, log: Callable[[int, dict], None] | None = None,
                     progress: bool = True) -> TrainedClassifier:
    """Train on `frames` per `cfg`; `log(step, values)` receives training and validation scalars."""
    from robot_env.progress import progress as progress_bar

    if cfg.batch_size < 2 or cfg.steps < 1:
        raise ValueError("classifier.batch_size must be >= 2 and classifier.steps >= 1")
    if cfg.augment_copies < 0 or cfg.augment_pad < 0:
        raise ValueError("classifier.augment_copies and classifier.augment_pad must be >= 0")
    train_mask, val_mask = split_by_episode(frames.episode, frames.labels, cfg.validation_fraction, cfg.seed)
    key = jax.random.PRNGKey(cfg.seed)
    backbone_key, head_key, key = jax.random.split(key, 3)
    image_shape = tuple(frames.images[cfg.image_keys[0]].shape[1:3])
    if cfg.pretrained_path:
        from agent.pretrained import load_backbone_params

        backbone_params = load_backbone_params(cfg.pretrained_path, cfg.backbone, "classifier.pretrained_path")
    else:
        backbone_params = init_backbone(cfg.backbone, image_shape, backbone_key)

    feature_fn = make_feature_fn(cfg.backbone)
    features: dict[str, np.ndarray] = {}
    augmented: dict[str, np.ndarray] = {}
    train_count = int(train_mask.sum())
    total = (len(frames) + cfg.augment_copies * train_count) * len(cfg.image_keys)
    with progress_bar(total=total, desc="backbone features", unit="frame", disable=not progress) as bar:
        for camera in cfg.image_keys:
            features[camera] = compute_features(feature_fn, backbone_params, frames.images[camera],
                                                cfg.feature_batch_size, bar.update)
            if cfg.augment_copies:
                key, shift_key = jax.random.split(key)
                shifted = shifted_copies(frames.images[camera][train_mask], cfg.augment_copies,
                                         cfg.augment_pad, shift_key)
                augmented[camera] = compute_features(feature_fn, backbone_params, shifted,
                                                     cfg.feature_batch_size, bar.update)
    feature_shape = features[cfg.image_keys[0]].shape[1:]

    head = make_head(cfg.image_keys, cfg.pooling, cfg.spatial_features, cfg.hidden_dim, cfg.dropout)
    state = TrainState.create(apply_fn=head.apply, params=init_head(head, feature_shape, head_key),
                              tx=optax.adam(cfg.learning_rate))
    train_features = {k: jnp.asarray(np.concatenate([v[train_mask], augmented[k]]) if augmented else v[train_mask])
                      for k, v in features.items()}
    val_features = {k: v[val_mask] for k, v in features.items()}
    train_labels = np.tile(frames.labels[train_mask], 1 + cfg.augment_copies)
    val_labels = frames.labels[val_mask]
    positives, negatives = np.flatnonzero(train_labels), np.flatnonzero(~train_labels)
    update, predict = make_update_fn(head), make_predict_fn(head)
    labels_device = jnp.asarray(train_labels, jnp.float32)
    rng = np.random.default_rng(cfg.seed)

    started = time.time()
    with progress_bar(range(1, cfg.steps + 1), desc="training head", unit="step", disable=not progress) as bar:
        for step in bar:
            key, step_key = jax.random.split(key)
            indices = jnp.asarray(balanced_indices(rng, positives, negatives, cfg.batch_size))
            state, loss = update(state, train_features, labels_device, indices, step_key)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                probabilities = predict_in_batches(predict, state.params, val_features)
                report = classification_report(val_labels, probabilities, 0.5)
                values = {"train/loss": float(loss), "val/loss": _bce(val_labels, probabilities),
                          "val/roc_auc": report["roc_auc"], "val/balanced_accuracy_at_0.5": report["balanced_accuracy"]}
                bar.set_postfix(loss=f"{float(loss):.4f}", val_auc=f"{report['roc_auc']:.4f}")
                if log is not None:
                    log(step, values)

    probabilities = predict_in_batches(predict, state.params, val_features)
    rule_threshold = threshold_for_fpr(probabilities[~val_labels], cfg.target_fpr)
    threshold = max(rule_threshold, cfg.min_threshold)
    report = classification_report(val_labels, probabilities, threshold)
    train_probabilities = predict_in_batches(predict, state.params, {k: np.asarray(v) for k, v in train_features.items()})
    report.update(
        target_fpr=cfg.target_fpr,
        min_threshold=cfg.min_threshold,
        # Before the floor; with the margin between the classes it shows how much slack there is.
        fpr_rule_threshold=rule_threshold,
        highest_failure_probability=float(probabilities[~val_labels].max()),
        lowest_success_probability=float(probabilities[val_labels].min()),
        validation_episodes=int(np.unique(frames.episode[val_mask]).size),
        training_episodes=int(np.unique(frames.episode[train_mask]).size),
        # Cached training examples: the frames plus their augment_copies shifted copies.
        training_examples=int(len(train_labels)),
        training_balanced_accuracy=classification_report(train_labels, train_probabilities, threshold)["balanced_accuracy"],
        training_seconds=time.time() - started,
    )
    metadata = {
        "image_keys": list(cfg.image_keys),
        "image_shape": list(image_shape),
        "feature_shape": list(feature_shape),
        "backbone": cfg.backbone,
        "pretrained_path": cfg.pretrained_path,
        "pooling": cfg.pooling,
        "spatial_features": cfg.spatial_features,
        "hidden_dim": cfg.hidden_dim,
        "dropout": cfg.dropout,
        "threshold": threshold,
        "target_fpr": cfg.target_fpr,
        "validation_fpr": report["fpr"],
        "training_config": dataclasses.asdict(cfg),
    }
    return TrainedClassifier(backbone_params, state.params, metadata, frames.subset(val_mask), probabilities, report)


def _bce(labels: np.ndarray, probabilities: np.ndarray) -> float:
    p = np.clip(probabilities, 1e-7, 1 - 1e-7)
    return float(-np.mean(np.where(labels, np.log(p), np.log(1 - p))))
