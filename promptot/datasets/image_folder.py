"""Your own data: class folders or a split file.

``DATASET.NAME ImageFolder`` reads the folder ``DATASET.ROOT`` itself, or
``<DATASET.ROOT>/<DATASET.FOLDER>`` when ``DATASET.FOLDER`` is set, in the first
layout that matches:

1. ``split.json`` — CoOp's split format (``{"train"|"val"|"test": [[relpath, label,
   classname], ...]}``, paths relative to the folder);
2. ``train/<class>/*``, plus optional ``val/<class>/*`` and ``test/<class>/*``.
   Without ``val/``, 20% of each training class is held out (seeded); without
   ``test/``, the validation set is also the test set;
3. ``<class>/*`` — one folder per class, split 50/20/30 per class with the seed;
   the split is written to ``split.json`` so later runs reuse it.

Class names are the folder names (labels follow their sorted order); prompts
replace "_" by spaces. Few-shot caches go to ``<folder>/split_fewshot/``.
"""
import os.path as osp

from promptot.engine import DATASET_REGISTRY

from .common import (IMAGE_EXTENSIONS, CoOpDataset, DatasetLayoutError, cfg_get, list_dirs, list_images,
                     read_split_items, save_split_items, split_trainval)


def _class_items(folder, classes=None):
    classes = classes if classes is not None else list_dirs(folder)
    items = []
    for label, cname in enumerate(classes):
        cdir = osp.join(folder, cname)
        if not osp.isdir(cdir):
            continue
        for im in list_images(cdir):
            if im.lower().endswith(IMAGE_EXTENSIONS):
                items.append((osp.join(cdir, im), label, cname))
    return classes, items


@DATASET_REGISTRY.register()
class ImageFolder(CoOpDataset):
    dataset_dir = ""
    image_dir = ""
    split_file = "split.json"
    split_relative_to = "dataset"

    def __init__(self, cfg):
        self._folder = cfg_get(cfg, "DATASET.FOLDER", "") or ""
        super().__init__(cfg)

    def setup_paths(self, root):
        super().setup_paths(root)
        folder = getattr(self, "_folder", "")
        self.dataset_dir = osp.normpath(osp.join(self.root, folder))
        self.folder_name = osp.basename(self.dataset_dir)
        self.image_dir = self.dataset_dir
        self.split_path = osp.join(self.dataset_dir, self.split_file)
        self.split_fewshot_dir = osp.join(self.dataset_dir, "split_fewshot")

    def load_splits(self):
        if osp.exists(self.split_path):
            return read_split_items(self.split_path, self.dataset_dir)
        train_dir = osp.join(self.dataset_dir, "train")
        if osp.isdir(train_dir):
            classes, train = _class_items(train_dir)
            val_dir, test_dir = osp.join(self.dataset_dir, "val"), osp.join(self.dataset_dir, "test")
            if osp.isdir(val_dir):
                val = _class_items(val_dir, classes)[1]
            else:
                train, val = split_trainval(train)
            test = _class_items(test_dir, classes)[1] if osp.isdir(test_dir) else list(val)
            self._check_extra_classes(classes, [val_dir, test_dir])
            return {"train": train, "val": val, "test": test}
        train, val, test = self.read_and_split_data(self.dataset_dir, ignored=("split_fewshot",))
        if getattr(self, "_dry", False):
            return {"train": train, "val": val, "test": test}
        try:
            save_split_items(train, val, test, self.split_path, self.dataset_dir)
            print(f"NOTE: split {self.dataset_dir} 50/20/30 per class and wrote {self.split_path}; "
                  "later runs reuse it.")
        except OSError as exc:
            print(f"NOTE: could not write {self.split_path} ({exc}); the split is redrawn from the seed each run.")
        return {"train": train, "val": val, "test": test}

    def raw_splits(self):
        self._dry = True  # the doctor writes nothing
        return self.load_splits()

    @staticmethod
    def _check_extra_classes(classes, dirs):
        for d in dirs:
            if osp.isdir(d):
                extra = sorted(set(list_dirs(d)) - set(classes))
                if extra:
                    raise DatasetLayoutError(f"{d} has class folders that train/ lacks: {extra[:5]}; every split "
                                             "must use the class folders of train/ (rename or remove the extra ones)")
