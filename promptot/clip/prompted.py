"""One prompted-CLIP module for every trainer: both towers of an UNMODIFIED open_clip ``CLIP``,
re-driven block by block so that prompts can be inserted.

Text tower (CoOp / CoCoOp / MaPLe / IVLP): the caller builds prompt embeddings ``[P, L, Dt]`` (learned
context spliced into token embeddings); the feature is the pooled row (EOT for OpenAI models, following
open_clip's ``text_pool_type``) after ``ln_final``, projected by ``text_projection``.

Vision tower, ViT (MaPLe / IVLP / VPT / DPT): shallow prompts are appended after the ``1 + O`` CLS/patch
tokens (after the positional embedding, before ``ln_pre``). Vision tower, ModifiedResNet (PLOT): optionally
returns the attention-pool output at every spatial position as local features.

Everything that happens between transformer blocks is a :class:`BlockHook`: a list of hooks is applied
around every block of a tower (``before_block`` in list order, ``after_block`` in reverse order, so hooks
nest), each hook may replace, append or drop tokens and may write auxiliary outputs (e.g. DPT's per-layer
class-aware logits) into ``state.aux``, which comes back as ``TextOutput.aux`` / ``VisionOutput.aux``.
Deep prompts (MaPLe/IVLP/VPT/ALIGN) are the built-in :class:`DeepPromptHook`; per-block appended tokens
(DPT's deep VPT and CAVPT) are :class:`AppendTokensHook`. With no prompts and no hooks the outputs equal
``clip.encode_text`` / ``clip.encode_image``.

Requires open_clip >= 2.23 (``CLIP.text_pool_type``, ``VisionTransformer.pool_type``/``attn_pool``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["TextOutput", "VisionOutput", "BlockState", "BlockHook", "DeepPromptHook", "AppendTokensHook",
           "PromptedCLIP", "OPEN_CLIP_MIN_VERSION"]

OPEN_CLIP_MIN_VERSION = "2.23"
DeepPrompts = Optional[Sequence[Optional[Tensor]]]
Hooks = Optional[Union["BlockHook", Sequence["BlockHook"]]]


@dataclass
class TextOutput:
    """Text-tower outputs.

    features: ``[P, E]`` pooled (EOT) feature after ``ln_final`` and ``text_projection`` (not normalised).
    tokens: ``[P, L', E]`` every position after ``ln_final`` and projection (``return_tokens=True``).
        With truncation ``L' <= L``. Positions after ``eot_index`` are padding that still carries values:
        callers mask them (e.g. ``arange(L') <= eot_index[:, None]``).
    eot_index: ``[P]`` position of the pooled (EOT) token in each prompt.
    aux: auxiliary outputs written by hooks (``state.aux``).
    """

    features: Tensor
    tokens: Optional[Tensor] = None
    eot_index: Optional[Tensor] = None
    aux: Dict[str, Any] = field(default_factory=dict)


@dataclass
class VisionOutput:
    """Vision-tower outputs.

    features: ``[B, E]`` global feature (ViT: ``ln_post(CLS) @ proj``; RN: attention pool at the mean query).
    patch_tokens: ``[B, O, E]`` (ViT: ``ln_post(patches) @ proj``; RN: attention pool with each of the
        ``O = H*W`` spatial positions as query) when ``return_tokens=True``.
    prompt_tokens: ``[B, n, E]`` ViT outputs at the visual prompt positions (``return_tokens`` and prompts).
    aux: auxiliary outputs written by hooks (``state.aux``).
    """

    features: Tensor
    patch_tokens: Optional[Tensor] = None
    prompt_tokens: Optional[Tensor] = None
    aux: Dict[str, Any] = field(default_factory=dict)


@dataclass
class BlockState:
    """What a hook sees besides the block input.

    tower: ``"text"`` or ``"vision"``.
    n_blocks: number of blocks in the tower.
    n_fixed: vision: the number of CLS + patch tokens (later positions are prompt slots); text: None.
    aux: a dict hooks write auxiliary outputs into; returned as ``TextOutput.aux`` / ``VisionOutput.aux``.
    fit: ``fit(p, what) -> Tensor``: cast ``p`` (``[n, D]`` or ``[1|B, n, D]``) to the model dtype and broadcast
        it to the batch, ``[B, n, D]``; ``what`` names the tensor in the error raised on a wrong shape.
    """

    tower: str
    n_blocks: int
    n_fixed: Optional[int]
    aux: Dict[str, Any]
    fit: Callable[[Tensor, str], Tensor]


class BlockHook:
    """A hook around transformer blocks; ``x`` is batch-first ``[B, T, D]``. Override what you need.

    ``before_block`` runs on the input of block ``i`` and ``after_block`` on its output; both return the
    (possibly new) tensor. A hook that appends tokens before a block must drop them after it (pooling and
    deep prompts index the sequence by position); in the text tower the causal mask is rebuilt for the
    current length. ``min_length`` (text only): positions that truncation after EOT must keep.
    """

    min_length: int = 0

    def before_block(self, i: int, x: Tensor, state: BlockState) -> Tensor:
        return x

    def after_block(self, i: int, x: Tensor, state: BlockState) -> Tensor:
        return x


class DeepPromptHook(BlockHook):
    """Deep prompts: ``prompts[k]`` (``[n, D]`` or ``[B, n, D]``, or None to skip) replaces the prompt slots of
    the input of block ``k + 1``. Text: positions ``start .. start+n-1`` (``start=1``: right after SOS). Vision:
    the ``n`` slots right after the CLS + patch tokens (the shallow prompt's slots)."""

    def __init__(self, prompts: Sequence[Optional[Tensor]], start: int = 1) -> None:
        self.prompts = list(prompts)
        self.start = start
        sizes = [p.shape[-2] for p in self.prompts if p is not None]
        self.min_length = start + max(sizes) if sizes else 0

    def before_block(self, i: int, x: Tensor, state: BlockState) -> Tensor:
        if i < 1 or i - 1 >= len(self.prompts) or self.prompts[i - 1] is None:
            return x
        p = state.fit(self.prompts[i - 1], f"deep {state.tower} prompt {i - 1}")
        n = p.shape[1]
        if state.tower == "text":
            start = self.start
            if start < 1 or start + n > x.shape[1]:
                raise ValueError(f"deep text prompt {i - 1} ({n} tokens from position {start}) does not fit in a "
                                 f"sequence of {x.shape[1]} positions")
        else:
            start = int(state.n_fixed)
            if x.shape[1] - start != n:
                raise ValueError(f"deep visual prompt {i - 1} has {n} tokens but the shallow prompt has "
                                 f"{x.shape[1] - start}; they replace the same slots and must match")
        return torch.cat([x[:, :start], p, x[:, start + n:]], dim=1)


class AppendTokensHook(BlockHook):
    """Tokens appended to the input of some blocks and dropped from their outputs (DPT's deep VPT gives each
    of the first blocks fresh prompts; CAVPT appends class-aware prompts to the last ones).

    ``tokens``: block index -> ``[n, D]`` or ``[B, n, D]``. ``keep``: optional callback
    ``keep(i, dropped [B, n, D], state)`` that sees the dropped outputs (e.g. to write them to ``state.aux``).
    """

    def __init__(self, tokens: Mapping[int, Tensor],
                 keep: Optional[Callable[[int, Tensor, BlockState], None]] = None) -> None:
        self.tokens = dict(tokens)
        self.keep = keep
        self._n: Dict[int, int] = {}

    def before_block(self, i: int, x: Tensor, state: BlockState) -> Tensor:
        if i not in self.tokens:
            return x
        p = state.fit(self.tokens[i], f"appended {state.tower} tokens of block {i}")
        self._n[i] = p.shape[1]
        return torch.cat([x, p], dim=1)

    def after_block(self, i: int, x: Tensor, state: BlockState) -> Tensor:
        n = self._n.pop(i, 0)
        if not n:
            return x
        if self.keep is not None:
            self.keep(i, x[:, -n:], state)
        return x[:, :-n]


def _as_list(hooks: Hooks) -> List[BlockHook]:
    if hooks is None:
        return []
    if isinstance(hooks, BlockHook) or not isinstance(hooks, (list, tuple)):
        return [hooks]  # type: ignore[list-item]
    return list(hooks)


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

    #: open_clip text pooling types this module can follow (``last`` disables truncation after EOT)
    TEXT_POOLS = ("argmax", "eos", "first", "last")

    def __init__(self, clip_model: CLIP, keep_eval: bool = True) -> None:
        """``keep_eval``: ``train()`` leaves the CLIP in eval mode (see :meth:`train`)."""
        super().__init__()
        if not isinstance(clip_model, CLIP):
            raise TypeError(
                f"PromptedCLIP needs an open_clip.model.CLIP (built-in text tower), got {type(clip_model).__name__}; "
                f"load it with promptot.clip.load_clip")
        missing = [a for a in ("text_pool_type", "attn_mask", "token_embedding", "ln_final")
                   if not hasattr(clip_model, a)]
        visual = clip_model.visual
        if isinstance(visual, VisionTransformer):
            missing += [f"visual.{a}" for a in ("pool_type", "attn_pool", "final_ln_after_pool", "patch_dropout")
                        if not hasattr(visual, a)]
        if missing:
            import open_clip

            raise ImportError(
                f"open_clip {getattr(open_clip, '__version__', '?')} lacks {', '.join(missing)}, which PromptedCLIP "
                f"reads; install open_clip_torch>={OPEN_CLIP_MIN_VERSION} (pip install -U open_clip_torch)")
        if isinstance(visual, VisionTransformer):
            if visual.attn_pool is not None or visual.final_ln_after_pool or visual.pool_type != "tok":
                raise NotImplementedError(
                    "PromptedCLIP supports OpenAI-style ViTs (CLS-token pooling, ln_post before pooling); this model "
                    f"uses attn_pool={visual.attn_pool is not None}, pool_type={visual.pool_type!r}")
        elif not isinstance(visual, ModifiedResNet):
            raise NotImplementedError(
                f"PromptedCLIP supports VisionTransformer and ModifiedResNet towers, got {type(visual).__name__}")
        if clip_model.text_pool_type not in self.TEXT_POOLS:
            raise NotImplementedError(
                f"PromptedCLIP pools text with one of {self.TEXT_POOLS}; this model's text_pool_type is "
                f"{clip_model.text_pool_type!r}")
        if getattr(clip_model, "cls_emb", None) is not None:
            raise NotImplementedError("text towers with an appended CLS embedding (CoCa-style) are not supported")
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

    def _state(self, tower: str, n_blocks: int, batch: int, width: int, n_fixed: Optional[int]) -> BlockState:
        return BlockState(tower=tower, n_blocks=n_blocks, n_fixed=n_fixed, aux={},
                          fit=lambda p, what: self._batch(p, batch, width, what))

    @staticmethod
    def _deep_hook(deep: DeepPrompts, n_blocks: int, tower: str, start: int = 1) -> List[BlockHook]:
        """``deep_prompts`` sugar: a :class:`DeepPromptHook` (first in the hook list), checked against the depth."""
        deep = list(deep) if deep is not None else []
        if len(deep) > n_blocks - 1:
            raise ValueError(
                f"{len(deep)} deep prompts given for the {tower} tower, which has {n_blocks} blocks: deep_prompts[k] "
                f"replaces the input of block k+1, so at most {n_blocks - 1} entries fit")
        return [DeepPromptHook(deep, start=start)] if any(p is not None for p in deep) else []

    def _run_blocks(self, blocks, x: Tensor, hooks: List[BlockHook], state: BlockState, batch_first: bool,
                    use_ckpt: bool, causal: bool) -> Tensor:
        """Every block with the hooks around it (``before_block`` in order, ``after_block`` in reverse order)."""
        for i, blk in enumerate(blocks):
            for h in hooks:
                x = h.before_block(i, x, state)
            mask = self._causal_mask(x.shape[1], x) if causal else None
            x = self._run_block(blk, x, mask, batch_first, use_ckpt)
            for h in reversed(hooks):
                x = h.after_block(i, x, state)
        return x

    def _pool_index(self, token_ids: Tensor, length: int) -> Tensor:
        """Index of the pooled token of each prompt, following open_clip's ``text_pool_type``."""
        pool = self.clip.text_pool_type
        if pool == "argmax":  # OpenAI: EOT has the largest id
            return token_ids.argmax(dim=-1)
        if pool == "eos":
            eos = getattr(self.clip, "text_eos_id", None)
            if eos is None:
                raise ValueError("text_pool_type 'eos' needs the model's text_eos_id")
            return (token_ids == eos).int().argmax(dim=-1)
        if pool == "first":
            return torch.zeros(token_ids.shape[0], dtype=torch.long, device=token_ids.device)
        return torch.full((token_ids.shape[0],), length - 1, dtype=torch.long, device=token_ids.device)

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
        hooks: Hooks = None,
        pad_tokens_to: Optional[int] = None,
    ) -> TextOutput:
        """Encode prompt embeddings.

        Args:
            prompt_embeds: ``[P, L, Dt]`` input embeddings (shallow prompts already spliced in).
            token_ids: ``[P, L]`` the matching token ids; only used to find the pooled (EOT) position.
            deep_prompts: entry k (``[n, Dt]`` or ``[P, n, Dt]``, or None to skip) replaces positions
                ``deep_start .. deep_start+n-1`` of the input of block k+1; at most ``text_layers - 1`` entries
                (a :class:`DeepPromptHook` run before ``hooks``).
            deep_start: first replaced position (1 = right after SOS).
            return_tokens: also return every position, projected.
            truncate: cut the sequence right after the longest EOT (exact under the causal mask, much faster).
            hooks: a :class:`BlockHook` or a list of them, applied around every block.
            pad_tokens_to: with ``return_tokens``, zero-pad the (truncated) tokens to this many positions.
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
        hook_list = self._deep_hook(deep_prompts, len(blocks), "text", deep_start) + _as_list(hooks)

        eot = self._pool_index(token_ids, length)
        x = prompt_embeds.to(dtype) + self.clip.positional_embedding[:length].to(dtype)
        if truncate:
            x = x[:, : self._kept_length(eot, length, hook_list)]
        state = self._state("text", len(blocks), n_prompts, self.text_width, None)
        x = self._run_blocks(blocks, x, hook_list, state, getattr(transformer, "batch_first", True),
                             bool(getattr(transformer, "grad_checkpointing", False)), causal=True)
        x = self.clip.ln_final(x)
        rows = torch.arange(n_prompts, device=x.device)
        if return_tokens:
            tokens = _project(x, self.clip.text_projection)
            if pad_tokens_to is not None and tokens.shape[1] < pad_tokens_to:
                tokens = F.pad(tokens, (0, 0, 0, pad_tokens_to - tokens.shape[1]))
            return TextOutput(features=tokens[rows, eot], tokens=tokens, eot_index=eot, aux=state.aux)
        return TextOutput(features=_project(x[rows, eot], self.clip.text_projection), eot_index=eot, aux=state.aux)

    def _kept_length(self, eot: Tensor, length: int, hook_list: List[BlockHook]) -> int:
        """Positions the truncated text pass keeps. Under the causal mask no position attends to later ones, so
        dropping everything after the longest EOT leaves every kept position unchanged; the slots hooks replace are
        kept anyway. (Last-token pooling keeps everything.)"""
        if self.clip.text_pool_type == "last":
            return length
        return min(length, max([int(eot.max()) + 1] + [h.min_length for h in hook_list]))

    def text_length(self, token_ids: Tensor, deep_prompts: DeepPrompts = None, deep_start: int = 1,
                    hooks: Hooks = None) -> int:
        """Positions :meth:`encode_text` keeps (``truncate=True``) for prompts ``token_ids [P, L]`` with these deep
        prompts and hooks: a bound for any subset of the prompts."""
        hook_list = self._deep_hook(deep_prompts, len(self.clip.transformer.resblocks), "text", deep_start)
        return self._kept_length(self._pool_index(token_ids, token_ids.shape[1]), token_ids.shape[1],
                                 hook_list + _as_list(hooks))

    def text_lengths(self, token_ids: Tensor, deep_prompts: DeepPrompts = None, deep_start: int = 1,
                     hooks: Hooks = None) -> Tensor:
        """Positions :meth:`encode_text` keeps for each prompt of ``token_ids [P, L]`` when encoded without the
        others, ``[P]`` (long); :meth:`text_length` is their maximum."""
        length = token_ids.shape[1]
        if self.clip.text_pool_type == "last":
            return torch.full((token_ids.shape[0],), length, dtype=torch.long, device=token_ids.device)
        hook_list = self._deep_hook(deep_prompts, len(self.clip.transformer.resblocks), "text", deep_start)
        floor = max([0] + [h.min_length for h in hook_list + _as_list(hooks)])
        return (self._pool_index(token_ids, length) + 1).clamp(min=floor, max=length)

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
        hooks: Hooks = None,
    ) -> VisionOutput:
        """Encode images ``[B, 3, H, W]``.

        Args:
            prompts: ViT only, ``[n, Dv]`` or ``[B, n, Dv]`` appended after the CLS + patch tokens.
            deep_prompts: ViT only; entry k (``[n, Dv]``/``[B, n, Dv]`` or None) replaces the prompt slots
                of the input of block k+1 (a :class:`DeepPromptHook` run before ``hooks``). Requires ``prompts``.
            return_tokens: also return patch (ViT) / spatial (RN) tokens and prompt-position outputs.
            hooks: ViT only, a :class:`BlockHook` or a list of them, applied around every block.
        """
        if not self.is_vit:
            if prompts is not None or deep_prompts is not None or hooks:
                raise ValueError(
                    "visual prompts, deep prompts and hooks need a ViT backbone; this model has a ModifiedResNet "
                    "vision tower (use a ViT-B/16-style backbone for vision prompting)")
            return self._encode_image_rn(images, return_tokens)
        return self._encode_image_vit(images, prompts, deep_prompts, return_tokens, _as_list(hooks))

    def _encode_image_vit(self, images: Tensor, prompts: Optional[Tensor], deep_prompts: DeepPrompts,
                          return_tokens: bool, hooks: List[BlockHook]) -> VisionOutput:
        v = self.clip.visual
        dtype = self.dtype
        batch = images.shape[0]
        blocks = v.transformer.resblocks
        deep = self._deep_hook(deep_prompts, len(blocks), "vision")
        if prompts is None and deep:
            raise ValueError(
                "deep visual prompts replace the prompt slots after the CLS + patch tokens: pass prompts=[n, Dv] as "
                "well (MaPLe/IVLP/VPT always have a shallow visual prompt)")
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
        state = self._state("vision", len(blocks), batch, self.vision_width, n_img)
        x = self._run_blocks(blocks, x, deep + hooks, state, getattr(v.transformer, "batch_first", True),
                             bool(getattr(v.transformer, "grad_checkpointing", False)), causal=False)
        if x.shape[1] != n_img + n_prompt:
            raise RuntimeError(
                f"vision sequence has {x.shape[1]} tokens after the last block, expected {n_img + n_prompt}: a hook "
                f"must remove in after_block the tokens it added in before_block")
        x = v.ln_post(x)
        if not return_tokens:
            return VisionOutput(features=_project(x[:, 0], v.proj), aux=state.aux)
        x = _project(x, v.proj)
        return VisionOutput(features=x[:, 0], patch_tokens=x[:, 1:n_img],
                            prompt_tokens=x[:, n_img:] if n_prompt else None, aux=state.aux)

    def vision_token_features(self, tokens: Tensor, project: bool = True) -> Tensor:
        """ViT tokens ``[B, n, Dv]`` taken from any block's output (e.g. by a hook) -> ``ln_post`` and, with
        ``project``, ``proj``: ``[B, n, E]`` (``[B, n, Dv]`` without), the transform :meth:`encode_image` applies to
        the last block's patch tokens."""
        if not self.is_vit:
            raise ValueError("vision_token_features needs a ViT backbone (a ModifiedResNet has no token blocks)")
        v = self.clip.visual
        x = v.ln_post(tokens.to(self.dtype))
        return _project(x, v.proj) if project else x

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
