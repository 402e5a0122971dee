"""PLOT++: PLOT on ViT with M visual prompt sets, trained in two stages (``plot-pp/``, ot_methods.md §3).

Config ``TRAINER.PLOTPP``:

- ``N 4`` text prompt sets of ``N_CTX 4`` learnable tokens. ``CTX_INIT``: one template for every set, or a
  ``"|"``-separated list of N templates, one per set (default: the reference's Caltech101 list; its other
  per-dataset lists go in a dataset yaml or on the command line). The first ``N_CTX`` tokens of each template are
  learnable, longer templates keep their remaining words as frozen tokens (as the reference). ``""`` = random.
  With one template every set has its layout but only set 0 takes its words, the others start random: identically
  initialised sets get identical gradients and would stay copies of each other.
- ``M 4`` visual prompt sets of ``N_CTX_V 2`` tokens (input layer only), appended after CLS + patches; each image is
  encoded M times (rows ``b*M + m``) → M CLS features z_m.
- OT between the M views and the N prompts of each class (prompt level only, shared head): ``EPS 0.1``,
  ``MAX_ITER 100``, ``STOP "reference"``, ``DOMAIN "kernel"``, ``GRAD "detach"``; logit = scale·<T*, S>.
- ``TRADE_OFF``: add scale·s(normalised mean of z_m, normalised mean text feature), in training and test alike
  (the reference evaluates with ``TRADE_OFF False``, as the joint yaml sets).
- ``MODEL_UPD "vision"`` (stage 1): only the visual prompts are optimised, the text prompts stay at their init
  (their features are cached while unchanged); ``"joint"`` (stage 2): both. ``MODEL.INIT_WEIGHTS`` = a stage-1
  checkpoint file (``<out>/prompt_learner/model.pth.tar-E``): name+shape matches are copied into the learner.

One module, ``prompt_learner`` (``text.<k>.ctx`` and ``visual_ctx``), is registered: checkpoints hold only these.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from promptot.config import check_choice, check_ot_options, register_trainer_config, resolve
from promptot.errors import ConfigError
from promptot.engine import TRAINER_REGISTRY, load_pretrained_weights
from promptot.ot import HierarchicalOTHead, OTHeadConfig
from promptot.heads import pooled_prompt_logits as global_logit
from promptot.prompts import TextPrompts
from promptot.trainer import PRECISIONS, PromptTrainer


@register_trainer_config("PLOTPP")
@dataclass
class PLOTPPConfig:
    N: int = 4
    M: int = 4
    N_CTX: int = 4
    N_CTX_V: int = 2
    CTX_INIT: str = "a photo of a|this is a photo|this is picture of|one picture of a"
    PREC: str = "fp16"
    EPS: float = 0.1
    MAX_ITER: int = 100
    STOP: str = "reference"
    DOMAIN: str = "kernel"
    GRAD: str = "detach"
    TRADE_OFF: bool = False
    MODEL_UPD: str = "joint"  # joint | vision

    def __post_init__(self) -> None:
        check_choice("TRAINER.PLOTPP.PREC", self.PREC, PRECISIONS)
        check_ot_options("PLOTPP", self.STOP, self.DOMAIN, self.GRAD)
        check_choice("TRAINER.PLOTPP.MODEL_UPD", self.MODEL_UPD, ("joint", "vision"))
        if min(self.N, self.M, self.N_CTX_V) < 1:
            raise ConfigError("TRAINER.PLOTPP.N, M and N_CTX_V must be >= 1")
        n_init = len(self.inits())
        if n_init not in (1, self.N):
            raise ConfigError(f"TRAINER.PLOTPP.CTX_INIT gives {n_init} '|'-separated templates; give 1 or N={self.N}")

    def inits(self) -> List[str]:
        """One init string per text set (``[""]*N`` for random init)."""
        parts = [p.strip() for p in self.CTX_INIT.split("|")]
        return parts * self.N if len(parts) == 1 else parts


class PLOTPPPromptLearner(nn.Module):
    """``text[k]``: a one-set :class:`TextPrompts` per prompt set (own template); ``visual_ctx [M, N_CTX_V, Dv]``."""

    def __init__(self, clip, classnames, cfg: PLOTPPConfig, dtype: torch.dtype) -> None:
        super().__init__()
        self.text = nn.ModuleList([
            TextPrompts(clip, classnames, n_ctx=cfg.N_CTX, ctx_init=init, init_mode="first", dtype=dtype)
            for init in cfg.inits()])
        if "|" not in cfg.CTX_INIT:  # one template: only set 0 takes its words (identical sets never separate)
            for t in list(self.text)[1:]:
                nn.init.normal_(t.ctx, std=0.02)
        vis = torch.empty(cfg.M, cfg.N_CTX_V, clip.vision_width, dtype=dtype)
        nn.init.normal_(vis, std=0.02)
        self.visual_ctx = nn.Parameter(vis)

    def text_inputs(self) -> Tuple[Tensor, Tensor]:
        """Set-major prompts: embeddings ``[N*C, L, Dt]`` and token ids ``[N*C, L]``."""
        embeds, ids = zip(*(t() for t in self.text))
        return torch.cat(embeds), torch.cat(ids)

    def text_params(self) -> List[nn.Parameter]:
        return [t.ctx for t in self.text]


class PLOTPPModel(nn.Module):
    def __init__(self, clip, prompt_learner: PLOTPPPromptLearner, cfg: PLOTPPConfig) -> None:
        super().__init__()
        if not clip.is_vit:
            raise ConfigError("PLOT++ prompts the vision transformer: use a ViT backbone (e.g. ViT-B/16)")
        self.clip, self.prompt_learner, self.cfg = clip, prompt_learner, cfg
        self.head = HierarchicalOTHead(OTHeadConfig(eps_prompt=cfg.EPS, token_level=False, compat="paper",
                                                    max_iter=cfg.MAX_ITER, stop=cfg.STOP, domain=cfg.DOMAIN,
                                                    grad=cfg.GRAD))

    def text_features(self) -> Tensor:
        """``[C, N, D]`` normalised EOT features."""
        embeds, ids = self.prompt_learner.text_inputs()
        feats = F.normalize(self.clip.encode_text(embeds, ids).features, dim=-1)
        return feats.reshape(self.cfg.N, -1, feats.shape[-1]).transpose(0, 1)

    def image_features(self, images: Tensor) -> Tensor:
        """``[B, M, D]``: one CLS feature per visual prompt set (the batch is encoded as ``B*M`` rows)."""
        b, m = images.shape[0], self.cfg.M
        prompts = self.prompt_learner.visual_ctx.repeat(b, 1, 1)  # row b*M + m -> set m
        feats = self.clip.encode_image(images.repeat_interleave(m, dim=0), prompts=prompts).features
        return feats.reshape(b, m, -1)

    def forward(self, images: Tensor, text: Optional[Tensor] = None) -> Tensor:
        """Logits ``[B, C]`` for ``images [B, 3, H, W]``; ``text`` = precomputed :meth:`text_features` ``[C, N, D]``."""
        z = self.image_features(images)
        txt = self.text_features() if text is None else text
        scale = self.clip.logit_scale.exp()
        logits = self.head(z, txt, scale)
        if self.cfg.TRADE_OFF:
            logits = logits + global_logit(scale, F.normalize(z.float(), dim=-1).mean(1), txt)
        return logits


@TRAINER_REGISTRY.register()
class PLOTPP(PromptTrainer):
    def build_model(self) -> None:
        self.plotpp = c = resolve(self.cfg, PLOTPPConfig)
        clip = self.build_clip(c.PREC)
        learner = PLOTPPPromptLearner(clip, self.classnames, c, torch.float32 if c.PREC == "amp" else clip.dtype)
        self.model = PLOTPPModel(clip, learner, c).to(self.device)
        if self.cfg.MODEL.INIT_WEIGHTS:
            load_pretrained_weights(self.model.prompt_learner, self.cfg.MODEL.INIT_WEIGHTS)
        params = None
        if c.MODEL_UPD == "vision":
            for p in learner.text_params():
                p.requires_grad_(False)
            params = [learner.visual_ctx]
        self.register_learner("prompt_learner", self.model.prompt_learner, params)
        self._text_cache: Tuple[Optional[tuple], Optional[Tensor]] = (None, None)

    def _text(self) -> Optional[Tensor]:
        """Text features when the text prompts are frozen (cached while their values are unchanged), else None."""
        params = self.model.prompt_learner.text_params()
        if any(p.requires_grad for p in params):
            return None
        key = tuple((id(p), p._version) for p in params)
        if self._text_cache[0] != key:
            with torch.no_grad():
                self._text_cache = (key, self.model.text_features())
        return self._text_cache[1]

    def training_logits(self, image: Tensor) -> Tensor:
        return self.model(image, self._text())

    def static_text(self):
        return self.model.text_features()
