"""Class-aware visual prompts (CAVPT, the visual half of DPT: Xing et al., "Dual Modality Prompt Tuning for
Vision-Language Pre-Trained Model", IEEE TMM 2023).

Per image, the K classes the frozen zero-shot CLIP ranks highest are selected (:func:`top_classes`). In each CAVPT
layer j, with ``X`` the block's CLS + patch tokens (detached) and ``t`` the selected classes' learned text features:

* ``Q0 = W_m t`` (meta-net, ``[K, E] -> [K, Dv]``; the text prompt gets gradients through it);
* ``KV = [X ; n_kv learnable tokens]``;
* ``A = softmax((Q0 W_q)(KV W_k)ᵀ / √d)`` with ``d = attn_dim``, ``O = (A · KV) W_o`` (one head, values not
  projected);
* class-aware prompts ``P = LN_prompt(O + Q0)`` (``[K, Dv]``), appended to the block's input and dropped after it;
* auxiliary logits ``a = classifier(LN_aux(O))`` (``[K, C]``): a C-way classifier on each prompt.

The auxiliary loss (:func:`class_aware_loss`) keeps, per layer and image, only the prompt whose class is the
ground truth (when it is among the K) and applies cross-entropy against the ground truth; images whose ground truth
is outside the top K get no auxiliary loss. The classifier depends on the class set and is not used at inference, so
:attr:`ClassAwarePrompts.class_specific_keys` lets a checkpoint load into another class set without it.
"""
from __future__ import annotations

import math
from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .clip import AppendTokensHook, BlockState
from .errors import ConfigError

__all__ = ["ClassAwareLayer", "ClassAwarePrompts", "ClassAwarePromptHook", "top_classes", "class_aware_loss",
           "AUX_KEY"]

#: ``VisionOutput.aux`` key of the per-layer auxiliary logits (a list of ``[B, K, C]``, one entry per CAVPT layer)
AUX_KEY = "class_aware_logits"


class ClassAwareLayer(nn.Module):
    """One CAVPT generator (for one transformer block).

    Parameters (checkpoint keys): ``meta_net.{weight,bias}`` ``[Dv, E]``/``[Dv]``, ``q_proj.weight`` and
    ``k_proj.weight`` ``[d, Dv]``, ``out_proj.weight`` ``[Dv, Dv]``, ``kv_tokens`` ``[n_kv, Dv]``,
    ``norm_aux.*`` / ``norm_prompt.*`` ``[Dv]``, ``classifier.weight`` ``[C, Dv]``: about
    ``E·Dv + Dv + 2·d·Dv + Dv² + n_kv·Dv + 4·Dv + C·Dv`` numbers (1,043,712 + 768·C at ViT-B/32 widths).
    """

    def __init__(self, text_dim: int, width: int, n_classes: int, n_kv: int = 10, attn_dim: int = 32,
                 std: float = 0.02, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.attn_dim = attn_dim
        self.meta_net = nn.Linear(text_dim, width)
        self.q_proj = nn.Linear(width, attn_dim, bias=False)
        self.k_proj = nn.Linear(width, attn_dim, bias=False)
        self.out_proj = nn.Linear(width, width, bias=False)
        self.kv_tokens = nn.Parameter(torch.empty(n_kv, width).normal_(std=std))
        self.norm_aux = nn.LayerNorm(width)
        self.norm_prompt = nn.LayerNorm(width)
        self.classifier = nn.Linear(width, n_classes, bias=False)
        self.to(dtype)

    def forward(self, tokens: Tensor, text: Tensor) -> Tuple[Tensor, Tensor]:
        """``tokens [B, T, Dv]`` (the block's CLS + patch tokens), ``text [B, K, E]`` (selected classes' learned text
        features) -> ``(prompts [B, K, Dv], aux logits [B, K, C])``."""
        dtype = self.out_proj.weight.dtype
        q0 = self.meta_net(text.to(dtype))
        # The image tokens only steer the prompts: no gradient flows back into the blocks below through them.
        kv = torch.cat([tokens.detach().to(dtype), self.kv_tokens.unsqueeze(0).expand(tokens.shape[0], -1, -1)], 1)
        scores = self.q_proj(q0) @ self.k_proj(kv).transpose(1, 2) / math.sqrt(self.attn_dim)
        out = self.out_proj(scores.softmax(dim=-1) @ kv)
        return self.norm_prompt(out + q0), self.classifier(self.norm_aux(out))


class ClassAwarePrompts(nn.Module):
    """CAVPT generators for ``n_layers`` consecutive blocks (``layers.{j}``: a :class:`ClassAwareLayer`).

    ``class_specific_keys``: key prefixes of the auxiliary classifiers (``[C, Dv]``), dropped when a checkpoint is
    loaded into another class set (base-to-new, cross-dataset): they are only used by the training loss.
    """

    def __init__(self, n_layers: int, text_dim: int, width: int, n_classes: int, n_kv: int = 10,
                 attn_dim: int = 32, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if n_layers < 1 or n_kv < 0 or attn_dim < 1:
            raise ConfigError(f"CAVPT needs >= 1 layer, >= 0 key/value tokens and an attention width >= 1; got "
                              f"{n_layers} layers, {n_kv} tokens, width {attn_dim}")
        self.layers = nn.ModuleList([ClassAwareLayer(text_dim, width, n_classes, n_kv, attn_dim, dtype=dtype)
                                     for _ in range(n_layers)])
        self.class_specific_keys = tuple(f"layers.{j}.classifier." for j in range(n_layers))


class ClassAwarePromptHook(AppendTokensHook):
    """Appends the class-aware prompts of :class:`ClassAwarePrompts` layer j to the input of block ``first + j`` and
    drops them after it; built per forward pass with the selected classes' text features ``text [B, K, E]``.

    The prompts are computed from the block's CLS + patch tokens (``x[:, :state.n_fixed]``; tokens other hooks appended
    are not attended to). Each layer's auxiliary logits ``[B, K, C]`` are appended to ``state.aux[AUX_KEY]``.
    """

    def __init__(self, generator: ClassAwarePrompts, first: int, text: Tensor) -> None:
        super().__init__({})
        self.generator, self.first, self.text = generator, first, text

    def before_block(self, i: int, x: Tensor, state: BlockState) -> Tensor:
        j = i - self.first
        if 0 <= j < len(self.generator.layers):
            prompts, logits = self.generator.layers[j](x[:, : state.n_fixed], self.text)
            state.aux.setdefault(AUX_KEY, []).append(logits)
            self.tokens[i] = prompts
        return super().before_block(i, x, state)


def top_classes(image_features: Tensor, class_features: Tensor, k: int) -> Tensor:
    """Indices ``[B, min(k, C)]`` of the ``k`` classes whose ``class_features [C, E]`` score highest against
    ``image_features [B, E]`` (best first; k > C is clamped to C)."""
    k = min(int(k), class_features.shape[0])
    scores = image_features.float() @ class_features.float().t()
    return scores.topk(k, dim=-1).indices


def class_aware_loss(layer_logits: List[Tensor], selected: Tensor, labels: Tensor) -> Tuple[Tensor, int]:
    """The auxiliary loss: mean cross-entropy, against the ground truth, of the prompts whose selected class is the
    ground truth, over every CAVPT layer and image; ``(loss, number of such prompts)``.

    ``layer_logits``: per layer ``[B, K, C]``; ``selected [B, K]`` the top-K class indices; ``labels [B]``. With no
    such prompt (no image's ground truth among its top K) the loss is an exact zero, as the reference code skips the
    term then; it still depends on the logits, so every parameter keeps a (zero) gradient.
    """
    hit = selected == labels[:, None]  # [B, K]: at most one True per row (the K indices are distinct)
    logits = torch.stack(layer_logits, dim=1).float()  # [B, L, K, C]
    mask = hit.unsqueeze(1).expand(-1, logits.shape[1], -1)  # [B, L, K]
    rows = logits[mask]  # [n, C], image-major like the reference
    if rows.shape[0] == 0:
        return logits.sum() * 0.0, 0
    return F.cross_entropy(rows, labels[:, None, None].expand_as(mask)[mask]), int(rows.shape[0])
