"""`pytest benchmarks` (the README's benchmark command, used by gpu_check.sh) must collect every benchmark."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _declared_benchmarks() -> set:
    names = set()
    for path in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                names.add(f"{path.name}::{node.name}")
    return names


def test_every_benchmark_function_is_collected():
    declared = _declared_benchmarks()
    assert declared, "no bench_*.py with test_ functions found"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "--collect-only", "-q", "-p",
                          "no:cacheprovider"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    collected = {line.split("[")[0].replace("benchmarks/", "") for line in out.stdout.splitlines() if "::" in line}
    missing = declared - collected
    assert not missing, f"pytest benchmarks does not collect {sorted(missing)}:\n{out.stdout[-2000:]}{out.stderr[-2000:]}"
