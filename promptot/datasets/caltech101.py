"""Caltech-101 (100 classes: background and Faces_easy dropped, four names singularised)."""
from promptot.engine import DATASET_REGISTRY

from .common import CoOpDataset, read_and_split_data

IGNORED = ["BACKGROUND_Google", "Faces_easy"]
NEW_CNAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}


@DATASET_REGISTRY.register()
class Caltech101(CoOpDataset):
    dataset_dir = "caltech-101"
    image_dir = "101_ObjectCategories"
    split_file = "split_zhou_Caltech101.json"
    required_with_split = ("101_ObjectCategories",)
    required = ("101_ObjectCategories",)
    expected_counts = {"train": 4128, "val": 1649, "test": 2465, "classes": 100}
    counts_verified = True

    def generate_split(self):
        return read_and_split_data(self.image_dir, ignored=IGNORED, new_cnames=NEW_CNAMES)
