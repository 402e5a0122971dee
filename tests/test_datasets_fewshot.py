"""Few-shot draws checked against literal values (Dassl's ``generate_fewshot_dataset``).

Dassl groups the items by label in *first-seen* order (a dict filled while walking
the list) and calls ``random.sample(group, K)`` once per group in that order. The
inputs below list their labels out of sorted order, so a sampler that visits
labels sorted (or shuffles them, or samples with another call) gives other
images and another order. The expected lists were worked out by hand from that
rule with CPython's ``random`` (seeded as ``set_random_seed`` does) and are
written out literally, not recomputed by a transcription of the code under test.
"""
import json
import os
import random
from types import SimpleNamespace

from PIL import Image

import promptot.datasets  # noqa: F401  (registers the dataset classes)
from promptot.engine import DATASET_REGISTRY, DatasetBase, Datum

CLASSES = ["banded", "blotchy", "braided", "bubbly"]
# Train labels first seen in the order 3, 1, 0, 2; val labels in the order 2, 0, 3, 1.
TRAIN = [("bubbly/bubbly_t1.jpg", 3), ("blotchy/blotchy_t1.jpg", 1), ("bubbly/bubbly_t2.jpg", 3),
         ("banded/banded_t1.jpg", 0), ("braided/braided_t1.jpg", 2), ("blotchy/blotchy_t2.jpg", 1),
         ("banded/banded_t2.jpg", 0), ("bubbly/bubbly_t3.jpg", 3), ("braided/braided_t2.jpg", 2),
         ("braided/braided_t3.jpg", 2), ("blotchy/blotchy_t3.jpg", 1), ("banded/banded_t3.jpg", 0)]
VAL = [("braided/braided_v1.jpg", 2), ("banded/banded_v1.jpg", 0), ("bubbly/bubbly_v1.jpg", 3),
       ("blotchy/blotchy_v1.jpg", 1), ("blotchy/blotchy_v2.jpg", 1), ("braided/braided_v2.jpg", 2),
       ("bubbly/bubbly_v2.jpg", 3), ("banded/banded_v2.jpg", 0), ("banded/banded_v3.jpg", 0),
       ("bubbly/bubbly_v3.jpg", 3), ("braided/braided_v3.jpg", 2), ("blotchy/blotchy_v3.jpg", 1)]
# 2 shots, seed 1: train drawn first, then val with min(K, 4) = 2 shots.
WANT_TRAIN = ["bubbly/bubbly_t1.jpg", "bubbly/bubbly_t3.jpg", "blotchy/blotchy_t2.jpg", "blotchy/blotchy_t1.jpg",
              "banded/banded_t2.jpg", "banded/banded_t3.jpg", "braided/braided_t2.jpg", "braided/braided_t3.jpg"]
WANT_VAL = ["braided/braided_v1.jpg", "braided/braided_v3.jpg", "banded/banded_v2.jpg", "banded/banded_v1.jpg",
            "bubbly/bubbly_v2.jpg", "bubbly/bubbly_v3.jpg", "blotchy/blotchy_v3.jpg", "blotchy/blotchy_v1.jpg"]


def _datums(tmp_path, labels):
    out = []
    for i, y in enumerate(labels):
        p = tmp_path / f"img{i:02d}.png"
        p.write_bytes(b"")
        out.append(Datum(impath=str(p), label=y, classname=str(y)))
    return out


def test_engine_draw_visits_labels_in_first_seen_order(tmp_path):
    items = _datums(tmp_path, [2, 2, 0, 1, 0, 2, 1, 1, 0, 2, 0, 1])
    ds = DatasetBase(train_x=items, test=items)
    random.seed(3)
    got = ds.generate_fewshot_dataset(items, num_shots=2)
    assert [os.path.basename(d.impath) for d in got] == ["img01.png", "img05.png", "img04.png", "img10.png",
                                                         "img11.png", "img07.png"]
    assert [d.label for d in got] == [2, 2, 0, 0, 1, 1]
    # Two sources in one call share the random stream: the second draw continues after the first.
    random.seed(3)
    a, b = ds.generate_fewshot_dataset(items, items[:6], num_shots=2)
    assert [d.impath for d in a] == [d.impath for d in got]
    assert [os.path.basename(d.impath) for d in b] == ["img05.png", "img00.png", "img02.png", "img04.png", "img03.png"]


def test_dataset_fewshot_cache_holds_dassls_picks(tmp_path):
    ds_dir = tmp_path / "dtd"
    split = {"train": [[p, y, CLASSES[y]] for p, y in TRAIN], "val": [[p, y, CLASSES[y]] for p, y in VAL],
             "test": [[p, y, CLASSES[y]] for p, y in TRAIN[:4]]}
    for p, _ in TRAIN + VAL:
        os.makedirs(ds_dir / "images" / os.path.dirname(p), exist_ok=True)
        Image.new("RGB", (2, 2)).save(ds_dir / "images" / p, format="JPEG")
    (ds_dir / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    cfg = SimpleNamespace(SEED=1, DATASET=SimpleNamespace(ROOT=str(tmp_path), NAME="DescribableTextures", NUM_SHOTS=2,
                                                          SUBSAMPLE_CLASSES="all", SKIP_CORRUPT=False, FOLDER=""))
    ds = DATASET_REGISTRY.get("DescribableTextures")(cfg)
    assert [os.path.relpath(d.impath, ds_dir / "images") for d in ds.train_x] == WANT_TRAIN
    assert [os.path.relpath(d.impath, ds_dir / "images") for d in ds.val] == WANT_VAL
    cache = json.loads((ds_dir / "split_fewshot" / "shot_2-seed_1.json").read_text())
    assert [p for p, _, _ in cache["train"]] == ["images/" + p for p in WANT_TRAIN]
    assert [p for p, _, _ in cache["val"]] == ["images/" + p for p in WANT_VAL]
    assert [y for _, y, _ in cache["train"]] == [3, 3, 1, 1, 0, 0, 2, 2]
