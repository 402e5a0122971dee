"""Fashion-MNIST as CoOp-style datasets, for runs with no downloadable benchmark (the embedded default).

* ``FashionMNIST`` — the clean images (grey replicated to RGB). Train/val come from the Fashion-MNIST
  training set (which the project's mini CLIP was pretrained on); the test split is the official test
  set, never seen in pretraining.
* ``FashionMNISTShift`` — the same images inverted and recoloured with a per-image colour
  (:func:`promptot.datasets.fmnist.invert_recolor`): a domain the mini CLIP never saw, where prompt
  learning has something to adapt to.

Images are written once as PNG files under ``<DATASET.ROOT>/<dataset_dir>/`` from the Debian package
``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``); later runs reuse them.
Few-shot draws, base/new subsampling and the few-shot cache work as for the benchmark datasets.
"""
from __future__ import annotations

import os
import os.path as osp
from collections import Counter
from typing import Dict, List

from promptot.engine import DATASET_REGISTRY

from .common import CoOpDataset, Item, cfg_get


class _FashionMNISTBase(CoOpDataset):
    domain_transform = "clean"
    train_per_class = 200  # pool the few-shot draws come from
    val_per_class = 50
    test_per_class = 500  # first N official test images per class (5,000 in all)
    prompt_template = "a photo of a {}, a type of clothing."
    download_hint = "The images are built from the Debian package: apt-get install dataset-fashion-mnist"

    def __init__(self, cfg) -> None:
        root = osp.abspath(osp.expanduser(cfg_get(cfg, "DATASET.ROOT", "") or "."))
        os.makedirs(osp.join(root, type(self).dataset_dir), exist_ok=True)
        super().__init__(cfg)

    def read_items(self) -> Dict[str, List[Item]]:
        from .fmnist import DOMAIN_TRANSFORMS, materialize_images

        tf = DOMAIN_TRANSFORMS[self.domain_transform]
        pool = materialize_images(self.dataset_dir, "train", tf, self.train_per_class + self.val_per_class)
        test = materialize_images(self.dataset_dir, "test", tf, self.test_per_class)
        seen: Counter = Counter()
        train, val = [], []
        for rel, label, name in pool:
            (train if seen[label] < self.train_per_class else val).append(
                (osp.join(self.dataset_dir, rel), label, name))
            seen[label] += 1
        return {"train": train, "val": val, "test": [(osp.join(self.dataset_dir, r), y, c) for r, y, c in test]}


@DATASET_REGISTRY.register()
class FashionMNIST(_FashionMNISTBase):
    dataset_dir = "fashion_mnist"


@DATASET_REGISTRY.register()
class FashionMNISTShift(_FashionMNISTBase):
    dataset_dir = "fashion_mnist_shift"
    domain_transform = "invert_recolor"
