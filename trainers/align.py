"""ALIGN: hierarchical (token + prompt level) OT between multi-prompt views of an image and of each class
(Wang et al., NeurIPS 2023; reference trainer ``MMP``; docs/notation.md#hierarchical-ot, #align-reference).

Prompts (MaPLe-style, depth J = ``PROMPT_DEPTH``): N text sets of ``N_CTX`` tokens, set 0 initialised from the first
``N_CTX`` words of ``CTX_INIT`` with the remaining words kept frozen in every set, sets 1..N-1 random; deep text
prompts replace positions 1..N_CTX in layers 1..J-1. M visual sets appended after CLS + patches, deep visual prompts
replace them in layers 1..J-1; with ``COUPLED`` they are linear images of the text sets (M must equal N), otherwise
independent parameters (any M). Each image is encoded M times (row ``b*M + m`` uses visual set m).

Features: z_m = CLS of view m ``[B, M, D]``; F_m = its patch + visual-prompt outputs ``[B, M, P, D]`` (no CLS);
h_{c,n} = EOT ``[C, N, D]``; G_{c,n} = prompt-token + class-name outputs + mask (paper token sets,
``TextPrompts.token_mask``), encoded class chunk by class chunk (``MODEL.TEXT_CHUNK`` prompts) in length order and
handed to the head as pieces ``[C_i, N, L_i, D]`` (``TokenPieces``). Logits from the shared :class:`HierarchicalOTHead`; loss CE. At test time the text side
is computed once per evaluation.

Config ``TRAINER.ALIGN`` (reference values): N_CTX 2, CTX_INIT "a photo of a", PREC fp16, PROMPT_DEPTH 9,
TEXT_PROMPT_NUMBER 4 (N), VISION_PROMPT_NUMBER 4 (M), COUPLED True, BETA 1.0, EPS_TOKEN 0.1, EPS_PROMPT 0.1,
MAX_ITER 100, STOP "marginal", DOMAIN "kernel", GRAD "detach", COMPAT "paper", CLASS_CHUNK 100, TOKEN_LEVEL True.

``COMPAT "reference"`` reproduces the discrepancies of the official code that change the numbers: D1 (σ_tok added to
the prompt cost, i.e. β = −1 in the paper's form; BETA is ignored), D2 (token term absent from the logit), D3 (both
plans without gradient, the token branch runs under no-grad) and D7 (ε 0.1, ≤ 100 iterations, the batch-pooled
|Δr| < 1e-2 stop per (image, class) at the token level and per batch at the prompt level; STOP/GRAD are ignored).
It deliberately does not reproduce: D5 (token windows cut at prompt 1's EOT, holding SOS/fixed words/'.'/EOT — an
acknowledged "todo" in the reference, and only meaningful together with D6), D6 (sets 2..N two tokens shorter without
the frozen words: here every set has the same layout, so the N prompts are exchangeable), D8 (on a NaN plan the
reference returns the kernel itself as the plan, which passes its NaN check and gives meaningless logits; here any
non-finite value raises), D9 (USECT, a dead branch that cannot run), D10 (fp16 Sinkhorn, which can return inf or
all-zero logits; per-step image reloads, full-CLIP checkpoints, uncached test text features; here OT runs in fp32).
What was checked: the head in reference mode equals a loop written like the official head on the same features
(``tests/test_ot_hierarchical.py``); the token sets and fp32 OT differ from that code, so its published numbers are
not reproduced by construction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from promptot.config import SinkhornConfig, check_choice, register_trainer_config
from promptot.engine import TRAINER_REGISTRY
from promptot.errors import ConfigError
from promptot.heads import OTPromptModel
from promptot.model import ClassText, ModelOutput
from promptot.prompts import MultiModalPrompts
from promptot.trainer import PromptTrainer

TextSide = Union[Tensor, ClassText]  # global [C,N,D], or features and token sets G_{c,n} class chunk by class chunk
ImageSide = Tuple[Tensor, Optional[Tensor]]  # global [B,M,D], tokens [B,M,P,D]


@register_trainer_config("ALIGN")
@dataclass
class ALIGNConfig(SinkhornConfig):
    N_CTX: int = 2
    CTX_INIT: str = "a photo of a"
    PROMPT_DEPTH: int = 9
    TEXT_PROMPT_NUMBER: int = 4
    VISION_PROMPT_NUMBER: int = 4
    COUPLED: bool = True
    BETA: float = 1.0
    EPS_TOKEN: float = 0.1
    EPS_PROMPT: float = 0.1
    COMPAT: str = "paper"
    CLASS_CHUNK: int = 100
    TOKEN_LEVEL: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.key("COMPAT"), self.COMPAT, ("paper", "reference"))
        self.check_positive("TEXT_PROMPT_NUMBER", "VISION_PROMPT_NUMBER", "PROMPT_DEPTH", "N_CTX", "CLASS_CHUNK")
        if self.COUPLED and self.VISION_PROMPT_NUMBER != self.TEXT_PROMPT_NUMBER:
            raise ConfigError(
                f"TRAINER.ALIGN.COUPLED True makes each visual prompt set a projection of one text set, so "
                f"VISION_PROMPT_NUMBER ({self.VISION_PROMPT_NUMBER}) must equal TEXT_PROMPT_NUMBER "
                f"({self.TEXT_PROMPT_NUMBER}); set them equal or use COUPLED False (independent visual prompts)")


class ALIGNModel(OTPromptModel):
    """Shared multi-modal prompts (N text sets, M visual sets) + the hierarchical OT head."""

    def __init__(self, clip, prompt_learner: MultiModalPrompts, cfg: ALIGNConfig) -> None:
        super().__init__(clip, prompt_learner, cfg, cfg.ot_head_config(
            eps_token=cfg.EPS_TOKEN, eps_prompt=cfg.EPS_PROMPT, beta=cfg.BETA, token_level=cfg.TOKEN_LEVEL,
            compat=cfg.COMPAT, class_chunk=cfg.CLASS_CHUNK), needs_vit="ALIGN")

    @property
    def tokens(self) -> bool:
        """Whether the token level contributes (the head skips it at BETA 0 in paper compat)."""
        c = self.cfg
        return c.TOKEN_LEVEL and (c.COMPAT == "reference" or c.BETA != 0.0)

    def text_side(self) -> TextSide:
        """``txt_global [C, N, D]`` without a token level; otherwise the features and token sets (paper masks) class
        chunk by class chunk (:class:`~promptot.model.ClassText`). In training with ``MODEL.TEXT_CHUNK`` the chunks
        are encoded lazily, each in one checkpoint with its token level (:meth:`OTPromptModel.ot_by_class`);
        otherwise at once (a cached evaluation text)."""
        if not self.tokens:
            return self.per_class(self.encode_text_prompts().features, self.prompt_learner.text.n_sets)
        lazy = torch.is_grad_enabled() and bool(getattr(self, "text_chunk", 0))
        return self.encode_text_by_class(self.prompt_learner.text.token_mask, lazy=lazy)

    def image_side(self, images: Tensor) -> ImageSide:
        """``(img_global [B, M, D], img_tokens [B, M, P, D] | None)``; P = patches + visual prompt tokens."""
        b, m = images.shape[0], self.prompt_learner.n_views
        out = self.encode_images(images, return_tokens=self.tokens)
        glob = out.features.reshape(b, m, -1)
        if not self.tokens:
            return glob, None
        toks = torch.cat([out.patch_tokens, out.prompt_tokens], dim=1)  # F_m: patch + visual-prompt outputs
        return glob, toks.reshape(b, m, toks.shape[1], -1)

    def logits(self, image: ImageSide, text: TextSide) -> ModelOutput:
        img_global, img_tokens = image
        if isinstance(text, ClassText):
            return self.ot_by_class(img_global, img_tokens, text)
        return self.ot(img_global, text)


@TRAINER_REGISTRY.register()
class ALIGN(PromptTrainer):
    config_class = ALIGNConfig

    def compose(self, clip, c: ALIGNConfig) -> ALIGNModel:
        learner = MultiModalPrompts(
            clip, self.classnames, n_ctx=c.N_CTX, ctx_init=c.CTX_INIT, text_depth=c.PROMPT_DEPTH,
            text_sets=c.TEXT_PROMPT_NUMBER, init_sets="first", coupled=c.COUPLED,
            vision_sets=c.VISION_PROMPT_NUMBER, dtype=self.param_dtype)
        return ALIGNModel(clip, learner, c)
