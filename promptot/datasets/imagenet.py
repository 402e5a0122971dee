"""ImageNet-1k: class folders images/{train,val}/nXXXXXXXX; the official val set is the test set.

Labels follow the sorted wnid folder order; names come from ``<imagenet>/classnames.txt``
(CoOp's file) or, when absent, the packaged ``promptot/assets/imagenet_classnames.txt``
(same format: "nXXXXXXXX name", the cleaned CLIP names in label order).
The folder listing is cached in ``preprocessed.json`` (paths relative to the
dataset folder); a CoOp ``preprocessed.pkl`` is imported when present. Delete
the cache after changing the image folders.
"""
import json
import os.path as osp

from promptot.engine import DATASET_REGISTRY
from promptot.fileio import atomic_write_text

from .common import (CoOpDataset, DatasetNotFoundError, imagenet_classnames, list_dirs, list_images,
                     load_legacy_pickle, rebase_path, safe_join, to_posix)


@DATASET_REGISTRY.register()
class ImageNet(CoOpDataset):
    dataset_dir = "imagenet"
    image_dir = "images"
    split_file = None
    required = ("images/train", "images/val")
    expected_counts = {"train": 1281167, "test": 50000, "classes": 1000}
    counts_verified = False
    fewshot_val = False
    download_hint = "ImageNet needs an account at https://image-net.org (see `python -m promptot.datasets download ImageNet`)."

    def setup_paths(self, root):
        super().setup_paths(root)
        self.preprocessed = osp.join(self.dataset_dir, "preprocessed.json")
        self.legacy_preprocessed = osp.join(self.dataset_dir, "preprocessed.pkl")

    def read_items(self):
        if osp.exists(self.preprocessed):
            with open(self.preprocessed, "r") as f:
                data = json.load(f)
            return {k: [(safe_join(self.dataset_dir, p), int(y), c) for p, y, c in data[k]] for k in ("train", "test")}
        if osp.exists(self.legacy_preprocessed):
            print(f"Importing {self.legacy_preprocessed}")
            raw = load_legacy_pickle(self.legacy_preprocessed)
            data = {k: [(rebase_path(p, self.folder_name, self.dataset_dir), y, c) for p, y, c in raw[k]]
                    for k in ("train", "test")}
        else:
            data = self.read_folders()
        self.write_preprocessed(data)
        return data

    def raw_splits(self):
        return self.read_folders()

    def read_folders(self):
        classnames = imagenet_classnames(self.dataset_dir)
        return {"train": self.read_data(classnames, "train"), "test": self.read_data(classnames, "val")}

    def write_preprocessed(self, data):
        out = {k: [[to_posix(osp.relpath(p, self.dataset_dir)), y, c] for p, y, c in v] for k, v in data.items()}
        atomic_write_text(self.preprocessed, json.dumps(out))

    def read_data(self, classnames, split_dir):
        split_dir = osp.join(self.image_dir, split_dir)
        self.check_exists(split_dir, "ImageNet image folder not found")
        items = []
        for label, folder in enumerate(list_dirs(split_dir)):
            if folder not in classnames:
                raise DatasetNotFoundError(osp.join(split_dir, folder), "Folder is not an ImageNet class wnid "
                                           "listed in classnames.txt", self.name, self.root)
            for imname in list_images(osp.join(split_dir, folder)):
                items.append((osp.join(split_dir, folder, imname), label, classnames[folder]))
        return items

    def finalize(self, train, val, test):
        return train, test, test
