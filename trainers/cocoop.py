"""CoCoOp: CoOp's context shifted per image by a small meta-network (Zhou et al., CVPR 2022).

Config ``TRAINER.COCOOP``: ``N_CTX 16``, ``CTX_INIT ""``, ``PREC fp16``. Learned: the context and the
Meta-Net (Linear vis_dim -> vis_dim/16 -> ReLU -> Linear -> text width). Every image gets its own
C prompts, so a batch costs B x C text-encoder passes (hence batch size 1 in the paper configs); they are encoded
together, in bounded chunks (:meth:`~promptot.model.PromptModel.encode_per_image_prompts`).

Composition: :class:`~promptot.prompts.TextPrompts` + :class:`~promptot.prompts.MetaNet` in a dynamic
:class:`~promptot.model.PromptModel` (the text side depends on the image, so evaluation does not cache it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from promptot.config import PrecisionConfig, check_context, register_trainer_config
from promptot.engine import TRAINER_REGISTRY
from promptot.model import PromptModel
from promptot.prompts import MetaNet, TextPrompts
from promptot.trainer import PromptTrainer


@register_trainer_config("COCOOP")
@dataclass
class CoCoOpConfig(PrecisionConfig):
    N_CTX: int = 16
    CTX_INIT: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_context(self)


class CoCoOpPromptLearner(nn.Module):
    """Context (``text.ctx``) + Meta-Net (``meta_net.*``): the only learned state."""

    def __init__(self, clip, classnames, cfg: CoCoOpConfig, dtype: torch.dtype) -> None:
        super().__init__()
        self.text = TextPrompts(clip, classnames, n_ctx=cfg.N_CTX, ctx_init=cfg.CTX_INIT, init_mode="coop", dtype=dtype)
        self.meta_net = MetaNet(clip.embed_dim, clip.text_width, dtype=dtype)


class CoCoOpModel(PromptModel):
    """Image b is scored against its own C prompts ``[SOS][ctx + π_b][CLASS . EOT]``, π = MetaNet(f_b)."""

    text_is_static = False

    def text_side(self) -> None:
        return None  # built per image in logits()

    def image_side(self, images: Tensor) -> Tensor:
        """Normalised global image features ``[B, E]``."""
        return F.normalize(self.clip.encode_image(images).features, dim=-1)

    def logits(self, image: Tensor, text: None) -> Tensor:
        pl = self.prompt_learner
        shift = pl.meta_net(image)  # [B, Dt]: one shift for every context token
        ctx = pl.text.ctx.unsqueeze(0) + shift.unsqueeze(1).to(pl.text.ctx.dtype)  # [B, n_ctx, Dt]
        txt = F.normalize(self.encode_per_image_prompts(pl.text, ctx), dim=-1)  # [B, C, E], B*C prompts batched
        return self.scale * torch.einsum("be,bce->bc", image, txt.to(image.dtype))


@TRAINER_REGISTRY.register()
class CoCoOp(PromptTrainer):
    config_class = CoCoOpConfig

    def compose(self, clip, c: CoCoOpConfig) -> CoCoOpModel:
        return CoCoOpModel(clip, CoCoOpPromptLearner(clip, self.classnames, c, self.param_dtype))
