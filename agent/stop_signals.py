"""Stopping a long-running process cleanly on SIGTERM or Ctrl-C (the actor's and the learner's)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any


def install_stop_handlers(request_stop: Callable[[], Any]) -> None:
    """SIGTERM and the first Ctrl-C call `request_stop` (the process finishes what it is doing
    and exits through its normal path: the last episode written, a final checkpoint); a second
    Ctrl-C raises KeyboardInterrupt at once."""

    def on_signal(signum, frame):
        request_stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


__all__ = ["install_stop_handlers"]
