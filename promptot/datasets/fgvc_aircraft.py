"""FGVC-Aircraft 2013b (100 variants; the `data/` folder of the archive)."""
import os.path as osp

from promptot.engine import DATASET_REGISTRY

from .common import CoOpDataset


@DATASET_REGISTRY.register()
class FGVCAircraft(CoOpDataset):
    dataset_dir = "fgvc_aircraft"
    image_dir = "images"
    split_file = None
    required = ("images", "variants.txt", "images_variant_train.txt", "images_variant_val.txt",
                "images_variant_test.txt")
    expected_counts = {"train": 3334, "val": 3333, "test": 3333, "classes": 100}
    counts_verified = False

    def read_items(self):
        for rel in self.required:
            self.check_exists(osp.join(self.dataset_dir, rel), "FGVCAircraft file not found")
        classnames = []
        with open(osp.join(self.dataset_dir, "variants.txt"), "r") as f:
            for line in f:
                if line.strip():
                    classnames.append(line.strip())
        cname2lab = {c: i for i, c in enumerate(classnames)}
        return {split: self.read_data(cname2lab, f"images_variant_{split}.txt") for split in ("train", "val", "test")}

    def read_data(self, cname2lab, split_file):
        items = []
        with open(osp.join(self.dataset_dir, split_file), "r") as f:
            for line in f:
                parts = line.strip().split(" ")
                if not parts[0]:
                    continue
                classname = " ".join(parts[1:])
                items.append((osp.join(self.image_dir, parts[0] + ".jpg"), cname2lab[classname], classname))
        return items
