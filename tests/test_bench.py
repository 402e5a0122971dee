"""The benchmark suite runs (a smoke test: the numbers are benchmark output, never asserted as speeds here)."""
from __future__ import annotations

import pytest

suite = pytest.importorskip("bench.suite")


def test_train_step_bench_measures_time_and_memory():
    out = suite.bench_train_step("cpu", repeats=1, only=["CoOp"])
    row = out["CoOp"]
    assert row["100"]["peak_bytes"] > 0 and row["1000"]["step_s"] > 0
    # the 1000-class step holds more than the 100-class one, and text chunking keeps it within a small factor
    assert 1.0 < row["mem_ratio"] < 4.0


def test_align_step_bench_runs_at_small_scale():
    res = suite.bench_align_imagenet_step("cpu", repeats=1, precision="fp32", scale="small", n_cls=20)
    assert res["step_s"] > 0 and res["peak_bytes"] > 0


def test_cpu_memory_probe_counts_allocations_not_views_of_existing_storage():
    """Slicing a pre-existing buffer allocates nothing (the probe once counted the whole buffer); new results count
    their bytes, freed when their last view dies."""
    import torch

    from bench.memory import LiveTensorBytes, peak_memory

    buf = torch.zeros(1000, 256)  # 1,024,000 bytes, allocated before the probe

    def step() -> None:
        a = buf[:10]  # a view: 0 bytes
        b = a * 2.0  # 10 x 256 x 4 = 10,240 bytes
        c = b.view(-1)[:5]  # a view of b: no more bytes
        del b
        d = torch.ones(100)  # 400 bytes while c keeps b's storage alive
        del c, d

    assert peak_memory(step, "cpu") == 10_240 + 400
    probe = LiveTensorBytes()
    with probe:
        step()
    assert probe.cur == 0


def test_region_timers_count_nested_calls_once():
    """The throughput profile wraps both the OT head's forward and its token level (which forward may call): a call
    nested in another of the same region is not counted twice."""
    import time

    class Head:
        def token_term(self):
            time.sleep(0.05)

        def forward(self):
            self.token_term()

    timers = suite._Timers("cpu")
    timers.wrap(Head, "forward", "ot_head")
    timers.wrap(Head, "token_term", "ot_head")
    try:
        t0 = time.perf_counter()
        Head().forward()
        Head().token_term()
        wall = time.perf_counter() - t0
    finally:
        timers.restore()
    assert 0.1 <= timers.t["ot_head"] <= wall
    assert Head.forward.__name__ == "forward"  # restored


def test_gpu_script_refuses_a_machine_without_cuda(tmp_path):
    """bench/gpu.sh stops before any benchmark, with a message saying why, where no CUDA device is visible."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: the script would run the whole suite")
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "gpu.json"
    r = subprocess.run(["bash", str(root / "bench" / "gpu.sh"), str(out)], capture_output=True, text=True,
                       env=dict(os.environ, PYTHON=sys.executable), timeout=120)
    assert r.returncode != 0
    assert "no CUDA device visible" in r.stderr
    assert not out.exists()
