"""`python -m promptot.datasets check`: exit codes and messages."""
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from promptot.datasets import DescribableTextures
from promptot.datasets.__main__ import main


def img(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (4, 4), (1, 2, 3)).save(path, format="JPEG")


def dtd_tree(root, per=(3, 1, 2)):
    ds = os.path.join(root, "dtd")
    split = {}
    for s, n in zip(("train", "val", "test"), per):
        split[s] = []
        for label, c in enumerate(["banded", "blotchy"]):
            for i in range(n):
                p = f"{c}/{s}_{i}.jpg"
                img(os.path.join(ds, "images", p))
                split[s].append([p, label, c])
    with open(os.path.join(ds, "split_zhou_DescribableTextures.json"), "w") as f:
        json.dump(split, f)
    return ds, split


@pytest.fixture
def small_expected(monkeypatch):
    monkeypatch.setattr(DescribableTextures, "expected_counts", {"train": 6, "val": 2, "test": 4, "classes": 2})


def run(args, capsys):
    rc = main(args)
    return rc, capsys.readouterr().out


def test_ok(tmp_path, capsys, small_expected):
    dtd_tree(str(tmp_path))
    rc, out = run(["check", "--root", str(tmp_path), "DescribableTextures"], capsys)
    assert rc == 0, out
    assert "[OK] DescribableTextures" in out and "train 6 (expected 6)" in out


def test_missing_named_dataset(tmp_path, capsys):
    rc, out = run(["check", "--root", str(tmp_path), "OxfordPets"], capsys)
    assert rc == 1
    assert "[MISSING] OxfordPets" in out and str(tmp_path / "oxford_pets") in out
    assert "download NAME" in out


def test_unnamed_check_ignores_absent_datasets(tmp_path, capsys, small_expected):
    dtd_tree(str(tmp_path))
    rc, out = run(["check", "--root", str(tmp_path)], capsys)
    assert rc == 0, out
    assert "[absent] ImageNet" in out
    rc, out = run(["check", "--root", str(tmp_path / "empty")], capsys)
    assert rc == 1 and "No dataset found" in out


def test_wrong_counts_missing_and_corrupt(tmp_path, capsys):
    ds, split = dtd_tree(str(tmp_path))
    os.remove(os.path.join(ds, "images", split["test"][0][0]))
    bad = os.path.join(ds, "images", split["train"][1][0])
    with open(bad, "wb") as f:
        f.write(b"not an image")
    rc, out = run(["check", "--root", str(tmp_path), "DescribableTextures"], capsys)
    assert rc == 1
    assert "train: 6 images, expected 2820" in out  # confirmed counts are checked
    assert "test: 1 of 4 listed images missing: images/" + split["test"][0][0] in out
    assert "train: 1 unreadable image(s)" in out and split["train"][1][0] in out
    rc, out = run(["check", "--root", str(tmp_path), "--no-verify", "DescribableTextures"], capsys)
    assert "unreadable" not in out


def test_sample_limits_verification(tmp_path, capsys, small_expected):
    dtd_tree(str(tmp_path))
    rc, out = run(["check", "--root", str(tmp_path), "--sample", "1", "DescribableTextures"], capsys)
    assert rc == 0


def test_missing_split_file_and_unverified_counts(tmp_path, capsys):
    for c in ["apple_pie", "baby_back_ribs"]:
        for i in range(10):
            img(str(tmp_path / "food-101" / "images" / c / f"{i}.jpg"))
    rc, out = run(["check", "--root", str(tmp_path), "Food101"], capsys)
    assert rc == 1 and "split file missing: split_zhou_Food101.json" in out
    assert not os.path.exists(tmp_path / "food-101" / "split_zhou_Food101.json")  # the doctor writes nothing
    split = {"train": [["apple_pie/0.jpg", 0, "apple_pie"]], "val": [], "test": []}
    (tmp_path / "food-101" / "split_zhou_Food101.json").write_text(json.dumps(split))
    rc, out = run(["check", "--root", str(tmp_path), "Food101"], capsys)
    assert rc == 0, out
    assert "reference 50500, unverified" in out


def test_unknown_name(tmp_path, capsys):
    rc = main(["check", "--root", str(tmp_path), "Nope"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("ERROR: Unknown dataset 'Nope'.")
    assert "DescribableTextures (dtd)" in err  # the accepted names are listed


def test_config_stems_and_any_case_are_checked(tmp_path, capsys, small_expected):
    dtd_tree(str(tmp_path))
    for name in ("dtd", "DTD", "describabletextures"):
        rc, out = run(["check", "--root", str(tmp_path), name], capsys)
        assert rc == 0 and "[OK] DescribableTextures" in out, (name, out)
    rc, out = run(["check", "--root", str(tmp_path), "eurosat", "fashion_mnist_shift"], capsys)
    assert rc == 1 and "[MISSING] EuroSAT" in out and "[MISSING] FashionMNISTShift" in out


def test_module_entry_point(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(__file__), ".."))
    r = subprocess.run([sys.executable, "-m", "promptot.datasets", "check", "--root", str(tmp_path), "EuroSAT"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "[MISSING] EuroSAT" in r.stdout


# ----------------------------------------------------------------------------- required files depend on the split
def split_only_tree(root, name, folder, image_dir, entries):
    """A dataset folder holding only its images and its split file (CoOp's documented layout)."""
    from promptot.datasets import BUILTIN_CLASSES

    ds = os.path.join(root, folder)
    split = {"train": [], "val": [], "test": []}
    for s, rel, label, cname in entries:
        img(os.path.join(ds, image_dir, rel))
        split[s].append([rel, label, cname])
    with open(os.path.join(ds, BUILTIN_CLASSES[name].split_file), "w") as f:
        json.dump(split, f)
    return ds


def small_counts(monkeypatch, name, entries):
    from promptot.datasets import BUILTIN_CLASSES

    counts = {s: sum(e[0] == s for e in entries) for s in ("train", "val", "test")}
    counts["classes"] = len({e[2] for e in entries})
    monkeypatch.setattr(BUILTIN_CLASSES[name], "expected_counts", counts)


UCF = [("train", "Apply_Eye_Makeup/v_ApplyEyeMakeup_g08_c01.jpg", 0, "Apply_Eye_Makeup"),
       ("val", "Apply_Eye_Makeup/v_ApplyEyeMakeup_g09_c01.jpg", 0, "Apply_Eye_Makeup"),
       ("test", "Archery/v_Archery_g01_c01.jpg", 1, "Archery"),
       ("train", "Archery/v_Archery_g08_c01.jpg", 1, "Archery")]


def test_ucf101_split_and_midframes_only_is_ok(tmp_path, capsys, monkeypatch):
    split_only_tree(str(tmp_path), "UCF101", "ucf101", "UCF-101-midframes", UCF)
    small_counts(monkeypatch, "UCF101", UCF)
    rc, out = run(["check", "--root", str(tmp_path), "UCF101"], capsys)
    assert rc == 0, out
    assert "[OK] UCF101" in out and "ucfTrainTestlist" not in out


def test_flowers_and_cars_split_without_mat_files_are_ok(tmp_path, capsys, monkeypatch):
    flowers = [("train", "image_00001.jpg", 0, "pink primrose"), ("val", "image_00002.jpg", 0, "pink primrose"),
               ("test", "image_00003.jpg", 1, "globe thistle")]
    split_only_tree(str(tmp_path), "OxfordFlowers", "oxford_flowers", "jpg", flowers)
    small_counts(monkeypatch, "OxfordFlowers", flowers)
    cars = [("train", "cars_train/00001.jpg", 0, "2012 Tesla Model S Sedan"),
            ("val", "cars_train/00002.jpg", 0, "2012 Tesla Model S Sedan"),
            ("test", "cars_test/00001.jpg", 1, "2000 AM General Hummer SUV")]
    split_only_tree(str(tmp_path), "StanfordCars", "stanford_cars", "", cars)
    small_counts(monkeypatch, "StanfordCars", cars)
    rc, out = run(["check", "--root", str(tmp_path), "OxfordFlowers", "StanfordCars"], capsys)
    assert rc == 0, out
    assert ".mat" not in out and "cat_to_name" not in out


def test_missing_split_names_what_regenerating_needs(tmp_path, capsys):
    img(str(tmp_path / "ucf101" / "UCF-101-midframes" / "Archery" / "v_Archery_g01_c01.jpg"))
    rc, out = run(["check", "--root", str(tmp_path), "UCF101"], capsys)
    assert rc == 1
    assert "split file missing: split_zhou_UCF101.json" in out
    assert "ucfTrainTestlist/classInd.txt" in out  # needed only because the split has to be regenerated


def test_missing_image_folder_with_split_present(tmp_path, capsys):
    split_only_tree(str(tmp_path), "UCF101", "ucf101", "UCF-101-midframes", UCF)
    import shutil

    shutil.rmtree(tmp_path / "ucf101" / "UCF-101-midframes")
    rc, out = run(["check", "--root", str(tmp_path), "UCF101"], capsys)
    assert rc == 1 and "UCF-101-midframes" in out
    from types import SimpleNamespace

    from promptot.datasets import UCF101
    from promptot.datasets.common import DatasetNotFoundError

    cfg = SimpleNamespace(SEED=1, DATASET=SimpleNamespace(ROOT=str(tmp_path), NUM_SHOTS=-1, SUBSAMPLE_CLASSES="all"))
    with pytest.raises(DatasetNotFoundError) as exc:
        UCF101(cfg)
    assert str(exc.value).splitlines()[0].endswith(str(tmp_path / "ucf101" / "UCF-101-midframes"))
