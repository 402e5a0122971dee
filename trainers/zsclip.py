"""Zero-shot CLIP with hand-crafted prompts (CoOp's ``ZeroshotCLIP`` and ``ZeroshotCLIP2``).

Run with ``--eval-only`` and no model dir. The template per dataset is a config value
(``TRAINER.ZSCLIP.TEMPLATE``); left empty it comes from CoOp's table (:mod:`promptot.templates`), keyed by the
dataset class's ``prompt_template`` attribute when it has one, else by ``DATASET.NAME``.

Composition: :func:`~promptot.model.template_features` + :class:`~promptot.model.CosineModel` (no learner).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

from promptot.config import PrecisionConfig, register_trainer_config
from promptot.engine import TRAINER_REGISTRY
from promptot.model import CosineModel, template_features
from promptot.templates import IMAGENET_TEMPLATES_SELECT, dataset_template
from promptot.trainer import PromptTrainer


@register_trainer_config("ZSCLIP")
@dataclass
class ZSCLIPConfig(PrecisionConfig):
    TEMPLATE: str = ""  # "" = the dataset's hand-crafted template


class _ZeroshotBase(PromptTrainer):
    config_class = ZSCLIPConfig
    trains = False
    config_dir = "configs/trainers/CoOp"  # as the reference: zero-shot runs take CoOp's configs

    def templates(self) -> List[str]:
        raise NotImplementedError

    def compose(self, clip, c: ZSCLIPConfig) -> CosineModel:
        return CosineModel(clip, frozen_text=template_features(clip, self.classnames, self.templates()))

    def register_learners(self, c: ZSCLIPConfig) -> None:
        self.register_model("clip", self.model.clip)  # nothing to learn; registered for eval bookkeeping

    def own_template(self) -> str:
        return dataset_template(self.cfg.DATASET.NAME, self.dm.dataset, "coop", self.method_cfg.TEMPLATE)

    def save_model(self, *args, **kwargs) -> None:
        pass  # zero-shot CLIP has no learned state

    def load_model(self, directory, epoch=None) -> None:
        if directory:
            print(f"Note: {self.cfg.TRAINER.NAME} has no learnable state; --model-dir {directory} is ignored")

    def train(self) -> None:
        from promptot.errors import UserError

        raise UserError(f"{self.cfg.TRAINER.NAME} has nothing to train; run it with --eval-only")


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(_ZeroshotBase):
    """One hand-crafted template per dataset."""

    def templates(self) -> List[str]:
        return [self.own_template()]


@TRAINER_REGISTRY.register()
class ZeroshotCLIP2(_ZeroshotBase):
    """Ensemble of the selected ImageNet templates plus the dataset template (mean of normalised features)."""

    def templates(self) -> List[str]:
        own = self.own_template()
        return IMAGENET_TEMPLATES_SELECT + ([own] if own not in IMAGENET_TEMPLATES_SELECT else [])
