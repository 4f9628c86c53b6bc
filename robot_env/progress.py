"""Progress a person can watch, on a terminal and in a log file alike.

    with progress(total=n, desc="encoding frames", unit="frame") as bar:
        ...; bar.update(k); bar.set_postfix(loss="0.12")
    say("compiling the learner step (the first call; up to a minute on a CPU)")   # stdout
    print(f"{steps} steps in {elapsed:.0f} s ({format_rate(steps, elapsed, 'step')})")

On a terminal `progress` is a tqdm bar (rate and ETA). Where stderr is not a terminal (a pipe, the
pipeline's log files, CI) tqdm's carriage-return redraws would fill the file with frames, so it
writes one plain line every `interval_s` seconds instead (and a last one when it closes):

    encoding frames: 1200/5000 frame (24%), 41.3 frame/s, elapsed 29 s, ETA 1 min 32 s

`FRANKA_RL_PROGRESS_INTERVAL_S` sets that interval (default 15 s). Every command uses this one
helper, so the behaviour is the same everywhere. It lives on the ground floor (robot_env) because
every package may import robot_env.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TextIO

INTERVAL_ENV = "FRANKA_RL_PROGRESS_INTERVAL_S"
DEFAULT_INTERVAL_S = 15.0


def _interval_from_env() -> float:
    raw = os.environ.get(INTERVAL_ENV, "")
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if math.isfinite(value) and value >= 0 else DEFAULT_INTERVAL_S


def is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def format_duration(seconds: float) -> str:
    """'8.2 s', '1 min 32 s', '2 h 05 min'."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _significant(value: float) -> str:
    """About three significant figures, no exponent: 1234, 12.3, 2.40, 0.10."""
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_rate(count: float, seconds: float, unit: str = "step") -> str:
    """A rate a person can read at any speed: '512 steps/s', '2.40 steps/s', '0.10 steps/s' down to
    one per ten seconds, and the period beyond that: '8.3 s/step', '4 min 10 s/step'."""
    plural = unit + "s"
    if count <= 0 or seconds <= 0 or not math.isfinite(seconds):
        return f"0 {plural}/s" if count <= 0 else f"- {plural}/s"
    rate = count / seconds
    if rate >= 0.1:
        return f"{_significant(rate)} {plural}/s"
    period = seconds / count
    return f"{_significant(period)} s/{unit}" if period < 60 else f"{format_duration(period)}/{unit}"


def say(message: str, stream: TextIO | None = None) -> None:
    """Announce what a command is doing before a wait: one flushed line on stdout, beside the
    command's other reports (stderr keeps the bars and, last, a one-line error)."""
    stream = sys.stdout if stream is None else stream
    stream.write(message + "\n")
    stream.flush()


class LineProgress:
    """The tqdm subset this project uses, written as one plain line every `interval_s` seconds."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, stream: TextIO | None = None,
                 interval_s: float | None = None, clock: Callable[[], float] = time.monotonic,
                 mebi: bool = False):
        """`mebi`: counts are bytes-like and shown in Mi<unit> (tqdm's unit_scale)."""
        self.iterable = iterable
        self.mebi = mebi
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = int(initial)
        self._initial = int(initial)
        self.stream = sys.stderr if stream is None else stream
        self.interval_s = _interval_from_env() if interval_s is None else float(interval_s)
        self.clock = clock
        self._start = clock()
        self._last_line = self._start
        self._postfix = ""
        self._closed = False
        self._written_at_n: int | None = None

    # ------------------------------------------------------------------ tqdm's interface

    def __iter__(self) -> Iterator:
        assert self.iterable is not None, "LineProgress was made without an iterable"
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        now = self.clock()
        if now - self._last_line >= self.interval_s:
            self._write_line(now)

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool = True,
                    **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self._postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self._postfix = text

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def write(self, message: str) -> None:
        say(message, self.stream)

    def refresh(self) -> None:
        self._write_line(self.clock())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._written_at_n != self.n:  # the final count, unless the last line already said it
            self._write_line(self.clock())

    # ------------------------------------------------------------------ the line

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        elapsed = now - self._start
        done = self.n - self._initial
        if self.mebi:
            count = f"{self.n / 2**20:.1f}/{self.total / 2**20:.1f}" if self.total else f"{self.n / 2**20:.1f}"
            parts = [f"{count} Mi{self.unit}"]
        else:
            count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
            parts = [f"{count} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        if done > 0 and elapsed > 0 and not self.mebi:
            parts.append(format_rate(done, elapsed, self.unit))
        elif done > 0 and elapsed > 0:
            parts.append(f"{done / 2**20 / elapsed:.1f} Mi{self.unit}/s")
        parts.append(f"elapsed {format_duration(elapsed)}")
        if self.total and done > 0 and self.n < self.total:
            parts.append(f"ETA {format_duration((self.total - self.n) * elapsed / done)}")
        if self._postfix:
            parts.append(self._postfix)
        return f"{self.desc}: " + ", ".join(parts) if self.desc else ", ".join(parts)

    def _write_line(self, now: float) -> None:
        self._last_line = now
        self._written_at_n = self.n
        say(self.line(now), self.stream)


class _Silent:
    """`disable=True`: the same interface, nothing written."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, initial: int = 0):
        self.iterable, self.total, self.n = iterable, total, initial

    def __iter__(self) -> Iterator:
        return iter(self.iterable if self.iterable is not None else ())

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def update(self, n: int = 1) -> None:
        self.n += int(n)

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    set_postfix_str = set_description = set_postfix

    def write(self, message: str) -> None:
        say(message)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             initial: int = 0, disable: bool = False, stream: TextIO | None = None,
             interval_s: float | None = None, **tqdm_kwargs: Any):
    """A tqdm bar on a terminal, a `LineProgress` elsewhere, nothing with `disable`.

    `tqdm_kwargs` (e.g. `unit_scale=True` for bytes, `smoothing`) go to tqdm only."""
    if disable:
        return _Silent(iterable, total, initial)
    stream = sys.stderr if stream is None else stream
    if is_terminal(stream):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=stream,
                    dynamic_ncols=True, **tqdm_kwargs)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, stream=stream,
                        interval_s=interval_s, mebi=bool(tqdm_kwargs.get("unit_scale")))


__all__ = ["INTERVAL_ENV", "LineProgress", "format_duration", "format_rate", "is_terminal", "progress", "say"]
