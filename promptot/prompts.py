"""Learnable prompt modules shared by the trainers (the ``prompts/`` layer of the design).

* :class:`TextPrompts` — CoOp-style learnable context spliced into the class prompts, with generic or
  class-specific context, class token at end/middle/front, word initialisation and ``n_sets`` prompt sets
  (PLOT's N prompts, ALIGN's N textual prompts).
* :class:`DeepPrompts` — per-layer prompts for both towers (MaPLe/IVLP/VPT/ALIGN deep prompts), with the
  visual prompts either produced from the text prompts by linear coupling functions (MaPLe, ALIGN) or
  learned independently with their own width, length and depth (IVLP, VPT, ALIGN with M != N).
* :class:`MultiModalPrompts` — shallow text context + deep prompts + visual prompt sets: the one prompt
  learner of MaPLe, IVLP, language-only prompting, VPT and ALIGN (M/N prompt-set replication included).
* :class:`MetaNet` — CoCoOp's bottleneck network (Linear-ReLU-Linear), shared by CoCoOp and CoPL.

Every prompt learner speaks one protocol to the models (:mod:`promptot.model`): ``text_inputs()`` returns
:class:`TextInputs` (or None: the text side is a frozen classifier) and ``vision_inputs()`` returns
:class:`VisionInputs` (or None: the image tower runs unprompted).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from .clip import PromptedCLIP, token_length, tokenize
from .config import check_choice
from .errors import ConfigError

POSITIONS = ("end", "middle", "front")
COUPLINGS = ("coupled", "independent")
#: how visual prompts enter the ViT (:class:`VisionInputs`)
VISION_INSERTS = ("replace", "append")


class TextInputs:
    """Inputs of the text tower for ``n_sets * C`` prompts, laid out set-major (row ``k * C + c``).

    embeds: ``[N*C, L, Dt]`` prompt embeddings — given, or built on first access by ``build_rows`` (which also builds
    any row range alone, so that a chunked text pass never materialises every prompt: :meth:`rows`; ``build_index``
    builds any set of rows: :meth:`select`); token_ids: ``[N*C, L]``, or ``[C, L]`` shared by the sets with
    ``ids_repeat = N`` (row ``r`` then uses ``token_ids[r % C]``: :attr:`token_ids` materialises the rows only when
    asked); deep: deep prompts of blocks 1.. (entries ``[N*C, n, Dt]`` per prompt, ``[N, n, Dt]`` per set, ``[1, n,
    Dt]`` broadcast over prompts, or None; :meth:`deep_for` gives any rows' entries); deep_start: first replaced
    position.
    """

    def __init__(self, embeds: Optional[Tensor], token_ids: Tensor, n_sets: int = 1,
                 deep: Optional[List[Optional[Tensor]]] = None, deep_start: int = 1,
                 build_rows: Optional[Callable[[int, int], Tensor]] = None,
                 build_index: Optional[Callable[[Tensor], Tensor]] = None, ids_repeat: int = 1) -> None:
        if embeds is None and build_rows is None:
            raise ValueError("TextInputs needs the embeddings or a build_rows function")
        self._embeds, self._ids, self._ids_repeat, self.n_sets = embeds, token_ids, ids_repeat, n_sets
        self.deep = list(deep) if deep is not None else []
        self.deep_start, self.build_rows, self.build_index = deep_start, build_rows, build_index
        for d in self.deep:
            if d is not None and d.shape[0] not in (1, n_sets, self.n_prompts):
                raise ValueError(f"a deep text prompt of shape {tuple(d.shape)} is neither per prompt "
                                 f"({self.n_prompts}), per set ({n_sets}) nor broadcast (1)")

    @property
    def n_prompts(self) -> int:
        return int(self._ids.shape[0]) * self._ids_repeat

    @property
    def n_cls(self) -> int:
        """C: prompts per set."""
        return self.n_prompts // self.n_sets

    @property
    def token_ids(self) -> Tensor:
        """``[N*C, L]`` token ids of every prompt (built on each access when shared by the sets: not kept alive)."""
        return self._ids if self._ids_repeat == 1 else self._ids.repeat(self._ids_repeat, 1)

    def ids_for(self, rows: Union[slice, Tensor]) -> Tensor:
        """Token ids ``[R, L]`` of the prompts ``rows`` (a slice or a LongTensor of row indices)."""
        if self._ids_repeat == 1:
            return self._ids[rows]
        return self._ids[self._row_index(rows) % self._ids.shape[0]]

    def _row_index(self, rows: Union[slice, Tensor]) -> Tensor:
        return torch.arange(self.n_prompts, device=self._ids.device)[rows] if isinstance(rows, slice) else rows

    def deep_for(self, rows: Union[slice, Tensor]) -> List[Optional[Tensor]]:
        """Deep prompt entries for the prompts ``rows``: ``[R, n, Dt]`` (broadcast entries and None as they are)."""
        out: List[Optional[Tensor]] = []
        for d in self.deep:
            if d is None or d.shape[0] == 1:
                out.append(d)
            elif d.shape[0] == self.n_prompts:
                out.append(d[rows])
            else:  # per set: row k*C + c uses set k
                out.append(d[self._row_index(rows) // self.n_cls])
        return out

    @property
    def embeds(self) -> Tensor:
        if self._embeds is None:
            self._embeds = self.build_rows(0, self.n_prompts)
        return self._embeds

    def rows(self, start: int, stop: int) -> Tensor:
        """Embeddings of prompts ``start .. stop-1`` (built alone when a builder is known)."""
        if self._embeds is None:
            return self.build_rows(start, stop)
        return self._embeds[start:stop]

    def select(self, rows: Tensor) -> Tensor:
        """Embeddings ``[R, L, Dt]`` of the prompts ``rows`` (LongTensor ``[R]``), built alone when ``build_index``
        is known."""
        if self._embeds is None and self.build_index is not None:
            return self.build_index(rows)
        return self.embeds.index_select(0, rows)

    @classmethod
    def stack(cls, parts: Sequence["TextInputs"]) -> "TextInputs":
        """Shallow prompt sets one after the other (rows of ``parts[0]``, then ``parts[1]``, ...), still built lazily
        row range by row range: PLOT++'s N sets, each a :class:`TextPrompts` with its own template."""
        if any(p.deep for p in parts):
            raise ValueError("TextInputs.stack takes shallow prompts only")
        bounds = [0]
        for p in parts:
            bounds.append(bounds[-1] + p.n_prompts)

        def build_rows(start: int, stop: int) -> Tensor:
            pieces = [p.rows(max(start, a) - a, min(stop, b) - a)
                      for p, a, b in zip(parts, bounds, bounds[1:]) if max(start, a) < min(stop, b)]
            return torch.cat(pieces) if len(pieces) > 1 else pieces[0]

        return cls(None, torch.cat([p.token_ids for p in parts]), n_sets=sum(p.n_sets for p in parts),
                   build_rows=build_rows)


@dataclass
class VisionInputs:
    """Visual prompts of ``n_views`` prompt sets (each image is encoded once per set, rows ``b * M + m``).

    shallow: ``[M, n, Dv]`` prompts of layer 0; deep: ``[M, n, Dv]`` per block 1.., or None entries. ``insert`` says
    how they enter the ViT:

    * ``"replace"`` (MaPLe, IVLP, VPT): ``shallow`` is appended after the CLS + patch tokens before ``ln_pre`` and
      ``deep[k]`` replaces those slots in the input of block k+1; the prompt outputs of the last prompted block
      travel on through the deeper blocks.
    * ``"append"`` (DPT's deep VPT): the prompts of layer k (``shallow`` for k = 0) are appended after ``ln_pre`` to
      the input of block k and dropped from its output, so every prompted block gets fresh prompts and deeper
      blocks see the CLS + patch tokens only.
    """

    shallow: Tensor
    n_views: int = 1
    deep: List[Optional[Tensor]] = field(default_factory=list)
    insert: str = "replace"


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
            learnable and the rest stay as fixed words (MaPLe/ALIGN); ``"right"`` — ``n_ctx`` learnable tokens,
            the last ones initialised from the tokens of ``ctx_init`` and the leading ones zero (ProGrad).
        init_sets: with ``ctx_init`` and several sets, ``"first"`` initialises only set 0 from the words and
            the others randomly (the ALIGN reference; keeps the sets distinct), ``"all"`` initialises every set.
        csc: class-specific context (CoOp ``CSC``; random init only, as in CoOp).
        position: class token position ``end`` | ``middle`` | ``front``.
        extra_slots: placeholder positions right after the context that the caller fills at build time
            (CoPL's appended conditional tokens): :meth:`build` / :meth:`build_per_image` then take a context of
            ``n_ctx + extra_slots`` tokens. Not with fixed words after the context (``"first"`` with a longer init).
    """

    def __init__(self, clip: PromptedCLIP, classnames: Sequence[str], n_ctx: int = 16, ctx_init: str = "",
                 init_mode: str = "coop", n_sets: int = 1, init_sets: str = "first", csc: bool = False,
                 position: str = "end", std: float = 0.02, dtype: Optional[torch.dtype] = None,
                 extra_slots: int = 0) -> None:
        super().__init__()
        check_choice("class token position", position, POSITIONS)
        check_choice("init_mode", init_mode, ("coop", "first", "right"))
        if extra_slots < 0:
            raise ConfigError(f"extra context slots must be >= 0, got {extra_slots}")
        check_choice("init_sets", init_sets, ("first", "all"))
        if n_sets < 1:
            raise ConfigError(f"the number of prompt sets must be >= 1, got {n_sets}")
        dtype = dtype or clip.dtype
        width = clip.text_width
        self.requested_n_ctx = n_ctx  # CTX_INIT may replace it (init_mode "coop"): the trainer records the change
        names = [_clean(n) for n in classnames]
        n_cls = len(names)
        ctx_init = _clean(ctx_init).strip()
        init_vectors: Optional[Tensor] = None
        if ctx_init:
            if csc:
                print("Note: CSC is ignored when CTX_INIT is set (the context is generic, as in CoOp)")
                csc = False
            n_words = len(ctx_init.split(" "))
            ids = tokenize(ctx_init).to(clip.logit_scale.device)
            with torch.no_grad():
                emb = clip.embed_tokens(ids)
            if init_mode == "right":
                # ProGrad: the init's tokens fill the last slots, the leading ones start at zero (and read "X").
                # Counted in BPE tokens, so punctuation ("pet,") keeps every word of the init in the context.
                n_tok = token_length(ctx_init)
                if n_ctx < n_tok:
                    raise ConfigError(f"N_CTX={n_ctx} is smaller than the {n_tok} tokens of CTX_INIT {ctx_init!r}; "
                                      f"set N_CTX >= {n_tok}")
                init_vectors = torch.zeros(n_ctx, width, dtype=dtype)
                init_vectors[n_ctx - n_tok:] = emb[0, 1:1 + n_tok].to(dtype)
                prompt_prefix = " ".join(["X"] * (n_ctx - n_tok) + [ctx_init])
            else:
                if init_mode == "coop":
                    n_ctx = n_words
                elif n_ctx > n_words:
                    raise ConfigError(f"N_CTX={n_ctx} exceeds the {n_words} words of CTX_INIT {ctx_init!r}")
                init_vectors = emb[0, 1:1 + n_ctx].to(dtype)
                prompt_prefix = ctx_init
        else:
            if n_ctx < 1:
                raise ConfigError(f"N_CTX must be >= 1 without CTX_INIT, got {n_ctx}")
            prompt_prefix = " ".join(["X"] * n_ctx)
        fixed_words = init_mode == "first" and ctx_init and n_ctx < len(ctx_init.split(" "))
        if position != "end" and fixed_words:
            raise ConfigError("class token position middle/front needs the whole CTX_INIT to be learnable")
        if extra_slots and fixed_words:
            raise ConfigError("extra context slots follow the learnable context directly; with fixed CTX_INIT words "
                              "after the context use init_mode 'coop' or a CTX_INIT of N_CTX words")
        self.n_ctx, self.n_sets, self.n_cls, self.csc, self.position = n_ctx, n_sets, n_cls, csc, position
        self.extra_slots = extra_slots
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

        slots = " ".join([prompt_prefix] + ["X"] * extra_slots)  # the extra slots read "X" until filled
        token_ids = tokenize([f"{slots} {n}." for n in names]).to(clip.logit_scale.device)
        with torch.no_grad():
            emb = clip.embed_tokens(token_ids).to(dtype)
        self.register_buffer("token_ids", token_ids, persistent=False)
        self.register_buffer("token_prefix", emb[:, :1], persistent=False)
        self.register_buffer("token_suffix", emb[:, 1 + n_ctx + extra_slots:], persistent=False)
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
        """Prompt embeddings ``[N*C, L, D]`` for a context tensor of the layout of ``self.ctx`` (default
        ``self.ctx``); with ``extra_slots`` the context has ``n_ctx + extra_slots`` tokens."""
        if ctx is None:
            if self.extra_slots:
                raise ValueError(f"these prompts have {self.extra_slots} extra slots: pass a context of "
                                 f"{self.n_ctx + self.extra_slots} tokens to build()")
            ctx = self.ctx
        return self._assemble(self._per_class(ctx))

    def build_per_image(self, ctx: Tensor, classes: slice = slice(None)) -> Tensor:
        """Prompt embeddings ``[B*Cs, L, D]``, image-major (row ``b*Cs + c``), for one generic context per image,
        ``ctx [B, n_ctx (+ extra_slots), D]`` (CoCoOp's ``ctx + π_b``, CoPL's conditioned context), for the classes
        ``classes`` (default all: Cs = C)."""
        if self.csc or self.n_sets != 1:
            raise ValueError("per-image contexts need one generic prompt set (no CSC, n_sets 1)")
        if ctx.dim() != 3:
            raise ValueError(f"per-image contexts must be [B, n_ctx, D], got {tuple(ctx.shape)}")
        n = len(range(*classes.indices(self.n_cls)))
        return self._assemble(ctx.unsqueeze(1).expand(-1, n, -1, -1), classes=classes)

    def build_rows(self, start: int, stop: int) -> Tensor:
        """Embeddings of the set-major prompts ``start .. stop-1`` of :meth:`build` (for ``self.ctx``), built alone."""
        if self.extra_slots:
            raise ValueError(f"these prompts have {self.extra_slots} extra slots: build them with a context")
        ctx = self._per_class(self.ctx)
        parts = []
        for k in range(start // self.n_cls, (stop - 1) // self.n_cls + 1):
            c0, c1 = max(start - k * self.n_cls, 0), min(stop - k * self.n_cls, self.n_cls)
            parts.append(self._assemble(ctx[k:k + 1, c0:c1], classes=slice(c0, c1)))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def build_index(self, rows: Tensor) -> Tensor:
        """Embeddings ``[R, L, D]`` of the set-major prompts ``rows`` (LongTensor ``[R]`` of row indices of
        :meth:`build`, any order) for ``self.ctx``, built alone."""
        if self.extra_slots:
            raise ValueError(f"these prompts have {self.extra_slots} extra slots: build them with a context")
        cls = rows % self.n_cls
        ctx = self._per_class(self.ctx)[rows // self.n_cls, cls]  # [R, n_ctx, D]
        return self._assemble(ctx.unsqueeze(0), classes=cls)

    def _assemble(self, ctx: Tensor, classes: Union[slice, Tensor] = slice(None)) -> Tensor:
        """``ctx [S, Cs, n, D]`` between the frozen prefix and suffix of ``classes`` -> ``[S*Cs, L, D]`` (row
        ``s*Cs + c``)."""
        n_slots = self.n_ctx + self.extra_slots
        if ctx.shape[2] != n_slots:
            raise ValueError(f"the context has {ctx.shape[2]} tokens but the prompts have {n_slots} context slots")
        ctx = ctx.to(self.token_prefix.dtype)
        n_sets, n_cls = ctx.shape[0], ctx.shape[1]
        prefix = self.token_prefix[classes].unsqueeze(0).expand(n_sets, -1, -1, -1)
        suffix = self.token_suffix[classes].unsqueeze(0).expand(n_sets, -1, -1, -1)
        if self.position == "end":
            out = torch.cat([prefix, ctx, suffix], dim=2)
        else:
            half = n_slots // 2
            rows = []
            name_lens = (self.name_lens[classes] if isinstance(classes, slice)
                         else [self.name_lens[i] for i in classes.tolist()])
            for c, nl in enumerate(name_lens):
                name, rest = suffix[:, c, :nl], suffix[:, c, nl:]
                if self.position == "middle":
                    parts = [prefix[:, c], ctx[:, c, :half], name, ctx[:, c, half:], rest]
                else:
                    parts = [prefix[:, c], name, ctx[:, c], rest]
                rows.append(torch.cat(parts, dim=1))
            out = torch.stack(rows, dim=1)
        return out.reshape(n_sets * n_cls, out.shape[2], out.shape[3])

    def forward(self) -> Tuple[Tensor, Tensor]:
        """``(embeddings [N*C, L, D], token_ids [N*C, L])``."""
        return self.build(), self.prompt_token_ids()

    def sets(self, ctx: Optional[Tensor] = None) -> Tensor:
        """The generic context as ``[N, n_ctx, D]`` (one row per prompt set)."""
        ctx = self.ctx if ctx is None else ctx
        if self.csc:
            raise ValueError("class-specific contexts have no per-set layout")
        return ctx if self.n_sets > 1 else ctx.unsqueeze(0)

    def text_inputs(self) -> TextInputs:
        """The prompt-learner protocol: shallow prompts only."""
        if self.extra_slots:
            return TextInputs(self.build(), self.prompt_token_ids(), n_sets=self.n_sets)
        return TextInputs(None, self.token_ids, n_sets=self.n_sets, build_rows=self.build_rows,
                          build_index=self.build_index, ids_repeat=self.n_sets)

    def vision_inputs(self) -> None:
        """The prompt-learner protocol: no visual prompts."""
        return None

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
            start = 1 + self.n_ctx + self.extra_slots + fixed
            mask[c, start:min(start + nl, length)] = True
        return mask


class DeepPrompts(nn.Module):
    """Deep prompts of both towers and the text→vision coupling (MaPLe / IVLP / VPT / ALIGN).

    Text: ``text[k]`` of shape ``[N, n_t, Dt]`` replaces the context positions in the input of text block k+1,
    for k < ``text_depth - 1``. Vision:

    * ``coupled=True`` (MaPLe, ALIGN): the shallow visual prompts are ``shallow_proj(text ctx)`` and the deep
      ones ``proj[k](text[k])``: one visual set per text set, same length and depth as the text prompts.
    * ``coupled=False`` (IVLP, VPT, ALIGN with M != N): ``vision_shallow [M, n_v, Dv]`` and
      ``vision[k] [M, n_v, Dv]`` for k < ``vision_depth - 1``; ``vision_depth=0`` means no visual prompts.

    Parameter names (checkpoint keys): ``text.{k}``, ``shallow_proj.{weight,bias}``, ``proj.{k}.{weight,bias}``,
    ``vision_shallow``, ``vision.{k}``.
    """

    def __init__(self, n_ctx: int, depth: int, text_width: int, vision_width: int, n_sets: int = 1,
                 n_vis_sets: Optional[int] = None, coupled: bool = True, std: float = 0.02,
                 dtype: torch.dtype = torch.float32, n_ctx_vision: Optional[int] = None,
                 vision_depth: Optional[int] = None) -> None:
        super().__init__()
        n_vis_sets = n_sets if n_vis_sets is None else n_vis_sets
        n_ctx_vision = n_ctx if n_ctx_vision is None else n_ctx_vision
        vision_depth = depth if vision_depth is None else vision_depth
        if depth < 0 or vision_depth < 0:
            raise ConfigError(f"prompt depths must be >= 0, got text {depth} and vision {vision_depth}")
        if coupled:
            if depth < 1:
                raise ConfigError(f"coupled prompts need a prompt depth >= 1, got {depth}")
            if n_vis_sets != n_sets:
                raise ConfigError(
                    f"coupled visual prompts are projections of the text prompts, so the number of visual prompt "
                    f"sets ({n_vis_sets}) must equal the number of text prompt sets ({n_sets}); set them equal or use "
                    "independent visual prompts")
            if (n_ctx_vision, vision_depth) != (n_ctx, depth):
                raise ConfigError(
                    f"coupled visual prompts have the text prompts' length and depth ({n_ctx} tokens, depth {depth}); "
                    f"got {n_ctx_vision} tokens and depth {vision_depth} for the vision side")
        # coupled prompts may have 0 tokens (N_CTX 0 with the whole CTX_INIT fixed: zero-shot CLIP)
        if not coupled and vision_depth > 0 and (n_ctx_vision < 1 or n_vis_sets < 1):
            raise ConfigError(f"visual prompts need >= 1 token and >= 1 set, got {n_ctx_vision} and {n_vis_sets}")
        self.n_ctx, self.depth, self.coupled, self.n_sets, self.n_vis_sets = n_ctx, depth, coupled, n_sets, n_vis_sets
        self.n_ctx_vision, self.vision_depth = n_ctx_vision, vision_depth

        def param(width: int, sets: int, length: int) -> nn.Parameter:
            p = torch.empty(sets, length, width, dtype=dtype)
            nn.init.normal_(p, std=std)
            return nn.Parameter(p)

        # Creation order fixes the random init for a seed: text prompts, then the vision side.
        self.text = nn.ParameterList([param(text_width, n_sets, n_ctx) for _ in range(max(depth - 1, 0))])
        if coupled:
            self.shallow_proj = nn.Linear(text_width, vision_width).to(dtype)
            self.proj = nn.ModuleList([nn.Linear(text_width, vision_width).to(dtype) for _ in range(depth - 1)])
        elif vision_depth > 0:
            self.vision_shallow = param(vision_width, n_vis_sets, n_ctx_vision)
            self.vision = nn.ParameterList([param(vision_width, n_vis_sets, n_ctx_vision)
                                            for _ in range(vision_depth - 1)])

    @property
    def has_vision(self) -> bool:
        return self.coupled or self.vision_depth > 0

    def visual(self, text_ctx: Optional[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        """``(shallow [M, n, Dv], deep list of [M, n, Dv])``; ``text_ctx [N, n_ctx, Dt]`` when coupled."""
        if not self.has_vision:
            raise ValueError("these deep prompts have no visual side (vision depth 0)")
        if self.coupled:
            if text_ctx is None:
                raise ValueError("coupled visual prompts need the shallow text context")
            w = self.shallow_proj.weight
            return self.shallow_proj(text_ctx.to(w.dtype)), [f(t) for f, t in zip(self.proj, self.text)]
        return self.vision_shallow, list(self.vision)


class MultiModalPrompts(nn.Module):
    """The prompt learner of MaPLe, IVLP, language-only prompting, VPT and ALIGN.

    ``text``: a :class:`TextPrompts` with ``n_sets`` = N text prompt sets (MaPLe-style init: the first ``n_ctx``
    words of ``ctx_init`` learnable, the rest frozen), or None when the text side is a frozen classifier (VPT).
    ``deep``: the :class:`DeepPrompts` (deep text prompts of depth ``text_depth`` and the visual prompts: coupled
    to the text, or ``vision_sets`` = M independent sets of ``n_ctx_vision`` tokens and depth ``vision_depth``).

    Protocol: :meth:`text_inputs` (N*C prompts, set-major, deep prompts replicated per class) and
    :meth:`vision_inputs` (M visual sets; the model encodes each image once per set). ``vision_insert``: how the
    visual prompts enter the ViT, ``"replace"`` (MaPLe-style) or ``"append"`` (DPT-style; see :class:`VisionInputs`).
    """

    def __init__(self, clip: PromptedCLIP, classnames: Sequence[str], *, n_ctx: int = 2,
                 ctx_init: str = "a photo of a", text_depth: int = 1, text_sets: int = 1, init_sets: str = "first",
                 learn_text: bool = True, coupled: bool = True, n_ctx_vision: Optional[int] = None,
                 vision_depth: Optional[int] = None, vision_sets: Optional[int] = None,
                 dtype: Optional[torch.dtype] = None, deep_dtype: torch.dtype = torch.float32,
                 vision_insert: str = "replace") -> None:
        super().__init__()
        check_choice("vision_insert", vision_insert, VISION_INSERTS)
        self.vision_insert = vision_insert
        if coupled and not learn_text:
            raise ConfigError("coupled visual prompts are projections of learnable text prompts; with a frozen "
                              "text side use independent visual prompts")
        if not clip.is_vit and (coupled or (vision_depth or 0) > 0):
            raise ConfigError("visual prompts need a ViT backbone (e.g. ViT-B/16); this model has a ModifiedResNet")
        self.text: Optional[TextPrompts] = (
            TextPrompts(clip, classnames, n_ctx=n_ctx, ctx_init=ctx_init, init_mode="first", n_sets=text_sets,
                        init_sets=init_sets, dtype=dtype) if learn_text else None)
        # Deep prompts and couplings stay fp32 whatever PREC (as MaPLe's compound prompts); the encoders cast them.
        self.deep = DeepPrompts(n_ctx, text_depth if learn_text else 0, clip.text_width, clip.vision_width,
                                n_sets=text_sets, n_vis_sets=vision_sets, coupled=coupled, dtype=deep_dtype,
                                n_ctx_vision=n_ctx_vision, vision_depth=vision_depth)
        self.n_cls = len(classnames)

    @property
    def n_views(self) -> int:
        """M: visual prompt sets (1 without visual prompts)."""
        return self.deep.n_vis_sets if self.deep.has_vision else 1

    def text_ctx(self) -> Tensor:
        """Shallow text context as ``[N, n_ctx, Dt]``."""
        if self.text is None:
            raise ValueError("this prompt learner has no learnable text context")
        return self.text.sets()

    def text_inputs(self) -> Optional[TextInputs]:
        """``N*C`` set-major prompts with per-set deep text prompts; None for a frozen text side."""
        if self.text is None:
            return None
        t = self.text
        return TextInputs(None, t.token_ids, n_sets=t.n_sets, deep=list(self.deep.text), build_rows=t.build_rows,
                          build_index=t.build_index, ids_repeat=t.n_sets)

    def vision_inputs(self) -> Optional[VisionInputs]:
        if not self.deep.has_vision:
            return None
        shallow, deep = self.deep.visual(self.text_ctx() if self.deep.coupled else None)
        return VisionInputs(shallow, n_views=shallow.shape[0], deep=list(deep), insert=self.vision_insert)


def check_prompt_depth(clip: PromptedCLIP, key: str, depth: int, tower: str = "both") -> None:
    """Raise a :class:`ConfigError` naming ``key`` when a prompt depth J (prompts in layers 0..J-1, the input
    counting as layer 0) exceeds the blocks of ``clip``'s ``tower``: ``"text"``, ``"vision"`` or ``"both"``."""
    check_choice("tower", tower, ("text", "vision", "both"))
    if tower != "text" and depth > 0 and not clip.is_vit:
        raise ConfigError(f"{key} is {depth}: visual prompts need a ViT backbone (e.g. ViT-B/16), this model has a "
                          "ModifiedResNet image tower; use a ViT backbone or a vision prompt depth of 0")
    towers = {"text": clip.text_layers, "vision": clip.vision_layers}
    for name, layers in towers.items():
        if tower in (name, "both") and depth > layers:
            raise ConfigError(f"{key} is {depth} but the backbone's {name} transformer has {layers} layers; "
                              f"use a depth between 0 and {layers} (prompts in layers 0..depth-1)")


class MetaNet(nn.Sequential):
    """CoCoOp's Meta-Net: ``Linear(in, in // 16) -> ReLU -> Linear(in // 16, out)`` (keys ``linear1``, ``linear2``).

    CoCoOp applies it to the normalised global image feature (one shift for every context token); CoPL applies
    it to every patch token with shared weights.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: Optional[int] = None,
                 dtype: torch.dtype = torch.float32) -> None:
        hidden = max(in_dim // 16, 1) if hidden is None else hidden
        super().__init__(OrderedDict([("linear1", nn.Linear(in_dim, hidden)), ("relu", nn.ReLU(inplace=True)),
                                      ("linear2", nn.Linear(hidden, out_dim))]))
        self.to(dtype)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return super().forward(x.to(self.linear1.weight.dtype))
