"""PLOT++: PLOT on ViT with M visual prompt sets, trained in two stages (``plot-pp/``, docs/notation.md#plot).

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
- ``TRADE_OFF``: add scale·s(mean of z_m, mean text feature), both means of unnormalised features normalised
  afterwards as in the reference code, in training and test alike
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
from torch import Tensor

from promptot.config import SinkhornConfig, check_choice, register_trainer_config
from promptot.engine import TRAINER_REGISTRY, load_pretrained_weights
from promptot.errors import ConfigError
from promptot.heads import OTPromptModel, pooled_prompt_logits as global_logit
from promptot.model import ModelOutput
from promptot.prompts import TextInputs, TextPrompts, VisionInputs
from promptot.trainer import PromptTrainer


@register_trainer_config("PLOTPP")
@dataclass
class PLOTPPConfig(SinkhornConfig):
    N: int = 4
    M: int = 4
    N_CTX: int = 4
    N_CTX_V: int = 2
    CTX_INIT: str = "a photo of a|this is a photo|this is picture of|one picture of a"
    EPS: float = 0.1
    STOP: str = "reference"
    TRADE_OFF: bool = False
    MODEL_UPD: str = "joint"  # joint | vision

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.key("MODEL_UPD"), self.MODEL_UPD, ("joint", "vision"))
        self.check_positive("N", "M", "N_CTX_V")
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

    def text_inputs(self) -> TextInputs:
        """Set-major prompts ``[N*C, L, Dt]`` / token ids ``[N*C, L]``, built lazily (a chunked text pass builds one
        chunk of prompts at a time)."""
        return TextInputs.stack([t.text_inputs() for t in self.text])

    def vision_inputs(self) -> VisionInputs:
        return VisionInputs(self.visual_ctx, n_views=self.visual_ctx.shape[0])

    def text_params(self) -> List[nn.Parameter]:
        return [t.ctx for t in self.text]


class PLOTPPModel(OTPromptModel):
    def __init__(self, clip, prompt_learner: PLOTPPPromptLearner, cfg: PLOTPPConfig) -> None:
        super().__init__(clip, prompt_learner, cfg,
                         cfg.ot_head_config(eps_prompt=cfg.EPS, token_level=False, compat="paper"), needs_vit="PLOT++")
        self._text_cache: Tuple[Optional[tuple], Optional[Tensor]] = (None, None)

    def _text_features(self) -> Tensor:
        # raw features: the head normalises them, and the pooled logit averages them unnormalised (reference)
        return self.per_class(self.encode_text_prompts().features, self.cfg.N)

    def text_side(self) -> Tensor:
        """``[C, N, D]`` EOT features (not normalised); while the text prompts are frozen (stage 1) they are computed
        once and reused until their values change."""
        params = self.prompt_learner.text_params()
        if any(p.requires_grad for p in params):
            return self._text_features()
        key = tuple((id(p), p._version) for p in params)
        if self._text_cache[0] != key:
            with torch.no_grad():
                self._text_cache = (key, self._text_features())
        return self._text_cache[1]

    def image_side(self, images: Tensor) -> Tensor:
        """``[B, M, D]``: one CLS feature per visual prompt set (the batch is encoded as ``B*M`` rows)."""
        feats = self.encode_images(images).features
        return feats.reshape(images.shape[0], self.cfg.M, -1)

    def logits(self, image: Tensor, text: Tensor) -> ModelOutput:
        out = self.ot(image, text)
        if self.cfg.TRADE_OFF:
            out.logits = out.logits + global_logit(self.scale, image.float().mean(1), text)  # raw mean of z_m
        return out


@TRAINER_REGISTRY.register()
class PLOTPP(PromptTrainer):
    config_class = PLOTPPConfig

    def compose(self, clip, c: PLOTPPConfig) -> PLOTPPModel:
        return PLOTPPModel(clip, PLOTPPPromptLearner(clip, self.classnames, c, self.param_dtype), c)

    def register_learners(self, c: PLOTPPConfig) -> None:
        """Stage 2 starts from a stage-1 checkpoint (``MODEL.INIT_WEIGHTS``); stage 1 learns the visual prompts only."""
        learner = self.model.prompt_learner
        if self.cfg.MODEL.INIT_WEIGHTS:
            load_pretrained_weights(learner, self.cfg.MODEL.INIT_WEIGHTS)
        params = None
        if c.MODEL_UPD == "vision":
            for p in learner.text_params():
                p.requires_grad_(False)
            params = [learner.visual_ctx]
        self.register_learner("prompt_learner", learner, params)
