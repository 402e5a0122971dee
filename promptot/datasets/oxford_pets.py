"""Oxford-IIIT Pets (37 breeds)."""
import os.path as osp

from promptot.engine import DATASET_REGISTRY

from .common import CoOpDataset, split_trainval


@DATASET_REGISTRY.register()
class OxfordPets(CoOpDataset):
    dataset_dir = "oxford_pets"
    image_dir = "images"
    split_file = "split_zhou_OxfordPets.json"
    required_with_split = ("images",)
    required = ("images", "annotations/trainval.txt", "annotations/test.txt")
    expected_counts = {"train": 2944, "val": 736, "test": 3669, "classes": 37}
    counts_verified = True

    def generate_split(self):
        anno_dir = osp.join(self.dataset_dir, "annotations")
        trainval = self.read_data(osp.join(anno_dir, "trainval.txt"))
        test = self.read_data(osp.join(anno_dir, "test.txt"))
        train, val = split_trainval(trainval)
        return train, val, test

    def read_data(self, filepath):
        """Annotation lines "Abyssinian_100 1 1 1" -> (image, label-1, breed lower-cased)."""
        items = []
        with open(filepath, "r") as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                imname, label = line.split(" ")[:2]
                breed = "_".join(imname.split("_")[:-1]).lower()
                items.append((osp.join(self.image_dir, imname + ".jpg"), int(label) - 1, breed))
        return items
