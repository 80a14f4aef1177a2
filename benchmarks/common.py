"""Helpers every benchmark imports: a description of the machine and one JSON line per result.

    from benchmarks.common import Meter, emit, rate
    emit({"benchmark": "render", "what": "render_face numba", "renders_per_s": rate(fn, 50)})

prints ``{"benchmark": "render", "machine": "AMD EPYC, 2 cores, ...", "what": ..., ...}`` with floats
rounded to 4 significant digits, so results of different runs and machines can be collected with ``grep``.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_names() -> list[str]:
    """NVIDIA GPUs from the driver's /proc entries (no CUDA library is loaded)."""
    names = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        for line in info.read_text().splitlines():
            if line.startswith("Model:"):
                names.append(line.split(":", 1)[1].strip())
    return names


@lru_cache(maxsize=1)
def machine() -> str:
    """One line: CPU model, usable cores, memory, GPUs, OS and Python version."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [_cpu_name(), f"{cores} cores"]
    try:
        mem_kb = int(next(ln for ln in Path("/proc/meminfo").read_text().splitlines()
                          if ln.startswith("MemTotal")).split()[1])
        parts.append(f"{mem_kb / 2**20:.0f} GiB")
    except (OSError, StopIteration, ValueError):
        pass
    gpus = _gpu_names()
    parts.append(", ".join(gpus) if gpus else "no GPU")
    parts.append(f"{platform.system()} {platform.release()}")
    parts.append(f"Python {platform.python_version()}")
    return ", ".join(parts)


def _round(x: Any) -> Any:
    if isinstance(x, float):
        return float(f"{x:.4g}")
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_round(v) for v in x]
    return x


def emit(record: dict) -> None:
    """Print ``record`` as one JSON line, with ``machine`` added after ``benchmark`` when it is missing."""
    out = {"benchmark": record.get("benchmark"), "machine": record.get("machine", machine())}
    out.update({k: v for k, v in record.items() if k not in out})
    print(json.dumps(_round(out)), flush=True)
    sys.stdout.flush()


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process, its threads and its finished, waited-for children."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Meter:
    """Wall-clock and CPU seconds (:func:`cpu_seconds`) of a ``with`` block: ``m.wall``, ``m.cpu``.

    On cores shared with other jobs a wall-clock rate depends on the share this process got; a rate per CPU
    second does not (it is the per-core figure)."""

    def __enter__(self) -> "Meter":
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, cpu_seconds() - self.cpu

    def rates(self, n: int) -> tuple[float, float]:
        """(per wall-clock second, per CPU second) for ``n`` items."""
        return n / self.wall, n / max(self.cpu, 1e-9)


def rate(fn: Callable[[int], Any], n: int, warmup: int = 1) -> float:
    """Calls per second of ``fn(i)`` over ``n`` calls (i = 0 .. n-1), after ``warmup`` calls not timed."""
    for i in range(warmup):
        fn(i)
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - t0)
