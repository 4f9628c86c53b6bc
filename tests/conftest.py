"""Suite-wide settings.

One JAX persistent compilation cache per test session, in a fresh temporary folder: many tests
(and the learner, actor and pipeline processes they start, which inherit the environment) compile
the same tiny agents, and a compile on this 2-core machine costs seconds. Each session starts
empty, so every distinct computation is still compiled for real once per run; only repeats are
read back. The cache is the tests' own: the product leaves JAX's default (no persistent cache).
"""

from __future__ import annotations

import os
import shutil
import tempfile

_session_cache: str | None = None
_variables_set: list[str] = []


def pytest_configure(config) -> None:
    # Before any test module imports JAX, which reads these once.
    global _session_cache
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return  # the caller chose a cache (or set it empty to turn it off)
    _session_cache = tempfile.mkdtemp(prefix="franka-rl-tests-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _session_cache
    _variables_set.append("JAX_COMPILATION_CACHE_DIR")
    # JAX caches only compiles slower than 1 s by default; the tests' tiny networks are faster.
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.1"
        _variables_set.append("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")


def pytest_unconfigure(config) -> None:
    if _session_cache is not None:
        shutil.rmtree(_session_cache, ignore_errors=True)
        for name in _variables_set:
            os.environ.pop(name, None)
