"""LeRobotDataset v3 in and out: this project's episodes <-> a LeRobot dataset folder.

Written with this project's own code (pyarrow + pandas for the tables, PyAV for the MP4s), so
neither direction needs the `lerobot` package. The folder follows LeRobot's v3 layout:

    meta/info.json                                   codebase_version "v3.0", fps, features, paths
    meta/tasks.parquet                               task text -> task_index
    meta/stats.json                                  min / max / mean / std / count per feature
    meta/episodes/chunk-000/file-000.parquet         one row per episode: length, frame range,
                                                     data and video file, video time range
    data/chunk-000/file-000.parquet                  one row per frame
    videos/observation.images.<camera>/chunk-000/file-000.mp4   every episode back to back

Features (frame t of an episode; `shape` as LeRobot writes it):

    observation.state          (D,)  float32   o_t["state"]
    observation.images.<cam>   video           o_t[<cam>], H.264 (LOSSY yuv420p, or LOSSLESS rgb24)
    action                     (A,)  float32   a_t, the executed action
    next.reward                (1,)  float32   r_t, raw
    next.done                  (1,)  bool      terminated_t or truncated_t
    next.terminated            (1,)  bool
    next.truncated             (1,)  bool
    next.success               (1,)  bool      info["success"] of step t
    intervened                 (1,)  bool      a teleop device drove step t
    final_observation          (1,)  bool      True only on the extra last frame (see below)
    info.<key> / frame_info.<key>              other per-step / per-observation extras

An episode of T steps holds T + 1 observations, LeRobot frames one observation each; so an
exported episode has T + 1 frames, the last holding o_T with `final_observation` True, a zero
action, zero reward and the last step's flags repeated. Importing a folder that lacks
`final_observation` (one LeRobot itself recorded) reads N frames as N steps and repeats the last
frame as the final observation, which is what LeRobot's own replay-buffer conversion does.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from agent.data.episodes import Episode, make_metadata
from robot_env.errors import UserError

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
TASKS_PATH = "meta/tasks.parquet"
STATS_PATH = "meta/stats.json"
EPISODES_DIR = "meta/episodes"
DATA_DIR = "data"
FILE_PATTERN = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = DATA_DIR + "/" + FILE_PATTERN + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + FILE_PATTERN + ".mp4"
EPISODES_PATH = EPISODES_DIR + "/" + FILE_PATTERN + ".parquet"
CHUNK_SIZE = 1000  # files per chunk folder
DATA_FILE_MB = 100
VIDEO_FILE_MB = 200

STATE = "observation.state"
IMAGE_PREFIX = "observation.images."
ACTION = "action"
REWARD = "next.reward"
DONE = "next.done"
TERMINATED = "next.terminated"
TRUNCATED = "next.truncated"
SUCCESS = "next.success"
INTERVENED = "intervened"
FINAL = "final_observation"
INFO_PREFIX = "info."
FRAME_INFO_PREFIX = "frame_info."
METADATA_COLUMN = "franka_rl/metadata"
INDEX_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")


@dataclass(frozen=True)
class VideoCodec:
    encoder: str      # PyAV/FFmpeg encoder name
    codec: str        # what info.json calls it
    pix_fmt: str
    options: tuple[tuple[str, str], ...]


# H.264 in yuv420p: what browsers (LeRobot's visualiser) and LeRobot's decoders play. Lossy: the
# colour planes are subsampled 2x2, so small or sharp images come back several grey levels off
# (about 6 on average for the twin's 32x32 frames, less at 128x128); `crf` 10 keeps the rest close.
LOSSY = VideoCodec("libx264", "h264", "yuv420p", (("crf", "10"), ("g", "2")))
# H.264 in RGB with crf 0: frames come back bit-exact, but browsers do not play this profile.
LOSSLESS = VideoCodec("libx264rgb", "h264", "rgb24", (("crf", "0"), ("g", "2")))


class LeRobotError(UserError, ValueError):
    """A LeRobot dataset that cannot be written or read; names the feature or file."""


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def is_lerobot_dataset(path: str | os.PathLike) -> bool:
    """Whether `path` is a LeRobot dataset folder (it has meta/info.json)."""
    return (Path(path) / INFO_PATH).is_file()


# ------------------------------------------------------------------------------------- export


def _scalar_feature(dtype: str) -> dict[str, Any]:
    return {"dtype": dtype, "shape": [1], "names": None}


def _vector_names(prefix: str, size: int) -> list[str]:
    return [f"{prefix}_{i}" for i in range(size)]


def _state_names(size: int) -> list[str]:
    from robot_env.env import STATE_LAYOUT

    names: list[str] = []
    for key, part in STATE_LAYOUT.items():
        width = part.stop - part.start
        names.extend([key] if width == 1 else [f"{key}_{i}" for i in range(width)])
    return names if len(names) == size else _vector_names("state", size)


def _extra_feature(values: np.ndarray) -> dict[str, Any]:
    shape = list(values.shape[1:]) or [1]
    dtype = "bool" if values.dtype == bool else str(values.dtype)
    if values.dtype.kind not in "biuf" or len(shape) != 1:
        raise LeRobotError(f"cannot write an extra of dtype {values.dtype} and shape {values.shape[1:]}: "
                           "LeRobot features here are numeric scalars or vectors")
    return {"dtype": dtype, "shape": shape, "names": None}


def _video_info(height: int, width: int, fps: int, codec: VideoCodec) -> dict[str, Any]:
    return {"video.height": height, "video.width": width, "video.codec": codec.codec,
            "video.pix_fmt": codec.pix_fmt, "video.is_depth_map": False, "video.fps": fps,
            "video.channels": 3, "has_audio": False}


def _episode_fps(episodes: Sequence[Episode], fps: float | None) -> int:
    if fps is None:
        rates = {e.metadata.get("control_hz") for e in episodes}
        if None in rates or len(rates) != 1:
            found = sorted(str(r) for r in rates)
            raise LeRobotError(f"the episodes' metadata gives control_hz {', '.join(found)}: LeRobot needs one "
                               "frame rate; pass --fps N (the control rate they were recorded at)")
        fps = float(rates.pop())
    if float(fps) <= 0 or float(fps) != int(fps):
        raise LeRobotError(f"fps {fps}: LeRobot datasets need a positive whole number of frames per second")
    return int(fps)


class _VideoFile:
    """One MP4 being written: frames appended episode after episode, pts = frame count."""

    def __init__(self, path: Path, height: int, width: int, fps: int, codec: VideoCodec):
        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.frames = 0
        self.container = av.open(str(path), "w")
        self.stream = self.container.add_stream(codec.encoder, rate=fps, options=dict(codec.options))
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = codec.pix_fmt
        self.stream.time_base = Fraction(1, fps)

    def write(self, frames: np.ndarray) -> None:
        import av

        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.frames
            self.frames += 1
            for packet in self.stream.encode(frame):
                self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


class _Stats:
    """Running min / max / sum / sum of squares per feature (images per channel, in [0, 1])."""

    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {}

    def add(self, key: str, values: np.ndarray, image: bool = False) -> None:
        values = np.asarray(values, np.float64)
        if image:  # (N, H, W, 3) -> per channel
            values = values.reshape(-1, values.shape[-1]) / 255.0
        else:
            values = values.reshape(values.shape[0], -1)
        part = [values.min(0), values.max(0), values.sum(0), np.square(values).sum(0), np.array(values.shape[0])]
        if key in self.parts:
            old = self.parts[key]
            part = [np.minimum(old[0], part[0]), np.maximum(old[1], part[1]), old[2] + part[2],
                    old[3] + part[3], old[4] + part[4]]
        self.parts[key] = part

    def as_json(self, image_keys: Iterable[str]) -> dict[str, dict[str, list]]:
        images = set(image_keys)
        out = {}
        for key, (low, high, total, squares, count) in self.parts.items():
            mean = total / max(int(count), 1)
            std = np.sqrt(np.maximum(squares / max(int(count), 1) - mean**2, 0.0))
            shape = (-1, 1, 1) if key in images else (-1,)
            out[key] = {name: value.reshape(shape).tolist() for name, value in
                        (("min", low), ("max", high), ("mean", mean), ("std", std))}
            out[key]["count"] = [int(count)]
        return out


@dataclass
class LeRobotExport:
    root: Path
    episodes: int
    frames: int
    fps: int
    tasks: list[str]


def export_lerobot(episodes: Iterable[Episode], root: str | os.PathLike, *, task: str | None = None,
                   fps: float | None = None, robot_type: str = "franka",
                   lossless: bool = False) -> LeRobotExport:
    """Write `episodes` as a new LeRobotDataset v3 folder `root` (refused if it exists and is not
    empty). `fps` defaults to the episodes' `control_hz`; `task` to each episode's metadata task;
    `lossless` picks the bit-exact video codec (LOSSLESS) over the browser-friendly one (LOSSY).
    Written into a temporary folder beside `root` and renamed when complete."""
    codec = LOSSLESS if lossless else LOSSY
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise LeRobotError(f"{root} exists and is not empty: give a new folder for the LeRobot dataset")
    episodes = list(episodes)
    episodes = [e for e in episodes if len(e) > 0]
    if not episodes:
        raise LeRobotError("no episodes (with at least one step) to export")
    rate = _episode_fps(episodes, fps)
    first = episodes[0]
    cameras = [k for k, v in first.observations.items() if v.dtype == np.uint8 and v.ndim == 4]
    others = [k for k in first.observations if k not in cameras and k != "state"]
    if "state" not in first.observations or others:
        raise LeRobotError(f"observations {sorted(first.observations)}: LeRobot export needs 'state' and "
                           f"uint8 camera frames; cannot write {others or ['(no state)']}")
    for index, episode in enumerate(episodes):
        if episode.observations.keys() != first.observations.keys() or \
                episode.actions.shape[1:] != first.actions.shape[1:] or \
                episode.info.keys() != first.info.keys() or episode.frame_info.keys() != first.frame_info.keys():
            raise LeRobotError(f"episode {index} has observations {sorted(episode.observations)}, actions "
                               f"{episode.actions.shape[1:]}, info {sorted(episode.info)}, frame_info "
                               f"{sorted(episode.frame_info)}; the first has {sorted(first.observations)}, "
                               f"{first.actions.shape[1:]}, {sorted(first.info)}, {sorted(first.frame_info)}")
        for camera in cameras:
            if episode.observations[camera].shape[1:] != first.observations[camera].shape[1:]:
                raise LeRobotError(f"camera '{camera}' changes size in episode {index}")
    state_dim = first.observations["state"].shape[1]
    action_dim = first.actions.shape[1]
    features: dict[str, dict[str, Any]] = {
        STATE: {"dtype": "float32", "shape": [state_dim], "names": _state_names(state_dim)},
        ACTION: {"dtype": "float32", "shape": [action_dim], "names": _vector_names("action", action_dim)},
    }
    for camera in cameras:
        height, width = first.observations[camera].shape[1:3]
        if not lossless and (height % 2 or width % 2):
            raise LeRobotError(f"camera '{camera}' is {height}x{width}: H.264 yuv420p video needs even sizes")
        features[IMAGE_PREFIX + camera] = {"dtype": "video", "shape": [int(height), int(width), 3],
                                           "names": ["height", "width", "channels"],
                                           "info": _video_info(int(height), int(width), rate, codec)}
    for name in (REWARD,):
        features[name] = _scalar_feature("float32")
    for name in (DONE, TERMINATED, TRUNCATED, SUCCESS, INTERVENED, FINAL):
        features[name] = _scalar_feature("bool")
    extra_info = [k for k in first.info if k != "success"]
    for key in extra_info:
        features[INFO_PREFIX + key] = _extra_feature(first.info[key])
    for key in first.frame_info:
        features[FRAME_INFO_PREFIX + key] = _extra_feature(first.frame_info[key])
    features.update({"timestamp": _scalar_feature("float32"), "frame_index": _scalar_feature("int64"),
                     "episode_index": _scalar_feature("int64"), "index": _scalar_feature("int64"),
                     "task_index": _scalar_feature("int64")})

    root.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".tmp-{root.name}-", dir=root.parent))
    try:
        summary = _write(temp, episodes, features, cameras, extra_info, rate, task, robot_type, codec, pa, pq)
        if root.exists():
            root.rmdir()
        os.replace(temp, root)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    summary.root = root
    return summary


def _arrow_column(values: np.ndarray, feature: dict[str, Any], pa):
    values = np.asarray(values)
    if feature["shape"] == [1]:
        return pa.array(values.reshape(-1).astype(feature["dtype"]))
    flat = values.reshape(values.shape[0], -1).astype(feature["dtype"])
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


def _write(root: Path, episodes: Sequence[Episode], features: dict[str, dict], cameras: list[str],
           extra_info: list[str], fps: int, task: str | None, robot_type: str, codec: VideoCodec,
           pa, pq) -> LeRobotExport:
    import pandas as pd

    tasks: list[str] = []
    stats = _Stats()
    videos: dict[str, _VideoFile] = {}
    video_files = {camera: 0 for camera in cameras}
    data_file, data_rows, data_writer = 0, 0, None
    data_bytes = 0
    episode_rows: list[dict[str, Any]] = []
    total = 0
    try:
        for episode_index, episode in enumerate(episodes):
            text = task or str(episode.metadata.get("task") or "unspecified task")
            if text not in tasks:
                tasks.append(text)
            steps = len(episode)
            frames = steps + 1

            def pad(values: np.ndarray, fill: Any = None) -> np.ndarray:
                values = np.asarray(values)
                last = np.zeros_like(values[:1]) if fill is None else np.full_like(values[:1], fill)
                return np.concatenate([values, last])

            flags_last = lambda values: np.concatenate([values, values[-1:]])  # noqa: E731
            done = episode.terminated | episode.truncated
            success = np.asarray(episode.info.get("success", np.zeros(steps, bool)), bool)
            columns: dict[str, np.ndarray] = {
                STATE: np.asarray(episode.observations["state"], np.float32),
                ACTION: pad(np.asarray(episode.actions, np.float32)),
                REWARD: pad(np.asarray(episode.rewards, np.float32)),
                DONE: flags_last(done), TERMINATED: flags_last(episode.terminated),
                TRUNCATED: flags_last(episode.truncated), SUCCESS: flags_last(success),
                INTERVENED: pad(episode.intervened.astype(bool)),
                FINAL: np.arange(frames) == steps,
            }
            for key in extra_info:
                columns[INFO_PREFIX + key] = pad(episode.info[key])
            for key in episode.frame_info:
                columns[FRAME_INFO_PREFIX + key] = np.asarray(episode.frame_info[key])
            for key, values in columns.items():
                if values.dtype != bool:
                    stats.add(key, values)
            columns.update({
                "timestamp": (np.arange(frames) / fps).astype(np.float32),
                "frame_index": np.arange(frames), "episode_index": np.full(frames, episode_index),
                "index": np.arange(total, total + frames), "task_index": np.full(frames, tasks.index(text)),
            })
            table = pa.table({key: _arrow_column(values, features[key], pa) for key, values in columns.items()})
            if data_writer is not None and data_bytes + table.nbytes > DATA_FILE_MB * 1e6:
                data_writer.close()
                data_writer, data_file, data_bytes = None, data_file + 1, 0
            if data_writer is None:
                path = root / DATA_PATH.format(chunk_index=data_file // CHUNK_SIZE, file_index=data_file % CHUNK_SIZE)
                path.parent.mkdir(parents=True, exist_ok=True)
                data_writer = pq.ParquetWriter(path, table.schema, compression="snappy")
            data_writer.write_table(table)
            data_bytes += table.nbytes
            data_rows += frames
            row: dict[str, Any] = {
                "episode_index": episode_index, "tasks": [text], "length": frames,
                "data/chunk_index": data_file // CHUNK_SIZE, "data/file_index": data_file % CHUNK_SIZE,
                "dataset_from_index": total, "dataset_to_index": total + frames,
            }
            for camera in cameras:
                key = IMAGE_PREFIX + camera
                images = episode.observations[camera]
                stats.add(key, images, image=True)
                video = videos.get(camera)
                if video is not None and video.path.stat().st_size > VIDEO_FILE_MB * 1e6:
                    video.close()
                    video, video_files[camera] = None, video_files[camera] + 1
                if video is None:
                    number = video_files[camera]
                    path = root / VIDEO_PATH.format(video_key=key, chunk_index=number // CHUNK_SIZE,
                                                    file_index=number % CHUNK_SIZE)
                    video = videos[camera] = _VideoFile(path, images.shape[1], images.shape[2], fps, codec)
                start = video.frames
                video.write(images)
                row.update({f"videos/{key}/chunk_index": video_files[camera] // CHUNK_SIZE,
                            f"videos/{key}/file_index": video_files[camera] % CHUNK_SIZE,
                            f"videos/{key}/from_timestamp": start / fps,
                            f"videos/{key}/to_timestamp": video.frames / fps})
            row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
                        METADATA_COLUMN: json.dumps(episode.metadata, sort_keys=True)})
            episode_rows.append(row)
            total += frames
    finally:
        if data_writer is not None:
            data_writer.close()
        for video in videos.values():
            video.close()
    episodes_path = root / EPISODES_PATH.format(chunk_index=0, file_index=0)
    episodes_path.parent.mkdir(parents=True, exist_ok=True)
    pa.Table.from_pylist(episode_rows).to_pandas().to_parquet(episodes_path)
    pd.DataFrame({"task_index": range(len(tasks))}, index=pd.Index(tasks, name="task")).to_parquet(root / TASKS_PATH)
    (root / STATS_PATH).write_text(json.dumps(stats.as_json(IMAGE_PREFIX + c for c in cameras), indent=2))
    info = {
        "codebase_version": CODEBASE_VERSION, "robot_type": robot_type,
        "total_episodes": len(episodes), "total_frames": total, "total_tasks": len(tasks),
        "chunks_size": CHUNK_SIZE, "data_files_size_in_mb": DATA_FILE_MB, "video_files_size_in_mb": VIDEO_FILE_MB,
        "fps": fps, "splits": {"train": f"0:{len(episodes)}"}, "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if cameras else None, "features": features,
    }
    (root / INFO_PATH).write_text(json.dumps(info, indent=4))
    return LeRobotExport(root, len(episodes), total, fps, tasks)


# ------------------------------------------------------------------------------------- import


@dataclass(frozen=True)
class ExpectedLayout:
    """What the importing run can use: its cameras, state size and action size (None: any)."""

    cameras: tuple[str, ...] | None = None
    state_dim: int | None = None
    action_dim: int | None = None


ANY_LAYOUT = ExpectedLayout()


def layout_from_spaces(observation_space, action_space) -> ExpectedLayout:
    """The layout a run with these (gymnasium Dict / Box) spaces can train on."""
    spaces = dict(observation_space.spaces)
    cameras = tuple(k for k, space in spaces.items() if space.dtype == np.uint8 and len(space.shape) == 3)
    state = spaces.get("state")
    state_dim = int(state.shape[0]) if state is not None and len(state.shape) == 1 else None
    return ExpectedLayout(cameras=cameras, state_dim=state_dim, action_dim=int(action_space.shape[0]))

def _plan(features: Mapping[str, Mapping[str, Any]], layout: ExpectedLayout, rename: Mapping[str, str],
          drop: Sequence[str]) -> dict[str, str]:
    """LeRobot feature -> where it goes ('state', 'camera:<name>', 'action', ...); refuses, naming
    the feature, what cannot be mapped."""
    plan: dict[str, str] = {}
    known_flags = {REWARD: "reward", DONE: "done", TERMINATED: "terminated", TRUNCATED: "truncated",
                   SUCCESS: "success", INTERVENED: "intervened", FINAL: "final"}
    for name, feature in features.items():
        dtype, shape = str(feature.get("dtype")), tuple(feature.get("shape") or ())
        if name in INDEX_FEATURES or name in drop:
            continue
        if name == STATE:
            if dtype not in ("float32", "float64") or len(shape) != 1:
                raise LeRobotError(f"feature '{name}' is {dtype} {list(shape)}: expected a float vector")
            if layout.state_dim is not None and shape[0] != layout.state_dim:
                raise LeRobotError(f"feature '{name}' has {shape[0]} numbers but this config's state has "
                                   f"{layout.state_dim} (robot_env.STATE_LAYOUT): data from another robot or "
                                   f"state layout cannot be mapped (--drop {name} to leave it out)")
            plan[name] = "state"
        elif name.startswith(IMAGE_PREFIX):
            if dtype not in ("video", "image"):
                raise LeRobotError(f"feature '{name}' has dtype {dtype}: expected video or image")
            camera = rename.get(name[len(IMAGE_PREFIX):], name[len(IMAGE_PREFIX):])
            if layout.cameras is not None and camera not in layout.cameras:
                raise LeRobotError(f"feature '{name}' is camera '{camera}', which is not in env.cameras "
                                   f"{list(layout.cameras)}: rename it (--rename {name[len(IMAGE_PREFIX):]}=NAME) "
                                   f"or drop it (--drop {name})")
            if len(shape) != 3 or shape[-1] != 3:
                raise LeRobotError(f"feature '{name}' has shape {list(shape)}: expected (height, width, 3) RGB")
            plan[name] = f"camera:{camera}"
        elif name == ACTION:
            if dtype not in ("float32", "float64") or len(shape) != 1:
                raise LeRobotError(f"feature '{name}' is {dtype} {list(shape)}: this project's agents take "
                                   "continuous (float) action vectors; discrete actions cannot be mapped")
            if layout.action_dim is not None and shape[0] != layout.action_dim:
                raise LeRobotError(f"feature '{name}' has {shape[0]} numbers but this config's action has "
                                   f"{layout.action_dim}")
            plan[name] = "action"
        elif name in known_flags:
            plan[name] = known_flags[name]
        elif name.startswith(INFO_PREFIX):
            plan[name] = "info:" + name[len(INFO_PREFIX):]
        elif name.startswith(FRAME_INFO_PREFIX):
            plan[name] = "frame_info:" + name[len(FRAME_INFO_PREFIX):]
        else:
            raise LeRobotError(f"feature '{name}' ({dtype} {list(shape)}) has no place in this project's episodes; "
                               f"leave it out with --drop {name}")
    for required in (STATE, ACTION, REWARD):
        if required not in plan and required not in drop:
            what = {REWARD: "rewards (RL pre-training needs them)"}.get(required, "it")
            raise LeRobotError(f"feature '{required}' is missing: this project's episodes need {what}")
    return plan


def _column(table, name: str) -> np.ndarray:
    column = table.column(name).combine_chunks()
    import pyarrow as pa

    if pa.types.is_fixed_size_list(column.type) or pa.types.is_list(column.type):
        values = column.flatten().to_numpy(zero_copy_only=False)
        return values.reshape(len(column), -1)
    return column.to_numpy(zero_copy_only=False)


class _VideoReader:
    """Decodes one MP4 fully (the files are per dataset, episodes back to back) and hands out
    frames by timestamp; keeps only the last file per camera."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.frames: np.ndarray | None = None
        self.times: np.ndarray | None = None

    def frames_at(self, path: Path, times: np.ndarray, fps: int, feature: str) -> np.ndarray:
        if path != self.path:
            import av

            if not path.is_file():
                raise LeRobotError(f"feature '{feature}': video file {path} is missing")
            try:
                with av.open(str(path)) as container:
                    stream = container.streams.video[0]
                    decoded, stamps = [], []
                    for frame in container.decode(stream):
                        decoded.append(frame.to_ndarray(format="rgb24"))
                        stamps.append(float(frame.pts * stream.time_base) if frame.pts is not None else len(stamps) / fps)
            except av.error.FFmpegError as exc:
                raise LeRobotError(f"feature '{feature}': cannot decode {path} ({exc})") from None
            self.path, self.frames, self.times = path, np.stack(decoded), np.asarray(stamps)
        assert self.times is not None and self.frames is not None
        nearest = np.abs(self.times[None, :] - times[:, None]).argmin(1)
        if np.any(np.abs(self.times[nearest] - times) > 0.5 / fps):
            raise LeRobotError(f"feature '{feature}': {path} has no frame near some timestamps of the data "
                               "table (video and table disagree)")
        return self.frames[nearest]


def _decode_image_column(table, name: str) -> np.ndarray:
    import io

    from PIL import Image

    images = []
    for cell in table.column(name).to_pylist():
        if not cell or cell.get("bytes") is None:
            raise LeRobotError(f"feature '{name}': an image is stored by path only; not supported")
        images.append(np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("RGB")))
    return np.stack(images)


def read_lerobot(root: str | os.PathLike, *, layout: ExpectedLayout = ANY_LAYOUT,
                 rename: Mapping[str, str] | None = None, drop: Sequence[str] = (),
                 report: Callable[[str], None] = _warn) -> Iterator[Episode]:
    """This project's episodes from the LeRobotDataset v3 folder `root` (see the module docstring
    for the mapping). Refuses, naming the feature, what it cannot map."""
    import pyarrow.parquet as pq

    root = Path(root)
    if not is_lerobot_dataset(root):
        raise LeRobotError(f"{root} is not a LeRobot dataset folder ({INFO_PATH} not found)")
    try:
        info = json.loads((root / INFO_PATH).read_text())
        version = str(info["codebase_version"])
        features = info["features"]
        fps = int(info["fps"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LeRobotError(f"{root / INFO_PATH} is unreadable ({type(exc).__name__}: {exc})") from None
    if not version.startswith("v3"):
        raise LeRobotError(f"{root} is LeRobotDataset {version}; this reads v3.x (LeRobot converts v2.1 "
                           "with its convert_dataset_v21_to_v30 script)")
    plan = _plan(features, layout, dict(rename or {}), list(drop))
    try:
        episodes_table = pq.ParquetDataset(sorted((root / EPISODES_DIR).glob("*/*.parquet"))).read()
        tasks = _read_tasks(root)
    except (OSError, ValueError) as exc:
        raise LeRobotError(f"{root}: cannot read the episode or task tables ({exc})") from None
    episode_meta = sorted(episodes_table.to_pylist(), key=lambda row: row["episode_index"])
    video_path = str(info.get("video_path") or VIDEO_PATH)
    data_path = str(info.get("data_path") or DATA_PATH)
    readers = {name: _VideoReader() for name in plan if plan[name].startswith("camera:")}
    data_cache: tuple[Path | None, Any] = (None, None)
    guessed = False
    for meta in episode_meta:
        path = root / data_path.format(chunk_index=meta["data/chunk_index"], file_index=meta["data/file_index"])
        if data_cache[0] != path:
            try:
                data_cache = (path, pq.read_table(path))
            except (OSError, ValueError) as exc:
                raise LeRobotError(f"{path}: cannot read ({exc})") from None
        table = data_cache[1]
        episode_ids = _column(table, "episode_index")
        rows = table.filter(np.asarray(episode_ids == meta["episode_index"]))
        order = np.argsort(_column(rows, "frame_index"), kind="stable")
        rows = rows.take(order)
        columns: dict[str, np.ndarray] = {}
        for name, target in plan.items():
            if target.startswith("camera:"):
                if features[name]["dtype"] == "image":
                    columns[target] = _decode_image_column(rows, name)
                    continue
                video = root / video_path.format(video_key=name, chunk_index=meta[f"videos/{name}/chunk_index"],
                                                 file_index=meta[f"videos/{name}/file_index"])
                times = meta[f"videos/{name}/from_timestamp"] + _column(rows, "timestamp").astype(np.float64)
                columns[target] = readers[name].frames_at(video, times, fps, name)
            else:
                columns[target] = _column(rows, name)
        episode, used_guess = _episode_from_columns(columns, meta, tasks, fps, root)
        guessed = guessed or used_guess
        yield episode
    if guessed:
        report(f"{root} has no '{SUCCESS}' feature: success guessed as 'some reward > 0'")


def _read_tasks(root: Path) -> list[str]:
    import pandas as pd

    path = root / TASKS_PATH
    if not path.is_file():
        return []
    frame = pd.read_parquet(path)
    names = [str(i) for i in frame.index] if "task" not in frame.columns else [str(t) for t in frame["task"]]
    order = np.argsort(frame["task_index"].to_numpy())
    return [names[i] for i in order]


def _episode_from_columns(columns: dict[str, np.ndarray], meta: Mapping[str, Any], tasks: list[str], fps: int,
                          root: Path) -> tuple[Episode, bool]:
    frames = len(columns["action"])
    final = columns.get("final", np.zeros(frames, bool)).reshape(-1).astype(bool)
    ours = bool(final.any())
    if ours and (final.sum() != 1 or not final[-1]):
        raise LeRobotError(f"episode {meta['episode_index']}: feature '{FINAL}' must mark only the last frame")
    steps = frames - 1 if ours else frames
    if steps < 1:
        raise LeRobotError(f"episode {meta['episode_index']} has {frames} frame(s): no step to import")

    def per_step(values: np.ndarray) -> np.ndarray:
        return values[:steps]

    def per_observation(values: np.ndarray) -> np.ndarray:
        return values if ours else np.concatenate([values, values[-1:]])

    observations = {"state": per_observation(columns["state"].astype(np.float32))}
    for target, values in columns.items():
        if target.startswith("camera:"):
            observations[target[len("camera:"):]] = per_observation(values.astype(np.uint8))
    actions = per_step(columns["action"]).astype(np.float32).reshape(steps, -1)
    rewards = per_step(columns["reward"]).astype(np.float32).reshape(steps)

    def flag(name: str) -> np.ndarray | None:
        return per_step(columns[name]).reshape(steps).astype(bool) if name in columns else None

    terminated, truncated, done = flag("terminated"), flag("truncated"), flag("done")
    if terminated is None:
        terminated = done if done is not None else np.zeros(steps, bool)
    if truncated is None:
        truncated = np.zeros(steps, bool)
        if not terminated[-1]:
            truncated[-1] = True  # an episode that ends without termination was cut off
    success = flag("success")
    guessed = success is None
    info = {"success": (rewards > 0) if success is None else success}
    frame_info = {}
    for target, values in columns.items():  # scalar features are 1-D columns, vectors 2-D
        if target.startswith("info:"):
            info[target[len("info:"):]] = per_step(values)
        elif target.startswith("frame_info:"):
            frame_info[target[len("frame_info:"):]] = per_observation(values)
    intervened = flag("intervened")
    raw = meta.get(METADATA_COLUMN)
    if raw:
        metadata = json.loads(raw)
    else:
        task_index = meta.get("tasks") or []
        text = task_index[0] if task_index else (tasks[0] if tasks else "lerobot")
        metadata = make_metadata(task=str(text), source="imported", original_format="lerobot",
                                 imported_from=str(root), control_hz=float(fps),
                                 lerobot_episode_index=int(meta["episode_index"]))
    episode = Episode(observations=observations, actions=actions, rewards=rewards, terminated=terminated,
                      truncated=truncated, intervened=np.zeros(steps, bool) if intervened is None else intervened,
                      metadata=metadata, info=info, frame_info=frame_info)
    try:
        episode.validate()
    except ValueError as exc:
        raise LeRobotError(f"episode {meta['episode_index']} of {root}: {exc}") from None
    return episode, guessed
