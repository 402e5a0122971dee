"""Data side of the built-in engine: Datum, DatasetBase, few-shot draws, transforms, DataManager.

Semantics follow Dassl (docs/dassl.md#data) so that the same seed gives the same
few-shot picks and the same loaders under either engine.
"""
from __future__ import annotations

import os.path as osp
import random
from collections import defaultdict
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from PIL import Image
from tabulate import tabulate
from torch.utils.data import Dataset as TorchDataset
import torchvision.transforms as T
from torchvision.transforms.functional import InterpolationMode

from promptot.errors import ConfigError

from .registry import DATASET_REGISTRY


# ----------------------------------------------------------------------------- records
class Datum:
    """One labelled image: ``impath`` (must exist), ``label``, ``domain``, ``classname``."""

    def __init__(self, impath: str = "", label: int = 0, domain: int = 0, classname: str = "") -> None:
        if not isinstance(impath, str):
            raise TypeError(f"Datum.impath must be a str, got {type(impath).__name__}")
        if not osp.isfile(impath):
            raise FileNotFoundError(
                f"Image file not found: {impath}. Check the dataset with "
                "`python -m promptot.datasets check --root <DATA>`."
            )
        self._impath = impath
        self._label = label
        self._domain = domain
        self._classname = classname

    @property
    def impath(self) -> str:
        return self._impath

    @property
    def label(self) -> int:
        return self._label

    @property
    def domain(self) -> int:
        return self._domain

    @property
    def classname(self) -> str:
        return self._classname

    def __repr__(self) -> str:
        return f"Datum(impath={self._impath!r}, label={self._label}, domain={self._domain}, classname={self._classname!r})"


class DatasetBase:
    """Holds ``train_x``, ``train_u``, ``val`` and ``test`` lists of :class:`Datum`.

    Class names and the number of classes come from ``train_x`` only (which is
    why test-only datasets pass their test list as ``train_x``).
    """

    dataset_dir = ""
    domains: List[str] = []

    def __init__(self, train_x=None, train_u=None, val=None, test=None) -> None:
        self._train_x = train_x
        self._train_u = train_u
        self._val = val
        self._test = test
        self._num_classes = self.get_num_classes(train_x)
        self._lab2cname, self._classnames = self.get_lab2cname(train_x)

    @property
    def train_x(self):
        return self._train_x

    @property
    def train_u(self):
        return self._train_u

    @property
    def val(self):
        return self._val

    @property
    def test(self):
        return self._test

    @property
    def lab2cname(self) -> Dict[int, str]:
        return self._lab2cname

    @property
    def classnames(self) -> List[str]:
        return self._classnames

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @staticmethod
    def get_num_classes(data_source) -> int:
        label_set = set(item.label for item in data_source)
        return max(label_set) + 1

    @staticmethod
    def get_lab2cname(data_source):
        container = set((item.label, item.classname) for item in data_source)
        mapping = {label: classname for label, classname in container}
        labels = sorted(mapping.keys())
        return mapping, [mapping[label] for label in labels]

    def check_input_domains(self, source_domains, target_domains) -> None:
        for domain in list(source_domains) + list(target_domains):
            if domain not in self.domains:
                raise ValueError(f"Input domain must belong to {self.domains}, but got [{domain}]")

    def generate_fewshot_dataset(self, *data_sources, num_shots: int = -1, repeat: bool = False):
        """Draw ``num_shots`` items per label from each source (Dassl's draw).

        Items are grouped by label in input order and ``random.sample`` picks
        per group, so the result is fixed by the seed of Python's ``random`` and
        by the order of the input list. A class with fewer items keeps them all
        (or is sampled with replacement when ``repeat``).
        """
        if num_shots < 1:
            if len(data_sources) == 1:
                return data_sources[0]
            return data_sources
        print(f"Creating a {num_shots}-shot dataset")
        output = []
        for data_source in data_sources:
            tracker = self.split_dataset_by_label(data_source)
            dataset = []
            for label, items in tracker.items():
                if len(items) >= num_shots:
                    sampled_items = random.sample(items, num_shots)
                elif repeat:
                    sampled_items = random.choices(items, k=num_shots)
                else:
                    sampled_items = items
                dataset.extend(sampled_items)
            output.append(dataset)
        if len(output) == 1:
            return output[0]
        return output

    @staticmethod
    def split_dataset_by_label(data_source) -> Dict[int, list]:
        output = defaultdict(list)
        for item in data_source:
            output[item.label].append(item)
        return output

    @staticmethod
    def split_dataset_by_domain(data_source) -> Dict[int, list]:
        output = defaultdict(list)
        for item in data_source:
            output[item.domain].append(item)
        return output


def build_dataset(cfg) -> DatasetBase:
    avai = DATASET_REGISTRY.registered_names()
    if cfg.DATASET.NAME not in avai:
        raise ConfigError(
            f'Dataset "{cfg.DATASET.NAME}" is not registered. Registered datasets: {", ".join(sorted(avai))}. '
            "Set DATASET.NAME (usually through --dataset-config-file configs/datasets/<name>.yaml), "
            "or register your own class with @DATASET_REGISTRY.register() in a module under datasets/."
        )
    if cfg.VERBOSE:
        print(f"Loading dataset: {cfg.DATASET.NAME}")
    return DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)


# ----------------------------------------------------------------------------- transforms
INTERPOLATION_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}

AVAI_CHOICES = [
    "random_flip", "random_resized_crop", "normalize", "instance_norm", "random_crop",
    "random_translation", "center_crop", "cutout", "imagenet_policy", "cifar10_policy",
    "svhn_policy", "randaugment", "randaugment_fixmatch", "randaugment2", "gaussian_noise",
    "colorjitter", "randomgrayscale", "gaussian_blur",
]
# Choices that exist in Dassl but that no prompt-learning recipe uses; the built-in
# engine does not reimplement them.
_DASSL_ONLY = {"instance_norm", "random_translation", "cutout", "imagenet_policy", "cifar10_policy",
               "svhn_policy", "randaugment", "randaugment_fixmatch", "randaugment2", "gaussian_noise"}


def build_transform(cfg, is_train: bool = True, choices: Optional[Sequence[str]] = None):
    """Train: [resize] + crops/flip/colour + to-tensor + normalize; test: resize max(SIZE), center-crop, to-tensor, normalize."""
    if cfg.INPUT.NO_TRANSFORM:
        print("Note: no transform is applied!")
        return None
    if choices is None:
        choices = cfg.INPUT.TRANSFORMS
    for choice in choices:
        if choice not in AVAI_CHOICES:
            raise ConfigError(f"Unknown INPUT.TRANSFORMS entry {choice!r}; available: {AVAI_CHOICES}")
        if choice in _DASSL_ONLY:
            raise ConfigError(
                f"INPUT.TRANSFORMS entry {choice!r} is implemented only by real Dassl; install Dassl "
                "and run with PROMPTOT_ENGINE=dassl, or remove it from the config."
            )
    interp = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
    size = tuple(cfg.INPUT.SIZE)
    normalize = T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)
    tfm: List[Callable] = []
    if is_train:
        print("Building transform_train")
        if "random_crop" not in choices and "random_resized_crop" not in choices:
            print(f"+ resize to {size[0]}x{size[1]}")
            tfm.append(T.Resize(size, interpolation=interp))
        if "random_crop" in choices:
            print(f"+ random crop (padding = {cfg.INPUT.CROP_PADDING})")
            tfm.append(T.RandomCrop(size, padding=cfg.INPUT.CROP_PADDING))
        if "random_resized_crop" in choices:
            print(f"+ random resized crop (size={size}, scale={tuple(cfg.INPUT.RRCROP_SCALE)})")
            tfm.append(T.RandomResizedCrop(size, scale=tuple(cfg.INPUT.RRCROP_SCALE), interpolation=interp))
        if "center_crop" in choices:
            tfm.append(T.CenterCrop(size))
        if "random_flip" in choices:
            print("+ random flip")
            tfm.append(T.RandomHorizontalFlip())
        if "colorjitter" in choices:
            tfm.append(T.ColorJitter(cfg.INPUT.COLORJITTER_B, cfg.INPUT.COLORJITTER_C,
                                     cfg.INPUT.COLORJITTER_S, cfg.INPUT.COLORJITTER_H))
        if "randomgrayscale" in choices:
            tfm.append(T.RandomGrayscale(p=cfg.INPUT.RGS_P))
        if "gaussian_blur" in choices:
            tfm.append(T.RandomApply([T.GaussianBlur(cfg.INPUT.GB_K)], p=cfg.INPUT.GB_P))
        print("+ to torch tensor of range [0, 1]")
        tfm.append(T.ToTensor())
    else:
        print("Building transform_test")
        print(f"+ resize the smaller edge to {max(size)}")
        tfm.append(T.Resize(max(size), interpolation=interp))
        print(f"+ {size[0]}x{size[1]} center crop")
        tfm.append(T.CenterCrop(size))
        print("+ to torch tensor of range [0, 1]")
        tfm.append(T.ToTensor())
    if "normalize" in choices:
        print(f"+ normalization (mean={cfg.INPUT.PIXEL_MEAN}, std={cfg.INPUT.PIXEL_STD})")
        tfm.append(normalize)
    return T.Compose(tfm)


# ----------------------------------------------------------------------------- loaders
def read_image(path: str) -> Image.Image:
    """Open an image as RGB."""
    return Image.open(path).convert("RGB")


class DatasetWrapper(TorchDataset):
    """Turns a list of Datum into dicts with ``img``, ``label``, ``domain``, ``impath``, ``index``."""

    def __init__(self, cfg, data_source, transform=None, is_train: bool = False) -> None:
        self.cfg = cfg
        self.data_source = data_source
        self.transform = transform
        self.is_train = is_train
        self.k_tfm = cfg.DATALOADER.K_TRANSFORMS if is_train else 1
        self.return_img0 = cfg.DATALOADER.RETURN_IMG0
        if self.k_tfm > 1 and transform is None:
            raise ValueError(f"Cannot augment the image {self.k_tfm} times because transform is None")
        interp = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
        to_tensor: List[Callable] = [T.Resize(tuple(cfg.INPUT.SIZE), interpolation=interp), T.ToTensor()]
        if "normalize" in cfg.INPUT.TRANSFORMS:
            to_tensor.append(T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD))
        self.to_tensor = T.Compose(to_tensor)

    def __len__(self) -> int:
        return len(self.data_source)

    def load_image(self, impath: str) -> Image.Image:
        return read_image(impath)

    def __getitem__(self, idx: int) -> Dict[str, Any]:
        item = self.data_source[idx]
        return wrapper_output(self, item, idx, self.load_image(item.impath))

    def _transform_image(self, tfm, img0):
        imgs = [tfm(img0) for _ in range(self.k_tfm)]
        return imgs[0] if len(imgs) == 1 else imgs


def wrapper_output(wrapper, item, index: int, img0: Image.Image) -> Dict[str, Any]:
    """The dict a Dassl dataset wrapper returns for ``item`` with its opened image ``img0``: ``label``,
    ``domain``, ``impath``, ``index``, ``img`` (``img2``... for a list of transforms; K views with
    ``K_TRANSFORMS``) and ``img0`` with ``RETURN_IMG0``. Works on Dassl's wrapper and on this engine's."""
    output: Dict[str, Any] = {"label": item.label, "domain": item.domain, "impath": item.impath, "index": index}
    tfm = wrapper.transform
    if tfm is None:
        output["img"] = img0
    elif isinstance(tfm, (list, tuple)):
        for i, t in enumerate(tfm):
            output["img" if i == 0 else f"img{i + 1}"] = wrapper._transform_image(t, img0)
    else:
        output["img"] = wrapper._transform_image(tfm, img0)
    if wrapper.return_img0:
        output["img0"] = wrapper.to_tensor(img0)
    return output


def build_sampler(sampler_type: str, data_source=None, **_: Any):
    avai = ["RandomSampler", "SequentialSampler"]
    if sampler_type == "RandomSampler":
        return torch.utils.data.RandomSampler(data_source)
    if sampler_type == "SequentialSampler":
        return torch.utils.data.SequentialSampler(data_source)
    raise ConfigError(
        f"Sampler {sampler_type!r} is not available in the built-in engine (available: {avai}); "
        "the domain samplers are Dassl-only (PROMPTOT_ENGINE=dassl)."
    )


def build_data_loader(cfg, sampler_type="SequentialSampler", data_source=None, batch_size=64, n_domain=0,
                      n_ins=2, tfm=None, is_train=True, dataset_wrapper=None):
    sampler = build_sampler(sampler_type, data_source=data_source)
    wrapper = dataset_wrapper or DatasetWrapper
    loader = torch.utils.data.DataLoader(
        wrapper(cfg, data_source, transform=tfm, is_train=is_train),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        drop_last=is_train and len(data_source) >= batch_size,
        pin_memory=(torch.cuda.is_available() and cfg.USE_CUDA),
    )
    if len(loader) == 0:
        raise ConfigError(f"Empty data loader ({len(data_source)} items, batch size {batch_size}): the split has fewer "
                          "items than one batch; lower the DATALOADER batch size or check the dataset")
    return loader


class DataManager:
    """Builds the dataset, its transforms and the train/val/test loaders."""

    def __init__(self, cfg, custom_tfm_train=None, custom_tfm_test=None, dataset_wrapper=None) -> None:
        dataset = build_dataset(cfg)
        if custom_tfm_train is None:
            tfm_train = build_transform(cfg, is_train=True)
        else:
            print("* Using custom transform for training")
            tfm_train = custom_tfm_train
        if custom_tfm_test is None:
            tfm_test = build_transform(cfg, is_train=False)
        else:
            print("* Using custom transform for testing")
            tfm_test = custom_tfm_test
        X, TE = cfg.DATALOADER.TRAIN_X, cfg.DATALOADER.TEST
        self.train_loader_x = build_data_loader(
            cfg, sampler_type=X.SAMPLER, data_source=dataset.train_x, batch_size=X.BATCH_SIZE,
            tfm=tfm_train, is_train=True, dataset_wrapper=dataset_wrapper)
        self.train_loader_u = None
        if dataset.train_u:
            U = cfg.DATALOADER.TRAIN_U
            src = X if U.SAME_AS_X else U
            self.train_loader_u = build_data_loader(
                cfg, sampler_type=src.SAMPLER, data_source=dataset.train_u, batch_size=src.BATCH_SIZE,
                tfm=tfm_train, is_train=True, dataset_wrapper=dataset_wrapper)
        self.val_loader = None
        if dataset.val:
            self.val_loader = build_data_loader(
                cfg, sampler_type=TE.SAMPLER, data_source=dataset.val, batch_size=TE.BATCH_SIZE,
                tfm=tfm_test, is_train=False, dataset_wrapper=dataset_wrapper)
        self.test_loader = build_data_loader(
            cfg, sampler_type=TE.SAMPLER, data_source=dataset.test, batch_size=TE.BATCH_SIZE,
            tfm=tfm_test, is_train=False, dataset_wrapper=dataset_wrapper)
        self._num_classes = dataset.num_classes
        self._num_source_domains = len(cfg.DATASET.SOURCE_DOMAINS)
        self._lab2cname = dataset.lab2cname
        self.dataset = dataset
        if cfg.VERBOSE:
            self.show_dataset_summary(cfg)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def num_source_domains(self) -> int:
        return self._num_source_domains

    @property
    def lab2cname(self) -> Dict[int, str]:
        return self._lab2cname

    def show_dataset_summary(self, cfg) -> None:
        table = [["Dataset", cfg.DATASET.NAME]]
        if cfg.DATASET.SOURCE_DOMAINS:
            table.append(["Source", cfg.DATASET.SOURCE_DOMAINS])
        if cfg.DATASET.TARGET_DOMAINS:
            table.append(["Target", cfg.DATASET.TARGET_DOMAINS])
        table.append(["# classes", f"{self.num_classes:,}"])
        table.append(["# train_x", f"{len(self.dataset.train_x):,}"])
        if self.dataset.train_u:
            table.append(["# train_u", f"{len(self.dataset.train_u):,}"])
        if self.dataset.val:
            table.append(["# val", f"{len(self.dataset.val):,}"])
        table.append(["# test", f"{len(self.dataset.test):,}"])
        print(tabulate(table))
