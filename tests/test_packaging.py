"""The project's plumbing: one version, benchmarks run without path hacks."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import nslib

REPO = Path(__file__).resolve().parent.parent


def test_the_version_is_written_once() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert nslib.__version__ == pyproject["project"]["version"]
    assert nslib.__version__ == importlib.metadata.version("nslib")
    assert "__version__" in dir(nslib)
    literal = re.compile(r"^__version__\s*=", re.M)
    assert [p for p in (REPO / "nslib").rglob("*.py") if literal.search(p.read_text())] == []


def test_no_sys_path_edits_in_tests_or_benchmarks() -> None:
    edit = re.compile(r"sys\.path\.(insert|append|extend)|sys\.path\s*[+]?=")
    offenders = [
        f"{p.relative_to(REPO)}:{n}"
        for d in ("tests", "benchmarks")
        for p in sorted((REPO / d).rglob("*.py"))
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if edit.search(line) and p != Path(__file__)
    ]
    assert offenders == []


def test_benchmarks_run_as_a_package_from_the_checkout() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.run_all", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--quick" in out


def test_nslib_bench_finds_the_checkout_from_anywhere(tmp_path: Path) -> None:
    # The editable install's nslib lives in the checkout: `nslib bench` finds
    # its benchmarks package whatever the working directory.
    out = subprocess.run(
        [sys.executable, "-m", "nslib.cli", "bench", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--quick" in out
