"""Shared machinery of the CoOp-family dataset classes.

Everything here follows the reference classes (KaiyangZhou/CoOp ``datasets/``)
item for item, so that the same seed and the same list order give the same
few-shot picks as Dassl. What differs is robustness:

* split-file paths are checked to stay inside the dataset folder;
* missing folders/files raise :class:`DatasetNotFoundError` naming the path and
  the ``python -m promptot.datasets check`` command;
* the few-shot cache is portable JSON (paths relative to the dataset folder),
  and legacy Dassl pickles are imported;
* :func:`read_image` is what the data loader calls, raising
  :class:`CorruptImageError` (or skipping, with ``DATASET.SKIP_CORRUPT``).

One deliberate difference: folder listings are sorted (Dassl's
``listdir_nohidden`` returns ``os.listdir`` order, which depends on the file
system), so generated splits and ImageNet few-shot draws are reproducible
across machines.
"""
from __future__ import annotations

import json
import math
import os
import os.path as osp
import pickle
import random
import warnings
from collections import OrderedDict, defaultdict
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from promptot.errors import ConfigError, UserError
from promptot.fileio import atomic_write_text
from promptot.engine import DatasetBase, Datum, listdir_nohidden

# (image path, label, classname); paths are absolute until written to a file.
Item = Tuple[str, int, str]

DOCTOR = "python -m promptot.datasets check"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


# ----------------------------------------------------------------------------- errors
def doctor_command(name: Optional[str] = None, root: Optional[str] = None) -> str:
    """The exact command that checks a dataset (``root``/``name`` filled in when known)."""
    cmd = f"{DOCTOR} --root {root if root else '<DATA>'}"
    return f"{cmd} {name}" if name else cmd


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset folder, annotation file or image is missing.

    ``path`` is the missing path (the first one when several are missing).
    """

    def __init__(self, path: str, what: str = "", name: Optional[str] = None, root: Optional[str] = None,
                 hint: str = "", missing: Sequence[str] = ()) -> None:
        if "\n" in path:  # rebuilt from its message (pickling, DataLoader worker re-raise)
            self.path, self.missing = path.split("\n", 1)[0].rsplit(": ", 1)[-1], []
            super().__init__(path)
            return
        self.path = path
        self.missing = list(missing) or [path]
        lines = [f"{what or 'Missing dataset path'}: {path}"]
        if len(self.missing) > 1:
            shown = ", ".join(self.missing[:5])
            more = f" (and {len(self.missing) - 5} more)" if len(self.missing) > 5 else ""
            lines.append(f"{len(self.missing)} missing files: {shown}{more}")
        if hint:
            lines.append(hint)
        lines.append(f"Check the dataset with: {doctor_command(name, root)}")
        if name:
            lines.append(f"Fetch what can be fetched with: python -m promptot.datasets download {name} "
                         f"--root {root or '<DATA>'}")
        super().__init__("\n".join(lines))

    def __reduce__(self):
        return (type(self), (str(self),))


class CorruptImageError(UserError, OSError):
    """An image exists but cannot be decoded. ``path`` is the image path."""

    def __init__(self, path: str, reason: str = "") -> None:
        if "\n" in path:  # rebuilt from its message (pickling, DataLoader worker re-raise)
            self.path = path.split("\n", 1)[0].split(" ", 3)[-1]
            super().__init__(path)
            return
        self.path = path
        name, root = guess_dataset_from_path(path)
        msg = (f"Cannot read image {path}" + (f" ({reason})" if reason else "") + ".\n"
               f"Check the dataset with: {doctor_command(name, root)}\n"
               "or set DATASET.SKIP_CORRUPT True to skip unreadable images (they are counted and reported).")
        super().__init__(msg)

    def __reduce__(self):
        return (type(self), (str(self),))


class UnsafeSplitPathError(UserError, ValueError):
    """A path in a split/cache file resolves outside the dataset folder."""


class DatasetLayoutError(UserError, ValueError):
    """A dataset folder or file exists but is not laid out as the loader expects (the message says how)."""


# ----------------------------------------------------------------------------- images
_SKIPPED: "OrderedDict[str, str]" = OrderedDict()


def read_image(path: str, skip_corrupt: bool = False):
    """Open ``path`` as an RGB PIL image (decoded fully, so truncation is caught here).

    A missing or undecodable file raises :class:`DatasetNotFoundError` /
    :class:`CorruptImageError` with the path and the doctor command. With
    ``skip_corrupt`` it instead returns ``None`` (warning once per path and
    recording it in :func:`skipped_images`); the caller substitutes another item.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError as exc:
        err: Exception = DatasetNotFoundError(path, "Image file not found", *guess_dataset_from_path(path))
        reason = str(exc)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        err = CorruptImageError(path, f"{type(exc).__name__}: {exc}")
        reason = str(exc)
    if not skip_corrupt:
        raise err
    if path not in _SKIPPED:
        _SKIPPED[path] = reason
        warnings.warn(f"Skipping unreadable image {path} ({reason}); {len(_SKIPPED)} skipped so far "
                      "in this process.", RuntimeWarning)
    return None


def skipped_images() -> Dict[str, str]:
    """Paths skipped by :func:`read_image` in this process -> reason."""
    return dict(_SKIPPED)


def guess_dataset_from_path(path: str) -> Tuple[Optional[str], Optional[str]]:
    """(dataset NAME, DATA root) when ``path`` lies under a known dataset folder."""
    from promptot.engine import DATASET_REGISTRY

    folders = {}
    for name in _registered_names(DATASET_REGISTRY):
        cls = DATASET_REGISTRY.get(name)
        folder = getattr(cls, "dataset_dir", "")
        if isinstance(folder, str) and folder and getattr(cls, "_promptot_builtin", False):
            folders.setdefault(folder, name)
    parts = osp.abspath(path).split(os.sep)
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] in folders:
            return folders[parts[i]], os.sep.join(parts[:i]) or os.sep
    return None, None


def _registered_names(registry) -> List[str]:
    for attr in ("registered_names", "_obj_map"):
        if hasattr(registry, attr):
            obj = getattr(registry, attr)
            return list(obj() if callable(obj) else obj.keys())
    return []


# ----------------------------------------------------------------------------- paths
def to_posix(relpath: str) -> str:
    return relpath.replace(os.sep, "/")


def safe_join(base: str, relpath: str, container: Optional[str] = None) -> str:
    """Join a split-file path to ``base``; reject results outside ``container`` (default ``base``).

    The check is lexical (normpath), so a dataset folder that is itself a
    symlink, or contains symlinked image folders, keeps working.
    """
    container = osp.normpath(osp.abspath(container or base))
    if not isinstance(relpath, str) or osp.isabs(relpath) or relpath.startswith(("/", "\\")):
        raise UnsafeSplitPathError(
            f"Split entry {relpath!r} must be a path relative to {base}, not an absolute path.")
    full = osp.normpath(osp.join(osp.abspath(base), relpath))
    if full != container and not full.startswith(container + os.sep):
        raise UnsafeSplitPathError(
            f"Split entry {relpath!r} resolves to {full}, outside the dataset folder {container}; refusing it.")
    return full


def list_images(folder: str) -> List[str]:
    """Sorted non-hidden file names in ``folder``."""
    return sorted(listdir_nohidden(folder))


def list_dirs(folder: str) -> List[str]:
    return sorted(f for f in listdir_nohidden(folder) if osp.isdir(osp.join(folder, f)))


# ----------------------------------------------------------------------------- split files
def read_split_items(filepath: str, path_prefix: str, container: Optional[str] = None
                     ) -> Dict[str, List[Item]]:
    """Read a ``split_zhou_*.json`` into {train, val, test} lists of absolute-path items."""
    with open(filepath, "r") as f:
        data = json.load(f)
    out = {}
    for split in ("train", "val", "test"):
        out[split] = [(safe_join(path_prefix, p, container), int(y), c) for p, y, c in data.get(split, [])]
    return out


def save_split_items(train: Iterable, val: Iterable, test: Iterable, filepath: str, path_prefix: str) -> None:
    """Write a split file in CoOp's format (paths relative to ``path_prefix``)."""

    def _rel(items):
        out = []
        for it in items:
            impath, label, cname = _unpack(it)
            out.append([to_posix(osp.relpath(impath, path_prefix)), int(label), cname])
        return out

    atomic_write_text(filepath, json.dumps({"train": _rel(train), "val": _rel(val), "test": _rel(test)}, indent=4,
                                           separators=(",", ": ")))
    print(f"Saved split to {filepath}")


def _unpack(it) -> Item:
    if isinstance(it, tuple):
        return it
    return it.impath, it.label, it.classname


def split_trainval(trainval: List, p_val: float = 0.2) -> Tuple[List, List]:
    """CoOp's ``OxfordPets.split_trainval``: per label (first-seen order), shuffle, first round(n*p_val) -> val."""
    print(f"Splitting trainval into {1 - p_val:.0%} train and {p_val:.0%} val")
    tracker = defaultdict(list)
    for idx, item in enumerate(trainval):
        tracker[_unpack(item)[1]].append(idx)
    train, val = [], []
    for label, idxs in tracker.items():
        n_val = round(len(idxs) * p_val)
        if n_val == 0:
            name = _unpack(trainval[idxs[0]])[2]
            raise DatasetLayoutError(
                f"class {name!r} (label {label}) has {len(idxs)} training image(s): too few to hold out a validation "
                f"image ({p_val:.0%} rounds to 0). Add images, or give the split explicitly (a val/ folder, or a "
                "split file).")
        random.shuffle(idxs)
        for n, idx in enumerate(idxs):
            (val if n < n_val else train).append(trainval[idx])
    return train, val


def read_and_split_data(image_dir: str, p_trn: float = 0.5, p_val: float = 0.2, ignored: Sequence[str] = (),
                        new_cnames: Optional[Dict[str, str]] = None) -> Tuple[List[Item], List[Item], List[Item]]:
    """CoOp's ``DTD.read_and_split_data``: class folders, per-class shuffle, 50/20/30 by default."""
    categories = [c for c in list_dirs(image_dir) if c not in ignored]
    p_tst = 1 - p_trn - p_val
    print(f"Splitting into {p_trn:.0%} train, {p_val:.0%} val, and {p_tst:.0%} test")
    train, val, test = [], [], []
    for label, category in enumerate(categories):
        category_dir = osp.join(image_dir, category)
        images = [osp.join(category_dir, im) for im in list_images(category_dir)]
        random.shuffle(images)
        n_total = len(images)
        n_train = round(n_total * p_trn)
        n_val = round(n_total * p_val)
        n_test = n_total - n_train - n_val
        assert n_train > 0 and n_val > 0 and n_test > 0, f"class {category} has too few images ({n_total}) to split"
        cname = new_cnames.get(category, category) if new_cnames else category
        train += [(im, label, cname) for im in images[:n_train]]
        val += [(im, label, cname) for im in images[n_train:n_train + n_val]]
        test += [(im, label, cname) for im in images[n_train + n_val:]]
    return train, val, test


def subsample_classes(*args, subsample: str = "all"):
    """Base-to-new split (CoOp's ``OxfordPets.subsample_classes``).

    Labels of the first split, sorted; m = ceil(n/2); ``base`` keeps the first m,
    ``new`` the rest; items of every split are relabelled 0..k-1 in that order.
    """
    subsample = str(subsample).lower()
    if subsample not in ("all", "base", "new"):
        raise ConfigError(f"DATASET.SUBSAMPLE_CLASSES must be 'all', 'base' or 'new', got {subsample!r}")
    if subsample == "all":
        return args
    labels = sorted({item.label for item in args[0]})
    m = math.ceil(len(labels) / 2)
    print(f"SUBSAMPLE {subsample.upper()} CLASSES!")
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabeler = {y: y_new for y_new, y in enumerate(selected)}
    output = []
    for dataset in args:
        output.append([Datum(impath=it.impath, label=relabeler[it.label], classname=it.classname)
                       for it in dataset if it.label in relabeler])
    return output


# ----------------------------------------------------------------------------- legacy pickles
class LegacyDatum:
    """Plain stand-in for ``dassl.data.datasets.base_dataset.Datum`` when reading old pickles."""

    def __setstate__(self, state):
        self.__dict__.update(state if isinstance(state, dict) else state[1] or {})

    def fields(self) -> Item:
        d = self.__dict__
        return (d.get("_impath", d.get("impath")), int(d.get("_label", d.get("label", 0))),
                d.get("_classname", d.get("classname", "")))


class _LegacyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if name == "Datum" and (module.startswith("dassl") or module.startswith("promptot")):
            return LegacyDatum
        if module in ("collections", "builtins", "copyreg", "_codecs") or module.startswith("numpy"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a legacy dataset pickle")


def load_legacy_pickle(path: str) -> Dict[str, List[Item]]:
    """Read a Dassl-era ``{"train": [Datum], ...}`` pickle without importing Dassl.

    Returns raw items with the paths exactly as stored (see :func:`rebase_path`).
    """
    with open(path, "rb") as f:
        data = _LegacyUnpickler(f).load()
    out = {}
    for key, items in data.items():
        out[key] = [it.fields() if isinstance(it, LegacyDatum) else tuple(it) for it in items]
    return out


def rebase_path(old_path: str, folder_name: str, dataset_dir: str) -> str:
    """Map an absolute path from another machine onto ``dataset_dir``.

    The part after the last path component equal to ``folder_name`` (the
    dataset's folder, e.g. ``oxford_pets``) is kept; either separator is accepted.
    """
    parts = [p for p in old_path.replace("\\", "/").split("/")]
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == folder_name:
            return safe_join(dataset_dir, "/".join(parts[i + 1:]))
    if not osp.isabs(old_path):
        return safe_join(dataset_dir, old_path)
    full = osp.normpath(old_path)
    if full.startswith(osp.normpath(dataset_dir) + os.sep):
        return full
    raise UnsafeSplitPathError(
        f"Cannot map {old_path!r} from a legacy pickle into {dataset_dir}: no '{folder_name}' component.")


# ----------------------------------------------------------------------------- cfg helpers
def cfg_get(cfg, dotted: str, default: Any = None) -> Any:
    node = cfg
    for key in dotted.split("."):
        if node is None:
            return default
        try:
            node = node[key] if isinstance(node, dict) and key in node else getattr(node, key)
        except (AttributeError, KeyError):
            return default
    return node


# ----------------------------------------------------------------------------- base class
class CoOpDataset(DatasetBase):
    """Base of the built-in datasets: split file or generated split, few-shot cache, base/new.

    Subclasses set the class attributes and implement :meth:`generate_split`
    (when ``split_file`` is set) or :meth:`read_items` (when it is not).
    """

    _promptot_builtin = True
    dataset_dir = ""            # folder under DATASET.ROOT
    image_dir = ""              # image folder, relative to dataset_dir
    split_file: Optional[str] = None   # e.g. "split_zhou_OxfordPets.json", under dataset_dir
    split_relative_to = "image"        # split paths relative to the "image" dir or the "dataset" dir
    required: Tuple[str, ...] = ()     # paths (under dataset_dir) read to regenerate the split (or, without
                                       # a split file, to read the dataset at all)
    required_with_split: Tuple[str, ...] = ()  # paths needed when the split file is present (the image folders)
    expected_counts: Optional[Dict[str, int]] = None  # {"train", "val", "test", "classes"}
    counts_verified = False
    fewshot_val = True          # few-shot val = draw(val, min(K, 4)); ImageNet: val is the test set
    download_hint = ""

    def __init__(self, cfg) -> None:
        self.setup_paths(cfg_get(cfg, "DATASET.ROOT", ""))
        self.check_exists(self.dataset_dir, "Dataset folder not found")
        seed = int(cfg_get(cfg, "SEED", -1))
        if seed >= 0:
            # Same state as right after set_random_seed(SEED) in train.py, so
            # that a dataset built on its own draws as it would under Dassl.
            random.seed(seed)
        splits = self.load_splits()
        train, val, test = (self.to_datums(splits.get(k, []), k) for k in ("train", "val", "test"))
        num_shots = int(cfg_get(cfg, "DATASET.NUM_SHOTS", -1))
        if num_shots >= 1:
            train, val = self.fewshot(train, val, num_shots, seed)
        train, val, test = self.finalize(train, val, test)
        subsample = cfg_get(cfg, "DATASET.SUBSAMPLE_CLASSES", "all")
        train, val, test = subsample_classes(train, val, test, subsample=subsample)
        super().__init__(train_x=train, val=val, test=test)

    # -- paths -------------------------------------------------------------------------
    def setup_paths(self, root: str) -> None:
        self.root = osp.abspath(osp.expanduser(root or "."))
        self.folder_name = type(self).dataset_dir
        self.dataset_dir = osp.join(self.root, type(self).dataset_dir)
        self.image_dir = osp.normpath(osp.join(self.dataset_dir, type(self).image_dir))
        self.split_path = osp.join(self.dataset_dir, self.split_file) if self.split_file else None
        self.split_fewshot_dir = osp.join(self.dataset_dir, "split_fewshot")

    @property
    def name(self) -> str:
        return type(self).__name__

    def check_exists(self, path: str, what: str) -> None:
        if not osp.exists(path):
            raise DatasetNotFoundError(path, what, self.name, self.root, self.download_hint)

    @classmethod
    def needed_paths(cls, split_present: bool) -> Tuple[str, ...]:
        """Paths under the dataset folder that a run reads.

        With the split file present only the image folders are needed; the
        annotation files in :attr:`required` are read only to regenerate a
        missing split (and always by datasets without a split file).
        """
        if cls.split_file and split_present:
            return cls.required_with_split
        return cls.required

    def _split_prefix(self) -> str:
        return self.image_dir if self.split_relative_to == "image" else self.dataset_dir

    # -- splits ------------------------------------------------------------------------
    def load_splits(self) -> Dict[str, List[Item]]:
        if self.split_path is None:
            return self.read_items()
        if osp.exists(self.split_path):
            for rel in self.needed_paths(split_present=True):
                self.check_exists(osp.join(self.dataset_dir, rel), "Image folder not found")
            return read_split_items(self.split_path, self._split_prefix(), self.dataset_dir)
        for rel in self.needed_paths(split_present=False):
            self.check_exists(osp.join(self.dataset_dir, rel),
                              f"{self.split_file} is missing and so is a file needed to regenerate it")
        train, val, test = self.generate_split()
        save_split_items(train, val, test, self.split_path, self._split_prefix())
        print(f"NOTE: {self.split_file} was not found, so a new split was generated with Python's random "
              f"module and written to {self.split_path}. Results on it are NOT comparable with published "
              f"numbers; use the official split file (see `python -m promptot.datasets download {self.name}`).")
        return {"train": train, "val": val, "test": test}

    def raw_splits(self) -> Dict[str, List[Item]]:
        """The split lists without building Datum objects or writing anything (used by the doctor)."""
        if self.split_path is None:
            return self.read_items()
        if not osp.exists(self.split_path):
            raise DatasetNotFoundError(self.split_path, "Split file not found", self.name, self.root)
        return read_split_items(self.split_path, self._split_prefix(), self.dataset_dir)

    def generate_split(self) -> Tuple[List[Item], List[Item], List[Item]]:
        raise NotImplementedError

    def read_items(self) -> Dict[str, List[Item]]:
        raise NotImplementedError

    def finalize(self, train, val, test):
        """Hook after few-shot sampling (ImageNet: val is the test set)."""
        return train, val, test

    def to_datums(self, items: List[Item], split: str = "") -> List:
        missing = [p for p, _, _ in items if not osp.isfile(p)]
        if missing:
            raise DatasetNotFoundError(missing[0], f"Image listed in the {split} split not found",
                                       self.name, self.root, missing=missing)
        return [Datum(impath=p, label=int(y), classname=c) for p, y, c in items]

    # -- few-shot ----------------------------------------------------------------------
    def fewshot_cache_path(self, num_shots: int, seed: int, ext: str = "json") -> str:
        return osp.join(self.split_fewshot_dir, f"shot_{num_shots}-seed_{seed}.{ext}")

    def fewshot(self, train: List, val: List, num_shots: int, seed: int) -> Tuple[List, List]:
        path = self.fewshot_cache_path(num_shots, seed)
        legacy = self.fewshot_cache_path(num_shots, seed, "pkl")
        if osp.exists(path):
            print(f"Loading preprocessed few-shot data from {path}")
            data = self.read_fewshot_cache(path)
        elif osp.exists(legacy):
            print(f"Importing legacy Dassl few-shot pickle {legacy} -> {path}")
            raw = load_legacy_pickle(legacy)
            data = {k: self.to_datums([(rebase_path(p, self.folder_name, self.dataset_dir), y, c) for p, y, c in v], k)
                    for k, v in raw.items()}
            self.write_fewshot_cache(path, data, num_shots, seed)
        else:
            data = {"train": self.generate_fewshot_dataset(train, num_shots=num_shots)}
            if self.fewshot_val:
                data["val"] = self.generate_fewshot_dataset(val, num_shots=min(num_shots, 4))
            print(f"Saving few-shot data to {path}")
            self.write_fewshot_cache(path, data, num_shots, seed)
        return data["train"], data.get("val", val)

    def write_fewshot_cache(self, path: str, data: Dict[str, List], num_shots: int, seed: int) -> None:
        out: Dict[str, Any] = {"format": "promptot-fewshot-v1", "dataset": self.name, "num_shots": num_shots,
                               "seed": seed, "paths_relative_to": "dataset folder"}
        for key, items in data.items():
            out[key] = [[to_posix(osp.relpath(it.impath, self.dataset_dir)), int(it.label), it.classname]
                        for it in items]
        atomic_write_text(path, json.dumps(out, indent=1))  # parallel jobs and kills never see half a cache

    def read_fewshot_cache(self, path: str) -> Dict[str, List]:
        with open(path, "r") as f:
            data = json.load(f)
        out = {}
        for key in ("train", "val"):
            if key in data:
                items = [(safe_join(self.dataset_dir, p), int(y), c) for p, y, c in data[key]]
                out[key] = self.to_datums(items, key)
        return out

    # -- CoOp-compatible static helpers ------------------------------------------------
    @staticmethod
    def read_split(filepath: str, path_prefix: str) -> Tuple[List, List, List]:
        items = read_split_items(filepath, path_prefix)
        return tuple([Datum(impath=p, label=y, classname=c) for p, y, c in items[k]]
                     for k in ("train", "val", "test"))

    @staticmethod
    def save_split(train, val, test, filepath: str, path_prefix: str) -> None:
        save_split_items(train, val, test, filepath, path_prefix)

    split_trainval = staticmethod(split_trainval)
    subsample_classes = staticmethod(subsample_classes)
    read_and_split_data = staticmethod(read_and_split_data)


# ----------------------------------------------------------------------------- ImageNet names
def read_classnames(text_file: str) -> "OrderedDict[str, str]":
    """CoOp's ``ImageNet.read_classnames``: lines "nXXXXXXXX name words" -> {wnid: name}."""
    classnames: "OrderedDict[str, str]" = OrderedDict()
    with open(text_file, "r") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            parts = line.split(" ")
            classnames[parts[0]] = " ".join(parts[1:])
    return classnames


def packaged_imagenet_classnames_file() -> str:
    return osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), "assets", "imagenet_classnames.txt")


def imagenet_classnames(dataset_dir: str) -> "OrderedDict[str, str]":
    """``<dataset_dir>/classnames.txt`` when present, else the packaged copy (same format)."""
    local = osp.join(dataset_dir, "classnames.txt")
    return read_classnames(local if osp.exists(local) else packaged_imagenet_classnames_file())
