"""Shared benchmark plumbing: timing, raw-C helpers, and the ratio table.

Every benchmark module exposes ``run(quick: bool) -> (list[Result], list[Target])``.  Within
a group, one result is nslib's (``kind="nslib"``), one may be the raw-C
physical limit (``kind="limit"``), and the rest are alternatives
(``kind="alt"``).  Ratios are always "that row's time / nslib's time", so a
ratio above 1 means nslib is that many times faster.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
BIN = HERE / "bin"
CSRC = HERE / "csrc"
DOCKERD = HERE.parent / "tests" / "dockerd.py"


def dockerd() -> ModuleType:
    """The test suite's private-dockerd harness, ``tests/dockerd.py``, as a module.

    The docker benchmarks reuse it rather than copy it.  ``tests/`` is not a
    package (pytest puts it on ``sys.path`` itself), so the one file is loaded
    by its path here, the only place that does so; ``sys.path`` stays
    untouched.  Benchmarks write ``from benchmarks._harness import
    PrivateDockerd`` (see ``__getattr__`` below).
    """
    name = "_nslib_tests_dockerd"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, DOCKERD)
    if spec is None or spec.loader is None or not DOCKERD.is_file():
        raise ImportError(f"the docker benchmarks need the test harness {DOCKERD}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look a module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    # The podman and containerd harnesses `import dockerd`: this same module.
    sys.modules.setdefault("dockerd", module)
    return module


def load_test_harness(stem: str) -> ModuleType:
    """Another harness of the test suite, ``tests/<stem>.py`` (``podmand``, ``containerd_harness``).

    Loaded by path as :func:`dockerd` is (which it imports, so that one is loaded first).
    """
    name = f"_nslib_tests_{stem}"
    if name in sys.modules:
        return sys.modules[name]
    dockerd()
    path = DOCKERD.parent / f"{stem}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise ImportError(f"the benchmarks need the test harness {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def __getattr__(name: str) -> object:
    """``PrivateDockerd``, ``run_container`` ...: loaded from the docker harness on first use."""
    if name.startswith("_"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return getattr(dockerd(), name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


@dataclass
class Result:
    group: str
    impl: str
    seconds: float  # per operation (median of repeats)
    kind: str = "alt"  # "nslib" | "limit" | "alt" | "info"
    note: str = ""
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Target:
    group: str
    text: str
    ok: bool
    measured: str


def per_op(fn: Callable[[], object], *, number: int, repeat: int = 5, warmup: int = 1) -> float:
    """Median seconds per call of *fn* over *repeat* batches of *number* calls."""
    for _ in range(warmup):
        for _ in range(max(1, number // 10)):
            fn()
    samples = []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            samples.append((time.perf_counter() - t0) / number)
    finally:
        if gc_was:
            gc.enable()
    return statistics.median(samples)


def percentile(values: list[float], p: float) -> float:
    """The *p*-th percentile (0..100), nearest-rank."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * (len(s) - 1))))
    return s[k]


def build_c(name: str) -> Path:
    """Compile ``csrc/<name>.c`` into ``bin/<name>`` if it is out of date."""
    src = CSRC / f"{name}.c"
    out = BIN / name
    BIN.mkdir(exist_ok=True)
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(src), "-lpthread"], check=True)
    return out


def run_c(name: str, *args: str) -> dict[str, float]:
    """Run a raw-C helper; it prints ``key value`` lines (value in seconds)."""
    out = subprocess.run([str(build_c(name)), *args], check=True, capture_output=True, text=True)
    result = {}
    for line in out.stdout.splitlines():
        key, _, value = line.partition(" ")
        if value:
            result[key] = float(value)
    return result


def fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.2f} µs"


def ratios(results: Iterable[Result]) -> dict[tuple[str, str], float]:
    """``(group, impl) -> seconds / nslib seconds`` for every row of a group with an nslib row."""
    rows = list(results)
    base = {r.group: r.seconds for r in rows if r.kind == "nslib"}
    return {(r.group, r.impl): r.seconds / base[r.group] for r in rows if r.group in base}


def machine() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{platform.node()}: {os.cpu_count()} cores ({cpu}), Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def markdown(results: list[Result], targets: list[Target]) -> str:
    """The results table (ratios relative to nslib) and the targets checklist."""
    rel = ratios(results)
    lines = [
        "| operation | implementation | time per op | vs nslib |",
        "|---|---|---:|---:|",
    ]
    for r in results:
        ratio = rel.get((r.group, r.impl))
        if r.kind == "nslib":
            cell = "1.00x (nslib)"
        elif ratio is None:
            cell = ""
        elif r.kind == "limit":
            cell = f"{ratio:.2f}x (raw limit)"
        else:
            cell = f"{ratio:.2f}x"
        name = f"**{r.impl}**" if r.kind == "nslib" else r.impl
        note = f" ({r.note})" if r.note else ""
        lines.append(f"| {r.group} | {name}{note} | {fmt_time(r.seconds)} | {cell} |")
    if targets:
        lines += ["", "| target | measured | met |", "|---|---|:---:|"]
        for t in targets:
            lines.append(f"| {t.group}: {t.text} | {t.measured} | {'yes' if t.ok else '**no**'} |")
    return "\n".join(lines)


def save_json(path: Path, results: list[Result], targets: list[Target]) -> None:
    path.write_text(
        json.dumps(
            {
                "machine": machine(),
                "results": [asdict(r) for r in results],
                "targets": [asdict(t) for t in targets],
            },
            indent=1,
        )
    )


def main(run: Callable[[bool], tuple[list[Result], list[Target]]]) -> None:
    """Entry point for one benchmark module: ``python -m benchmarks.bench_x [--quick]``."""
    quick = "--quick" in sys.argv
    results, targets = run(quick)
    print(f"Machine: {machine()}\n")
    print(markdown(results, targets))
