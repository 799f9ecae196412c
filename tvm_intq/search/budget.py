"""The time the searches may take, and the line per candidate that shows them working.

A search evaluates many candidate programs on the same compiled gated model; how long one
evaluation takes is the model's run time times the samples it runs on. On a 320x320 detector
built without tuning one sample costs a good part of a second on this 2-core host, so ranking
150 layers on 256 samples each took hours. :class:`Budget` measures the first run and sizes the
sample sets so that the whole search ends within ``--search-minutes``; when the time is out,
each search stops with the best configuration it has measured and says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: The searches' default time limit (minutes), both together.
DEFAULT_MINUTES = 10.0


class Budget:
    """A deadline shared by the searches of one compile, and where their progress goes.

    ``log(line)`` receives one line per candidate (default: nothing); the CLI prints them, so
    they show with ``--no-progress`` too (that flag turns off bars only).
    """

    def __init__(self, minutes: float | None = DEFAULT_MINUTES, log: Callable | None = None):
        self.minutes = minutes
        self.start = time.monotonic()
        self.deadline = None if minutes is None else self.start + 60.0 * float(minutes)
        self.log = log or (lambda line: None)
        self.exhausted = False  # did any search stop for time?

    def left(self) -> float:
        """Seconds left (inf without a limit)."""
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def expired(self) -> bool:
        if self.left() <= 0:
            self.exhausted = True
            return True
        return False

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def samples_for(self, runs: int, seconds_per_sample: float, share: float, most: int) -> int:
        """How many samples each of ``runs`` evaluations may use so that they take at most
        ``share`` of the time left (at least 2, at most ``most``)."""
        if self.deadline is None or seconds_per_sample <= 0:
            return most
        fit = int(share * self.left() / max(runs, 1) / seconds_per_sample)
        return max(2, min(most, fit))

    def say(self, what: str, line: str) -> None:
        self.log(f"[{what} {self.elapsed():5.0f}s] {line}")


def timed(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), seconds)``."""
    t = time.monotonic()
    result = fn(*args, **kwargs)
    return result, time.monotonic() - t
