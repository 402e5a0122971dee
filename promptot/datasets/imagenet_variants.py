"""Test-only ImageNet variants (domain generalisation). They pass the test list as
train_x so that class names exist, and ignore NUM_SHOTS and SUBSAMPLE_CLASSES as CoOp does."""
import os.path as osp

from promptot.engine import DatasetBase

from .common import CoOpDataset, DatasetNotFoundError, cfg_get, imagenet_classnames, list_dirs, list_images


class ImageNetTestOnly(CoOpDataset):
    split_file = None
    ignored = ("README.txt",)
    fewshot_val = False
    download_hint = ""

    def __init__(self, cfg):
        self.setup_paths(cfg_get(cfg, "DATASET.ROOT", ""))
        self.check_exists(self.image_dir, f"{self.name} image folder not found")
        data = self.to_datums(self.read_items()["test"], "test")
        DatasetBase.__init__(self, train_x=data, test=data)

    def read_items(self):
        self.check_exists(self.image_dir, f"{self.name} image folder not found")
        classnames = imagenet_classnames(self.dataset_dir)
        items = []
        for label, folder in enumerate(self.class_folders(classnames)):
            wnid = self.folder_wnid(folder, classnames)
            if wnid not in classnames:
                raise DatasetNotFoundError(osp.join(self.image_dir, folder),
                                           "Folder is not an ImageNet wnid listed in classnames.txt",
                                           self.name, self.root)
            for imname in list_images(osp.join(self.image_dir, folder)):
                items.append((osp.join(self.image_dir, folder, imname), label, classnames[wnid]))
        return {"test": items}

    def class_folders(self, classnames):
        return [f for f in list_dirs(self.image_dir) if f not in self.ignored]

    def folder_wnid(self, folder, classnames):
        return folder
