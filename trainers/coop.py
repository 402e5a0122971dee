"""CoOp: learnable context vectors for the text prompts of a frozen CLIP (Zhou et al., IJCV 2022).

Config ``TRAINER.COOP``: ``N_CTX 16``, ``CSC False``, ``CTX_INIT ""``, ``PREC fp16``,
``CLASS_TOKEN_POSITION end`` (as in the reference). Only the context is learned and saved.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from promptot.config import check_choice, register_trainer_config, resolve
from promptot.engine import TRAINER_REGISTRY
from promptot.prompts import POSITIONS, TextPrompts
from promptot.trainer import PRECISIONS, PromptTrainer


@register_trainer_config("COOP")
@dataclass
class CoOpConfig:
    N_CTX: int = 16
    CSC: bool = False
    CTX_INIT: str = ""
    PREC: str = "fp16"
    CLASS_TOKEN_POSITION: str = "end"

    def __post_init__(self) -> None:
        check_choice("TRAINER.COOP.PREC", self.PREC, PRECISIONS)
        check_choice("TRAINER.COOP.CLASS_TOKEN_POSITION", self.CLASS_TOKEN_POSITION, POSITIONS)


class CoOpModel(nn.Module):
    """Frozen prompted CLIP + learnable text context; ``forward(images) -> logits [B, C]``."""

    def __init__(self, clip, prompt_learner: TextPrompts) -> None:
        super().__init__()
        self.clip = clip
        self.prompt_learner = prompt_learner

    def text_features(self) -> torch.Tensor:
        embeds, ids = self.prompt_learner()
        return F.normalize(self.clip.encode_text(embeds, ids).features, dim=-1)

    def forward(self, images: torch.Tensor, text_features: torch.Tensor = None) -> torch.Tensor:
        img = F.normalize(self.clip.encode_image(images).features, dim=-1)
        txt = self.text_features() if text_features is None else text_features
        return self.clip.logit_scale.exp() * img @ txt.t()


@TRAINER_REGISTRY.register()
class CoOp(PromptTrainer):
    def build_model(self) -> None:
        self.coop = c = resolve(self.cfg, CoOpConfig)
        clip = self.build_clip(c.PREC)
        learner = TextPrompts(clip, self.classnames, n_ctx=c.N_CTX, ctx_init=c.CTX_INIT, init_mode="coop",
                              csc=c.CSC, position=c.CLASS_TOKEN_POSITION,
                              dtype=torch.float32 if c.PREC == "amp" else clip.dtype)
        self.model = CoOpModel(clip, learner).to(self.device)
        self.register_learner("prompt_learner", self.model.prompt_learner)

    def static_text(self):
        return self.model.text_features()
