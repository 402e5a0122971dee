"""Oxford Flowers-102 (names from cat_to_name.json)."""
import os.path as osp
import random
from collections import defaultdict

from promptot.engine import DATASET_REGISTRY, read_json

from .common import CoOpDataset


@DATASET_REGISTRY.register()
class OxfordFlowers(CoOpDataset):
    dataset_dir = "oxford_flowers"
    image_dir = "jpg"
    split_file = "split_zhou_OxfordFlowers.json"
    required_with_split = ("jpg",)
    required = ("jpg", "imagelabels.mat", "cat_to_name.json")
    expected_counts = {"train": 4093, "val": 1633, "test": 2463, "classes": 102}
    counts_verified = True

    def generate_split(self):
        """CoOp's ``OxfordFlowers.read_data``: labels from imagelabels.mat, 50/20/30 per class."""
        from scipy.io import loadmat

        tracker = defaultdict(list)
        labels = loadmat(osp.join(self.dataset_dir, "imagelabels.mat"))["labels"][0]
        for i, label in enumerate(labels):
            tracker[int(label)].append(osp.join(self.image_dir, f"image_{str(i + 1).zfill(5)}.jpg"))
        print("Splitting data into 50% train, 20% val, and 30% test")
        lab2cname = read_json(osp.join(self.dataset_dir, "cat_to_name.json"))
        train, val, test = [], [], []
        for label, impaths in tracker.items():
            random.shuffle(impaths)
            n_total = len(impaths)
            n_train = round(n_total * 0.5)
            n_val = round(n_total * 0.2)
            assert n_train > 0 and n_val > 0 and n_total - n_train - n_val > 0
            cname = lab2cname[str(label)]
            train += [(im, label - 1, cname) for im in impaths[:n_train]]
            val += [(im, label - 1, cname) for im in impaths[n_train:n_train + n_val]]
            test += [(im, label - 1, cname) for im in impaths[n_train + n_val:]]
        return train, val, test
