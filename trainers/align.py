"""ALIGN: hierarchical (token + prompt level) OT between multi-prompt views of an image and of each class
(Wang et al., NeurIPS 2023; reference trainer ``MMP``; ot_methods.md §5).

Prompts (MaPLe-style, depth J = ``PROMPT_DEPTH``): N text sets of ``N_CTX`` tokens, set 0 initialised from the first
``N_CTX`` words of ``CTX_INIT`` with the remaining words kept frozen in every set, sets 1..N-1 random; deep text
prompts replace positions 1..N_CTX in layers 1..J-1. M visual sets appended after CLS + patches, deep visual prompts
replace them in layers 1..J-1; with ``COUPLED`` they are linear images of the text sets (M must equal N), otherwise
independent parameters (any M). Each image is encoded M times (row ``b*M + m`` uses visual set m).

Features: z_m = CLS of view m ``[B, M, D]``; F_m = its patch + visual-prompt outputs ``[B, M, P, D]`` (no CLS);
h_{c,n} = EOT ``[C, N, D]``; G_{c,n} = prompt-token + class-name outputs ``[C, N, L, D]`` + mask (paper token sets,
``TextPrompts.token_mask``). Logits from the shared :class:`HierarchicalOTHead`; loss CE. At test time the text side
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
the frozen words: here every set has the same layout, so the N prompts are exchangeable), D8 (the NaN "fallback"
returns a kernel and then crashes; here any NaN raises), D9 (USECT, a dead branch that cannot run), D10 (fp16
Sinkhorn, per-step image reloads, full-CLIP checkpoints, uncached test text features: cost only; OT runs in fp32).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from promptot.config import check_choice, check_ot_options, register_trainer_config, resolve
from promptot.errors import ConfigError
from promptot.engine import TRAINER_REGISTRY
from promptot.ot import HierarchicalOTHead, OTHeadConfig
from promptot.prompts import DeepPrompts, TextPrompts
from promptot.trainer import PRECISIONS, PromptTrainer

TextSide = Tuple[Tensor, Optional[Tensor], Optional[Tensor]]  # global [C,N,D], tokens [C,N,L,D], mask [C,1,L]


@register_trainer_config("ALIGN")
@dataclass
class ALIGNConfig:
    N_CTX: int = 2
    CTX_INIT: str = "a photo of a"
    PREC: str = "fp16"
    PROMPT_DEPTH: int = 9
    TEXT_PROMPT_NUMBER: int = 4
    VISION_PROMPT_NUMBER: int = 4
    COUPLED: bool = True
    BETA: float = 1.0
    EPS_TOKEN: float = 0.1
    EPS_PROMPT: float = 0.1
    MAX_ITER: int = 100
    STOP: str = "marginal"
    DOMAIN: str = "kernel"
    GRAD: str = "detach"
    COMPAT: str = "paper"
    CLASS_CHUNK: int = 100
    TOKEN_LEVEL: bool = True

    def __post_init__(self) -> None:
        check_choice("TRAINER.ALIGN.PREC", self.PREC, PRECISIONS)
        check_ot_options("ALIGN", self.STOP, self.DOMAIN, self.GRAD)
        check_choice("TRAINER.ALIGN.COMPAT", self.COMPAT, ("paper", "reference"))
        if min(self.TEXT_PROMPT_NUMBER, self.VISION_PROMPT_NUMBER, self.PROMPT_DEPTH, self.N_CTX) < 1:
            raise ConfigError("TRAINER.ALIGN: N_CTX, PROMPT_DEPTH and the prompt numbers must be >= 1")
        if self.COUPLED and self.VISION_PROMPT_NUMBER != self.TEXT_PROMPT_NUMBER:
            raise ConfigError(
                f"TRAINER.ALIGN.COUPLED True makes each visual prompt set a projection of one text set, so "
                f"VISION_PROMPT_NUMBER ({self.VISION_PROMPT_NUMBER}) must equal TEXT_PROMPT_NUMBER "
                f"({self.TEXT_PROMPT_NUMBER}); set them equal or use COUPLED False (independent visual prompts)")

    def head(self) -> OTHeadConfig:
        return OTHeadConfig(eps_token=self.EPS_TOKEN, eps_prompt=self.EPS_PROMPT, beta=self.BETA,
                            token_level=self.TOKEN_LEVEL, compat=self.COMPAT, max_iter=self.MAX_ITER,
                            stop=self.STOP, domain=self.DOMAIN, grad=self.GRAD, class_chunk=self.CLASS_CHUNK)


class ALIGNPromptLearner(nn.Module):
    """``text`` (shallow text context ``[N, n_ctx, Dt]``) + ``deep`` (deep text prompts, visual prompts/couplings)."""

    def __init__(self, clip, classnames, cfg: ALIGNConfig, dtype: torch.dtype) -> None:
        super().__init__()
        n, m = cfg.TEXT_PROMPT_NUMBER, cfg.VISION_PROMPT_NUMBER
        self.text = TextPrompts(clip, classnames, n_ctx=cfg.N_CTX, ctx_init=cfg.CTX_INIT, init_mode="first",
                                n_sets=n, init_sets="first", dtype=dtype)
        # Deep prompts and couplings stay fp32 whatever PREC (as MaPLe's compound prompts); the encoders cast them.
        self.deep = DeepPrompts(cfg.N_CTX, cfg.PROMPT_DEPTH, clip.text_width, clip.vision_width, n_sets=n,
                                n_vis_sets=m, coupled=cfg.COUPLED, dtype=torch.float32)

    def text_ctx(self) -> Tensor:
        """Shallow text context as ``[N, n_ctx, Dt]``."""
        ctx = self.text.ctx
        return ctx if self.text.n_sets > 1 else ctx.unsqueeze(0)


class ALIGNModel(nn.Module):
    def __init__(self, clip, prompt_learner: ALIGNPromptLearner, cfg: ALIGNConfig) -> None:
        super().__init__()
        if not clip.is_vit:
            raise ConfigError("ALIGN prompts the vision transformer: use a ViT backbone (e.g. ViT-B/16)")
        self.clip, self.prompt_learner, self.cfg = clip, prompt_learner, cfg
        self.head = HierarchicalOTHead(cfg.head())

    @property
    def tokens(self) -> bool:
        """Whether the token level contributes (the head skips it at BETA 0 in paper compat)."""
        c = self.cfg
        return c.TOKEN_LEVEL and (c.COMPAT == "reference" or c.BETA != 0.0)

    def text_side(self) -> TextSide:
        """``(txt_global [C, N, D], txt_tokens [C, N, L, D] | None, txt_mask [C, 1, L] | None)``."""
        pl = self.prompt_learner
        n, c = pl.text.n_sets, pl.text.n_cls
        embeds, ids = pl.text()  # [N*C, L, Dt], set-major
        deep = [t.repeat_interleave(c, dim=0) for t in pl.deep.text]  # [N, n, Dt] -> [N*C, n, Dt]
        out = self.clip.encode_text(embeds, ids, deep_prompts=deep, return_tokens=self.tokens)
        glob = out.features.reshape(n, c, -1).transpose(0, 1)
        if not self.tokens:
            return glob, None, None
        L = out.tokens.shape[1]
        toks = out.tokens.reshape(n, c, L, -1).transpose(0, 1)
        return glob, toks, pl.text.token_mask(L).unsqueeze(1)

    def image_side(self, images: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """``(img_global [B, M, D], img_tokens [B, M, P, D] | None)``; P = patches + visual prompt tokens."""
        pl = self.prompt_learner
        b, m = images.shape[0], pl.deep.n_vis_sets
        shallow, deep = pl.deep.visual(pl.text_ctx())  # [M, n, Dv], list of [M, n, Dv]
        out = self.clip.encode_image(images.repeat_interleave(m, dim=0), prompts=shallow.repeat(b, 1, 1),
                                     deep_prompts=[d.repeat(b, 1, 1) for d in deep], return_tokens=self.tokens)
        glob = out.features.reshape(b, m, -1)
        if not self.tokens:
            return glob, None
        toks = torch.cat([out.patch_tokens, out.prompt_tokens], dim=1)
        return glob, toks.reshape(b, m, toks.shape[1], -1)

    def forward(self, images: Tensor, text: Optional[TextSide] = None) -> Tensor:
        """Logits ``[B, C]`` for ``images [B, 3, H, W]``; ``text`` = a cached :meth:`text_side` (eval)."""
        txt_global, txt_tokens, txt_mask = self.text_side() if text is None else text
        img_global, img_tokens = self.image_side(images)
        return self.head(img_global, txt_global, self.clip.logit_scale.exp(), img_tokens=img_tokens,
                         txt_tokens=txt_tokens, txt_mask=txt_mask)


@TRAINER_REGISTRY.register()
class ALIGN(PromptTrainer):
    def build_model(self) -> None:
        self.align = c = resolve(self.cfg, ALIGNConfig)
        clip = self.build_clip(c.PREC)
        learner = ALIGNPromptLearner(clip, self.classnames, c, torch.float32 if c.PREC == "amp" else clip.dtype)
        self.model = ALIGNModel(clip, learner, c).to(self.device)
        self.register_learner("prompt_learner", self.model.prompt_learner)

    def static_text(self):
        return self.model.text_side()
