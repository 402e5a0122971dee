"""Fashion-MNIST files: idx reader, domain shifts, image-folder materialisation (used by the datasets
``FashionMNIST``/``FashionMNISTShift`` and by the mini CLIP's pretraining).

The images come from the Debian package ``dataset-fashion-mnist`` (gzip idx files under
``/usr/share/datasets/fashion-mnist``); set ``PROMPTOT_FMNIST_DIR`` to use another folder
holding the four ``*-idx?-ubyte[.gz]`` files.

Class names: the official Fashion-MNIST labels, lower-cased and cleaned so that they read
naturally inside a caption ("T-shirt/top" -> "t-shirt", "Ankle boot" -> "ankle boot"):
see :data:`CLASSNAMES` (index = label id).
"""
from __future__ import annotations

import colorsys
import gzip
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np

from promptot.errors import UserError

from .common import DatasetLayoutError

#: Clean class names, index = Fashion-MNIST label id.
CLASSNAMES: Tuple[str, ...] = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)

ENV_DIR = "PROMPTOT_FMNIST_DIR"
APT_HINT = "apt-get update && apt-get install -y dataset-fashion-mnist"
SEARCH_DIRS: Tuple[str, ...] = (
    "/usr/share/datasets/fashion-mnist",
    "/usr/share/fashion-mnist",
    "/usr/local/share/datasets/fashion-mnist",
)
_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
SPLITS = ("train", "test")
_REINSTALL = (f"reinstall the files (apt-get install --reinstall dataset-fashion-mnist) or point {ENV_DIR} "
              "to a good copy")
MARKER = ".complete.json"

DomainTransform = Callable[[np.ndarray, int], np.ndarray]


class FashionMNISTNotFound(UserError, FileNotFoundError):
    """Raised when the Fashion-MNIST idx files cannot be found."""


def _candidate_dirs() -> List[Path]:
    env = os.environ.get(ENV_DIR)
    if env:
        return [Path(env)]
    return [Path(d) for d in SEARCH_DIRS]


def _file_in(d: Path, stem: str) -> Optional[Path]:
    for name in (stem + ".gz", stem):
        if (d / name).is_file():
            return d / name
    return None


def find_fmnist_dir() -> Path:
    """Return the folder holding the four Fashion-MNIST idx files.

    Looks in ``$PROMPTOT_FMNIST_DIR`` if set (only there), else in :data:`SEARCH_DIRS`.
    """
    dirs = _candidate_dirs()
    for d in dirs:
        if all(_file_in(d, s) is not None for s in _FILES.values()):
            return d
    where = ", ".join(str(d) for d in dirs)
    raise FashionMNISTNotFound(
        f"Fashion-MNIST idx files not found (looked in: {where}). Install them with "
        f"`{APT_HINT}`, or set {ENV_DIR} to a folder holding "
        + ", ".join(f"{s}.gz" for s in _FILES.values()) + "."
    )


def fmnist_available() -> bool:
    """True when :func:`find_fmnist_dir` would succeed."""
    try:
        find_fmnist_dir()
        return True
    except FashionMNISTNotFound:
        return False


def read_idx(path: os.PathLike) -> np.ndarray:
    """Read one idx file (optionally gzip-compressed) into a numpy array (uint8 data only)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetLayoutError(f"{path}: not an idx file (bad magic number); {_REINSTALL}")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08:
        raise DatasetLayoutError(f"{path}: idx dtype 0x{dtype_code:02x} not supported (only unsigned byte); "
                                 f"{_REINSTALL}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    data = np.frombuffer(raw, dtype=np.uint8, offset=offset)
    if data.size != int(np.prod(dims)):
        raise DatasetLayoutError(f"{path}: expected {int(np.prod(dims))} values, found {data.size} (truncated file?); "
                                 f"{_REINSTALL}")
    return data.reshape(dims)


@lru_cache(maxsize=4)
def _load_cached(split: str, root: str) -> Tuple[np.ndarray, np.ndarray]:
    d = Path(root)
    images = read_idx(_file_in(d, _FILES[(split, "images")]))
    labels = read_idx(_file_in(d, _FILES[(split, "labels")]))
    if images.shape[0] != labels.shape[0]:
        raise DatasetLayoutError(f"Fashion-MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels; "
                                 f"{_REINSTALL}")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_fmnist(split: str) -> Tuple[np.ndarray, np.ndarray]:
    """Return ``(images, labels)`` for ``split`` in {"train", "test"}.

    ``images`` is uint8 ``[N, 28, 28]`` (N = 60000 train, 10000 test), ``labels`` uint8 ``[N]``
    in 0..9 (see :data:`CLASSNAMES`). Arrays are cached and read-only.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return _load_cached(split, str(find_fmnist_dir()))


# --------------------------------------------------------------------------- domain shift

def _recolor(index: int) -> np.ndarray:
    """Deterministic saturated RGB colour (floats in [0, 1]) for image ``index`` (golden-ratio hues)."""
    hue = (0.5 + 0.6180339887498949 * int(index)) % 1.0
    return np.asarray(colorsys.hsv_to_rgb(hue, 0.85, 1.0), dtype=np.float64)


FOREGROUND_THRESHOLD = 30  # grey level above which a pixel belongs to the garment


def invert_recolor(img: np.ndarray, index: int) -> np.ndarray:
    """Shifted domain: invert the garment's grey levels inside its silhouette and tint it.

    For garment pixels (``img > 30``): ``out[..., c] = round((255 - 0.75 * img) * colour[c])``;
    background pixels stay black. ``colour`` is a saturated RGB colour picked from the image's
    ``index`` (hue = frac(0.5 + index * golden ratio), S = 0.85, V = 1). Bright parts of the
    garment become dark and vice versa (shading/texture polarity reversed) and the image is
    coloured, while the silhouette (much of the class evidence) is kept, so a model trained on the
    clean domain is clearly worse on it but above chance. Pure and deterministic.

    (:func:`invert_recolor_full`, inverting the whole image incl. the background, is a harsher
    shift on which the committed mini CLIP is near chance.) Returns RGB uint8 ``[H, W, 3]``.
    """
    img = _check_grey(img)
    v = img.astype(np.float64)
    inv = np.where(v > FOREGROUND_THRESHOLD, 255.0 - 0.75 * v, 0.0)
    out = np.rint(inv[..., None] * _recolor(index)[None, None, :])
    return np.clip(out, 0, 255).astype(np.uint8)


def invert_recolor_full(img: np.ndarray, index: int) -> np.ndarray:
    """Harsher shift: invert the whole image (background becomes bright) and tint it like :func:`invert_recolor`."""
    img = _check_grey(img)
    out = np.rint((255.0 - img.astype(np.float64))[..., None] * _recolor(index)[None, None, :])
    return np.clip(out, 0, 255).astype(np.uint8)


def _check_grey(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 grey image, got {img.dtype} {img.shape}")
    return img


def identity_rgb(img: np.ndarray, index: int) -> np.ndarray:
    """Clean domain: the grey image replicated to RGB (``index`` unused)."""
    img = np.asarray(img, dtype=np.uint8)
    return np.repeat(img[..., None], 3, axis=2)


#: Named domain transforms (for configs and CLIs).
DOMAIN_TRANSFORMS = {"clean": identity_rgb, "invert_recolor": invert_recolor,
                     "invert_recolor_full": invert_recolor_full}


# --------------------------------------------------------------------------- image folders

def class_dirname(classname: str) -> str:
    """Folder name for a class: spaces -> underscores ("ankle boot" -> "ankle_boot")."""
    return classname.replace(" ", "_")


def _transform_name(transform: Optional[DomainTransform]) -> str:
    if transform is None:
        return "clean"
    return getattr(transform, "__qualname__", repr(transform))


def _selected_indices(labels: np.ndarray, limit_per_class: Optional[int]) -> np.ndarray:
    if limit_per_class is None:
        return np.arange(labels.shape[0])
    if limit_per_class < 0:
        raise ValueError("limit_per_class must be >= 0 or None")
    keep = [np.flatnonzero(labels == c)[:limit_per_class] for c in range(len(CLASSNAMES))]
    return np.sort(np.concatenate(keep))


def materialize_images(
    root: os.PathLike,
    split: str,
    transform: Optional[DomainTransform] = None,
    limit_per_class: Optional[int] = None,
) -> List[Tuple[str, int, str]]:
    """Write Fashion-MNIST ``split`` as RGB PNG files in an image-folder layout and list them.

    Layout: ``root/<split>/<class_dir>/<index:05d>.png`` where ``index`` is the image's index in
    the split and ``class_dir`` is :func:`class_dirname` of the class name. ``transform(img,
    index)`` (e.g. :func:`invert_recolor`) maps the 28x28 grey image to RGB uint8; ``None`` means
    the clean grey image replicated to RGB. ``limit_per_class`` keeps the first N images of each
    class (in index order).

    Idempotent: existing PNGs are kept (each file is written to a temporary name and renamed, so
    none is half-written), and a marker ``root/<split>/.complete.json`` is written last; with a
    matching marker nothing is touched. A marker written with another transform/limit raises
    ``ValueError`` (use another root). Returns ``[(relpath, label, classname), ...]`` with
    ``relpath`` relative to ``root``, sorted by index.
    """
    from PIL import Image

    images, labels = load_fmnist(split)
    idx = _selected_indices(labels, limit_per_class)
    entries = []
    for i in idx:
        label = int(labels[i])
        name = CLASSNAMES[label]
        entries.append((f"{split}/{class_dirname(name)}/{int(i):05d}.png", label, name))

    split_dir = Path(root) / split
    marker = split_dir / MARKER
    key = {"split": split, "transform": _transform_name(transform), "limit_per_class": limit_per_class,
           "count": len(entries)}
    if marker.is_file():
        try:
            found = json.loads(marker.read_text())
        except (OSError, ValueError):
            found = None
        if found == key:
            return entries
        if found is not None and (found.get("transform"), found.get("limit_per_class")) != (
                key["transform"], key["limit_per_class"]):
            raise DatasetLayoutError(
                f"{split_dir} was materialised with {found}, not {key}; use another root "
                f"or delete {split_dir} first."
            )
        marker.unlink()

    fn = transform or identity_rgb
    for (rel, _label, _name), i in zip(entries, idx):
        path = Path(root) / rel
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        rgb = np.asarray(fn(np.asarray(images[i]), int(i)))
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[..., None], 3, axis=2)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: parallel jobs may build it at once
        Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(tmp, format="PNG")
        os.replace(tmp, path)
    split_dir.mkdir(parents=True, exist_ok=True)
    tmp_marker = marker.with_name(f"{MARKER}.{os.getpid()}.tmp")
    tmp_marker.write_text(json.dumps(key, sort_keys=True))
    os.replace(tmp_marker, marker)
    return entries
