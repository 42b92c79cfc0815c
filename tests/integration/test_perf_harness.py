"""``benchmarks/issue10.py`` (issue 10's measurements) as a smoke test: tiny sizes, one
run, a stack of its own per row; the table has a number in every row it ran. The
Python client path runs everywhere; with ``--stack-root`` the stack's processes run
from the given checkout. The figures themselves are not asserted (a timed test on a
shared machine would only be flaky)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.stack import ROOT

pytestmark = pytest.mark.integration

SCRIPT = ROOT / "benchmarks" / "issue10.py"
TINY = [
    *("--quick", "--duration", "1", "--drain", "300", "--profiles", "60"),
    *("--sustain-seconds", "3", "--sustain-start", "500", "--window-size", "500ms"),
]


def harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("issue10", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDP_")}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=ROOT,
        env=env,
    )


def table_rows(text: str) -> dict[str, str]:
    """figure -> this run's value, from the printed table."""
    return {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| (.+?) \| .+? \| .+? \| (.+?) \|$", text, re.M)
        if m.group(1) != "figure"
    }


# The rows of one stack each that this test runs; every row of `cdp bench` itself is
# covered by test_bench.py (all seven here took 80 s of the suite's budget).
SMOKE_ROWS = ("drain", "memory")


@pytest.mark.timeout(600)
def test_quick_run_prints_a_number_in_every_row(tmp_path: Path) -> None:
    saved = tmp_path / "medians.json"
    only = [a for row in SMOKE_ROWS for a in ("--only", row)]
    out = run(*TINY, *only, "--client", "python", "--save", str(saved))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert f"command: python benchmarks/issue10.py {' '.join(TINY)}" in text
    assert re.search(r"^load average before: [\d.]+ ", text, re.M), text
    rows = table_rows(text)
    wanted = [figure for row, figure, _t, _b in harness().ROWS.values() if row in SMOKE_ROWS]
    assert list(rows) == wanted, text
    for figure, value in rows.items():
        if figure == "traits hash encoding":
            assert value in ("hashtable", "ziplist", "listpack"), value
        else:  # memory figures of a tiny run can come out below zero: still a number
            assert re.fullmatch(r"-?[\d,]+(\.\d+)?", value), f"{figure}: {value!r}\n{text}"
    assert "drain, INFO commandstats deltas" in text and "evalsha" in text, text
    medians = json.loads(saved.read_text())
    assert medians["drain_eps"] > 0 and "command" in medians
    # The saved medians fill the before column of another run.
    again = run(*TINY, "--only", "memory", "--before", str(saved))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    before = re.search(r"^\| keys per profile \| 11 \| ([\d.]+) \|", again.stdout, re.M)
    assert before and float(before.group(1)) == pytest.approx(medians["keys_per_profile"], 0.01)


def test_stack_root_runs_the_stack_from_another_checkout(tmp_path: Path) -> None:
    """The stack's processes run from --stack-root (here a copy of this checkout's cdp
    package, so that where they run from is visible in their command's cwd)."""
    root = tmp_path / "other"
    root.mkdir()
    (root / "cdp").symlink_to(ROOT / "cdp")
    (root / "lua").symlink_to(ROOT / "lua")
    out = run(*TINY, "--only", "ingest", "--client", "python", "--stack-root", str(root))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"stack from {root}" in out.stdout
    assert re.fullmatch(r"[\d,]+", table_rows(out.stdout)["single-event POST /cdp/ingest, req/s"])
    refused = run("--stack-root", str(tmp_path))
    assert refused.returncode == 2 and "no cdp/__main__.py there" in refused.stderr


def test_without_wrk_the_python_client_measures_ingest(tmp_path: Path) -> None:
    out = run(*TINY, "--only", "ingest", path=str(tmp_path))  # an empty PATH: no wrk
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "closed-loop client: python" in out.stdout
    assert "python x2 processes" in out.stdout or "python x1 processes" in out.stdout
