"""The benchmark harness's GPU timing and size tiers, without a GPU: torch.cuda's events and synchronize replaced
by a fake clock that each launch advances, so the test sees what is recorded and synchronized, and when."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _harness as H  # noqa: E402


class FakeCuda:
    """Events that read a clock in ms; launches advance it; every record / synchronize / launch is logged."""

    def __init__(self, launch_ms):
        self.clock, self.log, self.launch_ms = 0.0, [], launch_ms

    def launch(self):
        self.clock += self.launch_ms
        self.log.append("launch")

    def event(self, enable_timing=False):
        assert enable_timing
        fake = self

        class Event:
            def record(self):
                self.t = fake.clock
                fake.log.append("record")

            def synchronize(self):
                fake.log.append("sync")

            def elapsed_time(self, end):
                return end.t - self.t

        return Event()


@pytest.fixture
def cuda(monkeypatch):
    fake = FakeCuda(launch_ms=2.0)
    monkeypatch.setattr(torch.cuda, "Event", fake.event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: fake.log.append("sync"))
    return fake


def test_cuda_timing_is_loops_of_back_to_back_launches_between_two_events(cuda):
    med, q25, q75, calls = H._cuda_events(cuda.launch, budget_s=0.1, loops=5)
    # one launch sizes the loops: 100 ms / 5 loops / 2 ms = 10 launches a loop
    assert calls == 50 and cuda.log.count("launch") == 1 + 50
    assert med == q25 == q75 == 2.0
    timed = cuda.log[cuda.log.index("sync", 3) + 1:]  # after the sizing launch and its synchronize
    assert timed == (["record"] + ["launch"] * 10 + ["record"]) * 5 + ["sync"], timed


def test_cuda_timing_runs_at_least_one_launch_a_loop_and_caps_the_loop(cuda):
    cuda.launch_ms = 500.0
    assert H._cuda_events(cuda.launch, budget_s=0.1, loops=3)[3] == 3
    cuda.launch_ms = 1e-6
    assert H._cuda_events(cuda.launch, budget_s=10.0, loops=2, max_n=7)[3] == 14


def test_measure_on_cuda_warms_up_before_the_memory_and_the_timing(cuda, monkeypatch):
    class NoMemory:
        mb = 0.0

        def __init__(self, device):
            pass

        def __enter__(self):
            cuda.log.append("memory")
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(H, "PeakMemory", NoMemory)
    monkeypatch.delenv("BENCH_BUDGET_S", raising=False)
    med, _, _, calls, peak = H.measure(cuda.launch, torch.device("cuda"), budget_s=0.1)
    assert cuda.log[:3] == ["launch", "memory", "launch"] and med == 2.0 and calls == 50 and peak == 0.0


def test_a_failing_provider_is_recorded_and_the_run_goes_on():
    results = []

    def broken():
        raise RuntimeError("no kernel image is available\nmore")

    r = H.run_case(results, "op", "case", "fwd", "triton", broken, torch.device("cpu"))
    assert results == [r] and math.isnan(r.median_ms) and r.note == "error: RuntimeError: no kernel image is available"
    ok = H.run_case(results, "op", "case", "fwd", "reference", lambda: None, torch.device("cpu"), max_repeats=3)
    assert H._speedup(results, r, "reference") == "" and ok.median_ms >= 0


def _cases(quick):
    yield "small"
    yield "medium"
    if not quick:
        yield "large"
        yield "paper"


def test_size_tiers_split_the_cases():
    assert H.pick(_cases, "quick") == H.pick(_cases, True) == ["small", "medium"]
    assert H.pick(_cases, "large") == ["large", "paper"]
    assert H.pick(_cases, "all") == H.pick(_cases, False) == ["small", "medium", "large", "paper"]
    with pytest.raises(ValueError, match=r"sizes must be one of \('quick', 'large', 'all'\), got 'huge'"):
        H.pick(_cases, "huge")
