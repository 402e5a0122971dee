"""Classification heads shared by trainers: cosine logits, PLOT's pooled global logit, and the OT-scored prompt
model (the OT numerics live in :mod:`promptot.ot`)."""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError
from .model import ModelOutput, PromptModel
from .ot import HierarchicalOTHead, OTHeadConfig


def cosine_logits(scale: Tensor, img: Tensor, txt: Tensor) -> Tensor:
    """CLIP logits ``scale · s(img [B, D], txt [C, D])`` -> ``[B, C]`` (both sides L2-normalised)."""
    return scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()


def pooled_prompt_logits(scale: Tensor, img: Tensor, txt: Tensor) -> Tensor:
    """Global logit of PLOT/PLOT++: ``scale · s(img [B, D], normalised mean over n of txt [C, N, D])`` -> ``[B, C]``
    (fp32)."""
    pooled = F.normalize(F.normalize(txt.float(), dim=-1).mean(1), dim=-1)
    return scale.float() * F.normalize(img.float(), dim=-1) @ pooled.t()


class OTPromptModel(PromptModel):
    """A prompt model whose logits come from the shared :class:`~promptot.ot.HierarchicalOTHead` (PLOT, PLOT++,
    ALIGN). ``needs_vit``: the method's name when it prompts the vision transformer (an RN backbone is refused)."""

    def __init__(self, clip, prompt_learner, cfg: Any, head: OTHeadConfig, needs_vit: str = "") -> None:
        super().__init__(clip, prompt_learner)
        if needs_vit and not clip.is_vit:
            raise ConfigError(f"{needs_vit} prompts the vision transformer: use a ViT backbone (e.g. ViT-B/16)")
        self.cfg = cfg
        self.head = HierarchicalOTHead(head)

    def ot(self, img_global: Tensor, txt_global: Tensor, **tokens: Any) -> ModelOutput:
        """OT logits; in training mode the mean normalised entropy of the prompt-level plans is logged as
        ``plan_ent`` (1 = uniform plans: the OT has no effect)."""
        if not self.training:
            return ModelOutput(self.head(img_global, txt_global, self.scale, **tokens))
        logits, diag = self.head(img_global, txt_global, self.scale, log=True, **tokens)
        return ModelOutput(logits, diagnostics={"plan_ent": diag["plan_entropy"]})
