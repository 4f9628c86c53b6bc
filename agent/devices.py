"""Which accelerator JAX computes on, chosen before first use and said in words.

`learner.device` / `pretrain.device`: "auto" (whatever JAX finds: a GPU with a CUDA build of
jaxlib, `pip install 'franka-rl[gpu]'`, else the CPU), "gpu" (refuse to start on the CPU: a
learner meant for a GPU that silently runs on the CPU keeps a fraction of the configured UTD), or
"cpu" (pin the CPU even where a GPU exists, e.g. to leave it to another job).
"""

from __future__ import annotations

import jax

from robot_env.errors import UserError

DEVICE_CHOICES = ("auto", "cpu", "gpu")

GPU_INSTALL_HINT = ("install a CUDA build of JAX on this machine: pip install 'franka-rl[gpu]' (CUDA 12; "
                    "'franka-rl[gpu-cuda13]' for CUDA 13), then check with python -c 'import jax; print(jax.devices())'")


class DeviceError(UserError, RuntimeError):
    """The accelerator asked for is not there."""


def use_device(device: str, key: str) -> str:
    """Select the backend per `device` (the config value of `key`) and return a line saying which
    backend and devices the computation runs on. Call before anything is computed with JAX."""
    if device not in DEVICE_CHOICES:
        raise DeviceError(f"{key} must be one of {DEVICE_CHOICES}, got '{device}'")
    if device == "cpu":
        jax.config.update("jax_platforms", "cpu")
    try:
        backend = jax.default_backend()
        devices = jax.devices()
    except RuntimeError as exc:  # e.g. a CUDA plugin that finds no driver
        raise DeviceError(f"{key}={device}: JAX cannot start a backend ({str(exc).splitlines()[0]}); "
                          f"set {key}=cpu, or {GPU_INSTALL_HINT}") from None
    if device == "gpu" and backend != "gpu":
        raise DeviceError(f"{key}=gpu but JAX runs on the {backend.upper()} here ({len(devices)} device(s)): "
                          f"{GPU_INSTALL_HINT}; or set {key}=auto to run on the CPU (slowly)")
    kinds = sorted({getattr(d, "device_kind", d.platform) for d in devices})
    line = f"JAX backend {backend}: {len(devices)} device(s) ({', '.join(kinds)})"
    if backend == "cpu" and device == "auto":
        line += f"; no GPU found ({key}=auto). A learner on a CPU runs far below the robot's UTD at 128² images"
    return line


__all__ = ["DEVICE_CHOICES", "DeviceError", "use_device"]
