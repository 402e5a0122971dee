"""CoCoOp: CoOp's context shifted per image by a small meta-network (Zhou et al., CVPR 2022).

Config ``TRAINER.COCOOP``: ``N_CTX 16``, ``CTX_INIT ""``, ``PREC fp16``. Learned: the context and the
Meta-Net (Linear vis_dim -> vis_dim/16 -> ReLU -> Linear -> text width). Every image gets its own
C prompts, so a batch costs B x C text-encoder passes (hence batch size 1 in the paper configs).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from promptot.config import check_choice, register_trainer_config, resolve
from promptot.engine import TRAINER_REGISTRY
from promptot.prompts import TextPrompts
from promptot.trainer import PRECISIONS, PromptTrainer


@register_trainer_config("COCOOP")
@dataclass
class CoCoOpConfig:
    N_CTX: int = 16
    CTX_INIT: str = ""
    PREC: str = "fp16"

    def __post_init__(self) -> None:
        check_choice("TRAINER.COCOOP.PREC", self.PREC, PRECISIONS)


class CoCoOpPromptLearner(nn.Module):
    """Context (``text.ctx``) + Meta-Net (``meta_net.*``): the only learned state."""

    def __init__(self, clip, classnames, cfg: CoCoOpConfig, dtype: torch.dtype) -> None:
        super().__init__()
        self.text = TextPrompts(clip, classnames, n_ctx=cfg.N_CTX, ctx_init=cfg.CTX_INIT, init_mode="coop", dtype=dtype)
        vis_dim, width = clip.embed_dim, clip.text_width
        hidden = max(vis_dim // 16, 1)
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, hidden)), ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(hidden, width))])).to(dtype)


class CoCoOpModel(nn.Module):
    def __init__(self, clip, prompt_learner: CoCoOpPromptLearner) -> None:
        super().__init__()
        self.clip = clip
        self.prompt_learner = prompt_learner

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]``: image b is scored against its own C conditional prompts."""
        pl = self.prompt_learner
        img = F.normalize(self.clip.encode_image(images).features, dim=-1)
        shift = pl.meta_net(img.to(pl.meta_net.linear1.weight.dtype))  # [B, D]: one shift for every context token
        ids = pl.text.prompt_token_ids()
        scale = self.clip.logit_scale.exp()
        logits = []
        for b in range(img.shape[0]):
            ctx = pl.text.ctx + shift[b].unsqueeze(0).to(pl.text.ctx.dtype)
            txt = F.normalize(self.clip.encode_text(pl.text.build(ctx), ids).features, dim=-1)
            logits.append(scale * img[b] @ txt.t())
        return torch.stack(logits)


@TRAINER_REGISTRY.register()
class CoCoOp(PromptTrainer):
    def build_model(self) -> None:
        self.cocoop = c = resolve(self.cfg, CoCoOpConfig)
        clip = self.build_clip(c.PREC)
        learner = CoCoOpPromptLearner(clip, self.classnames, c, torch.float32 if c.PREC == "amp" else clip.dtype)
        self.model = CoCoOpModel(clip, learner).to(self.device)
        self.register_learner("prompt_learner", self.model.prompt_learner)
