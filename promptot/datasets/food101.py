"""Food-101 (101 dishes, folder names)."""
from promptot.engine import DATASET_REGISTRY

from .common import CoOpDataset, read_and_split_data


@DATASET_REGISTRY.register()
class Food101(CoOpDataset):
    dataset_dir = "food-101"
    image_dir = "images"
    split_file = "split_zhou_Food101.json"
    required_with_split = ("images",)
    required = ("images",)
    expected_counts = {"train": 50500, "val": 20200, "test": 30300, "classes": 101}
    counts_verified = False

    def generate_split(self):
        return read_and_split_data(self.image_dir)
