"""Shared benchmark harness: timing (median and spread), peak memory, machine description, CSV + markdown.

CPU timing is wall time over repeats (after a warm-up). GPU timing is by CUDA events around a loop of n launches
(n sized so that a loop takes about budget / loops), never a synchronize per call, which would make small cases
launch-bound: the time of a call is a loop's time / n, reported as the median and spread over several loops.
Caches stay warm between the launches of a loop (as in training, where the same planes are read again). Peak
memory is the growth of the process's resident set over one call on CPU (peak RSS reset through
/proc/self/clear_refs) and ``torch.cuda.max_memory_allocated`` on GPU. Ratios are always between providers
measured in the same run on the same machine. A provider that raises is recorded (median NaN, the error in the
note) and the run goes on.

Sizes: each benchmark's ``cases(quick)`` lists its sizes, the "quick" ones first; ``pick(cases, sizes)`` gives
the quick ones ("quick"), the others ("large": what --quick leaves out) or all ("all").
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import datetime
import gc
import platform
import math
import os
import statistics
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Result:
    op: str
    case: str  # the size / distribution, human-readable
    mode: str  # fwd, fwd+bwd, index, ...
    provider: str  # reference, native, triton, ckdtree, ...
    median_ms: float
    q25_ms: float
    q75_ms: float
    repeats: int
    peak_mb: float
    note: str = ""


def machine() -> dict:
    info = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": _cpu_model(),
    }
    try:
        import oneshot

        info["oneshot"] = oneshot.__version__
    except Exception:  # pragma: no cover
        pass
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:  # triton missing or broken: not needed on CPU
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _rss_kb(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def _release_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class PeakMemory:
    """Peak memory growth (MiB) while the block runs: CPU resident set, or CUDA allocator peak."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mb = float("nan")

    def __enter__(self):
        _release_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
                self.base = _rss_kb("VmRSS")
            except OSError:
                self.base = None
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        elif self.base is not None:
            self.mb = (_rss_kb("VmHWM") - self.base) / 1024
        return False


def measure(fn: Callable[[], object], device: torch.device, *, min_repeats=3, max_repeats=20, budget_s=2.0):
    """(median, q25, q75) in ms, repeats, peak MiB. Runs fn once to warm up (and to measure memory; on CUDA once
    more before that, for the compile and autotuning). On CPU: wall time of min_repeats .. max_repeats calls
    within about budget_s. On CUDA: see _cuda_events. The environment variable BENCH_BUDGET_S caps budget_s, and
    on CPU lets one timed call do (run_gpu.sh sets it to fit a short session; its CPU rehearsal proves the
    plumbing rather than measuring)."""
    if os.environ.get("BENCH_BUDGET_S"):
        budget_s = min(budget_s, float(os.environ["BENCH_BUDGET_S"]))
        min_repeats = 1
    if device.type == "cuda":
        fn()  # compiles, autotunes (whose timing buffers must not count as the op's memory), warms the allocator
    with PeakMemory(device) as mem:
        fn()
    if device.type == "cuda":
        return _cuda_events(fn, budget_s, loops=max(min_repeats, 5)) + (mem.mb,)
    times = []
    start = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return _stats(times) + (len(times), mem.mb)


def _stats(times):
    if len(times) == 1:
        return times[0], times[0], times[0]
    q = statistics.quantiles(times, n=4, method="inclusive")
    return statistics.median(times), q[0], q[2]


def _cuda_events(fn, budget_s: float, loops: int = 5, max_n: int = 1000):
    """Per-call (median, q25, q75) ms over `loops` loops of n back-to-back calls, each loop timed by a pair of
    CUDA events (no synchronize inside a loop); n from one timed call so that the loops take about budget_s.
    Returns those and the number of calls timed."""
    new = lambda: torch.cuda.Event(enable_timing=True)  # noqa: E731
    torch.cuda.synchronize()
    a, b = new(), new()
    a.record()
    fn()
    b.record()
    b.synchronize()
    one = max(a.elapsed_time(b), 1e-3)
    n = int(min(max_n, max(1, budget_s * 1e3 / loops / one)))
    events = []
    for _ in range(loops):
        a, b = new(), new()
        a.record()
        for _ in range(n):
            fn()
        b.record()
        events.append((a, b))
    torch.cuda.synchronize()
    return _stats([a.elapsed_time(b) / n for a, b in events]) + (loops * n,)


def run_case(results: list, op, case, mode, provider, fn, device, note="", **kw) -> Result:
    """Measure fn (see measure) and append the Result; if fn raises, append one with NaN times and the error in its
    note (the traceback is printed) and go on."""
    try:
        med, q25, q75, reps, peak = measure(fn, device, **kw)
    except Exception as e:  # one provider failing must not lose the others' measurements
        traceback.print_exc()
        nan = float("nan")
        med, q25, q75, reps, peak = nan, nan, nan, 0, nan
        note = f"error: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    r = Result(op, case, mode, provider, med, q25, q75, reps, peak, note)
    results.append(r)
    print(f"  {op:17s} {case:38s} {mode:8s} {provider:10s} {med:10.2f} ms  [{q25:.2f}, {q75:.2f}]  peak {peak:8.1f} MiB"
          + (f"  {note}" if note else ""), flush=True)
    return r


def write(results: list, name: str, out_dir: Path = RESULTS_DIR, baselines=("reference", "ckdtree", "cdist"),
          memory: bool = False) -> tuple[Path, Path]:
    """Write <name>.csv and <name>.md: every measurement, plus speed-ups against each baseline provider
    measured for the same (op, case, mode) in this run (and, with `memory`, the baseline's peak / this peak)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    info = machine()
    present = [b for b in baselines if any(r.provider == b for r in results)]
    csv_path, md_path = out_dir / f"{name}.csv", out_dir / f"{name}.md"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"# {k}={v}" for k, v in info.items()])
        keys = list(asdict(results[0])) if results else []
        w.writerow(keys + [f"speedup_vs_{b}" for b in present])
        for r in results:
            w.writerow([getattr(r, k) for k in keys] + [_speedup(results, r, b) for b in present])
    lines = [
        f"# oneshot kernel benchmarks: {name}",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        "",
        ("Median per-call time over loops of back-to-back launches, each loop timed by CUDA events [25th-75th "
         "percentile of the loops]" if "cuda" in name else "Median wall time of repeats [25th-75th percentile]")
        + "; speed-up = baseline median / provider median, "
        "measured side by side in this run. Peak = memory growth during one call (resident set on CPU).",
        "",
        "| op | case | mode | provider | median ms | IQR ms | peak MiB |"
        + "".join(f" vs {b} |" for b in present) + "".join(f" memory vs {b} |" for b in present if memory)
        + " note |",
        "|---|---|---|---|---:|---:|---:|" + "---:|" * (len(present) * (2 if memory else 1)) + "---|",
    ]
    for r in results:
        sp = "".join(f" {_speedup(results, r, b)} |" for b in present)
        mem = "".join(f" {_memory_ratio(results, r, b)} |" for b in present if memory)
        lines.append(
            f"| {r.op} | {r.case} | {r.mode} | {r.provider} | {r.median_ms:.2f} | {r.q25_ms:.2f}-{r.q75_ms:.2f} | "
            f"{r.peak_mb:.0f} |{sp}{mem} {r.note} |"
        )
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def _ratio(results, r, baseline, field: str, suffix: str) -> str:
    """baseline's `field` / r's `field` for the same (op, case, mode), measured in this run ("" for the baseline)."""
    if r.provider == baseline:
        return ""
    for b in results:
        if (b.op, b.case, b.mode, b.provider) == (r.op, r.case, r.mode, baseline) and getattr(r, field) > 0:
            ratio = getattr(b, field) / getattr(r, field)
            return "" if math.isnan(ratio) else f"{ratio:.1f}x{suffix}"
    return ""


def _memory_ratio(results, r, baseline) -> str:
    return _ratio(results, r, baseline, "peak_mb", " less")


def _speedup(results, r, baseline) -> str:
    return _ratio(results, r, baseline, "median_ms", "")


def device_arg(name: str | None) -> torch.device:
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


SIZES = ("quick", "large", "all")


def pick(cases: Callable[[bool], object], sizes) -> list:
    """The cases of a benchmark for `sizes`: "quick" (cases(True)), "large" (those of cases(False) that --quick
    leaves out), "all" (cases(False)); True / False mean "quick" / "all"."""
    sizes = {True: "quick", False: "all"}.get(sizes, sizes)
    if sizes not in SIZES:
        raise ValueError(f"sizes must be one of {SIZES}, got {sizes!r}")
    quick = list(cases(True))
    if sizes == "quick":
        return quick
    every = list(cases(False))
    return every if sizes == "all" else [c for c in every if c not in quick]


def run_fwd_and_fwd_bwd(results: list, op, case, provider, device, call: Callable[[], object],
                        backward: Callable[[object], object], **kw) -> None:
    """Time `call()` under no_grad ("fwd"), and `backward(call())` ("fwd+bwd"). No synchronize inside: measure
    times whole loops of calls (see _cuda_events)."""

    def fwd():
        with torch.no_grad():
            call()

    def fwd_bwd():
        backward(call())

    run_case(results, op, case, "fwd", provider, fwd, device, **kw)
    run_case(results, op, case, "fwd+bwd", provider, fwd_bwd, device, **kw)


def add_arguments(p: argparse.ArgumentParser, stem: str | None = None) -> None:
    """--quick / --sizes, --device, --name, --out: the command line every benchmark script shares."""
    p.add_argument("--quick", action="store_true", help="the quick sizes only (= --sizes quick)")
    p.add_argument("--sizes", default=None, choices=SIZES,
                   help="quick: the small sizes; large: the sizes --quick leaves out; all (default)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--name", default=None, help=f"results file stem (default: {stem or '<op>'}_<device>)")
    p.add_argument("--out", default=str(RESULTS_DIR), help="results folder (default: benchmarks/results)")


def sizes_arg(a: argparse.Namespace) -> str:
    if a.quick and a.sizes not in (None, "quick"):
        raise SystemExit(f"--quick and --sizes {a.sizes} contradict each other")
    return "quick" if a.quick else (a.sizes or "all")


def main(run: Callable, stem: str, doc: str, argv=None, **write_kw) -> None:
    """Command line of one benchmark script: run(device, sizes, results), then write <stem>_<device>.*."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, stem)
    a = p.parse_args(argv)
    device = device_arg(a.device)
    results: list = []
    run(device, sizes_arg(a), results)
    print(*write(results, a.name or f"{stem}_{device.type}", Path(a.out), **write_kw), sep="\n")
