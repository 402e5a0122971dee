"""Aggregation of results records: last record per run, seed mean/std, H from seed means."""
from __future__ import annotations

import json

import pytest

from promptot.results import harmonic_rows, load_records, main, summarize


def _write(path, records):
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _rec(acc, seed, sub="all", split="test"):
    return {"method": "CoOp", "dataset": "DTD", "backbone": "ViT-B/16", "num_shots": 16, "subsample_classes": sub,
            "seed": seed, "split": split, "metrics": {"accuracy": acc, "macro_f1": acc - 1}}


def test_seed_mean_std_and_harmonic(tmp_path, capsys):
    for seed, (b, n) in enumerate([(80.0, 60.0), (82.0, 62.0), (84.0, 64.0)], 1):
        # a re-run into the same directory appends: the last test record wins; val records are ignored
        _write(tmp_path / "base" / f"seed{seed}", [_rec(0.0, seed, "base"), _rec(b, seed, "base"),
                                                   _rec(99.0, seed, "base", split="val")])
        _write(tmp_path / "new" / f"seed{seed}", [_rec(n, seed, "new")])
    recs = load_records(str(tmp_path))
    assert len(recs) == 6
    rows = summarize(recs)
    base = next(r for r in rows if r["subsample_classes"] == "base")
    assert base["n"] == 3 and base["seeds"] == [1, 2, 3] and base["mean"] == pytest.approx(82.0)
    assert base["spread"] == pytest.approx((8 / 3) ** 0.5)  # population std, as parse_test_res
    (h,) = harmonic_rows(rows)
    assert h["mean"] == pytest.approx(2 * 82.0 * 62.0 / (82.0 + 62.0))  # H of the seed means
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "82.00" in out and "70.61" in out


def test_broken_line_is_reported(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.jsonl").write_text('{"split": "test"\n')
    with pytest.raises(ValueError, match="results.jsonl:1"):
        load_records(str(tmp_path))


def test_empty_root(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
