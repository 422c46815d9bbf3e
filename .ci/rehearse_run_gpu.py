"""CI: benchmarks/run_gpu.sh rehearsed on the CPU (DEVICE=cpu), so that its plumbing is proven before a GPU is
ever available: the whole rehearsal inside its deadline with every step passing, then the ways a run can end
early, each of which must still leave the archive:

* full:     DEVICE=cpu inside DEADLINE (default 115 s): exit 0, and the archive holds the machine description,
            the build log, a log and JUnit XML per test file (no failures), the benchmark tables per size tier,
            steps.tsv, summary.md and the log.
* deadline: a deadline of a few seconds: steps cut by their timeouts or skipped, exit 124, the archive.
* watchdog: RESERVE below zero lets a step outlive the deadline: the watchdog stops it, exit 124, the archive.
* signal:   SIGTERM from outside mid-run: the step (and its children) ended, exit 124, the archive.

    python .ci/rehearse_run_gpu.py [full deadline watchdog signal]   # default: all four, in that order

The python running this must have oneshot built (the CI venv). REHEARSAL_DEADLINE overrides the full
rehearsal's deadline; the script's own variables (TEST_TIMEOUT, ...) pass through.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "run_gpu.sh"
TESTS = ["tests/test_cuda.py", "tests/test_triton_configs.py", "tests/test_errors.py"]  # the script's cpu default


def rehearse(tmp: Path, name: str, term_after: float | None = None, **env) -> tuple[int, float, Path, dict]:
    """Run the script with DEVICE=cpu and `env`; returns (exit status, seconds, OUT, {archive member: bytes})."""
    out, scratch = tmp / name / "out", tmp / name / "tmp"
    scratch.mkdir(parents=True)
    full_env = {**os.environ, "DEVICE": "cpu", "OUT": str(out), "PYTHON": sys.executable, "TMPDIR": str(scratch),
                **{k: str(v) for k, v in env.items()}}
    start = time.monotonic()
    proc = subprocess.Popen(["bash", str(SCRIPT)], env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    if term_after is not None:
        time.sleep(term_after)
        proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=600)
    seconds = time.monotonic() - start
    print(f"--- {name}: exit {proc.returncode} in {seconds:.0f} s; the log's last lines:")
    print("\n".join(log.rstrip().splitlines()[-6:]))
    archive = out / "run_gpu_cpu.tar.gz"
    assert archive.is_file(), f"{name}: no archive at {archive} (exit {proc.returncode}); log:\n{log}"
    with tarfile.open(archive) as tar:
        files = {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers()
                 if m.isfile() and "/" in m.name}
    assert (out / "run_gpu_cpu.log").is_file(), f"{name}: the log is missing from OUT"
    for member in ("log.txt", "machine.txt", "steps.tsv", "summary.md"):
        assert member in files, f"{name}: {member} missing from the archive, which holds {sorted(files)}"
    leftovers = subprocess.run(["pgrep", "-f", str(scratch)], capture_output=True, text=True).stdout.split()
    assert not leftovers, f"{name}: processes of the run outlived it: {leftovers}"
    return proc.returncode, seconds, out, files


def check_full(tmp: Path) -> None:
    deadline = int(os.environ.get("REHEARSAL_DEADLINE", "115"))
    rc, seconds, _, files = rehearse(tmp, "full", DEADLINE=deadline)
    steps = files["steps.tsv"].decode()
    assert rc == 0, f"the rehearsal must pass inside its {deadline} s deadline, got exit {rc}; steps:\n{steps}"
    for test in TESTS:
        stem = Path(test).stem
        assert f"tests/{stem}.log" in files, f"no log of {test}"
        suite = ET.fromstring(files[f"tests/{stem}.xml"])
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors")}
        assert counts["tests"] > 0 and counts["failures"] == counts["errors"] == 0, f"{test}: {counts}"
    for table in ("cpu_quick.csv", "cpu_quick.md", "cpu_quick_render.csv", "cpu_quick_render.md"):
        assert f"bench/{table}" in files, f"bench/{table} missing; the archive holds {sorted(files)}"
    csv = files["bench/cpu_quick.csv"].decode()
    for op in ("triplane_sample", "ray_march"):
        assert f"\n{op}," in csv, f"no {op} rows in cpu_quick.csv"
    assert "render_triplane (op)" in files["bench/cpu_quick_render.csv"].decode()
    assert b"ran to the end" in files["summary.md"]


def check_deadline(tmp: Path) -> None:
    rc, seconds, _, files = rehearse(tmp, "deadline", DEADLINE=8, RESERVE=2)
    assert rc == 124, f"a run cut by its deadline must exit 124, got {rc}"
    assert seconds < 8 + 10, f"the 8 s deadline took {seconds:.0f} s"
    steps, summary = files["steps.tsv"].decode(), files["summary.md"].decode()
    # steps cut by their timeouts or skipped; or, on a slow machine, the watchdog before the first step
    assert "\tskipped\t" in steps or "\t124\t" in steps or "stopped early: deadline" in summary, summary


def check_watchdog(tmp: Path) -> None:
    rc, seconds, _, files = rehearse(tmp, "watchdog", DEADLINE=10, RESERVE=-60)
    assert rc == 124, f"the watchdog must end the run with 124, got {rc}"
    assert seconds < 10 + 10, f"the watchdog let a 10 s deadline run {seconds:.0f} s"
    assert b"stopped early: deadline" in files["summary.md"], files["summary.md"].decode()


def check_signal(tmp: Path) -> None:
    rc, seconds, _, files = rehearse(tmp, "signal", term_after=6.0, DEADLINE=300)
    assert rc == 124, f"SIGTERM must end the run with 124, got {rc}"
    assert seconds < 6 + 10, f"the run took {seconds:.0f} s to stop after SIGTERM"
    assert b"stopped early: signal TERM" in files["summary.md"], files["summary.md"].decode()


CHECKS = {"full": check_full, "deadline": check_deadline, "watchdog": check_watchdog, "signal": check_signal}


def main(argv: list[str]) -> int:
    unknown = set(argv) - set(CHECKS)
    if unknown:
        raise SystemExit(f"unknown checks {sorted(unknown)}; choose from {list(CHECKS)}")
    with tempfile.TemporaryDirectory(prefix="rehearse_run_gpu.") as d:
        for name in argv or CHECKS:
            start = time.monotonic()
            CHECKS[name](Path(d))
            print(f"=== {name}: passed ({time.monotonic() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
