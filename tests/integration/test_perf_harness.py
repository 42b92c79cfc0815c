"""``benchmarks/issue10.py`` (issue 10's measurements) as a smoke test: ``--quick`` with
tiny sizes starts its own stacks, runs every part, and prints the table with a number
in every row; without wrk it says so and exits 2. The figures themselves are not
asserted (a timed test on a shared machine would only be flaky)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.support.stack import ROOT

pytestmark = pytest.mark.integration

SCRIPT = ROOT / "benchmarks" / "issue10.py"


def harness_rows() -> list[str]:
    spec = importlib.util.spec_from_file_location("issue10", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [figure for figure, _today in module.ROWS.values()]


def env_without_cdp() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CDP_")}


@pytest.mark.skipif(
    shutil.which("wrk") is None,
    reason="wrk is not installed (apt-get install -y wrk): the harness drives the API with it",
)
def test_quick_run_prints_a_number_in_every_row() -> None:
    args = ["--quick", "--duration", "1", "--drain-events", "300", "--profiles", "50"]
    out = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=ROOT,
        env=env_without_cdp(),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert f"command: python benchmarks/issue10.py {' '.join(args)}" in text
    assert re.search(r"^load average before: [\d.]+ ", text, re.M), text
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| (\d\..+?) \| (.+?) \| .+? \|$", text, re.M)
    }
    expected = harness_rows()
    assert list(rows) == expected, text
    for figure, value in rows.items():
        assert re.fullmatch(r"[\d,]+(\.\d+)?", value), f"{figure}: {value!r}\n{text}"
        assert float(value.replace(",", "")) > 0, f"{figure}: {value!r}\n{text}"
    assert "INFO commandstats top commands" in text and "evalsha" in text, text


def test_without_wrk_it_says_so_and_exits_non_zero(tmp_path: object) -> None:
    env = {**env_without_cdp(), "PATH": str(tmp_path)}  # an empty directory: no wrk
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "wrk is not installed" in out.stderr and "apt-get install -y wrk" in out.stderr
