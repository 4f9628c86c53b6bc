"""Test-only glue so LeRobot's standalone dataset package (`ledataset`, a dev dependency) runs
beside this project's pinned CPU torch. Never imported by the product.

- torchvision 0.28 from PyPI is built against CUDA torch; with the CPU build its C extension does
  not load, and `import torchvision` then fails registering fake kernels for `torchvision::nms`
  and `::qnms`, which would have come from that extension. Defining the two op schemas first (no
  kernels: nothing here runs them) lets the pure-Python parts import.
- torchvision 0.28 no longer ships `torchvision.io.VideoReader`, which ledataset's "pyav" video
  backend calls (its other backend, torchcodec, needs system FFmpeg libraries). `VideoReader`
  below is that small reader written on PyAV (ledataset's own dependency), with the interface
  ledataset uses: construct, `seek(seconds)`, iterate {"data": CHW uint8 tensor, "pts": seconds}.
  Choosing frames by timestamp, the tolerance check and the per-episode time offsets stay
  LeRobot's own code.
"""

from __future__ import annotations

_LIB = None


def _define_torchvision_op_schemas() -> None:
    global _LIB
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018  (registered by a working torchvision build)
        return
    except (AttributeError, RuntimeError):
        pass
    _LIB = torch.library.Library("torchvision", "DEF")
    _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")


class VideoReader:
    """The part of torchvision's removed VideoReader that ledataset uses, on PyAV."""

    def __init__(self, path: str, stream: str = "video"):
        import av

        assert stream == "video"
        self.container = av.open(str(path))
        self._stream = self.container.streams.video[0]
        self._start = 0.0

    def seek(self, seconds: float, keyframes_only: bool = False) -> VideoReader:
        self._start = float(seconds)
        return self

    def __iter__(self):
        import torch

        for frame in self.container.decode(self._stream):
            pts = float(frame.pts * self._stream.time_base)
            # Decoding from the file start (a keyframe) as `keyframes_only` seeking would: the
            # frames before the key frame nearest `seconds` are what pyav returns too.
            yield {"data": torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1), "pts": pts}


def load_ledataset():
    """Import ledataset's LeRobotDataset with the glue above in place; returns the class."""
    _define_torchvision_op_schemas()
    import torchvision
    import torchvision.io

    if not hasattr(torchvision.io, "VideoReader"):
        torchvision.io.VideoReader = VideoReader
    from ledataset.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset
