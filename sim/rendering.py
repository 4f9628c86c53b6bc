"""Headless OpenGL backend for the twin's cameras, chosen before MuJoCo is imported.

MuJoCo reads `MUJOCO_GL` once, when `mujoco` is first imported, so the choice has to be made here,
at `import sim`, ahead of any `import mujoco` in this package. With `MUJOCO_GL` unset we probe,
in-process and without creating a context: EGL first (a GPU driver, or Mesa's software device),
then OSMesa. A state-only env never renders, so a machine with neither still runs it; only creating
a camera raises `RenderingUnavailable`, with the packages to install.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

from robot_env.errors import UserError

INSTALL_HINT = (
    "install a headless OpenGL library: EGL (Debian/Ubuntu: `apt-get install libegl1 libgl1`, "
    "with an NVIDIA driver or Mesa) or OSMesa (`apt-get install libosmesa6`), and PyOpenGL "
    "(`pip install PyOpenGL`); or set MUJOCO_GL=egl|osmesa yourself before starting Python"
)

_EGL_DEFAULT_DISPLAY = 0


class RenderingUnavailable(UserError, RuntimeError):
    """No headless OpenGL backend works on this machine."""


def _egl_works() -> bool:
    """Whether libEGL loads and some EGL display initialises (device platform or default)."""
    for name in ("libEGL.so.1", ctypes.util.find_library("EGL")):
        if not name:
            continue
        try:
            egl = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return False
    try:
        egl.eglGetProcAddress.restype = ctypes.c_void_p
        egl.eglGetProcAddress.argtypes = [ctypes.c_char_p]
        egl.eglGetDisplay.restype = ctypes.c_void_p
        egl.eglGetDisplay.argtypes = [ctypes.c_void_p]
        egl.eglInitialize.restype = ctypes.c_uint
        egl.eglInitialize.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        egl.eglTerminate.argtypes = [ctypes.c_void_p]
        displays: list[int] = []
        query_address = egl.eglGetProcAddress(b"eglQueryDevicesEXT")
        platform_address = egl.eglGetProcAddress(b"eglGetPlatformDisplayEXT")
        if query_address and platform_address:
            # MuJoCo's EGL context uses the device platform, so probe that first.
            query_devices = ctypes.CFUNCTYPE(
                ctypes.c_uint,
                ctypes.c_int,
                ctypes.POINTER(ctypes.c_void_p),
                ctypes.POINTER(ctypes.c_int),
            )(query_address)
            get_platform_display = ctypes.CFUNCTYPE(
                ctypes.c_void_p, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p
            )(platform_address)
            devices = (ctypes.c_void_p * 8)()
            count = ctypes.c_int(0)
            if query_devices(8, devices, ctypes.byref(count)):
                egl_platform_device_ext = 0x313F
                for i in range(count.value):
                    display = get_platform_display(egl_platform_device_ext, devices[i], None)
                    if display:
                        displays.append(display)
        if not displays:
            display = egl.eglGetDisplay(_EGL_DEFAULT_DISPLAY)
            if display:
                displays.append(display)
        for display in displays:
            major, minor = ctypes.c_int(0), ctypes.c_int(0)
            if egl.eglInitialize(display, ctypes.byref(major), ctypes.byref(minor)):
                egl.eglTerminate(display)
                return True
    except (AttributeError, OSError):
        return False
    return False


def _osmesa_works() -> bool:
    name = ctypes.util.find_library("OSMesa")
    for candidate in (name, "libOSMesa.so.8", "libOSMesa.so.6", "libOSMesa.so"):
        if not candidate:
            continue
        try:
            ctypes.CDLL(candidate)
            return True
        except OSError:
            continue
    return False


def _pyopengl_present() -> bool:
    import importlib.util

    return importlib.util.find_spec("OpenGL") is not None


def _choose_backend() -> tuple[str | None, str]:
    """Returns (backend or None, reason). Honours an explicit MUJOCO_GL."""
    preset = os.environ.get("MUJOCO_GL", "").strip().lower()
    if preset:
        return preset, f"MUJOCO_GL={preset} was set by the user"
    if not _pyopengl_present():
        return None, "PyOpenGL is not installed"
    platform = os.environ.get("PYOPENGL_PLATFORM", "").lower()
    if "OpenGL" in sys.modules and platform not in ("egl", "osmesa"):
        return None, "PyOpenGL was imported for a windowed platform before sim"
    if platform != "osmesa" and _egl_works():
        return "egl", "EGL display initialised"
    if platform != "egl" and _osmesa_works():
        return "osmesa", "libOSMesa found"
    return None, "neither EGL nor OSMesa is available"


def _activate(backend: str) -> None:
    """Point MuJoCo at `backend`: through the environment if mujoco is not imported yet, else by
    swapping the GL context class its renderer instantiates (it looks it up at each creation)."""
    os.environ["MUJOCO_GL"] = backend
    os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    if "mujoco" not in sys.modules:
        return
    import importlib

    context_module = importlib.import_module(f"mujoco.{backend}")
    from mujoco.rendering.classic import gl_context

    gl_context.GLContext = context_module.GLContext


_user_preset = bool(os.environ.get("MUJOCO_GL", "").strip())
BACKEND, BACKEND_REASON = _choose_backend()
if BACKEND is not None and not _user_preset:
    try:
        _activate(BACKEND)
    except ImportError as _error:
        BACKEND, BACKEND_REASON = None, f"MuJoCo's {BACKEND} context does not import ({_error})"


def require_backend(requested: str = "auto") -> str:
    """The active backend; raises `RenderingUnavailable` with install advice if there is none, or
    if `requested` (from `SimConfig.render_backend`) differs from what MuJoCo already loaded."""
    if requested not in ("auto", "egl", "osmesa", "glfw"):
        raise RenderingUnavailable(
            f"sim.render_backend must be one of auto, egl, osmesa, glfw; got '{requested}'"
        )
    if BACKEND is None:
        raise RenderingUnavailable(
            f"cannot render the twin's cameras: {BACKEND_REASON}; {INSTALL_HINT}"
        )
    if requested != "auto" and requested != BACKEND:
        raise RenderingUnavailable(
            f"sim.render_backend={requested} but MuJoCo already uses {BACKEND} ({BACKEND_REASON}); "
            f"the backend is fixed when mujoco is imported: start with MUJOCO_GL={requested} in the "
            "environment instead"
        )
    return BACKEND
