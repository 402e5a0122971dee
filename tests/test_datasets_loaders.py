"""Dataset classes on tiny fixture trees in each reference layout."""
import json
import os
import pickle
import random
import shutil
import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import promptot.datasets as D
from promptot.datasets.common import (CorruptImageError, DatasetNotFoundError, UnsafeSplitPathError, read_image,
                                      subsample_classes)
from promptot.engine import DATASET_REGISTRY, DatasetBase

SPLITS_DIR = "/work/shared/data/coop_splits"


def cfg(root, name="", shots=-1, seed=1, subsample="all", **extra):
    dataset = SimpleNamespace(ROOT=str(root), NAME=name, NUM_SHOTS=shots, SUBSAMPLE_CLASSES=subsample,
                              SKIP_CORRUPT=False, FOLDER="")
    for k, v in extra.items():
        setattr(dataset, k, v)
    return SimpleNamespace(DATASET=dataset, SEED=seed)


def build(name, root, **kw):
    return DATASET_REGISTRY.get(name)(cfg(root, name, **kw))


def img(path, color=(10, 20, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (4, 4), color).save(path, format="PNG" if path.endswith(".png") else "JPEG")
    return path


def touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()


def class_tree(base, classes, n, ext=".jpg"):
    for c in classes:
        for i in range(n):
            img(os.path.join(base, c, f"{c}_{i}{ext}"))


def rel(ds_dir, items):
    return [(os.path.relpath(d.impath, ds_dir).replace(os.sep, "/"), d.label, d.classname) for d in items]


def dassl_draw(items, k):
    """Hand transcription of Dassl's generate_fewshot_dataset for one source."""
    groups = {}
    for it in items:
        groups.setdefault(it.label, []).append(it)
    out = []
    for _, g in groups.items():
        out.extend(random.sample(g, k) if len(g) >= k else g)
    return out


# ----------------------------------------------------------------------------- registry
def test_all_names_registered():
    names = set(DATASET_REGISTRY.registered_names())
    assert set(D.BUILTIN_CLASSES) <= names
    for stem in ["caltech101", "dtd", "eurosat", "fgvc_aircraft", "food101", "imagenet", "imagenet_a", "imagenet_r",
                 "imagenet_sketch", "imagenetv2", "oxford_flowers", "oxford_pets", "stanford_cars", "sun397",
                 "ucf101", "image_folder"]:
        path = os.path.join(os.path.dirname(__file__), "..", "configs", "datasets", stem + ".yaml")
        text = open(path).read()
        assert text.startswith("DATASET:\n  NAME: ")
        assert text.split('"')[1] in names


def test_packaged_imagenet_classnames():
    from promptot.datasets.common import packaged_imagenet_classnames_file, read_classnames

    names = read_classnames(packaged_imagenet_classnames_file())
    keys = list(names)
    assert len(keys) == 1000 and keys == sorted(keys)
    assert (keys[0], names[keys[0]]) == ("n01440764", "tench")
    assert names["n15075141"] == "toilet paper"


# ----------------------------------------------------------------------------- generated splits
def test_eurosat_generated_split_and_renames(tmp_path, capsys):
    class_tree(tmp_path / "eurosat" / "2750", ["AnnualCrop", "SeaLake", "Highway"], 10)
    ds = build("EuroSAT", tmp_path)
    assert ds.classnames == ["Annual Crop Land", "Highway or Road", "Sea or Lake"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (15, 6, 9)
    out = capsys.readouterr().out
    assert "NOT comparable" in out
    split = json.load(open(tmp_path / "eurosat" / "split_zhou_EuroSAT.json"))
    assert split["train"][0][0].startswith("AnnualCrop/") and split["train"][0][1:] == [0, "Annual Crop Land"]
    # Re-reading uses the written file: same lists.
    ds2 = build("EuroSAT", tmp_path, seed=7)
    assert rel(ds2.dataset_dir, ds2.train_x) == rel(ds.dataset_dir, ds.train_x)
    # Same seed, fresh tree: same generated split.
    os.remove(tmp_path / "eurosat" / "split_zhou_EuroSAT.json")
    ds3 = build("EuroSAT", tmp_path)
    assert rel(ds3.dataset_dir, ds3.test) == rel(ds.dataset_dir, ds.test)


def test_caltech_ignored_and_renamed(tmp_path):
    class_tree(tmp_path / "caltech-101" / "101_ObjectCategories",
               ["Faces", "Faces_easy", "BACKGROUND_Google", "airplanes", "accordion"], 10)
    ds = build("Caltech101", tmp_path)
    assert ds.classnames == ["face", "accordion", "airplane"]
    assert ds.num_classes == 3


def test_dtd_food_generated(tmp_path):
    class_tree(tmp_path / "dtd" / "images", ["banded", "blotchy"], 10)
    class_tree(tmp_path / "food-101" / "images", ["apple_pie", "baby_back_ribs"], 10)
    assert build("DescribableTextures", tmp_path).classnames == ["banded", "blotchy"]
    food = build("Food101", tmp_path)
    assert food.classnames == ["apple_pie", "baby_back_ribs"]
    assert (len(food.train_x), len(food.val), len(food.test)) == (10, 4, 6)


def test_oxford_pets_annotations(tmp_path):
    root = tmp_path / "oxford_pets"
    lines = {"trainval": [], "test": []}
    for label, breed in [(1, "Abyssinian"), (2, "american_bulldog")]:
        for i in range(7):
            name = f"{breed}_{i + 1}"
            img(str(root / "images" / f"{name}.jpg"))
            lines["trainval" if i < 5 else "test"].append(f"{name} {label} 1 1")
    os.makedirs(root / "annotations")
    for k, v in lines.items():
        (root / "annotations" / f"{k}.txt").write_text("\n".join(v) + "\n")
    ds = build("OxfordPets", tmp_path)
    assert ds.classnames == ["abyssinian", "american_bulldog"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (8, 2, 4)
    split = json.load(open(root / "split_zhou_OxfordPets.json"))
    assert split["test"][0] == ["Abyssinian_6.jpg", 0, "abyssinian"]


def test_stanford_cars_year_first(tmp_path):
    from scipy.io import savemat

    root = tmp_path / "stanford_cars"
    os.makedirs(root / "devkit")
    names = np.empty((1, 2), dtype=object)
    names[0, 0], names[0, 1] = "AM General Hummer SUV 2000", "Tesla Model S Sedan 2012"
    savemat(str(root / "devkit" / "cars_meta.mat"), {"class_names": names})

    def annos(folder, n, path):
        ann = np.zeros((1, 2 * n), dtype=[("fname", "O"), ("class", "O")])
        for i in range(2 * n):
            fname = f"{i:05d}.jpg"
            img(str(root / folder / fname))
            ann[0, i] = (fname, np.array([[1 + i % 2]]))
        savemat(str(path), {"annotations": ann})

    annos("cars_train", 5, root / "devkit" / "cars_train_annos.mat")
    annos("cars_test", 2, root / "cars_test_annos_withlabels.mat")
    ds = build("StanfordCars", tmp_path)
    assert ds.classnames == ["2000 AM General Hummer SUV", "2012 Tesla Model S Sedan"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (8, 2, 4)
    split = json.load(open(root / "split_zhou_StanfordCars.json"))
    assert split["test"][0][0] == "cars_test/00000.jpg"  # relative to the dataset folder


def test_oxford_flowers_mat(tmp_path):
    from scipy.io import savemat

    root = tmp_path / "oxford_flowers"
    labels = [1] * 10 + [2] * 10
    for i in range(len(labels)):
        img(str(root / "jpg" / f"image_{i + 1:05d}.jpg"))
    savemat(str(root / "imagelabels.mat"), {"labels": np.array([labels])})
    (root / "cat_to_name.json").write_text(json.dumps({"1": "pink primrose", "2": "hard-leaved pocket orchid"}))
    ds = build("OxfordFlowers", tmp_path)
    assert ds.classnames == ["pink primrose", "hard-leaved pocket orchid"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (10, 4, 6)


def test_sun397_reversed_names(tmp_path):
    root = tmp_path / "sun397"
    os.makedirs(root)
    (root / "ClassName.txt").write_text("/a/abbey\n/a/apartment_building/outdoor\n")
    tr, te = [], []
    for c in ["a/abbey", "a/apartment_building/outdoor"]:
        for i in range(7):
            p = f"/{c}/sun_{i}.jpg"
            img(str(root / "SUN397") + p)
            (tr if i < 5 else te).append(p)
    (root / "Training_01.txt").write_text("\n".join(tr) + "\n")
    (root / "Testing_01.txt").write_text("\n".join(te) + "\n")
    ds = build("SUN397", tmp_path)
    assert ds.classnames == ["abbey", "outdoor apartment_building"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (8, 2, 4)


def test_ucf101_camel_case(tmp_path):
    root = tmp_path / "ucf101"
    os.makedirs(root / "ucfTrainTestlist")
    (root / "ucfTrainTestlist" / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    tr, te = [], []
    for label, action in [(1, "ApplyEyeMakeup"), (2, "Archery")]:
        folder = "_".join(["Apply", "Eye", "Makeup"]) if label == 1 else "Archery"
        for i in range(7):
            name = f"v_{action}_g{i:02d}_c01"
            img(str(root / "UCF-101-midframes" / folder / f"{name}.jpg"))
            if i < 5:
                tr.append(f"{action}/{name}.avi {label}")
            else:
                te.append(f"{action}/{name}.avi")
    (root / "ucfTrainTestlist" / "trainlist01.txt").write_text("\n".join(tr) + "\n")
    (root / "ucfTrainTestlist" / "testlist01.txt").write_text("\n".join(te) + "\n")
    ds = build("UCF101", tmp_path)
    assert ds.classnames == ["Apply_Eye_Makeup", "Archery"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (8, 2, 4)


def test_fgvc_aircraft_variant_files(tmp_path):
    root = tmp_path / "fgvc_aircraft"
    os.makedirs(root)
    (root / "variants.txt").write_text("707-320\nA300B4\nF/A-18\n")
    n = 0
    for split, per in [("train", 2), ("val", 1), ("test", 1)]:
        lines = []
        for cname in ["707-320", "A300B4", "F/A-18"]:
            for _ in range(per):
                n += 1
                img(str(root / "images" / f"{n:07d}.jpg"))
                lines.append(f"{n:07d} {cname}")
        (root / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    ds = build("FGVCAircraft", tmp_path)
    assert ds.classnames == ["707-320", "A300B4", "F/A-18"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (6, 3, 3)


# ----------------------------------------------------------------------------- ImageNet family
def test_imagenet_folders_fewshot_and_cache(tmp_path):
    root = tmp_path / "imagenet" / "images"
    for split, n in [("train", 5), ("val", 2)]:
        class_tree(root / split, ["n01443537", "n01440764"], n, ext=".JPEG")
    ds = build("ImageNet", tmp_path, shots=2, seed=3)
    assert ds.classnames == ["tench", "goldfish"]  # sorted wnid order, packaged names
    assert len(ds.train_x) == 4 and len(ds.test) == 4 and ds.val is ds.test or ds.val == ds.test
    assert os.path.exists(tmp_path / "imagenet" / "preprocessed.json")
    cache = json.load(open(tmp_path / "imagenet" / "split_fewshot" / "shot_2-seed_3.json"))
    assert "val" not in cache and len(cache["train"]) == 4
    # picks = Dassl's draw on the (sorted) folder listing
    full = build("ImageNet", tmp_path, shots=-1)
    random.seed(3)
    want = dassl_draw(full.train_x, 2)
    assert rel(ds.dataset_dir, ds.train_x) == rel(full.dataset_dir, want)
    base = build("ImageNet", tmp_path, shots=2, seed=3, subsample="new")
    assert base.classnames == ["goldfish"] and {d.label for d in base.test} == {0}


def test_imagenet_variants(tmp_path):
    for folder, sub in [("imagenet-adversarial", "imagenet-a"), ("imagenet-rendition", "imagenet-r"),
                        ("imagenet-sketch", "images")]:
        class_tree(tmp_path / folder / sub, ["n01498041", "n01443537"], 3)
    (tmp_path / "imagenet-adversarial" / "imagenet-a" / "README.txt").write_text("readme")
    for name in ["ImageNetA", "ImageNetR", "ImageNetSketch"]:
        ds = build(name, tmp_path, shots=16)
        assert ds.classnames == ["goldfish", "stingray"], name  # labels 0..k-1 by sorted wnid
        assert ds.train_x == ds.test and len(ds.test) == 6 and not ds.val
        assert not os.path.exists(tmp_path / DATASET_REGISTRY.get(name).dataset_dir / "split_fewshot")
    v2 = tmp_path / "imagenetv2"
    os.makedirs(v2)
    (v2 / "classnames.txt").write_text("n01440764 tench\nn01443537 goldfish\nn01484850 great white shark\n")
    class_tree(v2 / "imagenetv2-matched-frequency-format-val", ["0", "1", "2"], 2)
    ds = build("ImageNetV2", tmp_path)
    assert ds.classnames == ["tench", "goldfish", "great white shark"]
    assert [d.label for d in ds.test] == [0, 0, 1, 1, 2, 2]


# ----------------------------------------------------------------------------- few-shot
def _dtd_with_split(root, classes=("banded", "blotchy", "braided", "bubbly", "bumpy"), n=(6, 3, 3)):
    """A DTD tree with a hand-written split file in a scrambled (non-sorted) order."""
    ds_dir = os.path.join(root, "dtd")
    split = {}
    k = 0
    for s, per in zip(["train", "val", "test"], n):
        entries = []
        for label, c in enumerate(classes):
            for i in range(per):
                k += 1
                p = f"{c}/{c}_{k:04d}.jpg"
                img(os.path.join(ds_dir, "images", p))
                entries.append([p, label, c])
        random.Random(len(entries)).shuffle(entries)
        split[s] = entries
    with open(os.path.join(ds_dir, "split_zhou_DescribableTextures.json"), "w") as f:
        json.dump(split, f)
    return ds_dir, split


def test_fewshot_picks_equal_dassl_draw(tmp_path):
    ds_dir, split = _dtd_with_split(str(tmp_path))
    full = build("DescribableTextures", tmp_path)
    assert [list(t) for t in rel(os.path.join(ds_dir, "images"), full.train_x)] == split["train"]  # json order
    for k, seed in [(1, 1), (2, 2), (4, 3), (16, 1)]:
        ds = build("DescribableTextures", tmp_path, shots=k, seed=seed)
        random.seed(seed)
        want_train = dassl_draw(full.train_x, k)
        want_val = dassl_draw(full.val, min(k, 4))
        assert rel(ds_dir, ds.train_x) == rel(ds_dir, want_train), (k, seed)
        assert rel(ds_dir, ds.val) == rel(ds_dir, want_val), (k, seed)
        assert len(ds.test) == len(full.test)
    cache = json.load(open(os.path.join(ds_dir, "split_fewshot", "shot_2-seed_2.json")))
    assert cache["num_shots"] == 2 and cache["seed"] == 2
    assert all(not os.path.isabs(p) and p.startswith("images/") for p, _, _ in cache["train"])


def test_cache_portable_across_roots(tmp_path, monkeypatch):
    a, b = tmp_path / "machine_a", tmp_path / "machine_b"
    ds_dir, _ = _dtd_with_split(str(a))
    first = build("DescribableTextures", a, shots=2, seed=1)
    picks = rel(first.dataset_dir, first.train_x), rel(first.dataset_dir, first.val)
    os.makedirs(b)
    shutil.move(str(a / "dtd"), str(b / "dtd"))

    def boom(*args, **kwargs):
        raise AssertionError("cache not used")

    monkeypatch.setattr(DatasetBase, "generate_fewshot_dataset", boom)
    second = build("DescribableTextures", b, shots=2, seed=1)
    assert (rel(second.dataset_dir, second.train_x), rel(second.dataset_dir, second.val)) == picks
    assert all(d.impath.startswith(str(b)) for d in second.train_x)


def test_fewshot_drawn_before_subsampling(tmp_path):
    _dtd_with_split(str(tmp_path))
    all_ = build("DescribableTextures", tmp_path, shots=2, seed=5)
    base = build("DescribableTextures", tmp_path, shots=2, seed=5, subsample="base")
    new = build("DescribableTextures", tmp_path, shots=2, seed=5, subsample="new")
    assert base.classnames == ["banded", "blotchy", "braided"] and new.classnames == ["bubbly", "bumpy"]
    assert {d.label for d in new.train_x} == {0, 1} and {d.label for d in new.test} == {0, 1}
    assert [d.impath for d in all_.train_x if d.label >= 3] == [d.impath for d in new.train_x]
    assert [d.impath for d in all_.train_x if d.label < 3] == [d.impath for d in base.train_x]


def test_subsample_classes_odd_and_relabel(tmp_path):
    p = img(str(tmp_path / "x.jpg"))
    from promptot.engine import Datum

    items = [Datum(p, y, classname=f"c{y}") for y in [4, 0, 2, 1, 3]]
    base, = subsample_classes(items, subsample="base")
    new, = subsample_classes(items, subsample="new")
    assert [(d.label, d.classname) for d in base] == [(0, "c0"), (2, "c2"), (1, "c1")]
    assert [(d.label, d.classname) for d in new] == [(1, "c4"), (0, "c3")]
    assert subsample_classes(items, subsample="all") == (items,)


def test_legacy_pickle_import(tmp_path, monkeypatch):
    ds_dir, _ = _dtd_with_split(str(tmp_path))
    full = build("DescribableTextures", tmp_path)
    # A stand-in for dassl.data.datasets.base_dataset.Datum, pickled with absolute paths of another machine.
    mods = ["dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset"]
    for m in mods:
        monkeypatch.setitem(sys.modules, m, types.ModuleType(m))

    class Datum:
        def __init__(self, impath, label, classname):
            self._impath, self._label, self._domain, self._classname = impath, label, 0, classname

    Datum.__module__, Datum.__qualname__ = mods[-1], "Datum"
    sys.modules[mods[-1]].Datum = Datum
    old = "/home/someone/DATA/dtd/"
    pick = {"train": [Datum(old + os.path.relpath(d.impath, ds_dir), d.label, d.classname) for d in full.train_x[:3]],
            "val": [Datum(old + os.path.relpath(d.impath, ds_dir), d.label, d.classname) for d in full.val[:2]]}
    os.makedirs(os.path.join(ds_dir, "split_fewshot"))
    with open(os.path.join(ds_dir, "split_fewshot", "shot_1-seed_9.pkl"), "wb") as f:
        pickle.dump(pick, f)
    for m in mods:
        monkeypatch.delitem(sys.modules, m)

    ds = build("DescribableTextures", tmp_path, shots=1, seed=9)
    assert [d.impath for d in ds.train_x] == [d.impath for d in full.train_x[:3]]
    assert [d.impath for d in ds.val] == [d.impath for d in full.val[:2]]
    assert os.path.exists(os.path.join(ds_dir, "split_fewshot", "shot_1-seed_9.json"))


def test_pickle_with_foreign_class_is_refused(tmp_path):
    from promptot.datasets.common import load_legacy_pickle

    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"train": [SimpleNamespace(a=1)]}))
    with pytest.raises(pickle.UnpicklingError):
        load_legacy_pickle(str(p))


# ----------------------------------------------------------------------------- errors
def test_missing_folder_names_path_and_doctor(tmp_path):
    with pytest.raises(DatasetNotFoundError) as exc:
        build("OxfordPets", tmp_path)
    msg = str(exc.value)
    assert isinstance(exc.value, FileNotFoundError)
    assert str(tmp_path / "oxford_pets") in msg
    assert f"python -m promptot.datasets check --root {tmp_path} OxfordPets" in msg


def test_missing_image_in_split(tmp_path):
    ds_dir, split = _dtd_with_split(str(tmp_path))
    os.remove(os.path.join(ds_dir, "images", split["test"][0][0]))
    with pytest.raises(DatasetNotFoundError) as exc:
        build("DescribableTextures", tmp_path)
    assert split["test"][0][0] in str(exc.value) and "promptot.datasets check" in str(exc.value)


def test_split_path_outside_dataset_rejected(tmp_path):
    ds_dir, split = _dtd_with_split(str(tmp_path))
    img(str(tmp_path / "secret.jpg"))
    split["train"][0][0] = "../../secret.jpg"
    json.dump(split, open(os.path.join(ds_dir, "split_zhou_DescribableTextures.json"), "w"))
    with pytest.raises(UnsafeSplitPathError, match="outside the dataset folder"):
        build("DescribableTextures", tmp_path)
    split["train"][0][0] = "/etc/passwd"
    json.dump(split, open(os.path.join(ds_dir, "split_zhou_DescribableTextures.json"), "w"))
    with pytest.raises(UnsafeSplitPathError):
        build("DescribableTextures", tmp_path)


def test_read_image_corrupt_and_skip(tmp_path):
    good = img(str(tmp_path / "dtd" / "images" / "a" / "good.jpg"))
    assert read_image(good).mode == "RGB"
    bad = str(tmp_path / "dtd" / "images" / "a" / "bad.jpg")
    with open(bad, "wb") as f:
        f.write(open(good, "rb").read()[:40])  # truncated JPEG
    with pytest.raises(CorruptImageError) as exc:
        read_image(bad)
    msg = str(exc.value)
    assert bad in msg and f"python -m promptot.datasets check --root {tmp_path} DescribableTextures" in msg
    assert "SKIP_CORRUPT" in msg
    with pytest.warns(RuntimeWarning):
        assert read_image(bad, skip_corrupt=True) is None
    assert bad in D.skipped_images()
    with pytest.raises(DatasetNotFoundError):
        read_image(str(tmp_path / "nope.jpg"))
    # errors survive pickling (DataLoader workers)
    again = pickle.loads(pickle.dumps(exc.value))
    assert isinstance(again, CorruptImageError) and str(again) == msg


# ----------------------------------------------------------------------------- your own data
def test_image_folder_layouts(tmp_path):
    a = tmp_path / "a"
    for s, n in [("train", 5), ("val", 2), ("test", 3)]:
        class_tree(a / s, ["red_fox", "cat"], n, ext=".png")
    ds = build("ImageFolder", a)
    assert ds.classnames == ["cat", "red_fox"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (10, 4, 6)

    class_tree(tmp_path / "b" / "train", ["x", "y"], 5)
    ds = DATASET_REGISTRY.get("ImageFolder")(cfg(tmp_path, FOLDER="b", shots=2))
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (4, 2, 2)  # val held out 20%, test = val
    assert os.path.exists(tmp_path / "b" / "split_fewshot" / "shot_2-seed_1.json")

    class_tree(tmp_path / "c", ["one", "two"], 10)
    ds = DATASET_REGISTRY.get("ImageFolder")(cfg(tmp_path, FOLDER="c", shots=1))
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (2, 2, 6)
    assert os.path.exists(tmp_path / "c" / "split.json")
    again = DATASET_REGISTRY.get("ImageFolder")(cfg(tmp_path, FOLDER="c"))  # split.json + split_fewshot present
    assert again.classnames == ["one", "two"] and len(again.train_x) == 10


def test_root_datasets_package_imports_user_modules(tmp_path, monkeypatch):
    src = os.path.join(os.path.dirname(__file__), "..", "datasets", "__init__.py")
    pkg = tmp_path / "user_datasets_pkg"
    os.makedirs(pkg)
    shutil.copy(src, pkg / "__init__.py")
    (pkg / "my_data.py").write_text(
        "from promptot.engine import DATASET_REGISTRY, DatasetBase\n"
        "@DATASET_REGISTRY.register()\nclass MyDropInDataset(DatasetBase):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("user_datasets_pkg")
    assert "MyDropInDataset" in DATASET_REGISTRY.registered_names()


# ----------------------------------------------------------------------------- real split files
REAL = {"EuroSAT": ("eurosat", "2750", (13500, 5400, 8100), 10),
        "DescribableTextures": ("dtd", "images", (2820, 1128, 1692), 47),
        "OxfordPets": ("oxford_pets", "images", (2944, 736, 3669), 37),
        "Caltech101": ("caltech-101", "101_ObjectCategories", (4128, 1649, 2465), 100)}


@pytest.fixture
def fast_tmp(tmp_path):
    """A scratch folder in RAM when /dev/shm exists (tens of thousands of placeholder files)."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        import tempfile

        path = tempfile.mkdtemp(prefix="promptot-splits-", dir="/dev/shm")
        yield __import__("pathlib").Path(path)
        shutil.rmtree(path, ignore_errors=True)
    else:
        yield tmp_path


@pytest.mark.skipif(not os.path.isdir(SPLITS_DIR), reason="shared split files absent")
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_split_files(fast_tmp, name):
    tmp_path = fast_tmp
    folder, image_dir, counts, ncls = REAL[name]
    src = os.path.join(SPLITS_DIR, f"split_zhou_{name}.json")
    if not os.path.exists(src):
        pytest.skip(f"{src} absent")
    ds_dir = tmp_path / folder
    split = json.load(open(src))
    paths = [os.path.join(ds_dir, image_dir, p) for s in ("train", "val", "test") for p, _, _ in split[s]]
    for d in {os.path.dirname(p) for p in paths}:
        os.makedirs(d, exist_ok=True)
    for p in paths:  # empty placeholders: the loaders only need the files to exist
        os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))
    shutil.copy(src, ds_dir / f"split_zhou_{name}.json")
    ds = build(name, tmp_path)
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == counts
    assert ds.num_classes == ncls and len(ds.classnames) == ncls
    first = {"EuroSAT": "Annual Crop Land", "Caltech101": "face", "OxfordPets": "abyssinian",
             "DescribableTextures": "banded"}[name]
    assert ds.lab2cname[0] == first
    fs = build(name, tmp_path, shots=16, seed=1)
    assert len(fs.train_x) == 16 * ncls and len(fs.val) == 4 * ncls
    base = build(name, tmp_path, shots=16, seed=1, subsample="base")
    assert base.num_classes == (ncls + 1) // 2
