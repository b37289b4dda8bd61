"""Run every benchmark in one go and write the report.

    python -m benchmarks.run_all [--quick] [--only switching,named,...]

Run it from the root of a source checkout (``nslib bench`` does that for
you), as root, with the ``bench`` extra installed (``pip install -e
'.[bench]'``) and gcc for the raw-C limits.  Writes
``benchmarks/results/latest.md`` (the table with ratios and targets),
``latest.json`` and ``ratios.png`` (nslib versus each alternative, per
operation).  Each module runs in this one process, one after another, so the
numbers come from one run on one machine.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from benchmarks._harness import Result, Target, machine, markdown, ratios, save_json

HERE = Path(__file__).resolve().parent
#: Benchmark modules in report order; each has run(quick) -> (results, targets).
MODULES = ["switching", "named", "netlink", "tracker", "process", "monitor", "kinds", "cni"]
RESULTS = HERE / "results"


def missing_requirements() -> list[str]:
    """What this host lacks to run the benchmarks, in words (empty when nothing)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (they create namespaces and mounts)")
    if shutil.which("gcc") is None:
        missing.append("gcc (the raw-C limits are compiled on first use)")
    extra = [m for m in ("matplotlib", "netns") if importlib.util.find_spec(m) is None]
    if extra:
        missing.append(f"the bench extra, pip install -e '.[bench]' (missing: {', '.join(extra)})")
    return missing


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def chart(results: list[Result], path: Path) -> None:
    """Bars of "alternative time / nslib time" per operation, log scale.

    Only operations that have alternatives are drawn (the scale runs are in
    the table); the grey bar is the raw-C limit of that operation.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rel = ratios(results)
    groups = {r.group for r in results if r.kind == "alt" and (r.group, r.impl) in rel}
    rows = [
        (f"{_short(r.group.split(' (')[0], 34)}: {_short(r.impl, 58)}", rel[key], r.kind)
        for r in results
        if (key := (r.group, r.impl))
        if r.group in groups and r.kind in ("alt", "limit") and (r.group, r.impl) in rel
    ]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(12, 0.42 * len(rows) + 1.6))
    values = [v for _, v, _ in rows]
    colors = ["#9a9a9a" if k == "limit" else "#2b7bb9" for _, _, k in rows]
    ax.barh(range(len(rows)), values, color=colors)
    ax.set_yticks(range(len(rows)), [label for label, _, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(min(values) / 1.5, max(values) * 4)
    ax.axvline(1.0, color="black", linewidth=1)
    for i, v in enumerate(values):
        ax.text(v * 1.05, i, f"{v:.2f}x", va="center", fontsize=8)
    ax.set_xlabel("time relative to nslib, log scale (right of 1 = nslib is faster; grey = raw C)")
    ax.set_title("nslib versus the alternatives and the raw-C limit")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    p.add_argument("--only", default="", help="comma-separated subset of " + ",".join(MODULES))
    p.add_argument("--out", type=Path, default=RESULTS, help="where to write the report")
    args = p.parse_args(argv)
    chosen = [m for m in MODULES if not args.only or m in args.only.split(",")]
    missing = missing_requirements()
    if missing:
        print("the benchmarks need " + "; ".join(missing), file=sys.stderr)
        return 2

    results: list[Result] = []
    targets: list[Target] = []
    failed: list[str] = []
    started = time.monotonic()
    for name in chosen:
        print(f"== {name}", flush=True)
        t0 = time.monotonic()
        try:
            mod = importlib.import_module(f"benchmarks.bench_{name}")
            res, tgt = mod.run(args.quick)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        results += res
        targets += tgt
        print(markdown(res, tgt), flush=True)
        print(f"   ({time.monotonic() - t0:.0f} s)\n", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    report = [
        "# nslib benchmark results",
        "",
        f"Machine: {machine()}  ",
        f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{'quick' if args.quick else 'full'} mode, {time.monotonic() - started:.0f} s in all.",
        "",
        "Ratios are *that row's time / nslib's time*: above 1 means nslib is that many "
        "times faster; a raw-limit row below 1 is how close nslib gets to the bare syscalls.",
        "",
        markdown(results, targets),
        "",
        "![ratios](ratios.png)",
    ]
    if failed:
        report += ["", f"Benchmarks that failed to run: {', '.join(failed)}"]
    (args.out / "latest.md").write_text("\n".join(report) + "\n")
    save_json(args.out / "latest.json", results, targets)
    chart(results, args.out / "ratios.png")
    print(f"wrote {args.out / 'latest.md'} and ratios.png")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
