"""UCF101 mid-frames (101 actions; CamelCase split and joined with "_")."""
import os.path as osp
import re

from promptot.engine import DATASET_REGISTRY

from .common import CoOpDataset, split_trainval


def split_camel(action: str) -> str:
    """"ApplyEyeMakeup" -> "Apply_Eye_Makeup"."""
    return "_".join(re.findall("[A-Z][^A-Z]*", action))


@DATASET_REGISTRY.register()
class UCF101(CoOpDataset):
    dataset_dir = "ucf101"
    image_dir = "UCF-101-midframes"
    split_file = "split_zhou_UCF101.json"
    required_with_split = ("UCF-101-midframes",)
    required = ("UCF-101-midframes", "ucfTrainTestlist/classInd.txt", "ucfTrainTestlist/trainlist01.txt",
                "ucfTrainTestlist/testlist01.txt")
    expected_counts = {"train": 7639, "val": 1898, "test": 3783, "classes": 101}
    counts_verified = True
    download_hint = "The mid-frame images (UCF-101-midframes) are distributed by CoOp through Google Drive."

    def generate_split(self):
        cname2lab = {}
        with open(osp.join(self.dataset_dir, "ucfTrainTestlist", "classInd.txt"), "r") as f:
            for line in f:
                if line.strip():
                    label, classname = line.strip().split(" ")
                    cname2lab[classname] = int(label) - 1
        trainval = self.read_data(cname2lab, "ucfTrainTestlist/trainlist01.txt")
        test = self.read_data(cname2lab, "ucfTrainTestlist/testlist01.txt")
        train, val = split_trainval(trainval)
        return train, val, test

    def read_data(self, cname2lab, text_file):
        items = []
        with open(osp.join(self.dataset_dir, text_file), "r") as f:
            for line in f:
                line = line.strip().split(" ")[0]
                if not line:
                    continue
                action, filename = line.split("/")
                renamed = split_camel(action)
                impath = osp.join(self.image_dir, renamed, filename.replace(".avi", ".jpg"))
                items.append((impath, cname2lab[action], renamed))
        return items
