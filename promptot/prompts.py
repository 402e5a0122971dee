"""Learnable prompt modules shared by the trainers (the ``prompts/`` layer of the design).

* :class:`TextPrompts` — CoOp-style learnable context spliced into the class prompts, with
  generic or class-specific context, class token at end/middle/front, word initialisation and
  ``n_sets`` prompt sets (PLOT's N prompts, ALIGN's N textual prompts).
* :class:`DeepPrompts` — per-layer prompts for both towers (MaPLe/ALIGN deep prompts), with the
  visual prompts either produced from the text prompts by linear coupling functions (MaPLe) or
  learned independently (IVLP/VPT, ALIGN with M != N).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from .clip import PromptedCLIP, token_length, tokenize
from .config import check_choice
from .errors import ConfigError

POSITIONS = ("end", "middle", "front")


def _clean(name: str) -> str:
    return name.replace("_", " ")


class TextPrompts(nn.Module):
    """Learnable text context for ``n_sets`` prompt sets over ``C`` classes.

    Prompt of set k, class c (class at the end): ``[SOS][ctx_k 1..n_ctx][fixed words][CLASS][.][EOT]``.

    Parameters (the only state saved in checkpoints): ``ctx`` of shape ``[n_ctx, D]`` (one generic set),
    ``[C, n_ctx, D]`` (class-specific, ``csc``), ``[N, n_ctx, D]`` (N generic sets) or ``[N, C, n_ctx, D]``.
    Token embeddings of SOS and of everything after the context are frozen, non-persistent buffers,
    rebuilt from the class names, so checkpoints carry no class-dependent tensors except CSC contexts.

    Args:
        clip: the prompted CLIP (for its token embedding and width).
        classnames: class names in label order (``_`` becomes a space).
        n_ctx: number of learnable context tokens.
        ctx_init: words to initialise the context from ("" = random N(0, std^2)).
        init_mode: ``"coop"`` — with ``ctx_init`` the context has as many tokens as the init has words and
            replaces them all (CoOp/CoCoOp); ``"first"`` — the first ``n_ctx`` tokens of ``ctx_init`` are
            learnable and the rest stay as fixed words (MaPLe/ALIGN).
        init_sets: with ``ctx_init`` and several sets, ``"first"`` initialises only set 0 from the words and
            the others randomly (the ALIGN reference; keeps the sets distinct), ``"all"`` initialises every set.
        csc: class-specific context (CoOp ``CSC``; random init only, as in CoOp).
        position: class token position ``end`` | ``middle`` | ``front``.
    """

    def __init__(self, clip: PromptedCLIP, classnames: Sequence[str], n_ctx: int = 16, ctx_init: str = "",
                 init_mode: str = "coop", n_sets: int = 1, init_sets: str = "first", csc: bool = False,
                 position: str = "end", std: float = 0.02, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        check_choice("class token position", position, POSITIONS)
        check_choice("init_mode", init_mode, ("coop", "first"))
        check_choice("init_sets", init_sets, ("first", "all"))
        if n_sets < 1:
            raise ConfigError(f"the number of prompt sets must be >= 1, got {n_sets}")
        dtype = dtype or clip.dtype
        width = clip.text_width
        names = [_clean(n) for n in classnames]
        n_cls = len(names)
        ctx_init = _clean(ctx_init).strip()
        init_vectors: Optional[Tensor] = None
        if ctx_init:
            if csc:
                print("Note: CSC is ignored when CTX_INIT is set (the context is generic, as in CoOp)")
                csc = False
            n_words = len(ctx_init.split(" "))
            if init_mode == "coop":
                n_ctx = n_words
            elif n_ctx > n_words:
                raise ConfigError(f"N_CTX={n_ctx} exceeds the {n_words} words of CTX_INIT {ctx_init!r}")
            ids = tokenize(ctx_init).to(clip.logit_scale.device)
            with torch.no_grad():
                emb = clip.embed_tokens(ids)
            init_vectors = emb[0, 1:1 + n_ctx].to(dtype)
            prompt_prefix = ctx_init
        else:
            if n_ctx < 1:
                raise ConfigError(f"N_CTX must be >= 1 without CTX_INIT, got {n_ctx}")
            prompt_prefix = " ".join(["X"] * n_ctx)
        if position != "end" and init_mode == "first" and ctx_init and n_ctx < len(ctx_init.split(" ")):
            raise ConfigError("class token position middle/front needs the whole CTX_INIT to be learnable")
        self.n_ctx, self.n_sets, self.n_cls, self.csc, self.position = n_ctx, n_sets, n_cls, csc, position
        self.prompt_prefix = prompt_prefix
        self.classnames = names

        shape: Tuple[int, ...] = (n_cls, n_ctx, width) if csc else (n_ctx, width)
        if n_sets > 1:
            shape = (n_sets,) + shape
        ctx = torch.empty(shape, dtype=dtype)
        nn.init.normal_(ctx, std=std)
        if init_vectors is not None:
            with torch.no_grad():
                if n_sets == 1:
                    ctx.copy_(init_vectors)
                elif init_sets == "all":
                    ctx.copy_(init_vectors.expand_as(ctx))
                else:
                    ctx[0].copy_(init_vectors)
        self.ctx = nn.Parameter(ctx)
        print(f'Initial context: "{prompt_prefix}" ({n_ctx} learnable tokens x {n_sets} set(s)'
              f'{", class-specific" if csc else ""}, class token at the {position})')

        token_ids = tokenize([f"{prompt_prefix} {n}." for n in names]).to(clip.logit_scale.device)
        with torch.no_grad():
            emb = clip.embed_tokens(token_ids).to(dtype)
        self.register_buffer("token_ids", token_ids, persistent=False)
        self.register_buffer("token_prefix", emb[:, :1], persistent=False)
        self.register_buffer("token_suffix", emb[:, 1 + n_ctx:], persistent=False)
        self.name_lens: List[int] = [token_length(n) for n in names]

    @property
    def num_prompts(self) -> int:
        """``N * C``: prompts are laid out set-major (index ``k * C + c``)."""
        return self.n_sets * self.n_cls

    def prompt_token_ids(self) -> Tensor:
        """``[N*C, L]`` token ids (EOT located by argmax)."""
        return self.token_ids.repeat(self.n_sets, 1)

    def _per_class(self, ctx: Tensor) -> Tensor:
        """Any context layout -> ``[N, C, n_ctx, D]``."""
        if self.n_sets == 1:
            ctx = ctx.unsqueeze(0)
        if not self.csc:
            ctx = ctx.unsqueeze(1).expand(-1, self.n_cls, -1, -1)
        return ctx

    def build(self, ctx: Optional[Tensor] = None) -> Tensor:
        """Prompt embeddings ``[N*C, L, D]`` for a context tensor of the layout of ``self.ctx``
        (default ``self.ctx``; CoCoOp passes ``ctx + pi_b``)."""
        ctx = self._per_class(self.ctx if ctx is None else ctx).to(self.token_prefix.dtype)
        n_sets = ctx.shape[0]
        prefix = self.token_prefix.unsqueeze(0).expand(n_sets, -1, -1, -1)
        suffix = self.token_suffix.unsqueeze(0).expand(n_sets, -1, -1, -1)
        if self.position == "end":
            out = torch.cat([prefix, ctx, suffix], dim=2)
        else:
            half = self.n_ctx // 2
            rows = []
            for c, nl in enumerate(self.name_lens):
                name, rest = suffix[:, c, :nl], suffix[:, c, nl:]
                if self.position == "middle":
                    parts = [prefix[:, c], ctx[:, c, :half], name, ctx[:, c, half:], rest]
                else:
                    parts = [prefix[:, c], name, ctx[:, c], rest]
                rows.append(torch.cat(parts, dim=1))
            out = torch.stack(rows, dim=1)
        return out.reshape(n_sets * self.n_cls, out.shape[2], out.shape[3])

    def forward(self) -> Tuple[Tensor, Tensor]:
        """``(embeddings [N*C, L, D], token_ids [N*C, L])``."""
        return self.build(), self.prompt_token_ids()

    def token_mask(self, length: int, include: str = "paper") -> Tensor:
        """Token-set mask ``[C, length]`` over text positions for token-level OT.

        ``paper``: the learnable context positions and the class-name tokens (no SOS, fixed words, '.', EOT);
        only defined for the class token at the end.
        """
        if self.position != "end":
            raise ValueError("token sets are defined for the class token at the end")
        # fixed init tokens after the context (BPE tokens, not words: the context takes the first n_ctx *tokens*)
        fixed = token_length(self.prompt_prefix) - self.n_ctx
        mask = torch.zeros(self.n_cls, length, dtype=torch.bool, device=self.token_ids.device)
        mask[:, 1:1 + self.n_ctx] = True
        for c, nl in enumerate(self.name_lens):
            start = 1 + self.n_ctx + fixed
            mask[c, start:min(start + nl, length)] = True
        return mask


class DeepPrompts(nn.Module):
    """Deep prompts of length ``n_ctx`` for layers 1..depth-1 of both towers (MaPLe / ALIGN / IVLP).

    Text: ``text[k]`` of shape ``[n_sets, n_ctx, Dt]`` replaces the context positions in the input of text
    block k+1. Vision, ``coupled=True`` (MaPLe, ALIGN reference): the shallow visual prompts are
    ``shallow_proj(text ctx)`` and the deep ones ``proj[k](text[k])`` — one visual set per text set.
    ``coupled=False``: ``n_vis_sets`` independent visual prompt sets ``[n_vis_sets, n_ctx, Dv]`` per layer.
    """

    def __init__(self, n_ctx: int, depth: int, text_width: int, vision_width: int, n_sets: int = 1,
                 n_vis_sets: Optional[int] = None, coupled: bool = True, std: float = 0.02,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if depth < 1:
            raise ConfigError(f"prompt depth must be >= 1, got {depth}")
        n_vis_sets = n_sets if n_vis_sets is None else n_vis_sets
        if coupled and n_vis_sets != n_sets:
            raise ConfigError(
                f"coupled visual prompts are projections of the text prompts, so the number of visual prompt sets "
                f"({n_vis_sets}) must equal the number of text prompt sets ({n_sets}); set them equal or use "
                "independent visual prompts")
        self.n_ctx, self.depth, self.coupled, self.n_sets, self.n_vis_sets = n_ctx, depth, coupled, n_sets, n_vis_sets

        def param(width: int, sets: int) -> nn.Parameter:
            p = torch.empty(sets, n_ctx, width, dtype=dtype)
            nn.init.normal_(p, std=std)
            return nn.Parameter(p)

        self.text = nn.ParameterList([param(text_width, n_sets) for _ in range(depth - 1)])
        if coupled:
            self.shallow_proj = nn.Linear(text_width, vision_width).to(dtype)
            self.proj = nn.ModuleList([nn.Linear(text_width, vision_width).to(dtype) for _ in range(depth - 1)])
        else:
            self.vision_shallow = param(vision_width, n_vis_sets)
            self.vision = nn.ParameterList([param(vision_width, n_vis_sets) for _ in range(depth - 1)])

    def visual(self, text_ctx: Optional[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        """``(shallow [M, n_ctx, Dv], deep list of [M, n_ctx, Dv])``; ``text_ctx [N, n_ctx, Dt]`` when coupled."""
        if self.coupled:
            if text_ctx is None:
                raise ValueError("coupled visual prompts need the shallow text context")
            w = self.shallow_proj.weight
            return self.shallow_proj(text_ctx.to(w.dtype)), [f(t) for f, t in zip(self.proj, self.text)]
        return self.vision_shallow, list(self.vision)
