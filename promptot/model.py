"""The model-side protocol every trainer's model follows, and the shared models built on it.

A prompt model is a frozen :class:`~promptot.clip.PromptedCLIP` plus learnable parts. It shows the trainer base
three methods, so training, evaluation caches and checkpoints are written once:

* ``text_side()`` — the text representation (e.g. normalised class features ``[C, D]``). When it does not depend
  on the images (``text_is_static``), evaluation computes it once per test run and passes it back.
* ``image_side(images)`` — the image representation for a batch ``[B, 3, H, W]``.
* ``logits(image, text)`` — ``[B, C]`` logits, or a :class:`ModelOutput` carrying diagnostics to log (e.g. the OT
  plan entropy) and auxiliary outputs a loss may use (e.g. DPT's per-layer class-aware logits).

``run(images, text=None)`` composes them into a :class:`ModelOutput`; ``forward`` returns its logits.

Shared pieces: :meth:`PromptModel.encode_text_prompts` / :meth:`PromptModel.encode_images` encode both towers with
the prompt learner's :class:`~promptot.prompts.TextInputs` / :class:`~promptot.prompts.VisionInputs` (prompt-set
replication included), :meth:`PromptModel.encode_per_image_prompts` encodes image-conditioned prompts (one context
per image, B×C prompts in bounded chunks: CoCoOp, CoPL), :class:`CosineModel` is CLIP's cosine classifier over them
(CoOp, MaPLe, IVLP, VPT, zero-shot CLIP), and :func:`template_features` gives frozen hand-crafted class features.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .clip import AppendTokensHook, BlockHook, PromptedCLIP, TextOutput, VisionOutput, tokenize

if TYPE_CHECKING:  # prompts.py builds on the CLIP wrapper only; no runtime import needed here
    from .prompts import TextPrompts

__all__ = ["ModelOutput", "PromptModel", "CosineModel", "ClassText", "ClassChunk", "encode_text_by_class",
           "template_features"]


@dataclass
class ModelOutput:
    """logits ``[B, C]``; diagnostics: scalar tensors logged with the training loss (e.g. ``plan_ent``);
    aux: anything else a training loss may need (e.g. auxiliary logits, features)."""

    logits: Tensor
    diagnostics: Dict[str, Tensor] = field(default_factory=dict)
    aux: Dict[str, Any] = field(default_factory=dict)


class PromptModel(nn.Module):
    """Base of every trainer's model: a frozen prompted CLIP (``clip``) + an optional ``prompt_learner``.

    Subclasses implement :meth:`text_side`, :meth:`image_side` and :meth:`logits`.
    """

    #: True when :meth:`text_side` does not depend on the images (evaluation caches it).
    text_is_static: bool = True

    def __init__(self, clip: PromptedCLIP, prompt_learner: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.clip = clip
        self.prompt_learner = prompt_learner

    # ------------------------------------------------------------------ protocol
    def text_side(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement text_side()")

    def image_side(self, images: Tensor) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement image_side(images)")

    def logits(self, image: Any, text: Any) -> Union[Tensor, ModelOutput]:
        raise NotImplementedError(f"{type(self).__name__} must implement logits(image, text)")

    def run(self, images: Tensor, text: Any = None) -> ModelOutput:
        """Logits and diagnostics for ``images [B, 3, H, W]``; ``text``: a cached :meth:`text_side`."""
        if text is None:
            text = self.text_side()
        out = self.logits(self.image_side(images), text)
        return out if isinstance(out, ModelOutput) else ModelOutput(out)

    def forward(self, images: Tensor, text: Any = None) -> Tensor:
        """Logits ``[B, C]``."""
        return self.run(images, text).logits

    # ------------------------------------------------------------------ shared encoders
    @property
    def scale(self) -> Tensor:
        """CLIP's logit scale ``exp(logit_scale)`` (≈ 100 = 1/τ)."""
        return self.clip.logit_scale.exp()

    def encode_text_prompts(self, return_tokens: bool = False, hooks=None) -> TextOutput:
        """The learner's ``N*C`` prompts (set-major rows ``k*C + c``) through the text tower."""
        ti = self.prompt_learner.text_inputs() if self.prompt_learner is not None else None
        if ti is None:
            raise ValueError(f"{type(self).__name__}: the prompt learner has no text prompts")
        chunk = int(getattr(self, "text_chunk", 0) or 0)
        if chunk and ti.n_prompts > chunk and not hooks:
            return encode_text_chunked(self.clip, ti, chunk, return_tokens)
        return self.clip.encode_text(ti.embeds, ti.token_ids, deep_prompts=ti.deep_for(slice(None)) or None,
                                     deep_start=ti.deep_start, return_tokens=return_tokens, hooks=hooks)

    def encode_text_by_class(self, token_mask: Callable[[int], Tensor], lazy: bool = False) -> "ClassText":
        """The learner's ``N*C`` prompts through the text tower class chunk by class chunk, for token-level OT
        (:func:`encode_text_by_class`; ``token_mask(L)``: the ``[C, L]`` token-set mask). ``MODEL.TEXT_CHUNK``
        prompts (whole classes, at least one class) per chunk; all classes in one chunk without it."""
        ti = self.prompt_learner.text_inputs() if self.prompt_learner is not None else None
        if ti is None:
            raise ValueError(f"{type(self).__name__}: the prompt learner has no text prompts")
        chunk = int(getattr(self, "text_chunk", 0) or 0)
        return encode_text_by_class(self.clip, ti, max(1, chunk // ti.n_sets) if chunk else ti.n_cls, token_mask,
                                    lazy)

    def encode_per_image_prompts(self, prompts: "TextPrompts", ctx: Tensor, max_prompts: int = 2048) -> Tensor:
        """Class features ``[B, C, E]`` (not normalised) of image-conditioned prompts: image b's C prompts carry the
        context ``ctx[b]`` (``ctx [B, n_slots, Dt]``, see :meth:`TextPrompts.build_per_image`).

        The B×C prompts go through the text tower in chunks of whole images, at most ``max_prompts`` prompts per call
        (always at least one image), so a test batch costs B×C/``max_prompts`` calls instead of B, with bounded memory.
        """
        if max_prompts < 1:
            raise ValueError(f"max_prompts must be >= 1, got {max_prompts}")
        n_img, n_cls = ctx.shape[0], prompts.n_cls
        chunk = int(getattr(self, "text_chunk", 0) or 0)
        if chunk and torch.is_grad_enabled():
            return self._per_image_prompts_checkpointed(prompts, ctx, chunk)
        per_call = max(1, max_prompts // n_cls)
        ids = prompts.prompt_token_ids()
        out = []
        for start in range(0, n_img, per_call):
            chunk = ctx[start:start + per_call]
            feats = self.clip.encode_text(prompts.build_per_image(chunk), ids.repeat(chunk.shape[0], 1)).features
            out.append(feats.reshape(chunk.shape[0], n_cls, -1))
        return torch.cat(out)

    def _per_image_prompts_checkpointed(self, prompts: "TextPrompts", ctx: Tensor, chunk: int) -> Tensor:
        """:meth:`encode_per_image_prompts` with ``MODEL.TEXT_CHUNK`` under autograd: ``chunk`` classes of one image
        per call, each call recomputed in backward, so only one chunk's activations and the ``[B, C, E]`` outputs
        are kept (memory flat in C and B)."""
        ids = prompts.prompt_token_ids()
        rows = []
        for b in range(ctx.shape[0]):
            cols = []
            for c0 in range(0, prompts.n_cls, chunk):
                classes = slice(c0, min(c0 + chunk, prompts.n_cls))

                def run(ctx_b: Tensor, classes: slice = classes) -> Tensor:
                    emb = prompts.build_per_image(ctx_b, classes)
                    return self.clip.encode_text(emb, ids[classes]).features

                cols.append(checkpoint(run, ctx[b:b + 1], use_reentrant=False))
            rows.append(torch.cat(cols))
        return torch.stack(rows)

    @staticmethod
    def per_class(x: Tensor, n_sets: int) -> Tensor:
        """Set-major rows ``[N*C, ...]`` (row ``k*C + c``) -> ``[C, N, ...]``."""
        return x.reshape(n_sets, x.shape[0] // n_sets, *x.shape[1:]).transpose(0, 1)

    def n_views(self) -> int:
        """M: how many times each image is encoded (one per visual prompt set)."""
        vi = self.prompt_learner.vision_inputs() if self.prompt_learner is not None else None
        return 1 if vi is None else vi.n_views

    def encode_images(self, images: Tensor, return_tokens: bool = False, hooks=None) -> VisionOutput:
        """``images [B, 3, H, W]`` through the image tower with the learner's visual prompts (inserted as their
        :class:`~promptot.prompts.VisionInputs` say; ``hooks`` run after the prompts' own); with M visual prompt sets
        every image is encoded M times, rows ``b*M + m`` (set m)."""
        vi = self.prompt_learner.vision_inputs() if self.prompt_learner is not None else None
        if vi is None:
            return self.clip.encode_image(images, return_tokens=return_tokens, hooks=hooks)
        b, m = images.shape[0], vi.n_views

        def per_row(p: Optional[Tensor]) -> Optional[Tensor]:
            # [M, n, D] -> rows b*M + m; a single set broadcasts as [1, n, D]
            return p if p is None or m == 1 else p.repeat(b, 1, 1)

        x = images if m == 1 else images.repeat_interleave(m, dim=0)
        if vi.insert == "append":
            # DPT-style: layer k's prompts go into block k only (after ln_pre) and are dropped after it
            layers = {0: per_row(vi.shallow)}
            layers.update({k + 1: per_row(d) for k, d in enumerate(vi.deep) if d is not None})
            extra = [] if hooks is None else [hooks] if isinstance(hooks, BlockHook) else list(hooks)
            return self.clip.encode_image(x, return_tokens=return_tokens, hooks=[AppendTokensHook(layers)] + extra)
        return self.clip.encode_image(x, prompts=per_row(vi.shallow), deep_prompts=[per_row(d) for d in vi.deep],
                                      return_tokens=return_tokens, hooks=hooks)


class CosineModel(PromptModel):
    """CLIP's classifier: ``scale · cos(image feature, class feature)``.

    Class features come from the learner's text prompts (one prompt set), or from ``frozen_text [C, E]`` (VPT,
    zero-shot CLIP: a hand-crafted classifier kept as a buffer). Image features come from the (prompted) image tower.
    ``hand_text [C, E]``: hand-crafted class features kept *beside* the learned classifier, unused by the logits, for
    losses that compare with zero-shot CLIP (KgCoOp's guidance term, ProGrad's teacher, :meth:`hand_logits`).
    Both buffers are non-persistent: rebuilt from the class names, never in checkpoints.
    """

    def __init__(self, clip: PromptedCLIP, prompt_learner: Optional[nn.Module] = None,
                 frozen_text: Optional[Tensor] = None, hand_text: Optional[Tensor] = None) -> None:
        super().__init__(clip, prompt_learner)
        self.register_buffer("frozen_text", None if frozen_text is None else F.normalize(frozen_text.float(), dim=-1),
                             persistent=False)
        self.register_buffer("hand_text", None if hand_text is None else F.normalize(hand_text.float(), dim=-1),
                             persistent=False)
        if frozen_text is None and (prompt_learner is None or prompt_learner.text_inputs() is None):
            raise ValueError("CosineModel needs text prompts in the learner or a frozen_text classifier")

    def text_side(self) -> Tensor:
        """Normalised class features ``[C, E]``."""
        if self.frozen_text is not None:
            return self.frozen_text
        return F.normalize(self.encode_text_prompts().features, dim=-1)

    def image_side(self, images: Tensor) -> Tensor:
        """Normalised image features ``[B, E]``."""
        return F.normalize(self.encode_images(images).features, dim=-1)

    def logits(self, image: Tensor, text: Tensor) -> Tensor:
        return self.scale * image @ text.to(image.dtype).t()

    def hand_logits(self, image: Tensor) -> Tensor:
        """Zero-shot logits ``[B, C]`` (fp32) of normalised image features ``image [B, E]`` against ``hand_text``."""
        if self.hand_text is None:
            raise ValueError(f"{type(self).__name__} was built without hand_text")
        return self.scale.float() * image.float() @ self.hand_text.t()


def encode_text_chunked(clip: PromptedCLIP, ti, chunk: int, return_tokens: bool = False) -> TextOutput:
    """:meth:`PromptedCLIP.encode_text` over ``chunk`` prompts at a time; under autograd each chunk is recomputed in
    backward (activation checkpointing), so the text tower keeps the activations of one chunk instead of all ``N*C``
    prompts: training memory stops growing with the number of classes (``MODEL.TEXT_CHUNK``). Outputs equal the
    unchunked call; returned tokens are zero-padded to the positions the unchunked call keeps (positions after EOT are
    padding anyway): each chunk pads inside its checkpoint, so only the chunk outputs and their concatenation are ever
    alive, not a padded copy of each as well."""
    n = ti.n_prompts
    length = clip.text_length(ti.token_ids, ti.deep, ti.deep_start) if return_tokens else None
    outs = []
    for s in range(0, n, chunk):
        rows = slice(s, min(s + chunk, n))

        def run(i: Tensor, rows: slice = rows) -> TextOutput:
            # the chunk's embeddings and deep prompts are built inside (and rebuilt in backward) from the learnable
            # parameters, so the prompts of only one chunk are ever alive
            return clip.encode_text(ti.rows(rows.start, rows.stop), i, deep_prompts=ti.deep_for(rows) or None,
                                    deep_start=ti.deep_start, return_tokens=return_tokens, pad_tokens_to=length)

        ids = ti.ids_for(rows)
        outs.append(checkpoint(run, ids, use_reentrant=False) if torch.is_grad_enabled() else run(ids))
    feats = torch.cat([o.features for o in outs])
    eot = torch.cat([o.eot_index for o in outs])
    if not return_tokens:
        return TextOutput(features=feats, eot_index=eot)
    toks = torch.cat([o.tokens for o in outs])
    del outs
    return TextOutput(features=feats, tokens=toks, eot_index=eot)


@dataclass
class ClassChunk:
    """Some classes of a :class:`ClassText`: ``classes [Cc]`` (class indices), ``mask [Cc, 1, Lc]`` (True = a
    position of the class's token set), and their ``(features [Cc, N, E], tokens [Cc, N, Lc, E])``: ``value`` when
    encoded already, else computed by ``run()`` (the plain text pass: no checkpointing, the caller decides)."""

    classes: Tensor
    mask: Tensor
    run: Callable[[], Tuple[Tensor, Tensor]]
    value: Optional[Tuple[Tensor, Tensor]] = None

    def encode(self) -> Tuple[Tensor, Tensor]:
        """``value``, or the text pass now (checkpointed under autograd)."""
        if self.value is not None:
            return self.value
        return checkpoint(self.run, use_reentrant=False) if torch.is_grad_enabled() else self.run()


@dataclass
class ClassText:
    """The text side of a token-level OT model, class chunk by class chunk (:func:`encode_text_by_class`): chunks of
    length-sorted classes; ``order`` ``[C]``: the classes of the chunks, one after the other."""

    chunks: List[ClassChunk]
    order: Tensor


def encode_text_by_class(clip: PromptedCLIP, ti, classes_per_chunk: int, token_mask: Callable[[int], Tensor],
                         lazy: bool = False) -> ClassText:
    """Features and token sets of the ``N*C`` set-major prompts of ``ti`` for token-level OT, class chunk by class
    chunk (:class:`ClassText`).

    Classes are sorted by the positions the text pass keeps for them (their longest prompt) and encoded
    ``classes_per_chunk`` at a time, all N prompts of a class together, each chunk cut after its own longest EOT: a
    chunk's tokens ``[Cc, N, Lc, E]`` hold only its own positions. ``lazy``: nothing is encoded yet, the caller runs
    each chunk (:class:`ClassChunk`), e.g. inside one checkpoint with the chunk's token-level OT so that no
    ``[C, N, L, E]`` token tensor is ever alive; otherwise every chunk is encoded now (a cached text side), each
    chunk checkpointed under autograd.
    ``token_mask(L)``: ``[C, L]`` bool, True on the positions of a class's token set (for every prompt of the class);
    it must be False from the class's kept length on."""
    n_sets, n_cls = ti.n_sets, ti.n_cls
    ids = ti.token_ids
    kept = clip.text_lengths(ids, ti.deep, ti.deep_start).view(n_sets, n_cls).amax(0)  # [C]
    del ids
    length = int(kept.max())
    mask = token_mask(length)
    if mask.shape != (n_cls, length):
        raise ValueError(f"token_mask({length}) must be [C, L] = [{n_cls}, {length}], got {tuple(mask.shape)}")
    late = mask & (torch.arange(length, device=mask.device) >= kept.to(mask.device)[:, None])
    if bool(late.any()):
        c = int(late.any(1).nonzero()[0])
        raise ValueError(f"token_mask marks position {int(late[c].nonzero()[0])} of class {c} as a real token, but the "
                         f"text pass keeps only its first {int(kept[c])} positions (up to its EOT)")
    order = torch.argsort(kept, stable=True)
    sets = torch.arange(n_sets, device=order.device)[:, None] * n_cls
    chunks = []
    for idx in order.split(classes_per_chunk):
        rows = (sets + idx[None]).reshape(-1)  # set-major within the chunk: row k*Cc + j

        def run(rows: Tensor = rows, cc: int = len(idx)) -> Tuple[Tensor, Tensor]:
            out = clip.encode_text(ti.select(rows), ti.ids_for(rows), deep_prompts=ti.deep_for(rows) or None,
                                   deep_start=ti.deep_start, return_tokens=True)
            t = out.tokens
            return (out.features.view(n_sets, cc, -1).transpose(0, 1),
                    t.view(n_sets, cc, *t.shape[1:]).transpose(0, 1).contiguous())

        chunk = ClassChunk(idx, mask[idx.to(mask.device), :int(kept[idx].max())].unsqueeze(1), run)
        if not lazy:
            chunk.value = chunk.encode()
        chunks.append(chunk)
    return ClassText(chunks, order)


@torch.no_grad()
def template_features(clip: PromptedCLIP, classnames: Sequence[str], templates: Sequence[str],
                      verbose: bool = True, normalize_each: bool = True) -> Tensor:
    """Hand-crafted class features ``[C, E]`` (fp32, normalised): for each template, the frozen CLIP's normalised
    features of ``template.format(name)``; averaged over templates and normalised again (CoOp's ZeroshotCLIP2).
    ``normalize_each=False`` averages the raw features before the one normalisation (PromptSRC's frozen features)."""
    device = clip.logit_scale.device
    names = [c.replace("_", " ") for c in classnames]
    feats = 0
    for t in templates:
        if verbose:
            print(f"Prompt template: {t!r}")
        ids = tokenize([t.format(n) for n in names]).to(device)
        f = clip.encode_text_ids(ids).float()
        feats = feats + (F.normalize(f, dim=-1) if normalize_each else f)
    return F.normalize(feats, dim=-1)
