"""Non-OT classification heads shared by trainers (the OT head lives in :mod:`promptot.ot`)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def cosine_logits(scale: Tensor, img: Tensor, txt: Tensor) -> Tensor:
    """CLIP logits ``scale · s(img [B, D], txt [C, D])`` -> ``[B, C]`` (both sides L2-normalised)."""
    return scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()


def pooled_prompt_logits(scale: Tensor, img: Tensor, txt: Tensor) -> Tensor:
    """Global logit of PLOT/PLOT++: ``scale · s(img [B, D], normalised mean over n of txt [C, N, D])`` -> ``[B, C]`` fp32."""
    pooled = F.normalize(F.normalize(txt.float(), dim=-1).mean(1), dim=-1)
    return scale.float() * F.normalize(img.float(), dim=-1) @ pooled.t()
