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
