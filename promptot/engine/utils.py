"""Utilities of the built-in engine: seeding, logging tee, meters, files, checkpoints.

Behaviour follows Dassl (docs/dassl.md#checkpoints, #logging): same log.txt rule, same checkpoint
layout and keys, same meter string format, so logs and checkpoints are
interchangeable between the two engines.
"""
from __future__ import annotations

import errno
import json
import os
import os.path as osp
import random
import shutil
import sys
import time
import warnings
from collections import OrderedDict, defaultdict
from typing import Any, Dict, Iterable, List, Optional

import numpy as np
import torch

from promptot.errors import UserError


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """A checkpoint file or folder that a run needs does not exist (the message says where to look)."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file exists but cannot be read (truncated, corrupt, or not a checkpoint)."""


# ----------------------------------------------------------------------------- files
def mkdir_if_missing(dirname: str) -> None:
    if not osp.exists(dirname):
        try:
            os.makedirs(dirname)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise


def read_json(fpath: str) -> Any:
    with open(fpath, "r") as f:
        return json.load(f)


def write_json(obj: Any, fpath: str) -> None:
    mkdir_if_missing(osp.dirname(fpath) or ".")
    with open(fpath, "w") as f:
        json.dump(obj, f, indent=4, separators=(",", ": "))


def listdir_nohidden(path: str, sort: bool = False) -> List[str]:
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    if sort:
        items.sort()
    return items


def tolist_if_not(x: Any) -> list:
    if not isinstance(x, list):
        x = [x]
    return x


def count_num_param(model: Optional[torch.nn.Module] = None, params: Optional[Iterable] = None) -> int:
    if model is not None:
        return sum(p.numel() for p in model.parameters())
    if params is not None:
        s = 0
        for p in params:
            if isinstance(p, dict):
                s += sum(q.numel() for q in p["params"])
            else:
                s += p.numel()
        return s
    raise ValueError("model and params must not both be None")


# ----------------------------------------------------------------------------- seeding / env
def set_random_seed(seed: int) -> None:
    """Seed python ``random``, numpy and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def collect_env_info() -> str:
    from torch.utils.collect_env import get_pretty_env_info
    import PIL

    return get_pretty_env_info() + f"\n        Pillow ({PIL.__version__})"


# ----------------------------------------------------------------------------- logging
class Logger:
    """Tee for ``sys.stdout``: everything printed also goes to a log file."""

    def __init__(self, fpath: Optional[str] = None) -> None:
        self.console = sys.stdout
        self.file = None
        if fpath is not None:
            mkdir_if_missing(osp.dirname(fpath) or ".")
            self.file = open(fpath, "w")

    def write(self, msg: str) -> None:
        self.console.write(msg)
        if self.file is not None:
            self.file.write(msg)

    def flush(self) -> None:
        self.console.flush()
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def setup_logger(output: Optional[str] = None) -> Optional[str]:
    """Tee stdout into ``output/log.txt`` (or ``output`` if it ends in .txt/.log).

    An existing log is never overwritten: the new one is ``log.txt-<timestamp>``,
    which is what Dassl does (and what ``parse_test_res`` relies on). Returns the path.
    """
    if output is None:
        return None
    if output.endswith(".txt") or output.endswith(".log"):
        fpath = output
    else:
        fpath = osp.join(output, "log.txt")
    if osp.exists(fpath):
        fpath += time.strftime("-%Y-%m-%d-%H-%M-%S")
    # Re-running setup in one process (tests) must not nest tees.
    console = sys.stdout.console if isinstance(sys.stdout, Logger) else sys.stdout
    if isinstance(sys.stdout, Logger):
        sys.stdout.close()
    logger = Logger.__new__(Logger)
    logger.console = console
    mkdir_if_missing(osp.dirname(fpath) or ".")
    logger.file = open(fpath, "w")
    sys.stdout = logger
    return fpath


# ----------------------------------------------------------------------------- meters
class AverageMeter:
    """Running value and average."""

    def __init__(self, ema: bool = False) -> None:
        self.ema = ema
        self.reset()

    def reset(self) -> None:
        self.val = 0.0
        self.avg = 0.0
        self.sum = 0.0
        self.count = 0

    def update(self, val: float, n: int = 1) -> None:
        if isinstance(val, torch.Tensor):
            val = val.item()
        self.val = val
        self.sum += val * n
        self.count += n
        if self.ema:
            self.avg = self.avg * 0.9 + self.val * 0.1
        else:
            self.avg = self.sum / self.count


class MetricMeter:
    """A named group of ``AverageMeter``; ``str()`` gives ``name val (avg)`` pairs."""

    def __init__(self, delimiter: str = " ") -> None:
        self.meters: Dict[str, AverageMeter] = defaultdict(AverageMeter)
        self.delimiter = delimiter

    def update(self, input_dict: Optional[Dict[str, float]]) -> None:
        if input_dict is None:
            return
        if not isinstance(input_dict, dict):
            raise TypeError("Input to MetricMeter.update() must be a dictionary")
        for k, v in input_dict.items():
            if isinstance(v, torch.Tensor):
                v = v.item()
            self.meters[k].update(v)

    def __str__(self) -> str:
        return self.delimiter.join(f"{n} {m.val:.4f} ({m.avg:.4f})" for n, m in self.meters.items())


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(
    state: Dict[str, Any],
    save_dir: str,
    is_best: bool = False,
    remove_module_from_keys: bool = True,
    model_name: str = "",
) -> str:
    """Write ``save_dir/model.pth.tar-<epoch>`` (or ``model_name``) and the ``checkpoint`` pointer.

    Every file is written to a unique temporary name in the same folder, fsynced and renamed
    (:func:`promptot.fileio.atomic_write`), so a crash or a kill while saving leaves the previous
    checkpoint and pointer intact, never a truncated file behind the pointer.
    """
    from promptot.fileio import atomic_write, atomic_write_text

    mkdir_if_missing(save_dir)
    if remove_module_from_keys:
        state["state_dict"] = OrderedDict(
            (k[7:] if k.startswith("module.") else k, v) for k, v in state["state_dict"].items()
        )
    epoch = state["epoch"]
    if not model_name:
        model_name = "model.pth.tar-" + str(epoch)
    fpath = osp.join(save_dir, model_name)
    atomic_write(fpath, lambda f: torch.save(state, f))
    print(f"Checkpoint saved to {fpath}")
    atomic_write_text(osp.join(save_dir, "checkpoint"), f"{osp.basename(fpath)}\n")
    if is_best:
        best_fpath = osp.join(osp.dirname(fpath), "model-best.pth.tar")
        with open(fpath, "rb") as src:
            atomic_write(best_fpath, lambda f: shutil.copyfileobj(src, f))
        print(f'Best checkpoint saved to "{best_fpath}"')
    return fpath


def checkpoint_dict(model: torch.nn.Module, optimizer=None, scheduler=None, epoch: int = 0, val_result=None,
                    **extra: Any) -> Dict[str, Any]:
    """The dict Dassl saves for one registered model (``state_dict``, ``epoch`` = epochs done, ``optimizer``,
    ``scheduler``, ``val_result``) plus ``extra`` entries (promptot adds ``meta``)."""
    return {
        "state_dict": model.state_dict(),
        "epoch": epoch,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "val_result": val_result,
        **extra,
    }


def load_checkpoint(fpath: str) -> Dict[str, Any]:
    """Load a checkpoint file on CPU (or GPU when available).

    Checkpoints are the user's own training outputs, so full unpickling is
    allowed; torch >= 2.6 defaults to ``weights_only=True``, which cannot read
    Dassl-era files that pickle scheduler objects (docs/dassl.md#shims, 2).
    """
    if fpath is None:
        raise ValueError("File path is None")
    if not osp.exists(fpath):
        raise CheckpointNotFoundError(f'Checkpoint file not found: "{fpath}"')
    map_location = None if torch.cuda.is_available() else "cpu"
    try:
        return torch.load(fpath, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        raise CheckpointError(
            f'Unable to load checkpoint "{fpath}": {e}. The file may be truncated or corrupt; '
            "delete it (and fix the 'checkpoint' pointer file next to it) to resume from an earlier epoch."
        ) from e


def resume_from_checkpoint(fdir: str, model: torch.nn.Module, optimizer=None, scheduler=None) -> int:
    """Restore model/optimizer/scheduler from the file named in ``fdir/checkpoint``; return its epoch."""
    with open(osp.join(fdir, "checkpoint"), "r") as f:
        model_name = f.readlines()[0].strip("\n")
    fpath = osp.join(fdir, model_name)
    print(f'Loading checkpoint from "{fpath}"')
    checkpoint = load_checkpoint(fpath)
    model.load_state_dict(checkpoint["state_dict"])
    print("Loaded model weights")
    if optimizer is not None and checkpoint.get("optimizer") is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        print("Loaded optimizer")
    if scheduler is not None and checkpoint.get("scheduler") is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
        print("Loaded scheduler")
    start_epoch = checkpoint["epoch"]
    print(f"Previous epoch: {start_epoch}")
    return start_epoch


def load_pretrained_weights(model: torch.nn.Module, weight_path: str) -> None:
    """Copy the entries of a checkpoint whose name and shape both match (``MODEL.INIT_WEIGHTS``)."""
    checkpoint = load_checkpoint(weight_path)
    state_dict = checkpoint.get("state_dict", checkpoint)
    model_dict = model.state_dict()
    new_state_dict = OrderedDict()
    matched, discarded = [], []
    for k, v in state_dict.items():
        if k.startswith("module."):
            k = k[7:]
        if k in model_dict and model_dict[k].size() == v.size():
            new_state_dict[k] = v
            matched.append(k)
        else:
            discarded.append(k)
    model_dict.update(new_state_dict)
    model.load_state_dict(model_dict)
    if not matched:
        warnings.warn(f"Cannot load {weight_path} (check the key names manually)")
    else:
        print(f"Successfully loaded pretrained weights from {weight_path}")
        if discarded:
            print(f"Layers discarded due to unmatched keys or size: {discarded}")


def load_registered_models(trainer, directory: str, epoch: Optional[int] = None) -> None:
    """Dassl's ``TrainerBase.load_model`` without its crash on ``val_result=None`` (docs/dassl.md#shims, 3):
    load ``<directory>/<name>/model.pth.tar-<epoch>`` (or ``model-best.pth.tar``) into every registered model."""
    if not directory:
        print("Note that load_model() is skipped as no pretrained model is given (ignore this if it's done on purpose)")
        return
    model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
    for name in trainer.get_model_names():
        model_path = osp.join(directory, name, model_file)
        if not osp.exists(model_path):
            raise CheckpointNotFoundError(f"No model at {model_path}")
        checkpoint = load_checkpoint(model_path)
        vr = checkpoint.get("val_result")
        vr_s = "None" if vr is None else f"{vr:.1f}"
        print(f"Load {model_path} to {name} (epoch={checkpoint['epoch']}, val_result={vr_s})")
        trainer._models[name].load_state_dict(checkpoint["state_dict"])
