"""One progress bar over the phases of a long job (``compile``: import, calibrate, quantize,
evaluate, build), with the seconds each took.

The bars of a phase's own work (calibration passes, evaluation runs) show below it while it
runs. ``enabled=False`` (``--no-progress``) shows nothing; the seconds are still recorded.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from tqdm import tqdm


class Phases:
    """``with phases.phase("calibrate"): ...`` for each of ``names`` in turn."""

    def __init__(self, names, enabled: bool = True, desc: str = "compile"):
        self.names = list(names)
        self.seconds: dict[str, float] = {}  # wall
        self.cpu_seconds: dict[str, float] = {}  # this process, all its threads
        self.bar = tqdm(
            total=len(self.names),
            desc=desc,
            unit="phase",
            file=sys.stderr,
            disable=not enabled,
            bar_format="{desc}: {n_fmt}/{total_fmt} phases |{bar}| {elapsed} {postfix}",
            dynamic_ncols=True,
        )

    @contextmanager
    def phase(self, name: str):
        if name not in self.names:  # a phase the caller did not announce: count it anyway
            self.names.append(name)
            self.bar.total = len(self.names)
        self.bar.set_postfix_str(name)
        start, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + time.process_time() - cpu
            self.bar.update(1)

    def skip(self, name: str) -> None:
        """A phase announced but not needed (it counts as done, taking no time)."""
        if name in self.names and name not in self.seconds:
            self.names.remove(name)
            self.bar.total = len(self.names)
            self.bar.refresh()

    def close(self) -> None:
        self.bar.set_postfix_str("done")
        self.bar.close()

    def summary(self) -> str:
        """``import 1.0 s, calibrate 30.2 s, ... (total 51.0 s, CPU 40.2 s)``: wall seconds
        per phase; CPU is this process's (on a busy machine, wall time is not all ours)."""
        parts = [f"{name} {s:.1f} s" for name, s in self.seconds.items()]
        return (
            ", ".join(parts) + f" (total {sum(self.seconds.values()):.1f} s, "
            f"CPU {sum(self.cpu_seconds.values()):.1f} s)"
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
