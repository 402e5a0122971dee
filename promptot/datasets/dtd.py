"""Describable Textures (47 classes)."""
from promptot.engine import DATASET_REGISTRY

from .common import CoOpDataset, read_and_split_data


@DATASET_REGISTRY.register()
class DescribableTextures(CoOpDataset):
    dataset_dir = "dtd"
    image_dir = "images"
    split_file = "split_zhou_DescribableTextures.json"
    required_with_split = ("images",)
    required = ("images",)
    expected_counts = {"train": 2820, "val": 1128, "test": 1692, "classes": 47}
    counts_verified = True

    def generate_split(self):
        return read_and_split_data(self.image_dir)
