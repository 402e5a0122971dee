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


def test_a_seed_run_three_times_counts_once_and_is_flagged(tmp_path, capsys):
    # Issue 14.3: three runs of seed 1 used to show as "3 seeds, std 0.00" (or a spread over repeats).
    for i, acc in enumerate([50.0, 60.0, 70.0]):
        rec = dict(_rec(acc, 1), group_hash="g1", time=f"2024-01-0{i + 1}T00:00:00")
        _write(tmp_path / f"rerun{i}" / "seed1", [rec])
    (row,) = summarize(load_records(str(tmp_path)))
    assert row["n"] == 1 and row["seeds"] == [1] and row["runs"] == 3
    assert row["mean"] == pytest.approx(70.0) and row["spread"] == 0.0  # the latest run of the seed
    assert any("seed 1 run 3 times" in f for f in row["flags"])
    assert main([str(tmp_path)]) == 0
    assert "seed 1 run 3 times" in capsys.readouterr().out


def test_runs_of_different_configs_are_not_averaged(tmp_path):
    # Issue 14.3: 4-shot runs trained for 3, 10 and 40 epochs were averaged together. Older records have no
    # group_hash: the hash comes from each run's config.yaml.
    for epochs, acc in [(3, 40.0), (10, 50.0), (40, 60.0)]:
        for seed in (1, 2):
            d = tmp_path / f"ep{epochs}" / f"seed{seed}"
            rec = dict(_rec(acc + seed, seed), num_shots=4)
            _write(d, [rec])
            (d / "config.yaml").write_text(f"# config_hash: x\nSEED: {seed}\nOUTPUT_DIR: {d}\nOPTIM:\n  MAX_EPOCH: "
                                           f"{epochs}\nTRAINER:\n  NAME: CoOp\n")
    rows = summarize(load_records(str(tmp_path)))
    assert len(rows) == 3  # one row per config, not one average over the three
    assert sorted(r["mean"] for r in rows) == pytest.approx([41.5, 51.5, 61.5])
    assert all(r["n"] == 2 and r["seeds"] == [1, 2] for r in rows)
    assert all(any("mixed configs" in f for f in r["flags"]) for r in rows)
    assert len({r["config"] for r in rows}) == 3


def test_base_new_with_several_configs_gets_no_harmonic(tmp_path):
    for g in ("a", "b"):
        _write(tmp_path / f"base_{g}", [dict(_rec(80.0, 1, "base"), group_hash=f"base-{g}")])
    _write(tmp_path / "new", [dict(_rec(60.0, 1, "new"), group_hash="new-a")])
    rows = summarize(load_records(str(tmp_path)))
    assert harmonic_rows(rows) == []  # which base run would H pair with? none: flagged instead
