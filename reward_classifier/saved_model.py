"""A trained classifier on disk, and loading it back for inference.

    <dir>/classifier.msgpack   backbone and head parameters (flax msgpack: no pickle)
    <dir>/classifier.json      what the parameters mean: cameras, image size, backbone, pooling,
                               head sizes, the chosen threshold and how it was chosen

Both are written to temporary names and renamed, so a crash never leaves half a model. Loading
checks the metadata against the cameras it will be used with and names any mismatch.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from reward_classifier.model import init_backbone, init_head, make_head, make_probability_fn
from robot_env.errors import UserError

FORMAT_VERSION = 1
PARAMS_FILE = "classifier.msgpack"
META_FILE = "classifier.json"


class ClassifierLoadError(UserError, RuntimeError):
    """A classifier directory that is missing, corrupt, or made for other cameras."""




def _write_atomically(path: Path, data: bytes) -> None:
    temp = path.with_name(f".tmp-{path.name}")
    with open(temp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)


def save_classifier(directory: str | os.PathLike, backbone_params: dict, head_params: dict,
                    metadata: Mapping[str, Any]) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    params = jax.tree.map(np.asarray, {"backbone": backbone_params, "head": head_params})
    _write_atomically(directory / PARAMS_FILE, serialization.msgpack_serialize(params))
    meta = {"format_version": FORMAT_VERSION, "saved_at": time.time(), **metadata}
    _write_atomically(directory / META_FILE, json.dumps(meta, indent=2).encode())
    return directory


def read_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise ClassifierLoadError(
            f"no classifier in {directory} (missing {META_FILE}): train one with "
            f"`franka-rl train-classifier --data DIR --out {directory}`"
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ClassifierLoadError(f"{path} is unreadable ({exc}); retrain with `franka-rl train-classifier`") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise ClassifierLoadError(
            f"{path} has format version {meta.get('format_version')}, this code reads {FORMAT_VERSION}; "
            "retrain with `franka-rl train-classifier`"
        )
    return meta


def check_cameras(meta: Mapping[str, Any], image_shapes: Mapping[str, Sequence[int]], where: str,
                  model_dir: str | os.PathLike) -> None:
    """Raise ClassifierLoadError unless every camera the classifier was trained on is present at
    the image size it was trained on. `image_shapes` maps camera -> (H, W, 3)."""
    keys = list(meta["image_keys"])
    height, width = meta["image_shape"]
    missing = [key for key in keys if key not in image_shapes]
    wrong = {key: tuple(image_shapes[key][:2]) for key in keys
             if key in image_shapes and tuple(image_shapes[key][:2]) != (height, width)}
    if missing or wrong:
        have = {key: "x".join(map(str, shape[:2])) for key, shape in image_shapes.items()}
        problem = (f"{where} lacks camera(s) {missing}" if missing
                   else f"{where} has {', '.join(f'{k} at {h}x{w}' for k, (h, w) in wrong.items())}")
        raise ClassifierLoadError(
            f"classifier {model_dir} was trained on cameras {keys} at {height}x{width}, but {problem} "
            f"({where} has {have or 'no cameras'}): retrain it on frames from these cameras, or set "
            "env.cameras / env.image_height / env.image_width to match"
        )


class SuccessClassifier:
    """A loaded classifier: `probability(observation)` for one observation, `probabilities(images)`
    for a batch. The forward pass (backbone + head) is jitted and compiled on first use."""

    def __init__(self, backbone_params: dict, head_params: dict, meta: Mapping[str, Any], directory: str = ""):
        self.meta = dict(meta)
        self.directory = directory
        self.image_keys: tuple[str, ...] = tuple(meta["image_keys"])
        self.threshold = float(meta["threshold"])
        self.head = make_head(self.image_keys, meta["pooling"], meta["spatial_features"],
                              meta["hidden_dim"], meta["dropout"])
        self.backbone_params = jax.device_put(backbone_params)
        self.head_params = jax.device_put(head_params)
        self._probability = make_probability_fn(meta["backbone"], self.head)

    def check_observation_space(self, space: Any) -> None:
        """Fail with one line unless `space` (a gymnasium Dict) has this classifier's cameras."""
        shapes = {key: tuple(sub.shape) for key, sub in getattr(space, "spaces", {}).items()
                  if len(getattr(sub, "shape", ())) == 3}
        check_cameras(self.meta, shapes, "the env", self.directory)

    def probability(self, observation: Mapping[str, np.ndarray]) -> float:
        images = {key: np.asarray(observation[key])[None] for key in self.image_keys}
        return float(self._probability(self.backbone_params, self.head_params, images)[0])

    def probabilities(self, images: Mapping[str, np.ndarray], batch_size: int = 64,
                      progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Success probability of each frame of uint8 images {camera: (N, H, W, 3)};
        `progress(n)` is called after each batch of n frames."""
        count = len(images[self.image_keys[0]])
        out = []
        for start in range(0, count, batch_size):
            chunk = {k: np.asarray(images[k][start:start + batch_size]) for k in self.image_keys}
            size = len(chunk[self.image_keys[0]])
            if size < batch_size:  # pad: one compiled shape for every batch
                chunk = {k: np.concatenate([v, np.zeros((batch_size - size,) + v.shape[1:], v.dtype)])
                         for k, v in chunk.items()}
            out.append(np.asarray(self._probability(self.backbone_params, self.head_params, chunk))[:size])
            if progress is not None:
                progress(size)
        return np.concatenate(out) if out else np.zeros(0)


def load_classifier(directory: str | os.PathLike, image_shapes: Mapping[str, Sequence[int]] | None = None,
                    where: str = "the env") -> SuccessClassifier:
    """The classifier saved in `directory`. With `image_shapes` (camera -> (H, W, 3)) the cameras
    are checked first, before any parameter is read."""
    meta = read_metadata(directory)
    if image_shapes is not None:
        check_cameras(meta, image_shapes, where, directory)
    path = Path(directory) / PARAMS_FILE
    try:
        restored = serialization.msgpack_restore(path.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise ClassifierLoadError(f"cannot read {path} ({type(exc).__name__}: {exc}); retrain with "
                                  "`franka-rl train-classifier`") from None
    if not isinstance(restored, dict):
        raise ClassifierLoadError(f"{path} does not hold classifier parameters; retrain with "
                                  "`franka-rl train-classifier`")
    head = make_head(meta["image_keys"], meta["pooling"], meta["spatial_features"], meta["hidden_dim"],
                     meta["dropout"])
    image_shape = tuple(meta["image_shape"])
    key = jax.random.PRNGKey(0)
    backbone_template = jax.eval_shape(lambda: init_backbone(meta["backbone"], image_shape, key))
    feature_shape = tuple(meta["feature_shape"])
    head_template = jax.eval_shape(lambda: init_head(head, feature_shape, key))
    _check_tree(restored.get("backbone"), backbone_template, f"{path} (backbone {meta['backbone']})")
    _check_tree(restored.get("head"), head_template, f"{path} (head)")
    return SuccessClassifier(restored["backbone"], restored["head"], meta, str(directory))


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(leaf)) for path, leaf in leaves}


def _check_tree(params: Any, template: Any, source: str) -> None:
    if not isinstance(params, dict):
        raise ClassifierLoadError(f"{source}: parameters missing; retrain with `franka-rl train-classifier`")
    have, want = _flat_shapes(params), _flat_shapes(template)
    for name, shape in want.items():
        if have.get(name) != shape:
            found = "missing" if name not in have else f"shape {have[name]}"
            raise ClassifierLoadError(
                f"{source}: parameter {name} is {found}, the metadata implies {shape}; the files do not "
                "belong together: retrain with `franka-rl train-classifier`"
            )
