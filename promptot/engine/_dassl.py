"""Re-export real Dassl's objects, with shims for its known breakage under current torch.

Applied at import without editing Dassl (docs/dassl.md#shims):
1. warmup scheduler ``verbose`` TypeError -> the package exports the project's
   ``build_lr_scheduler`` (same trace), never Dassl's;
2. ``torch.load`` ``weights_only`` default -> Dassl's ``load_checkpoint`` (used by
   resume and ``load_model``) is replaced by the project's, which reads trusted
   training checkpoints fully and reports corrupt files clearly;
3. ``val_result=None`` crash in the base ``load_model`` -> replaced by a None-safe one;
4. ``logging.disable(WARNING)`` done by the WILDS modules -> undone after import.
"""
from __future__ import annotations

import logging

import dassl  # noqa: F401  (raises ImportError when absent)
from dassl.config import get_cfg_default
from dassl.data import DataManager, DatasetWrapper
from dassl.data.data_manager import build_data_loader
from dassl.data.datasets import DATASET_REGISTRY, DatasetBase, Datum, build_dataset
from dassl.data.transforms import build_transform
from dassl.engine import TRAINER_REGISTRY, SimpleTrainer, TrainerX, build_trainer
from dassl.engine import trainer as _dassl_trainer
from dassl.evaluation import EVALUATOR_REGISTRY, build_evaluator
from dassl.metrics import compute_accuracy
from dassl.optim import build_optimizer
from dassl.utils import (AverageMeter, MetricMeter, collect_env_info, count_num_param, listdir_nohidden,
                         load_pretrained_weights, mkdir_if_missing, read_image, read_json, save_checkpoint,
                         set_random_seed, setup_logger, write_json)
from dassl.utils import torchtools as _torchtools

from .utils import load_checkpoint, load_registered_models, resume_from_checkpoint

logging.disable(logging.NOTSET)

_torchtools.load_checkpoint = load_checkpoint
_torchtools.resume_from_checkpoint = resume_from_checkpoint
for _name in ("load_checkpoint", "resume_from_checkpoint"):
    if hasattr(_dassl_trainer, _name):
        setattr(_dassl_trainer, _name, globals()[_name])


_dassl_trainer.TrainerBase.load_model = load_registered_models

__all__ = [
    "get_cfg_default", "DataManager", "DatasetWrapper", "build_data_loader", "DATASET_REGISTRY", "DatasetBase",
    "Datum", "build_dataset", "build_transform", "TRAINER_REGISTRY", "SimpleTrainer", "TrainerX", "build_trainer",
    "EVALUATOR_REGISTRY", "build_evaluator", "compute_accuracy", "build_optimizer", "AverageMeter", "MetricMeter",
    "collect_env_info", "count_num_param", "listdir_nohidden", "load_pretrained_weights", "mkdir_if_missing",
    "read_image", "read_json", "save_checkpoint", "set_random_seed", "setup_logger", "write_json",
    "load_checkpoint", "resume_from_checkpoint",
]
