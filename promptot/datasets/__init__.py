"""Datasets of the CoOp-family protocols, registered in ``DATASET_REGISTRY`` on import.

Public helpers the engine / train.py use:

* :func:`read_image` ``(path, skip_corrupt=False) -> PIL.Image | None``
* :class:`DatasetNotFoundError` (a ``FileNotFoundError``), :class:`CorruptImageError`
  (an ``OSError``), :class:`UnsafeSplitPathError` (a ``ValueError``)
* :func:`subsample_classes`, :func:`doctor_command`
* :func:`resolve_name` (class name, config-file stem or folder name, any case -> class
  name; :class:`UnknownDatasetError` otherwise) and :data:`CONFIG_STEMS`

CLI: ``python -m promptot.datasets check|download|list``.
"""
from .common import (CoOpDataset, CorruptImageError, DatasetNotFoundError, UnsafeSplitPathError,
                     doctor_command, read_image, skipped_images, subsample_classes)
from .builtin import (BUILTIN_CLASSES, BUILTIN_DATASETS, DG_DATASETS, FEWSHOT_DATASETS, SUN397, UCF101, Caltech101,
                      DescribableTextures, EuroSAT, FashionMNIST, FashionMNISTShift, FGVCAircraft, Food101,
                      ImageFolder, ImageNet, ImageNetA, ImageNetR, ImageNetSketch, ImageNetV2, OxfordFlowers,
                      OxfordPets, StanfordCars)
from .names import CONFIG_STEMS, UnknownDatasetError, resolve_name

__all__ = ["BUILTIN_CLASSES", "BUILTIN_DATASETS", "CONFIG_STEMS", "CoOpDataset", "CorruptImageError",
           "DG_DATASETS", "DatasetNotFoundError", "FEWSHOT_DATASETS", "UnknownDatasetError", "UnsafeSplitPathError",
           "doctor_command", "read_image", "resolve_name", "skipped_images",
           "subsample_classes"] + list(BUILTIN_CLASSES)
