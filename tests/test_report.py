"""promptot.report on hand-made records and log fixtures: seed means with the population std, H from seed means,
missing and mixed cells (never averaged over fewer datasets or across configs), published comparisons (confirmed
numbers only), cross-dataset and DG tables, log.txt ingestion in both result-line formats, and the figures."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from promptot.report import build_report, write_report
from promptot.report.__main__ import main as report_main
from promptot.report.logs import parse_log, run_diagnostics
from promptot.report.published import PublishedError, load_published
from promptot.report.runs import load_runs
from promptot.sweep.protocols import dataset_names, load_protocols

LOGS = ROOT / "tests" / "fixtures" / "logs"
ELEVEN = ["ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101", "FGVCAircraft",
          "SUN397", "DescribableTextures", "EuroSAT", "UCF101"]


def rec(method, dataset, acc, seed, shots=16, sub="all", epoch=10, backbone="ViT-B/16", group=None, model_dir=None,
        time="2024-01-01T00:00:00"):
    return {"method": method, "dataset": dataset, "backbone": backbone, "num_shots": shots, "subsample_classes": sub,
            "seed": seed, "split": "test", "epoch": epoch, "metrics": {"accuracy": acc}, "model_dir": model_dir,
            "group_hash": group or f"{method}-{dataset}-{shots}-{sub}-{epoch}", "time": time}


def put(root: Path, rel: str, *records) -> str:
    d = root / rel
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "results.jsonl", "a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(d)


def report(root: Path, **kw):
    pf = load_protocols()
    return build_report(load_runs(str(root), **kw), pf, published=load_published(str(ROOT / "configs/published")),
                        names=dataset_names(str(ROOT)))


def csv_rows(sec):
    return {(r["method"], r["origin"], r["dataset"], str(r["shots"]), r["setting"]): r for r in sec.csv}


def pstd(xs):
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


# ---------------------------------------------------------------------------------------------------- few-shot
def test_fewshot_means_population_std_missing_and_mixed(tmp_path):
    accs = {"Caltech101": [94.0, 95.0, 93.5], "DescribableTextures": [50.0, 54.0, 58.0]}
    for d, values in accs.items():
        for seed, a in enumerate(values, 1):
            put(tmp_path, f"PLOTPP/{d}/1shot/seed{seed}", rec("PLOTPP", d, a, seed, shots=1, epoch=50))
    # 2 shots on Caltech101: seed 1 trained for 50 epochs, seed 2 for 100: two configs, never averaged
    put(tmp_path, "PLOTPP/Caltech101/2shot/seed1", rec("PLOTPP", "Caltech101", 90.0, 1, shots=2, epoch=50))
    put(tmp_path, "PLOTPP/Caltech101/2shot/seed2", rec("PLOTPP", "Caltech101", 96.0, 2, shots=2, epoch=100))
    # seed 3 of DTD 1-shot run twice (a rerun into another folder): counted once, the latest
    put(tmp_path, "PLOTPP/DTD/1shot-rerun/seed3", rec("PLOTPP", "DescribableTextures", 60.0, 3, shots=1, epoch=50,
                                                     time="2024-02-01T00:00:00"))
    rep = report(tmp_path)
    (sec,) = [s for s in rep.sections if s.protocol == "fewshot"]
    rows = csv_rows(sec)
    cal = rows[("PLOTPP", "", "Caltech101", "1", "1 shots")]
    assert float(cal["mean"]) == pytest.approx(sum(accs["Caltech101"]) / 3)
    assert float(cal["std"]) == pytest.approx(pstd(accs["Caltech101"]), abs=1e-4)  # ddof 0, as parse_test_res
    dtd = rows[("PLOTPP", "", "DescribableTextures", "1", "1 shots")]
    assert dtd["values"] == "50.0000 54.0000 60.0000" and "seed 3 run 2 times" in dtd["flags"]
    mixed = rows[("PLOTPP", "", "Caltech101", "2", "2 shots")]
    assert mixed["status"] == "mixed" and mixed["mean"] == "" and "mixed configs" in mixed["flags"]
    # the 11-dataset average is missing (9 datasets have no run), never an average over the 2 present
    avg = rows[("PLOTPP", "", "average", "1", "1 shots")]
    assert avg["status"] == "missing" and avg["mean"] == "" and "missing 9/11" in avg["flags"]
    # published (PLOT++ README, ViT-B/16): compared cell by cell, with the difference
    assert float(cal["published"]) == 94.34
    assert float(cal["delta"]) == pytest.approx(float(cal["mean"]) - 94.34, abs=1e-3)
    assert "PLOT++ README" in cal["published_table"] and "CHENGY12/PLOT" in cal["published_source"]
    comp = {(c["dataset"], c["setting"]): c for c in sec.comparisons}
    assert comp[("DescribableTextures", "1 shots")]["published"] == 54.57
    assert any("mixed configs" in p for p in sec.problems)


def test_fewshot_average_over_all_eleven_datasets_and_its_seed_std(tmp_path):
    for i, d in enumerate(ELEVEN):
        for seed in (1, 2, 3):
            put(tmp_path, f"{d}/seed{seed}", rec("CoOp", d, 60.0 + i + seed, seed, shots=16, backbone="RN50"))
    put(tmp_path, "zs", rec("ZeroshotCLIP", "ImageNet", 58.2, -1, shots=-1, epoch=0, backbone="RN50"))
    rep = report(tmp_path)
    sec = rep.sections[0]
    avg = csv_rows(sec)[("CoOp", "", "average", "16", "16 shots")]
    per_seed = [sum(60.0 + i + s for i in range(11)) / 11 for s in (1, 2, 3)]
    assert float(avg["mean"]) == pytest.approx(sum(per_seed) / 3)
    assert float(avg["std"]) == pytest.approx(pstd(per_seed), abs=1e-4)
    zs = csv_rows(sec)[("ZeroshotCLIP", "", "ImageNet", "0", "zero-shot")]
    assert float(zs["mean"]) == 58.2 and zs["seeds"] == ""  # zero-shot has no seed


# ---------------------------------------------------------------------------------------------------- base-to-new
def test_base2new_h_from_seed_means_and_published_averages(tmp_path):
    values = {}
    for i, d in enumerate(ELEVEN):
        for seed in (1, 2, 3):
            b, n = 80.0 + i + seed, 60.0 + 2 * i - seed
            base = put(tmp_path, f"train_base/{d}/seed{seed}", rec("CoOp", d, b, seed, sub="base", epoch=200))
            put(tmp_path, f"test_new/{d}/seed{seed}", rec("CoOp", d, n, seed, sub="new", epoch=200, model_dir=base,
                                                         group=f"new-{d}"))
            values.setdefault(d, []).append((b, n))
    rep = report(tmp_path)
    (sec,) = [s for s in rep.sections if s.protocol == "base2new"]
    rows = csv_rows(sec)
    for d in ("Caltech101", "EuroSAT"):
        b = sum(x for x, _ in values[d]) / 3
        n = sum(y for _, y in values[d]) / 3
        assert float(rows[("CoOp", "", d, "16", "H")]["mean"]) == pytest.approx(2 * b * n / (b + n), abs=1e-4)
        assert float(rows[("CoOp", "", d, "16", "new")]["std"]) == pytest.approx(pstd([y for _, y in values[d]]),
                                                                                 abs=1e-4)
    B = sum(sum(x for x, _ in v) / 3 for v in values.values()) / 11
    N = sum(sum(y for _, y in v) / 3 for v in values.values()) / 11
    h = rows[("CoOp", "", "average", "16", "H")]
    assert float(h["mean"]) == pytest.approx(2 * B * N / (B + N), abs=1e-4)  # H of the averaged B and N
    # both confirmed tables with a CoOp row are compared: CoCoOp/MaPLe's and KgCoOp's README
    comp = [c for c in sec.comparisons if c["dataset"] == "average" and c["setting"] == "H"]
    assert sorted(c["published"] for c in comp) == [71.66, 74.60]
    assert all(c["delta"] == pytest.approx(float(h["mean"]) - c["published"]) for c in comp)
    md = (Path(write_report(rep, str(tmp_path / "out"))[0])).read_text()
    assert "Published numbers (confirmed)" in md and "| 71.66 |" in md and "| 74.60 |" in md


def test_base2new_missing_new_side(tmp_path):
    put(tmp_path, "train_base/dtd/seed1", rec("CoCoOp", "DescribableTextures", 77.0, 1, sub="base"))
    sec = [s for s in report(tmp_path).sections if s.protocol == "base2new"][0]
    rows = csv_rows(sec)
    assert rows[("CoCoOp", "", "DescribableTextures", "16", "new")]["status"] == "missing"
    assert rows[("CoCoOp", "", "DescribableTextures", "16", "H")]["mean"] == ""


# ---------------------------------------------------------------------------------------------------- transfer
def test_cross_dataset_and_domain_generalisation(tmp_path):
    src = {}
    for seed in (1, 2):
        src[seed] = put(tmp_path, f"imagenet/CoCoOp/seed{seed}", rec("CoCoOp", "ImageNet", 71.0 + seed, seed))
        for d, a in [("Caltech101", 93.0), ("DescribableTextures", 45.0), ("ImageNetV2", 64.0), ("ImageNetA", 50.0)]:
            put(tmp_path, f"evaluation/CoCoOp/{d}/seed{seed}", rec("CoCoOp", d, a + seed, seed, model_dir=src[seed],
                                                                   group=f"eval-{d}"))
    rep = report(tmp_path)
    xd = [s for s in rep.sections if s.protocol == "xd"][0]
    dg = [s for s in rep.sections if s.protocol == "dg"][0]
    xrows, drows = csv_rows(xd), csv_rows(dg)
    assert float(xrows[("CoCoOp", "", "ImageNet", "16", "source")]["mean"]) == pytest.approx(72.5)
    assert float(xrows[("CoCoOp", "", "Caltech101", "", "target")]["mean"]) == pytest.approx(94.5)
    assert xrows[("CoCoOp", "", "EuroSAT", "", "target")]["status"] == "missing"
    assert xrows[("CoCoOp", "", "average", "", "target average")]["mean"] == ""  # 8 of 10 targets missing
    assert ("CoCoOp", "", "ImageNetV2", "", "target") not in xrows  # a DG target, not cross-dataset
    assert float(drows[("CoCoOp", "", "ImageNetV2", "", "target")]["mean"]) == pytest.approx(65.5)
    assert drows[("CoCoOp", "", "ImageNetR", "", "target")]["status"] == "missing"


# ---------------------------------------------------------------------------------------------------- logs
def test_parse_log_both_result_formats():
    train = parse_log(str(LOGS / "coop_fewshot/seed1/log.txt"))  # Dassl >= 0.6.1: "Finish training", 1 decimal
    assert train.trained and train.finished
    assert train.metrics == {"accuracy": 87.4, "error_rate": 12.6, "macro_f1": 84.9}  # not the val result (11.0)
    assert train.cfg("DATASET.NAME") == "Caltech101" and train.cfg("TRAINER.COOP.N_CTX") == "16"
    assert train.cfg("TRAINER.COCOOP.CTX_INIT") is None and train.args["config_file"].endswith("rn50_ep50.yaml")
    old = parse_log(str(LOGS / "maple_base2new/train_base/dtd/shots_16/MaPLe/vit_b16_c2_ep5_batch4_2ctx/seed1/log.txt"))
    assert old.finished and old.metrics["accuracy"] == 80.25  # older Dassl: "Finished training", 2 decimals
    assert old.diagnostics["loss"][5] == pytest.approx(1.15)
    test = parse_log(str(LOGS / "maple_base2new/test_new/dtd/shots_16/MaPLe/vit_b16_c2_ep5_batch4_2ctx/seed2/log.txt"))
    assert not test.trained and test.metrics["accuracy"] == 61.10  # eval-only: counted from "=> result"
    crashed = parse_log(str(LOGS / "crashed/seed1/log.txt"))
    assert not crashed.finished and crashed.diagnostics["plan_ent"] == {1: 0.998, 2: 0.997, 3: 0.996}


def test_old_runs_beside_new_ones(tmp_path, capsys):
    for seed, acc in [(1, 88.0), (2, 89.0), (3, 87.0)]:
        put(tmp_path, f"caltech101/CoOp/rn50_ep50_1shots/seed{seed}",
            rec("CoOp", "Caltech101", acc, seed, shots=1, epoch=50, backbone="RN50"))
    out = tmp_path / "rep"
    assert report_main([str(tmp_path), "--logs", f"{LOGS / 'coop_fewshot'}=CoOp repo", "--logs",
                        f"{LOGS / 'maple_base2new'}=MaPLe repo", "--logs", str(LOGS / "crashed"), "--out",
                        str(out)]) == 0
    rows = {(r["method"], r["origin"], r["dataset"], r["setting"]): r for r in csv.DictReader(open(out / "fewshot.csv"))}
    ours = rows[("CoOp", "", "Caltech101", "1 shots")]
    theirs = rows[("CoOp", "CoOp repo", "Caltech101", "1 shots")]
    assert float(ours["mean"]) == pytest.approx(88.0)
    assert float(theirs["mean"]) == pytest.approx((87.4 + 88.1 + 86.9) / 3, abs=1e-4)
    assert theirs["seeds"] == "1 2 3" and theirs["status"] == "ok"  # the three seeds share one config
    b2n = {(r["method"], r["setting"], r["dataset"]): r for r in csv.DictReader(open(out / "base2new.csv"))}
    new = b2n[("MaPLe", "new", "DescribableTextures")]
    assert float(new["mean"]) == pytest.approx(60.5) and new["n_seeds"] == "2"
    assert float(b2n[("MaPLe", "H", "DescribableTextures")]["mean"]) == pytest.approx(2 * 81.0 * 60.5 / 141.5, abs=1e-4)
    md = (out / "report.md").read_text()
    assert "CoOp (RN50) [CoOp repo]" in md and "MaPLe (ViT-B/16) [MaPLe repo]" in md
    assert "PLOT" not in (out / "fewshot.csv").read_text()  # the crashed run has no result


def test_evaluation_logs_are_linked_to_their_training_by_path_tail():
    runs = load_runs(str(LOGS / "maple_base2new"), logs=[])
    new = [r for r in runs if r.subsample == "new"]
    assert len(new) == 2 and all(r.source is not None and r.source.subsample == "base" for r in new)
    assert {r.source.seed for r in new} == {1, 2} and all(r.source.seed == r.seed for r in new)


# ---------------------------------------------------------------------------------------------------- figures
def test_figures_are_written(tmp_path):
    for d in ("Caltech101", "DescribableTextures"):
        for shots in (1, 2):
            for seed in (1, 2):
                run = put(tmp_path, f"{d}/{shots}/seed{seed}", rec("PLOT", d, 50.0 + shots + seed, seed, shots=shots,
                                                                    backbone="RN50", epoch=2))
                (Path(run) / "log.txt").write_text("".join(
                    f"epoch [{e}/2] batch [1/1] loss 1.0 (1.0) plan_ent {0.99 - 0.01 * e} ({0.99 - 0.01 * e}) lr "
                    "2.0000e-03 eta 0:00:00\n" for e in (1, 2)))
        put(tmp_path, f"zs/{d}", rec("ZeroshotCLIP", d, 45.0, -1, shots=-1, epoch=0, backbone="RN50"))
    rep = report(tmp_path)
    assert rep.diagnostics["PLOT (RN50)"]["Caltech101 1-shot"] == {1: pytest.approx(0.98), 2: pytest.approx(0.97)}
    files = write_report(rep, str(tmp_path / "out"))
    for name in ("fewshot", "ot_diagnostics"):
        for ext in ("png", "svg"):
            path = tmp_path / "out" / f"{name}.{ext}"
            assert str(path) in files and path.stat().st_size > 1000
    assert run_diagnostics(str(tmp_path / "Caltech101/1/seed1"))["plan_ent"] == {1: 0.98, 2: 0.97}


# ---------------------------------------------------------------------------------------------------- published
def test_published_files_hold_confirmed_numbers_with_sources():
    pubs = load_published(str(ROOT / "configs/published"))
    assert all(p.source and p.table for p in pubs)
    get = {(p.table.split(",")[0], p.method, p.dataset, p.setting): p.value for p in pubs}
    assert get[("MaPLe Table 1 / README", "CoCoOp", "average", "H")] == 75.83  # baselines.md §8
    assert get[("KgCoOp README", "KgCoOp", "average", "H")] == 77.0  # copl_kgcoop_prograd.md §3
    plotpp = [p for p in pubs if p.method == "PLOTPP"]
    for k in (1, 2, 4, 8, 16):  # the average row is the mean of the 11 rows (ot_methods.md §3)
        rows = [p.value for p in plotpp if p.shots == k and p.dataset != "average"]
        avg = next(p.value for p in plotpp if p.shots == k and p.dataset == "average")
        assert len(rows) == 11 and round(sum(rows) / 11, 2) == avg
    assert {p.dataset for p in plotpp} - {"average"} == set(ELEVEN)


def test_unconfirmed_numbers_are_refused(tmp_path):
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({
        "table": "ALIGN Table 1", "protocol": "base2new", "status": "unverified", "source": "recollection",
        "entries": [{"method": "ALIGN", "dataset": "average", "H": 79.0}]}))
    with pytest.raises(PublishedError, match="Only numbers confirmed"):
        load_published(str(tmp_path))


def test_cli_errors(tmp_path, capsys):
    assert report_main([str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert report_main([str(tmp_path)]) == 1  # no runs


def test_demo_writes_its_table_and_figure(tmp_path):
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("promptot_demo", ROOT / "scripts" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    headers = ["method", "dataset", "shots", "seed", "accuracy %", "macro F1 %", "time (s)"]
    rows = [["ZeroshotCLIP", "FashionMNISTShift", "-", 1, "49.4", "47.0", 12.0],
            ["CoOp", "FashionMNISTShift", 16, 1, "54.5", "53.0", 22.0],
            ["ALIGN", "FashionMNISTShift", 16, 1, "58.0", "57.1", 85.0]]
    args = argparse.Namespace(dataset="FashionMNISTShift", shots=16, seed=1)
    files = demo.write_outputs(rows, headers, tmp_path, args)
    assert {f.name for f in files} == {"demo.md", "demo.csv", "demo.png", "demo.svg"}
    md = (tmp_path / "demo.md").read_text()
    assert "| CoOp " in md and "| 58.0 " in md, md  # one decimal kept: "58.0", not "58"
    assert list(csv.reader(open(tmp_path / "demo.csv")))[2][:5] == ["CoOp", "FashionMNISTShift", "16", "1", "54.5"]
    assert (tmp_path / "demo.png").stat().st_size > 1000


def test_variants_of_one_trainer_are_separate_rows(tmp_path):
    # IVLP 2+2 and IVLP language-only are both trainer IVLP; their config files tell them apart
    for cfg, b in (("vit_b16_c2_ep5_batch4_2+2ctx", 82.0), ("vit_b16_c2_ep5_batch4_4ctx_language_only", 81.0)):
        for seed in (1, 2):
            run = put(tmp_path, f"{cfg}/{seed}", rec("IVLP", "DescribableTextures", b + seed, seed, sub="base",
                                                    epoch=5, group=f"g-{cfg}"))
            Path(run, "log.txt").write_text(f"** Arguments **\nconfig_file: configs/trainers/IVLP/{cfg}.yaml\n")
    sec = [s for s in report(tmp_path).sections if s.protocol == "base2new"][0]
    rows = {(r["origin"], r["setting"]): r for r in sec.csv if r["dataset"] == "DescribableTextures"}
    lang = rows[("vit_b16_c2_ep5_batch4_4ctx_language_only", "base")]
    assert lang["status"] == "ok" and float(lang["mean"]) == pytest.approx(82.5)
    assert float(rows[("vit_b16_c2_ep5_batch4_2+2ctx", "base")]["mean"]) == pytest.approx(83.5)
