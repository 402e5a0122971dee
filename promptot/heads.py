"""Classification heads shared by trainers: cosine logits, PLOT's pooled global logit, and the OT-scored prompt
model (the OT numerics live in :mod:`promptot.ot`)."""
from __future__ import annotations

from typing import Any, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .errors import ConfigError
from .model import ClassText, ModelOutput, PromptModel
from .ot import HierarchicalOTHead, OTHeadConfig, TokenPieces, TokenTerm


def cosine_logits(scale: Tensor, img: Tensor, txt: Tensor) -> Tensor:
    """CLIP logits ``scale · s(img [B, D], txt [C, D])`` -> ``[B, C]`` (both sides L2-normalised)."""
    return scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()


def pooled_prompt_logits(scale: Tensor, img: Tensor, txt: Tensor) -> Tensor:
    """Global logit of PLOT/PLOT++ as the reference code computes it: the N prompt features of a class are averaged
    *unnormalised* and the mean is normalised, ``scale · s(img [B, D], mean_n txt [C, N, D])`` -> ``[B, C]`` (fp32).
    Pass raw features: normalising each prompt before the mean weighs them differently when their norms differ."""
    pooled = F.normalize(txt.float().mean(1), dim=-1)
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
        """OT logits with two logged diagnostics: ``plan_ent``, the mean normalised entropy of the prompt-level plans
        (1 = uniform plans: the OT has no effect; training only), and ``ot_err``, the largest Sinkhorn marginal error
        of this forward (the trainer warns once per run when it is large)."""
        logits, diag = self.head(img_global, txt_global, self.scale, log=True, **tokens)
        err = diag["prompt_marginal_err"]
        if "token_marginal_err" in diag:
            err = torch.maximum(err, diag["token_marginal_err"])
        out = {"ot_err": err}
        if self.training:
            out["plan_ent"] = diag["plan_entropy"]
        return ModelOutput(logits, diagnostics=out)

    def ot_by_class(self, img_global: Tensor, img_tokens: Tensor, text: ClassText) -> ModelOutput:
        """:meth:`ot` with the text side class chunk by class chunk (``img_tokens [B, M, P, D]``, ``text`` from
        :meth:`~promptot.model.PromptModel.encode_text_by_class`). A chunk not encoded yet (a lazy text side, under
        autograd) runs its text pass and its token-level OT in one checkpoint: only its features ``[Cc, N, E]`` and
        token term ``[B, Cc, M, N]`` are kept, backward recomputes the chunk, and training memory holds no
        ``[C, N, L, E]`` text tokens nor any per-class token state, whatever C. (The Sinkhorn loops run twice, as
        with tile checkpointing: once forward, once in the recomputation.)"""
        feats, terms = [], []
        for ch in text.chunks:
            if not self.head.uses_tokens:
                feats.append(ch.encode()[0])
                continue
            order = torch.arange(len(ch.classes), device=img_tokens.device)  # length-sorted already: tiles are views

            def run(img_tokens: Tensor, ch=ch, order=order) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
                f, t = ch.encode() if ch.value is not None else ch.run()
                tt = self.head.token_term(img_tokens, TokenPieces([t], [ch.mask], order),
                                          checkpoint_tiles=ch.value is not None)
                return f, tt.term, tt.iters, tt.errs

            fused = ch.value is None and torch.is_grad_enabled()
            f, term, iters, errs = checkpoint(run, img_tokens, use_reentrant=False) if fused else run(img_tokens)
            feats.append(f)
            terms.append(TokenTerm(term, iters, errs))
        inv = torch.empty_like(text.order)
        inv[text.order] = torch.arange(text.order.numel(), device=text.order.device)
        glob = torch.cat(feats).index_select(0, inv.to(feats[0].device))
        return self.ot(img_global, glob, token_term=TokenTerm.cat(terms, text.order) if terms else None)
