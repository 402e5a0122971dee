"""ImageNetV2 matched-frequency: folders 0..999, folder index = label, names in classnames.txt order."""
import os.path as osp

from promptot.engine import DATASET_REGISTRY

from .common import DatasetNotFoundError
from .imagenet_variants import ImageNetTestOnly


@DATASET_REGISTRY.register()
class ImageNetV2(ImageNetTestOnly):
    dataset_dir = "imagenetv2"
    image_dir = "imagenetv2-matched-frequency-format-val"
    expected_counts = {"test": 10000, "classes": 1000}
    counts_verified = False

    def class_folders(self, classnames):
        folders = [str(i) for i in range(len(classnames))]
        for f in folders:
            if not osp.isdir(osp.join(self.image_dir, f)):
                raise DatasetNotFoundError(osp.join(self.image_dir, f), "ImageNetV2 class folder not found",
                                           self.name, self.root)
        return folders

    def folder_wnid(self, folder, classnames):
        return list(classnames.keys())[int(folder)]
