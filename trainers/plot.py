"""PLOT: N prompt sets matched to local image features by entropic OT (Chen et al., ICLR 2023).

Config ``TRAINER.PLOT`` (reference defaults, ot_methods.md §2): ``N 4`` prompt sets of ``N_CTX 16`` generic
random-init context tokens (``CTX_INIT ""``; a word init initialises set 0 only — identical sets would get
identical gradients and never separate; the reference's init path is broken for N > 1), ``PREC fp16``, OT numerics
``EPS 0.1``, ``MAX_ITER 100``, ``STOP "reference"`` (mean |Δr| < 1e-2 pooled over the whole batch: the rule behind
the paper tables; it makes an image's logits depend slightly on its batch — ``"marginal"`` removes that),
``DOMAIN "kernel"``, ``GRAD "detach"`` (plan without gradient, as the reference), ``GLOBAL_LOGIT False`` (the
reference adds the global logit on ImageNet only: set it in the ImageNet yaml), ``LOCAL_FEATURES "auto"``
(RN: the attention pool evaluated at every spatial position, M = 7x7 = 49 at 224 px; ViT: the patch tokens, which
the reference does not support).

Per image b and class c: S = s(f_m, g_{c,n}) ∈ R^{M×N}, T* = Sinkhorn_ε(1 − S; 1/M, 1/N), logit = scale·<T*, S>
(+ scale·s(global image feature, normalised mean of the N prompt features) with ``GLOBAL_LOGIT``). Loss: CE.
The OT itself is the shared :class:`HierarchicalOTHead` (token level off; fp32 whatever ``PREC``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from promptot.config import check_choice, check_ot_options, register_trainer_config, resolve
from promptot.errors import ConfigError
from promptot.engine import TRAINER_REGISTRY
from promptot.ot import HierarchicalOTHead, OTHeadConfig
from promptot.heads import pooled_prompt_logits as global_logit
from promptot.prompts import TextPrompts
from promptot.trainer import PRECISIONS, PromptTrainer

LOCAL_FEATURES = ("auto", "attnpool", "patch")


@register_trainer_config("PLOT")
@dataclass
class PLOTConfig:
    N: int = 4  # prompt sets
    N_CTX: int = 16
    CTX_INIT: str = ""
    PREC: str = "fp16"
    EPS: float = 0.1
    MAX_ITER: int = 100
    STOP: str = "reference"
    DOMAIN: str = "kernel"
    GRAD: str = "detach"
    GLOBAL_LOGIT: bool = False
    LOCAL_FEATURES: str = "auto"  # auto | attnpool (RN only) | patch (ViT only)

    def __post_init__(self) -> None:
        check_choice("TRAINER.PLOT.PREC", self.PREC, PRECISIONS)
        check_ot_options("PLOT", self.STOP, self.DOMAIN, self.GRAD)
        check_choice("TRAINER.PLOT.LOCAL_FEATURES", self.LOCAL_FEATURES, LOCAL_FEATURES)
        if self.N < 1:
            raise ConfigError(f"TRAINER.PLOT.N must be >= 1, got {self.N}")

    def head(self) -> OTHeadConfig:
        return OTHeadConfig(eps_prompt=self.EPS, token_level=False, compat="paper", max_iter=self.MAX_ITER,
                            stop=self.STOP, domain=self.DOMAIN, grad=self.GRAD)


class PLOTModel(nn.Module):
    """Frozen prompted CLIP + ``N`` learnable prompt sets + OT head; ``forward(images) -> logits [B, C]``."""

    def __init__(self, clip, prompt_learner: TextPrompts, cfg: PLOTConfig) -> None:
        super().__init__()
        self.clip = clip
        self.prompt_learner = prompt_learner
        self.cfg = cfg
        self.head = HierarchicalOTHead(cfg.head())
        if cfg.LOCAL_FEATURES == "attnpool" and clip.is_vit:
            raise ConfigError("TRAINER.PLOT.LOCAL_FEATURES attnpool needs an RN backbone (use auto or patch for ViT)")
        if cfg.LOCAL_FEATURES == "patch" and not clip.is_vit:
            raise ConfigError("TRAINER.PLOT.LOCAL_FEATURES patch needs a ViT backbone (use auto or attnpool for RN)")

    def text_features(self) -> Tensor:
        """``[C, N, D]`` EOT features (normalised) of the ``N*C`` set-major prompts."""
        pl = self.prompt_learner
        embeds, ids = pl()
        feats = self.clip.encode_text(embeds, ids).features  # [N*C, D]
        return F.normalize(feats, dim=-1).reshape(pl.n_sets, pl.n_cls, -1).transpose(0, 1)

    def forward(self, images: Tensor, text: Optional[Tensor] = None) -> Tensor:
        """Logits ``[B, C]`` for ``images [B, 3, H, W]``; ``text`` = cached :meth:`text_features` ``[C, N, D]``."""
        out = self.clip.encode_image(images, return_tokens=True)
        local = out.patch_tokens  # [B, M, D]: RN attention-pool positions / ViT patch tokens
        txt = self.text_features() if text is None else text
        scale = self.clip.logit_scale.exp()
        logits = self.head(local, txt, scale)  # [B, C]
        if self.cfg.GLOBAL_LOGIT:
            logits = logits + global_logit(scale, out.features, txt)
        return logits


@TRAINER_REGISTRY.register()
class PLOT(PromptTrainer):
    def build_model(self) -> None:
        self.plot = c = resolve(self.cfg, PLOTConfig)
        clip = self.build_clip(c.PREC)
        learner = TextPrompts(clip, self.classnames, n_ctx=c.N_CTX, ctx_init=c.CTX_INIT, init_mode="coop",
                              n_sets=c.N, init_sets="first", dtype=torch.float32 if c.PREC == "amp" else clip.dtype)
        self.model = PLOTModel(clip, learner, c).to(self.device)
        self.register_learner("prompt_learner", self.model.prompt_learner)

    def static_text(self):
        return self.model.text_features()
