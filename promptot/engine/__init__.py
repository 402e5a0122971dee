"""The Dassl API the plugin uses, from real Dassl when it is importable or from a built-in engine.

``PROMPTOT_ENGINE`` selects: ``auto`` (default: Dassl if importable, else built-in),
``dassl`` (fail if Dassl is missing) or ``builtin``. ``ENGINE`` says which one runs.
Trainers and datasets import from here, never from ``dassl`` directly.

Under both engines ``build_lr_scheduler`` and ``load_checkpoint`` are the
project's own (see :mod:`promptot.engine.optim`), which is what makes Dassl
work with current torch (docs/dassl.md#shims).
"""
from __future__ import annotations

import os

from .optim import WarmupLR, build_base_scheduler, build_lr_scheduler

_choice = os.environ.get("PROMPTOT_ENGINE", "auto").strip().lower()
if _choice not in ("auto", "dassl", "builtin"):
    raise ValueError(f"PROMPTOT_ENGINE must be auto, dassl or builtin, got {_choice!r}")


def _dassl_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("dassl") is not None


if _choice == "dassl" or (_choice == "auto" and _dassl_importable()):
    try:
        from ._dassl import *  # noqa: F401,F403
        from ._dassl import __all__ as _exported

        ENGINE = "dassl"
    except ImportError as e:
        if _choice == "dassl":
            raise ImportError(
                f"PROMPTOT_ENGINE=dassl but Dassl could not be imported ({e}). Install Dassl.pytorch and its "
                "import-time dependencies (see README, 'Running on real Dassl'), or unset PROMPTOT_ENGINE."
            ) from e
        _choice = "builtin"
if _choice == "builtin" or (_choice == "auto" and "ENGINE" not in globals()):
    from .config import get_cfg_default
    from .data import (DataManager, DatasetBase, DatasetWrapper, Datum, build_data_loader, build_dataset,
                       build_transform, read_image)
    from .evaluation import Classification, build_evaluator, compute_accuracy
    from .optim import build_optimizer
    from .registry import DATASET_REGISTRY, EVALUATOR_REGISTRY, TRAINER_REGISTRY, Registry
    from .trainer import SimpleTrainer, TrainerBase, TrainerX, build_trainer
    from .utils import (AverageMeter, MetricMeter, collect_env_info, count_num_param, listdir_nohidden,
                        load_checkpoint, load_pretrained_weights, mkdir_if_missing, read_json,
                        resume_from_checkpoint, save_checkpoint, set_random_seed, setup_logger, write_json)

    ENGINE = "builtin"

__all__ = [
    "ENGINE", "TrainerX", "SimpleTrainer", "TRAINER_REGISTRY", "DATASET_REGISTRY", "EVALUATOR_REGISTRY",
    "build_trainer", "get_cfg_default", "DatasetBase", "Datum", "DataManager", "DatasetWrapper",
    "build_dataset", "build_transform", "build_data_loader", "read_image", "build_optimizer",
    "build_lr_scheduler", "build_base_scheduler", "WarmupLR", "build_evaluator", "compute_accuracy",
    "set_random_seed", "setup_logger", "collect_env_info", "load_checkpoint", "save_checkpoint",
    "resume_from_checkpoint", "load_pretrained_weights", "mkdir_if_missing", "read_json", "write_json",
    "listdir_nohidden", "count_num_param", "MetricMeter", "AverageMeter",
]
