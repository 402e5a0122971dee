"""PLOT: N prompt sets matched to local image features by entropic OT (Chen et al., ICLR 2023).

Config ``TRAINER.PLOT`` (reference defaults, docs/notation.md#plot): ``N 4`` prompt sets of ``N_CTX 16`` generic
random-init context tokens (``CTX_INIT ""``; a word init initialises set 0 only — identical sets would get
identical gradients and never separate; the reference's init path is broken for N > 1), ``PREC fp16``, OT numerics
``EPS 0.1``, ``MAX_ITER 100``, ``STOP "reference"`` (mean |Δr| < 1e-2 pooled over the whole batch: the rule behind
the paper tables; it makes an image's logits depend slightly on its batch — ``"marginal"`` removes that),
``DOMAIN "kernel"``, ``GRAD "detach"`` (plan without gradient, as the reference), ``GLOBAL_LOGIT False`` (the
reference adds the global logit on ImageNet only: set it in the ImageNet yaml), ``LOCAL_FEATURES "auto"``
(RN: the attention pool evaluated at every spatial position, M = 7x7 = 49 at 224 px; ViT: the patch tokens, which
the reference does not support).

Per image b and class c: S = s(f_m, g_{c,n}) ∈ R^{M×N}, T* = Sinkhorn_ε(1 − S; 1/M, 1/N), logit = scale·<T*, S>
(+ scale·s(global image feature, mean of the N unnormalised prompt features) with ``GLOBAL_LOGIT``, as the
reference code computes it). Loss: CE.
The OT itself is the shared :class:`HierarchicalOTHead` (token level off; fp32 whatever ``PREC``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from torch import Tensor

from promptot.config import SinkhornConfig, check_choice, check_context, register_trainer_config
from promptot.engine import TRAINER_REGISTRY
from promptot.errors import ConfigError
from promptot.heads import OTPromptModel, pooled_prompt_logits as global_logit
from promptot.model import ModelOutput
from promptot.prompts import TextPrompts
from promptot.trainer import PromptTrainer

LOCAL_FEATURES = ("auto", "attnpool", "patch")


@register_trainer_config("PLOT")
@dataclass
class PLOTConfig(SinkhornConfig):
    N: int = 4  # prompt sets
    N_CTX: int = 16
    CTX_INIT: str = ""
    EPS: float = 0.1
    STOP: str = "reference"
    GLOBAL_LOGIT: bool = False
    LOCAL_FEATURES: str = "auto"  # auto | attnpool (RN only) | patch (ViT only)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.key("LOCAL_FEATURES"), self.LOCAL_FEATURES, LOCAL_FEATURES)
        self.check_positive("N")
        check_context(self)


class PLOTModel(OTPromptModel):
    """Frozen prompted CLIP + ``N`` learnable prompt sets + OT head; ``forward(images) -> logits [B, C]``."""

    def __init__(self, clip, prompt_learner: TextPrompts, cfg: PLOTConfig) -> None:
        super().__init__(clip, prompt_learner, cfg,
                         cfg.ot_head_config(eps_prompt=cfg.EPS, token_level=False, compat="paper"))
        if cfg.LOCAL_FEATURES == "attnpool" and clip.is_vit:
            raise ConfigError("TRAINER.PLOT.LOCAL_FEATURES attnpool needs an RN backbone (use auto or patch for ViT)")
        if cfg.LOCAL_FEATURES == "patch" and not clip.is_vit:
            raise ConfigError("TRAINER.PLOT.LOCAL_FEATURES patch needs a ViT backbone (use auto or attnpool for RN)")

    def text_side(self) -> Tensor:
        """``[C, N, D]`` EOT features (not normalised) of the ``N`` prompt sets."""
        # raw features: the head normalises them, and the global logit averages them unnormalised (reference)
        return self.per_class(self.encode_text_prompts().features, self.prompt_learner.n_sets)

    def image_side(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """``(global [B, D], local [B, M, D])``: RN attention-pool positions / ViT patch tokens."""
        out = self.clip.encode_image(images, return_tokens=True)
        return out.features, out.patch_tokens

    def logits(self, image: Tuple[Tensor, Tensor], text: Tensor) -> ModelOutput:
        glob, local = image
        out = self.ot(local, text)
        if self.cfg.GLOBAL_LOGIT:
            out.logits = out.logits + global_logit(self.scale, glob, text)
        return out


@TRAINER_REGISTRY.register()
class PLOT(PromptTrainer):
    config_class = PLOTConfig

    def compose(self, clip, c: PLOTConfig) -> PLOTModel:
        learner = TextPrompts(clip, self.classnames, n_ctx=c.N_CTX, ctx_init=c.CTX_INIT, init_mode="coop",
                              n_sets=c.N, init_sets="first", dtype=self.param_dtype)
        return PLOTModel(clip, learner, c)
