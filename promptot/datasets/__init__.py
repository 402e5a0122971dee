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
from .caltech101 import Caltech101
from .dtd import DescribableTextures
from .eurosat import EuroSAT
from .fashion_mnist import FashionMNIST, FashionMNISTShift
from .fgvc_aircraft import FGVCAircraft
from .food101 import Food101
from .image_folder import ImageFolder
from .imagenet import ImageNet
from .imagenet_a import ImageNetA
from .imagenet_r import ImageNetR
from .imagenet_sketch import ImageNetSketch
from .imagenetv2 import ImageNetV2
from .oxford_flowers import OxfordFlowers
from .oxford_pets import OxfordPets
from .stanford_cars import StanfordCars
from .sun397 import SUN397
from .ucf101 import UCF101
from .names import CONFIG_STEMS, UnknownDatasetError, resolve_name

# The 11 few-shot / base-to-new datasets, then the 4 ImageNet variants (config stems in configs/datasets/).
FEWSHOT_DATASETS = ["ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101",
                    "FGVCAircraft", "SUN397", "DescribableTextures", "EuroSAT", "UCF101"]
DG_DATASETS = ["ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"]
BUILTIN_DATASETS = FEWSHOT_DATASETS + DG_DATASETS
BUILTIN_CLASSES = {cls.__name__: cls for cls in (
    ImageNet, Caltech101, OxfordPets, StanfordCars, OxfordFlowers, Food101, FGVCAircraft, SUN397,
    DescribableTextures, EuroSAT, UCF101, ImageNetV2, ImageNetSketch, ImageNetA, ImageNetR, ImageFolder,
    FashionMNIST, FashionMNISTShift)}

__all__ = ["BUILTIN_CLASSES", "BUILTIN_DATASETS", "CONFIG_STEMS", "CoOpDataset", "CorruptImageError",
           "DG_DATASETS", "DatasetNotFoundError", "FEWSHOT_DATASETS", "UnknownDatasetError", "UnsafeSplitPathError",
           "doctor_command", "read_image", "resolve_name", "skipped_images",
           "subsample_classes"] + list(BUILTIN_CLASSES)
