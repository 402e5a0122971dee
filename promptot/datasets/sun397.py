"""SUN397 (397 scenes; "/o/outdoor/apartment_building"-style paths become "outdoor apartment_building" reversed)."""
import os.path as osp

from promptot.engine import DATASET_REGISTRY

from .common import CoOpDataset, split_trainval


def sun_classname(classdir: str) -> str:
    """"a/abbey" -> "abbey"; "a/apartment_building/outdoor" -> "outdoor apartment_building"."""
    return " ".join(classdir.split("/")[1:][::-1])


@DATASET_REGISTRY.register()
class SUN397(CoOpDataset):
    dataset_dir = "sun397"
    image_dir = "SUN397"
    split_file = "split_zhou_SUN397.json"
    required_with_split = ("SUN397",)
    required = ("SUN397", "ClassName.txt", "Training_01.txt", "Testing_01.txt")
    expected_counts = {"train": 15880, "val": 3970, "test": 19850, "classes": 397}
    counts_verified = False

    def generate_split(self):
        classnames = []
        with open(osp.join(self.dataset_dir, "ClassName.txt"), "r") as f:
            for line in f:
                if line.strip():
                    classnames.append(line.strip()[1:])  # drop the leading "/"
        cname2lab = {c: i for i, c in enumerate(classnames)}
        trainval = self.read_data(cname2lab, "Training_01.txt")
        test = self.read_data(cname2lab, "Testing_01.txt")
        train, val = split_trainval(trainval)
        return train, val, test

    def read_data(self, cname2lab, text_file):
        items = []
        with open(osp.join(self.dataset_dir, text_file), "r") as f:
            for line in f:
                imname = line.strip()[1:]
                if not imname:
                    continue
                classdir = osp.dirname(imname)
                items.append((osp.join(self.image_dir, imname), cname2lab[classdir], sun_classname(classdir)))
        return items
