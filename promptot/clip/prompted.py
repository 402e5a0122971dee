"""One prompted-CLIP module for every trainer: both towers of an UNMODIFIED open_clip ``CLIP``,
re-driven block by block so that prompts can be inserted.

Text tower (CoOp / CoCoOp / MaPLe / IVLP): the caller builds prompt embeddings ``[P, L, Dt]`` (learned
context spliced into token embeddings); ``deep_prompts[k]`` replaces positions
``deep_start .. deep_start+n-1`` of the input of block ``k+1``; the feature is the EOT row after
``ln_final`` projected by ``text_projection``.

Vision tower, ViT (MaPLe / IVLP / VPT): shallow prompts are appended after the ``1 + O`` CLS/patch
tokens (after the positional embedding, before ``ln_pre``); ``deep_prompts[k]`` replaces the last
``n`` tokens of the input of block ``k+1``. Vision tower, ModifiedResNet (PLOT): optionally returns the
attention-pool output at every spatial position as local features.

``LayerHooks`` are called around every transformer block of both towers (after any deep-prompt
replacement), so methods such as DPT can append tokens before a block and drop them after it.
With no prompts the outputs equal ``clip.encode_text`` / ``clip.encode_image``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Sequence, Union

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["TextOutput", "VisionOutput", "LayerHooks", "PromptedCLIP"]

DeepPrompts = Optional[Sequence[Optional[Tensor]]]


@dataclass
class TextOutput:
    """Text-tower outputs.

    features: ``[P, E]`` EOT feature after ``ln_final`` and ``text_projection`` (not normalised).
    tokens: ``[P, L', E]`` every position after ``ln_final`` and projection (``return_tokens=True``).
        With truncation ``L' <= L``. Positions after ``eot_index`` are padding that still carries values:
        callers mask them (e.g. ``arange(L') <= eot_index[:, None]``).
    eot_index: ``[P]`` position of the EOT token in each prompt.
    """

    features: Tensor
    tokens: Optional[Tensor] = None
    eot_index: Optional[Tensor] = None


@dataclass
class VisionOutput:
    """Vision-tower outputs.

    features: ``[B, E]`` global feature (ViT: ``ln_post(CLS) @ proj``; RN: attention pool at the mean query).
    patch_tokens: ``[B, O, E]`` (ViT: ``ln_post(patches) @ proj``; RN: attention pool with each of the
        ``O = H*W`` spatial positions as query) when ``return_tokens=True``.
    prompt_tokens: ``[B, n, E]`` ViT outputs at the visual prompt positions (``return_tokens`` and prompts).
    """

    features: Tensor
    patch_tokens: Optional[Tensor] = None
    prompt_tokens: Optional[Tensor] = None


class LayerHooks(Protocol):
    """Per-block hooks; ``x`` is batch-first ``[B, T, D]``. Both must return the (possibly new) tensor.

    ``before_block`` sees the block input after any deep-prompt replacement. A hook that appends
    tokens in ``before_block`` must remove them in ``after_block`` (deep prompts and pooling index the
    sequence by position). In the text tower the causal mask is rebuilt for the current length.
    """

    def before_block(self, i: int, x: Tensor) -> Tensor: ...

    def after_block(self, i: int, x: Tensor) -> Tensor: ...


def _project(x: Tensor, proj: Union[Tensor, nn.Module, None]) -> Tensor:
    """Apply an open_clip projection (a ``[D, E]`` parameter, an ``nn.Linear`` or nothing)."""
    if proj is None:
        return x
    if isinstance(proj, nn.Module):
        return proj(x)
    return x @ proj


class PromptedCLIP(nn.Module):
    """Prompt-aware forward passes over an unmodified open_clip ``CLIP`` kept as ``self.clip``.

    The wrapper adds no parameters; freezing, dtype and device are those of ``clip_model``. All math
    runs in the model dtype (``visual.conv1.weight.dtype``, i.e. half for fp16 backbones); prompts and
    images are cast to it.
    """

    def __init__(self, clip_model: CLIP, keep_eval: bool = True) -> None:
        """``keep_eval``: ``train()`` leaves the CLIP in eval mode (see :meth:`train`)."""
        super().__init__()
        if not isinstance(clip_model, CLIP):
            raise TypeError(
                f"PromptedCLIP needs an open_clip.model.CLIP (built-in text tower), got {type(clip_model).__name__}; "
                f"load it with promptot.clip.load_clip")
        visual = clip_model.visual
        if isinstance(visual, VisionTransformer):
            if visual.attn_pool is not None or visual.final_ln_after_pool or visual.pool_type != "tok":
                raise NotImplementedError(
                    "PromptedCLIP supports OpenAI-style ViTs (CLS-token pooling, ln_post before pooling); this model "
                    f"uses attn_pool={visual.attn_pool is not None}, pool_type={visual.pool_type!r}")
        elif not isinstance(visual, ModifiedResNet):
            raise NotImplementedError(
                f"PromptedCLIP supports VisionTransformer and ModifiedResNet towers, got {type(visual).__name__}")
        self.clip = clip_model
        self.keep_eval = keep_eval

    def train(self, mode: bool = True) -> "PromptedCLIP":
        """Set train mode; with ``keep_eval`` the frozen CLIP stays in eval mode, so a ModifiedResNet's
        BatchNorm statistics never drift (the reference trainers only switch their prompt learner to train)."""
        super().train(mode)
        if self.keep_eval:
            self.clip.eval()
        return self

    # ------------------------------------------------------------------ properties
    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype (the reference ``clip_model.dtype``)."""
        return self.clip.visual.conv1.weight.dtype

    @property
    def is_vit(self) -> bool:
        return isinstance(self.clip.visual, VisionTransformer)

    @property
    def text_width(self) -> int:
        """Dt, the text transformer width."""
        return self.clip.transformer.width

    @property
    def vision_width(self) -> int:
        """Dv: ViT transformer width; for RN the channel width entering the attention pool."""
        v = self.clip.visual
        return v.transformer.width if self.is_vit else v.attnpool.k_proj.in_features

    @property
    def text_layers(self) -> int:
        return len(self.clip.transformer.resblocks)

    @property
    def vision_layers(self) -> int:
        """Number of ViT blocks (0 for RN: no token blocks)."""
        return len(self.clip.visual.transformer.resblocks) if self.is_vit else 0

    @property
    def embed_dim(self) -> int:
        """E, the joint embedding size."""
        return self.clip.visual.output_dim

    @property
    def context_length(self) -> int:
        return self.clip.context_length

    @property
    def image_size(self) -> int:
        size = self.clip.visual.image_size
        return int(size[0]) if isinstance(size, (tuple, list)) else int(size)

    @property
    def logit_scale(self) -> nn.Parameter:
        """CLIP's (log) logit scale parameter; logits use ``logit_scale.exp()``."""
        return self.clip.logit_scale

    # ------------------------------------------------------------------ helpers
    def _run_block(self, blk: nn.Module, x: Tensor, attn_mask: Optional[Tensor], batch_first: bool,
                   use_ckpt: bool) -> Tensor:
        """One open_clip residual block on batch-first ``x`` whatever the transformer's layout."""
        if not batch_first:
            x = x.transpose(0, 1)
        if use_ckpt and torch.is_grad_enabled():
            x = checkpoint(blk, x, None, None, attn_mask, use_reentrant=False)
        else:
            x = blk(x, attn_mask=attn_mask)
        return x.transpose(0, 1) if not batch_first else x

    def _causal_mask(self, t: int, x: Tensor) -> Optional[Tensor]:
        mask = self.clip.attn_mask
        if mask is None:
            return None
        if t <= mask.shape[0]:
            return mask[:t, :t]
        # A hook appended tokens beyond the context length: build the same additive causal mask.
        return torch.full((t, t), float("-inf"), device=x.device).triu_(1)

    def _batch(self, p: Tensor, b: int, width: int, what: str) -> Tensor:
        """Cast ``p`` ([n, D] or [1|b, n, D]) to the model dtype and broadcast it to ``[b, n, D]``."""
        if p.dim() == 2:
            p = p.unsqueeze(0)
        if p.dim() != 3 or p.shape[-1] != width or p.shape[0] not in (1, b):
            raise ValueError(
                f"{what} must have shape [n, {width}] or [{b}, n, {width}] (batch {b}), got {tuple(p.shape)}")
        return p.to(self.dtype).expand(b, -1, -1)

    @staticmethod
    def _check_deep(deep: DeepPrompts, n_blocks: int, tower: str) -> list:
        deep = list(deep) if deep is not None else []
        if len(deep) > n_blocks - 1:
            raise ValueError(
                f"{len(deep)} deep prompts given for the {tower} tower, which has {n_blocks} blocks: deep_prompts[k] "
                f"replaces the input of block k+1, so at most {n_blocks - 1} entries fit")
        return deep

    # ------------------------------------------------------------------ text
    def embed_tokens(self, token_ids: Tensor) -> Tensor:
        """Token embeddings ``[P, L, Dt]`` of ``token_ids [P, L]`` in the model dtype."""
        return self.clip.token_embedding(token_ids).to(self.dtype)

    def encode_text(
        self,
        prompt_embeds: Tensor,
        token_ids: Tensor,
        deep_prompts: DeepPrompts = None,
        deep_start: int = 1,
        return_tokens: bool = False,
        truncate: bool = True,
        hooks: Optional[LayerHooks] = None,
    ) -> TextOutput:
        """Encode prompt embeddings.

        Args:
            prompt_embeds: ``[P, L, Dt]`` input embeddings (shallow prompts already spliced in).
            token_ids: ``[P, L]`` the matching token ids; only used to find EOT (argmax, EOT being the largest id).
            deep_prompts: entry k (``[n, Dt]`` or ``[P, n, Dt]``, or None to skip) replaces positions
                ``deep_start .. deep_start+n-1`` of the input of block k+1; at most ``text_layers - 1`` entries.
            deep_start: first replaced position (1 = right after SOS).
            return_tokens: also return every position, projected.
            truncate: cut the sequence right after the longest EOT (exact under the causal mask, much faster).
            hooks: per-block hooks.
        """
        if prompt_embeds.dim() != 3 or token_ids.shape != prompt_embeds.shape[:2]:
            raise ValueError(
                f"prompt_embeds must be [P, L, Dt] and token_ids [P, L]; got {tuple(prompt_embeds.shape)} and "
                f"{tuple(token_ids.shape)}")
        n_prompts, length, _ = prompt_embeds.shape
        if length > self.context_length:
            raise ValueError(f"sequence length {length} exceeds the model context length {self.context_length}")
        dtype = self.dtype
        transformer = self.clip.transformer
        blocks = transformer.resblocks
        deep = self._check_deep(deep_prompts, len(blocks), "text")
        deep = [None if p is None else self._batch(p, n_prompts, self.text_width, f"deep text prompt {k}")
                for k, p in enumerate(deep)]

        eot = token_ids.argmax(dim=-1)
        x = prompt_embeds.to(dtype) + self.clip.positional_embedding[:length].to(dtype)
        if truncate:
            # Under the causal mask no position attends to later ones, so dropping everything after the
            # longest EOT leaves every kept position unchanged; keep replaced deep-prompt slots anyway.
            end = int(eot.max()) + 1
            end = max([end] + [deep_start + p.shape[1] for p in deep if p is not None])
            x = x[:, : min(end, length)]
        batch_first = getattr(transformer, "batch_first", True)
        use_ckpt = bool(getattr(transformer, "grad_checkpointing", False))
        for i, blk in enumerate(blocks):
            if i >= 1 and i - 1 < len(deep) and deep[i - 1] is not None:
                p = deep[i - 1]
                stop = deep_start + p.shape[1]
                if deep_start < 1 or stop > x.shape[1]:
                    raise ValueError(
                        f"deep text prompt {i - 1} ({p.shape[1]} tokens from position {deep_start}) does not fit in "
                        f"a sequence of {x.shape[1]} positions")
                x = torch.cat([x[:, :deep_start], p, x[:, stop:]], dim=1)
            if hooks is not None:
                x = hooks.before_block(i, x)
            x = self._run_block(blk, x, self._causal_mask(x.shape[1], x), batch_first, use_ckpt)
            if hooks is not None:
                x = hooks.after_block(i, x)
        x = self.clip.ln_final(x)
        rows = torch.arange(n_prompts, device=x.device)
        if return_tokens:
            tokens = _project(x, self.clip.text_projection)
            return TextOutput(features=tokens[rows, eot], tokens=tokens, eot_index=eot)
        return TextOutput(features=_project(x[rows, eot], self.clip.text_projection), eot_index=eot)

    def encode_text_ids(self, token_ids: Tensor) -> Tensor:
        """Stock text features ``[P, E]`` (zero-shot path) for ``token_ids [P, L]``."""
        return self.encode_text(self.embed_tokens(token_ids), token_ids).features

    # ------------------------------------------------------------------ vision
    def encode_image(
        self,
        images: Tensor,
        prompts: Optional[Tensor] = None,
        deep_prompts: DeepPrompts = None,
        return_tokens: bool = False,
        hooks: Optional[LayerHooks] = None,
    ) -> VisionOutput:
        """Encode images ``[B, 3, H, W]``.

        Args:
            prompts: ViT only, ``[n, Dv]`` or ``[B, n, Dv]`` appended after the CLS + patch tokens.
            deep_prompts: ViT only; entry k (``[n, Dv]``/``[B, n, Dv]`` or None) replaces the last n tokens
                (the prompt slots) of the input of block k+1. Requires ``prompts``.
            return_tokens: also return patch (ViT) / spatial (RN) tokens and prompt-position outputs.
            hooks: per-block hooks (ViT only).
        """
        if not self.is_vit:
            if prompts is not None or deep_prompts is not None or hooks is not None:
                raise ValueError(
                    "visual prompts, deep prompts and hooks need a ViT backbone; this model has a ModifiedResNet "
                    "vision tower (use a ViT-B/16-style backbone for vision prompting)")
            return self._encode_image_rn(images, return_tokens)
        return self._encode_image_vit(images, prompts, deep_prompts, return_tokens, hooks)

    def _encode_image_vit(self, images: Tensor, prompts: Optional[Tensor], deep_prompts: DeepPrompts,
                          return_tokens: bool, hooks: Optional[LayerHooks]) -> VisionOutput:
        v = self.clip.visual
        dtype = self.dtype
        batch = images.shape[0]
        blocks = v.transformer.resblocks
        deep = self._check_deep(deep_prompts, len(blocks), "vision")
        if prompts is None and any(p is not None for p in deep):
            raise ValueError(
                "deep visual prompts replace the last n tokens, which are the shallow prompt slots: pass "
                "prompts=[n, Dv] as well (MaPLe/IVLP/VPT always have a shallow visual prompt)")
        x = v.conv1(images.to(dtype))  # [B, Dv, g, g]
        x = x.reshape(batch, x.shape[1], -1).permute(0, 2, 1)  # [B, O, Dv]
        cls = v.class_embedding.to(dtype).view(1, 1, -1).expand(batch, -1, -1)
        x = torch.cat([cls, x], dim=1)
        if x.shape[1] != v.positional_embedding.shape[0]:
            raise ValueError(
                f"images of size {tuple(images.shape[-2:])} give {x.shape[1] - 1} patches, but the model was built for "
                f"{self.image_size}px ({v.positional_embedding.shape[0] - 1} patches); resize the inputs")
        x = x + v.positional_embedding.to(dtype)
        x = v.patch_dropout(x)  # identity for OpenAI models; keeps CLS when active
        n_img = x.shape[1]  # 1 + O
        n_prompt = 0
        if prompts is not None:
            p = self._batch(prompts, batch, self.vision_width, "visual prompts")
            n_prompt = p.shape[1]
            x = torch.cat([x, p], dim=1)
        x = v.ln_pre(x)
        deep = [None if p is None else self._batch(p, batch, self.vision_width, f"deep visual prompt {k}")
                for k, p in enumerate(deep)]
        for k, p in enumerate(deep):
            if p is not None and p.shape[1] != n_prompt:
                raise ValueError(
                    f"deep visual prompt {k} has {p.shape[1]} tokens but the shallow prompt has {n_prompt}; they "
                    f"replace the same slots and must match")
        batch_first = getattr(v.transformer, "batch_first", True)
        use_ckpt = bool(getattr(v.transformer, "grad_checkpointing", False))
        for i, blk in enumerate(blocks):
            if i >= 1 and i - 1 < len(deep) and deep[i - 1] is not None:
                x = torch.cat([x[:, :n_img], deep[i - 1]], dim=1)
            if hooks is not None:
                x = hooks.before_block(i, x)
            x = self._run_block(blk, x, None, batch_first, use_ckpt)
            if hooks is not None:
                x = hooks.after_block(i, x)
        if x.shape[1] != n_img + n_prompt:
            raise RuntimeError(
                f"vision sequence has {x.shape[1]} tokens after the last block, expected {n_img + n_prompt}: a hook "
                f"must remove in after_block the tokens it added in before_block")
        x = v.ln_post(x)
        if not return_tokens:
            return VisionOutput(features=_project(x[:, 0], v.proj))
        x = _project(x, v.proj)
        return VisionOutput(features=x[:, 0], patch_tokens=x[:, 1:n_img],
                            prompt_tokens=x[:, n_img:] if n_prompt else None)

    def _encode_image_rn(self, images: Tensor, return_tokens: bool) -> VisionOutput:
        v = self.clip.visual
        x = v.stem(images.to(self.dtype))
        x = v.layer4(v.layer3(v.layer2(v.layer1(x))))  # [B, C, H, W]
        pool = v.attnpool
        x = x.flatten(2).permute(2, 0, 1)  # [HW, B, C]
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)  # [1 + HW, B, C]
        if x.shape[0] != pool.positional_embedding.shape[0]:
            raise ValueError(
                f"images of size {tuple(images.shape[-2:])} give a {x.shape[0] - 1}-position grid, but the attention "
                f"pool was built for {self.image_size}px; resize the inputs")
        x = x + pool.positional_embedding[:, None, :].to(x.dtype)
        # The stock pool returns the output at the mean query only. PLOT's local features are the same
        # attention with every spatial position as its own query (same q/k/v/c weights); each query row
        # is independent, so row 0 is still the stock global feature.
        query = x if return_tokens else x[:1]
        out, _ = F.multi_head_attention_forward(
            query=query, key=x, value=x,
            embed_dim_to_check=x.shape[-1],
            num_heads=pool.num_heads,
            q_proj_weight=pool.q_proj.weight,
            k_proj_weight=pool.k_proj.weight,
            v_proj_weight=pool.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
            out_proj_weight=pool.c_proj.weight,
            out_proj_bias=pool.c_proj.bias,
            use_separate_proj_weight=True,
            training=pool.training,
            need_weights=False,
        )  # [Q, B, E]
        if not return_tokens:
            return VisionOutput(features=out[0])
        return VisionOutput(features=out[0], patch_tokens=out[1:].permute(1, 0, 2))
