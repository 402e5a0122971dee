"""Zero-shot CLIP with hand-crafted prompts (CoOp's ``ZeroshotCLIP`` and ``ZeroshotCLIP2``).

Run with ``--eval-only`` and no model dir. The template per dataset is a config value
(``TRAINER.ZSCLIP.TEMPLATE``); left empty it comes from the table below, keyed by the dataset
class's ``prompt_template`` attribute when it has one, else by ``DATASET.NAME``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import torch
import torch.nn.functional as F

from promptot.clip import tokenize
from promptot.config import register_trainer_config, resolve
from promptot.engine import TRAINER_REGISTRY
from promptot.trainer import PromptTrainer

CUSTOM_TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}
# The ImageNet templates CoOp's ZeroshotCLIP2 ensembles (a selected subset of CLIP's 80).
IMAGENET_TEMPLATES_SELECT = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
]


@register_trainer_config("ZSCLIP")
@dataclass
class ZSCLIPConfig:
    TEMPLATE: str = ""  # "" = the dataset's hand-crafted template
    PREC: str = "fp16"


def dataset_template(trainer: PromptTrainer) -> str:
    tmpl = getattr(trainer.dm.dataset, "prompt_template", None)
    return tmpl or CUSTOM_TEMPLATES.get(trainer.cfg.DATASET.NAME, "a photo of a {}.")


class _ZeroshotBase(PromptTrainer):
    def templates(self) -> List[str]:
        raise NotImplementedError

    def build_model(self) -> None:
        self.zs = resolve(self.cfg, ZSCLIPConfig)
        self.clip = self.build_clip(self.zs.PREC)
        self.model = self.clip
        self.register_model("clip", self.clip)  # nothing to learn; registered for eval bookkeeping
        self.text_features = self._text_features(self.templates())

    @torch.no_grad()
    def _text_features(self, templates: Sequence[str]) -> torch.Tensor:
        names = [c.replace("_", " ") for c in self.classnames]
        feats = 0
        for t in templates:
            print(f"Prompt template: {t!r}")
            ids = tokenize([t.format(n) for n in names]).to(self.device)
            feats = feats + F.normalize(self.clip.encode_text_ids(ids).float(), dim=-1)
        return F.normalize(feats, dim=-1)

    def model_inference(self, image: torch.Tensor) -> torch.Tensor:
        img = F.normalize(self.clip.encode_image(image).features.float(), dim=-1)
        return self.clip.logit_scale.exp().float() * img @ self.text_features.t()

    def save_model(self, *args, **kwargs) -> None:
        pass  # zero-shot CLIP has no learned state

    def load_model(self, directory, epoch=None) -> None:
        if directory:
            print(f"Note: {self.cfg.TRAINER.NAME} has no learnable state; --model-dir {directory} is ignored")

    def train(self) -> None:
        raise RuntimeError(f"{self.cfg.TRAINER.NAME} has nothing to train; run it with --eval-only")


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(_ZeroshotBase):
    """One hand-crafted template per dataset."""

    def templates(self) -> List[str]:
        return [self.zs.TEMPLATE or dataset_template(self)]


@TRAINER_REGISTRY.register()
class ZeroshotCLIP2(_ZeroshotBase):
    """Ensemble of the selected ImageNet templates plus the dataset template (mean of normalised features)."""

    def templates(self) -> List[str]:
        own = self.zs.TEMPLATE or dataset_template(self)
        return IMAGENET_TEMPLATES_SELECT + ([own] if own not in IMAGENET_TEMPLATES_SELECT else [])
