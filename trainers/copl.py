"""CoPL: contextual prompt learning, prompts conditioned on local image features and weighted per image
(Goswami et al., "CoPL: Contextual Prompt Learning for Vision-Language Understanding", AAAI 2024).

**No reference code exists**, and the paper's equations and hyperparameters were not available to this project: what
follows is this toolkit's reading (docs/notation.md#copl). The paper states that prompts are learned from local
(patch) features rather than the global feature, that a lightweight network generates conditional tokens for each
patch, and that an attention-based alignment between patches and prompts weights the prompts per image instead of
equally (as CoCoOp does). Every other detail is a choice, exposed as a config option where the paper's text admits
several readings. Default reading (per image b; M context tokens v_m; P patches):

1. Local features Z ``[B, P, E]``: the last block's patch tokens after ``ln_post`` and ``proj`` (joint space),
   L2-normalised; the global feature f ``[B, E]`` is the CLS feature (``LOCAL_FEATURES projected``,
   ``LOCAL_LAYER -1``).
2. Conditional tokens Π = h(Z) ``[B, P, Dt]``: CoCoOp's Meta-Net (Linear E→E/16, ReLU, Linear →Dt) shared by all
   patches.
3. Attention of the context tokens (queries) over the patches: ``s[b,m,p] = cos(v_m, π[b,p]) / τ``,
   ``α = softmax_p(s)``; slot m's conditional token ``c[b,m] = Σ_p α[b,m,p] π[b,p]`` (``ATTN_NORM patches``,
   ``ATTN_SCORE cosine``, ``ATTN_TEMP 0.07``, ``ATTN_KEYS conditional``, ``ATTN_PROJ 0``: no parameters).
4. Conditioned context ``v_m + c[b,m]`` (``CONDITION add``) in ``[SOS][context][CLASS][.][EOT]``; the B×C prompts
   go through the frozen text tower together (bounded chunks of ``PROMPT_CHUNK`` prompts), giving t ``[B, C, E]``.
5. Logits ``exp(logit_scale) · cos(f_b, t[b,c])`` (``PATCH_SCORE 0``); loss CE. Learned: the context and h.

Alternatives: ``LOCAL_FEATURES unprojected`` (``ln_post`` tokens of width Dv, no ``proj``), ``LOCAL_LAYER k``
(tokens of block k, 0-based; ViT only; with an RN backbone the local features are the attention pool at every
position); ``ATTN_NORM context`` (softmax over the M context tokens of ``score(v_m, mean_p π)``, each slot
receiving ``M · w[b,m] · mean_p π``, so uniform weights give CoCoOp's pooled shift); ``ATTN_SCORE scaled_dot``
(``<v_m, π_p> / √d``, ``ATTN_TEMP`` unused); ``ATTN_KEYS local`` (keys are Z, values Π); ``ATTN_PROJ d`` (learnable
bias-free query and key maps to d dims); ``CONDITION append`` (the M conditional tokens are extra tokens after the
context instead of being added); ``PATCH_SCORE w`` (logits ``scale · ((1 − w) cos(f, t) + w Σ_p ᾱ_p cos(z_p, t))``
with ᾱ the attention averaged over the context slots; needs projected features and ``ATTN_NORM patches``).

Logged while training: ``attn_ent``, the attention's entropy over the normalised axis divided by its maximum
(1 = uniform weights, i.e. the prompts are not weighted per image; near 0 = collapse onto one patch/slot).
With Π = 0 the conditioned context is the context itself and CoPL is CoOp with that context
(``tests/test_copl.py``).

Config ``TRAINER.COPL``: ``N_CTX 4``, ``CTX_INIT "a photo of a"``, ``PREC fp16`` (CoCoOp's ViT-B/16 recipe) and the
keys above. Paper numbers: none could be read, so none is reproduced or claimed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from promptot.clip import BlockHook
from promptot.config import PrecisionConfig, check_choice, register_trainer_config
from promptot.engine import TRAINER_REGISTRY
from promptot.errors import ConfigError
from promptot.model import ModelOutput, PromptModel
from promptot.prompts import MetaNet, TextPrompts
from promptot.trainer import PromptTrainer

LOCAL_FEATURES = ("projected", "unprojected")
ATTN_NORMS = ("patches", "context")
ATTN_SCORES = ("cosine", "scaled_dot")
ATTN_KEYS = ("conditional", "local")
CONDITIONS = ("add", "append")


@register_trainer_config("COPL")
@dataclass
class CoPLConfig(PrecisionConfig):
    N_CTX: int = 4
    CTX_INIT: str = "a photo of a"
    LOCAL_FEATURES: str = "projected"
    LOCAL_LAYER: int = -1  # -1: the last block
    ATTN_NORM: str = "patches"
    ATTN_SCORE: str = "cosine"
    ATTN_TEMP: float = 0.07
    ATTN_KEYS: str = "conditional"
    ATTN_PROJ: int = 0  # 0: no learnable query/key maps
    CONDITION: str = "add"
    PATCH_SCORE: float = 0.0
    PROMPT_CHUNK: int = 2048  # prompts per text-encoder call

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, choices in (("LOCAL_FEATURES", LOCAL_FEATURES), ("ATTN_NORM", ATTN_NORMS),
                              ("ATTN_SCORE", ATTN_SCORES), ("ATTN_KEYS", ATTN_KEYS), ("CONDITION", CONDITIONS)):
            check_choice(self.key(name), getattr(self, name), choices)
        self.check_positive("PROMPT_CHUNK")
        self.check_positive("ATTN_PROJ", minimum=0)
        if not self.CTX_INIT.strip():
            self.check_positive("N_CTX")
        if self.ATTN_TEMP <= 0:
            raise ConfigError(f"{self.key('ATTN_TEMP')} divides the cosine scores and must be > 0, "
                              f"got {self.ATTN_TEMP}")
        if not 0.0 <= self.PATCH_SCORE <= 1.0:
            raise ConfigError(f"{self.key('PATCH_SCORE')} mixes the patch-level score into the logits and must be in "
                              f"[0, 1], got {self.PATCH_SCORE}")
        if self.PATCH_SCORE > 0 and (self.LOCAL_FEATURES != "projected" or self.ATTN_NORM != "patches"):
            raise ConfigError(f"{self.key('PATCH_SCORE')} > 0 scores patches against class features, so it needs "
                              f"LOCAL_FEATURES projected (joint space) and ATTN_NORM patches (weights over patches); "
                              f"got {self.LOCAL_FEATURES} and {self.ATTN_NORM}")


def normalised_entropy(weights: Tensor) -> Tensor:
    """Mean entropy of distributions over the last axis of ``weights [..., n]`` divided by ``log n`` (1 = uniform);
    1 when n = 1."""
    n = weights.shape[-1]
    if n == 1:
        return weights.new_ones(())
    w = weights.float()
    return (-(w * torch.log(w.clamp_min(1e-12))).sum(-1) / math.log(n)).mean()


def prompt_attention(queries: Tensor, keys: Tensor, values: Tensor, norm: str = "patches", score: str = "cosine",
                     temperature: float = 0.07) -> Tuple[Tensor, Tensor]:
    """CoPL's alignment of context tokens with patches.

    Args:
        queries: ``[M, d]`` (the context tokens, possibly mapped).
        keys: ``[B, P, d]``; values: ``[B, P, Dt]`` (the conditional tokens).
        norm: ``patches`` — weights ``[B, M, P]`` normalised over P, output ``c[b,m] = Σ_p α[b,m,p] v[b,p]``;
            ``context`` — weights ``[B, M]`` normalised over M against the mean key, output ``M · w[b,m] · mean_p v``.
        score: ``cosine`` (divided by ``temperature``) or ``scaled_dot`` (divided by √d).

    Returns ``(weights, conditional tokens [B, M, Dt])``; the scores and softmax run in fp32.
    """
    q, k = queries.float(), keys.float()
    if norm == "context":
        k = k.mean(1, keepdim=True)  # [B, 1, d]: one pooled key
    if score == "cosine":
        s = torch.einsum("md,bpd->bmp", F.normalize(q, dim=-1), F.normalize(k, dim=-1)) / temperature
    else:
        s = torch.einsum("md,bpd->bmp", q, k) / math.sqrt(q.shape[-1])
    if norm == "patches":
        weights = s.softmax(-1)  # [B, M, P]
        return weights, torch.einsum("bmp,bpd->bmd", weights.to(values.dtype), values)
    weights = s[..., 0].softmax(-1)  # [B, M]
    pooled = values.mean(1)  # [B, Dt]
    m = queries.shape[0]
    return weights, m * weights.to(values.dtype).unsqueeze(-1) * pooled.unsqueeze(1)


class _TapBlock(BlockHook):
    """Keeps the patch tokens ``[B, P, Dv]`` output by one ViT block (CoPL's intermediate-layer local features)."""

    def __init__(self, layer: int) -> None:
        self.layer = layer

    def after_block(self, i: int, x: Tensor, state) -> Tensor:
        if i == self.layer:
            state.aux["copl_local"] = x[:, 1:state.n_fixed]
        return x


class CoPLPromptLearner(nn.Module):
    """Context ``text.ctx`` ``[M, Dt]``, Meta-Net ``meta_net.*`` and, with ``ATTN_PROJ``, ``query.weight`` /
    ``key.weight``: the learned state."""

    def __init__(self, clip, classnames, c: CoPLConfig, dtype: torch.dtype) -> None:
        super().__init__()
        init = c.CTX_INIT.replace("_", " ").strip()
        n_ctx = len(init.split(" ")) if init else c.N_CTX  # CoOp-style init: one context token per init word
        self.text = TextPrompts(clip, classnames, n_ctx=c.N_CTX, ctx_init=c.CTX_INIT, init_mode="coop", dtype=dtype,
                                extra_slots=n_ctx if c.CONDITION == "append" else 0)
        local_dim = clip.embed_dim if c.LOCAL_FEATURES == "projected" else clip.vision_width
        width = clip.text_width
        self.meta_net = MetaNet(local_dim, width, dtype=dtype)
        key_dim = width if c.ATTN_KEYS == "conditional" else local_dim
        self.query: Optional[nn.Linear] = None
        self.key: Optional[nn.Linear] = None
        if c.ATTN_PROJ:
            self.query = nn.Linear(width, c.ATTN_PROJ, bias=False).to(dtype)
            self.key = nn.Linear(key_dim, c.ATTN_PROJ, bias=False).to(dtype)
        elif key_dim != width:
            raise ConfigError(f"{c.key('ATTN_KEYS')} local compares the context tokens (width {width}) with the local "
                              f"features (width {key_dim}); use ATTN_KEYS conditional, LOCAL_FEATURES projected with a "
                              f"joint size equal to the text width, or ATTN_PROJ > 0")


class CoPLModel(PromptModel):
    """Image b is scored against its own C prompts, whose context is conditioned on b's patches (module docstring)."""

    text_is_static = False

    def __init__(self, clip, prompt_learner: CoPLPromptLearner, c: CoPLConfig) -> None:
        super().__init__(clip, prompt_learner)
        if (c.LOCAL_FEATURES == "unprojected" or c.LOCAL_LAYER != -1) and not clip.is_vit:
            raise ConfigError(f"{c.key('LOCAL_FEATURES')} unprojected and {c.key('LOCAL_LAYER')} != -1 read ViT "
                              "tokens; with an RN backbone use LOCAL_FEATURES projected and LOCAL_LAYER -1 (the "
                              "attention pool at every position)")
        if c.LOCAL_LAYER != -1 and not 0 <= c.LOCAL_LAYER < clip.vision_layers:
            raise ConfigError(f"{c.key('LOCAL_LAYER')} must be -1 (last block) or a block index in "
                              f"0..{clip.vision_layers - 1}, got {c.LOCAL_LAYER}")
        self.cfg = c

    def text_side(self) -> None:
        return None  # built per image in logits()

    def image_side(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """``(global [B, E], local [B, P, E or Dv])``, both L2-normalised."""
        c = self.cfg
        if c.LOCAL_LAYER == -1 and c.LOCAL_FEATURES == "projected":
            out = self.clip.encode_image(images, return_tokens=True)
            local = out.patch_tokens
        else:
            layer = self.clip.vision_layers - 1 if c.LOCAL_LAYER == -1 else c.LOCAL_LAYER
            out = self.clip.encode_image(images, hooks=_TapBlock(layer))
            local = self.clip.vision_token_features(out.aux["copl_local"], project=c.LOCAL_FEATURES == "projected")
        return F.normalize(out.features, dim=-1), F.normalize(local, dim=-1)

    def logits(self, image: Tuple[Tensor, Tensor], text: None) -> ModelOutput:
        c, pl = self.cfg, self.prompt_learner
        glob, local = image
        cond = pl.meta_net(local)  # Π [B, P, Dt]
        ctx = pl.text.ctx  # [M, Dt]
        keys = cond if c.ATTN_KEYS == "conditional" else local
        queries = ctx
        if pl.query is not None:
            queries, keys = pl.query(ctx.to(pl.query.weight.dtype)), pl.key(keys.to(pl.key.weight.dtype))
        weights, tokens = prompt_attention(queries, keys, cond, c.ATTN_NORM, c.ATTN_SCORE, c.ATTN_TEMP)
        tokens = tokens.to(ctx.dtype)
        ctx_b = ctx.unsqueeze(0) + tokens if c.CONDITION == "add" else \
            torch.cat([ctx.unsqueeze(0).expand(tokens.shape[0], -1, -1), tokens], dim=1)
        txt = F.normalize(self.encode_per_image_prompts(pl.text, ctx_b, c.PROMPT_CHUNK), dim=-1)  # [B, C, E]
        txt = txt.to(glob.dtype)
        score = torch.einsum("be,bce->bc", glob, txt)
        if c.PATCH_SCORE > 0:
            patch_w = weights.mean(1).to(glob.dtype)  # ᾱ [B, P]: attention averaged over the context slots
            patch = torch.einsum("bp,bpe,bce->bc", patch_w, local.to(glob.dtype), txt)
            score = (1 - c.PATCH_SCORE) * score + c.PATCH_SCORE * patch
        return ModelOutput(self.scale * score, diagnostics={"attn_ent": normalised_entropy(weights.detach())},
                           aux={"attention": weights})


@TRAINER_REGISTRY.register()
class CoPL(PromptTrainer):
    config_class = CoPLConfig

    def compose(self, clip, c: CoPLConfig) -> CoPLModel:
        return CoPLModel(clip, CoPLPromptLearner(clip, self.classnames, c, self.param_dtype), c)
