"""Dataset names as users type them: class names, config-file stems, folder names, any case.

``DATASET.NAME`` is the class name (``DescribableTextures``); the config files
are named by stem (``configs/datasets/dtd.yaml``) and the data sits in a folder
(``DATA/dtd``). The CLI accepts all three, case-insensitively and ignoring
``-``/``_``, and :func:`resolve_name` maps them to the class name.
"""
from __future__ import annotations

import difflib
import re
from typing import Dict, Iterable, List

from promptot.errors import UserError

# configs/datasets/<stem>.yaml -> DATASET.NAME (tests check this against the files).
CONFIG_STEMS: Dict[str, str] = {
    "caltech101": "Caltech101",
    "dtd": "DescribableTextures",
    "eurosat": "EuroSAT",
    "fgvc_aircraft": "FGVCAircraft",
    "food101": "Food101",
    "imagenet": "ImageNet",
    "imagenet_a": "ImageNetA",
    "imagenet_r": "ImageNetR",
    "imagenet_sketch": "ImageNetSketch",
    "imagenetv2": "ImageNetV2",
    "oxford_flowers": "OxfordFlowers",
    "oxford_pets": "OxfordPets",
    "stanford_cars": "StanfordCars",
    "sun397": "SUN397",
    "ucf101": "UCF101",
    "fashion_mnist": "FashionMNIST",
    "fashion_mnist_shift": "FashionMNISTShift",
    "image_folder": "ImageFolder",
}


class UnknownDatasetError(UserError, ValueError):
    """A dataset name matches no built-in dataset; the message lists the accepted names."""


def _key(name: str) -> str:
    """Comparison key: lower case, without separators ("ImageNet-A" -> "imageneta")."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def stem_of(name: str) -> str:
    """Config-file stem of a class name ("" when the dataset has no config file)."""
    return next((stem for stem, cls in CONFIG_STEMS.items() if cls == name), "")


def aliases() -> Dict[str, str]:
    """Comparison key -> class name, for class names, config stems and dataset folder names."""
    from .builtin import BUILTIN_CLASSES

    table: Dict[str, str] = {}
    for stem, cls_name in CONFIG_STEMS.items():
        table[_key(stem)] = cls_name
    for cls_name, cls in BUILTIN_CLASSES.items():
        table[_key(cls_name)] = cls_name
        folder = getattr(cls, "dataset_dir", "")
        if isinstance(folder, str) and folder:
            table.setdefault(_key(folder), cls_name)
    return table


def accepted_names() -> List[str]:
    """The names the help text and error messages show: each class name with its config stem."""
    from .builtin import BUILTIN_CLASSES

    return [f"{n} ({stem_of(n)})" if stem_of(n) else n for n in BUILTIN_CLASSES]


def resolve_name(name: str) -> str:
    """The class name for ``name`` (class name, config stem or folder name, any case).

    Raises :class:`UnknownDatasetError` with close matches and the accepted names.
    """
    table = aliases()
    key = _key(name)
    if key in table:
        return table[key]
    close = difflib.get_close_matches(key, list(table), n=3, cutoff=0.6)
    close += [k for k in table if key and (key in k or k in key) and k not in close]
    suggestions = list(dict.fromkeys(table[k] for k in close))
    hint = f" Did you mean {' or '.join(suggestions)}?" if suggestions else ""
    raise UnknownDatasetError(
        f"Unknown dataset {name!r}.{hint} Accepted are the class names (as in DATASET.NAME) and the config-file "
        f"stems of configs/datasets/, in any case: {', '.join(accepted_names())}.")


def resolve_names(names: Iterable[str]) -> List[str]:
    """Resolve several names (duplicates dropped, order kept); the first unknown name raises."""
    return list(dict.fromkeys(resolve_name(n) for n in names))
