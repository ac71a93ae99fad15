"""Shared benchmark plumbing: results recorded per group, ratios printed at the end of the run.

Every group names a baseline and a floor; the summary prints each entry's time and its ratio to
both, all measured in this same process (absolute times on shared machines are not comparable).
"""

from __future__ import annotations

import collections
import json
import os

import pytest

RESULTS: dict = collections.OrderedDict()


def record(group: str, name: str, seconds: float, nbytes: int | None = None, role: str | None = None) -> None:
    """Stores one measurement; ``role`` is "baseline", "floor" or None."""
    RESULTS.setdefault(group, collections.OrderedDict())[name] = {"s": seconds, "bytes": nbytes, "role": role}


@pytest.fixture
def record_result():
    return record


try:  # pragma: no cover - depends on the machine
    import pytest_benchmark  # noqa: F401
except ImportError:  # e.g. a GPU image without it: a minimal stand-in so gpu_check.sh still measures
    import statistics
    import time
    import types

    class _Stand_in:
        def __init__(self):
            self.group = None
            self.extra_info = {}
            self.stats = types.SimpleNamespace(stats=types.SimpleNamespace(median=float("nan")))

        def pedantic(self, fn, args=(), kwargs=None, rounds=1, iterations=1, warmup_rounds=0):
            kwargs = kwargs or {}
            for _ in range(warmup_rounds):
                fn(*args, **kwargs)
            times, result = [], None
            for _ in range(rounds):
                t0 = time.perf_counter()
                for _ in range(iterations):
                    result = fn(*args, **kwargs)
                times.append((time.perf_counter() - t0) / iterations)
            self.stats.stats.median = statistics.median(times)
            return result

        def __call__(self, fn, *args, **kwargs):
            return self.pedantic(fn, args, kwargs, rounds=5)

    @pytest.fixture
    def benchmark():
        return _Stand_in()

    def pytest_addoption(parser):
        parser.addoption("--benchmark-only", action="store_true", help="(stand-in: pytest-benchmark missing)")
        parser.addoption("--benchmark-columns", default="", help="(stand-in: pytest-benchmark missing)")


def summary_lines() -> list[str]:
    lines = []
    for group, entries in RESULTS.items():
        base = next((e for e in entries.values() if e["role"] == "baseline"), None)
        floor = next((e for e in entries.values() if e["role"] == "floor"), None)
        lines.append(f"[{group}]")
        for name, e in entries.items():
            parts = [f"{name:<34} {e['s'] * 1e3:9.3f} ms"]
            if e["bytes"]:
                parts.append(f"{e['bytes'] / e['s'] / 1e9:7.2f} GB/s")
            if base is not None:
                parts.append(f"{base['s'] / e['s']:6.2f}x vs baseline")
            if floor is not None:
                parts.append(f"{e['s'] / floor['s']:6.2f}x the floor")
            lines.append("  " + " | ".join(parts))
    return lines


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    terminalreporter.section("fastnas ratios (same run)")
    for line in summary_lines():
        terminalreporter.write_line(line)
    out = os.environ.get("FASTNAS_BENCH_JSON")
    if out:
        with open(out, "w") as f:
            json.dump(RESULTS, f, indent=1)
