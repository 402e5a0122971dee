"""ProGrad: CoOp trained with prompt-aligned gradients (Zhu et al., "Prompt-aligned Gradient for Prompt Tuning",
ICCV 2023; reference code BeierZhu/Prompt-align, ``ProGrad.public/trainers/prograd.py`` and
``Dassl.ProGrad.pytorch/dassl/engine/trainer.py: prograd_backward_and_update``).

Per step, with the student logits l_s (CoOp) and the frozen zero-shot teacher's l_zs (the same image feature scored
against the hand-crafted class features of the ``TEMPLATES`` table, ``logit_scale · cos``):

* g_d = ∇ CE(l_s, y), the only loss that is backpropagated and logged as ``loss``;
* g_g = ∇ KL, with ``KL = T² · mean_b Σ_c −softmax(l_zs/T) · log_softmax(l_s/T)`` (logged ``kl_loss``), taken with
  ``torch.autograd.grad`` on the same graph (no second forward pass);
* per parameter tensor, :func:`promptot.gradients.project_conflicting`: if cos(g_d, g_g) < 0 the optimizer steps
  with ``g_d − λ (g_d · ĝ_g) ĝ_g``, else with g_d (logged ``proj``: the fraction of tensors projected). g_g only sets
  a direction; it is never added.

Config ``TRAINER.PROGRAD``: CoOp's keys with their reference defaults (``N_CTX 16``, ``CSC False``, ``CTX_INIT ""``,
``PREC fp16``, ``CLASS_TOKEN_POSITION end``) plus ``LAMBDA 1.0`` (λ; the reference README uses 0.8 for 8/16 shots on
Flowers102, DTD and EuroSAT), ``T 1.0``, ``TEMPLATES prograd`` and ``TEMPLATE ""`` (as KgCoOp's). From the reference
command line: ``LOSS.LAMBDA`` / ``LOSS.T`` → ``TRAINER.PROGRAD.LAMBDA`` / ``T``, ``TRAINER.COOP.*`` →
``TRAINER.PROGRAD.*``, and the yaml's ``CTX_INIT: True`` → ``CTX_INIT "template"``.

Context initialisation, as the reference: ``N_CTX`` slots, the init words right-aligned in the last ones and the
leading slots zero ("X" in the tokenised prompt). ``CTX_INIT "template"`` takes the words of the dataset's template
before the trailing " {}." (e.g. "a type of pet, a photo of a"); any other non-empty value is used as words. One
deliberate difference: the init is counted in BPE tokens, whereas the reference counts words, so for an init with
punctuation ("pet,") the reference drops the init's last token from the context and keeps a word fixed after it.

The teacher reuses the student's image feature: CoOp does not prompt the image tower, so it is the zero-shot
image feature (computed in the CLIP's precision; the reference teacher is always fp32). Official checkpoints hold
``ctx`` (plus the class-dependent ``token_prefix/suffix``, never loaded) and load as they are.

Composition: :class:`~promptot.prompts.TextPrompts` (``init_mode "right"``) + :class:`~promptot.model.CosineModel`
holding the teacher's class features (``hand_text``, from :func:`~promptot.model.template_features`; the teacher's
logits are its ``hand_logits``), the projection as :meth:`transform_gradients`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from promptot.config import HandTemplateConfig, register_trainer_config
from promptot.engine import TRAINER_REGISTRY, compute_accuracy
from promptot.errors import ConfigError
from promptot.gradients import ProGradProjection
from promptot.model import CosineModel, template_features
from promptot.prompts import TextPrompts
from promptot.trainer import PromptTrainer

from .coop import CoOpConfig


@register_trainer_config("PROGRAD")
@dataclass
class ProGradConfig(CoOpConfig, HandTemplateConfig):
    LAMBDA: float = 1.0
    T: float = 1.0
    TEMPLATES: str = "prograd"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_templates()
        if self.T <= 0:
            raise ConfigError(f"{self.key('T')} is the distillation temperature and must be > 0, got {self.T}")
        if self.LAMBDA < 0:
            raise ConfigError(f"{self.key('LAMBDA')} scales the removed gradient component and must be >= 0, "
                              f"got {self.LAMBDA}")


def prograd_kl(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """``T² · mean_b Σ_c −softmax(teacher/T) · log_softmax(student/T)`` for logits ``[B, C]`` (fp32 scalar): the
    reference's ``kl_loss`` (soft-label cross-entropy; the same gradient as KL(p_teacher ‖ p_student))."""
    p_teacher = F.softmax(teacher.float() / temperature, dim=-1)
    log_p = F.log_softmax(student.float() / temperature, dim=-1)
    return (-p_teacher * log_p).sum(1).mean() * temperature ** 2


def init_words(c: ProGradConfig, template: str) -> str:
    """The context init words: ``CTX_INIT``, or with ``"template"`` the template's words before its " {}."."""
    if c.CTX_INIT.strip() != "template":
        return c.CTX_INIT
    if not template.endswith(" {}."):
        raise ConfigError(f"{c.key('CTX_INIT')} 'template' takes the words before the class slot, which must end the "
                          f"template (' {{}}.'); the template is {template!r}: give the words in CTX_INIT instead")
    return template[: -len(" {}.")]


@TRAINER_REGISTRY.register()
class ProGrad(PromptTrainer):
    config_class = ProGradConfig

    def compose(self, clip, c: ProGradConfig) -> CosineModel:
        """CoOp's model (right-aligned init) with the teacher's hand-crafted class features beside it (``hand_text``)."""
        template = self.hand_template(c)
        learner = TextPrompts(clip, self.classnames, n_ctx=c.N_CTX, ctx_init=init_words(c, template),
                              init_mode="right", csc=c.CSC, position=c.CLASS_TOKEN_POSITION, dtype=self.param_dtype)
        self.projection = ProGradProjection(c.LAMBDA)
        return CosineModel(clip, learner, hand_text=template_features(clip, self.classnames, [template]))

    def training_loss(self, batch) -> Tuple[Tensor, Dict[str, Any]]:
        """The task loss CE (returned and backpropagated); the general gradient g_g of the KL to the teacher is taken
        here and kept for :meth:`transform_gradients`."""
        image, label = self.parse_batch_train(batch)
        img = self.model.image_side(image)
        logits = self.model.logits(img, self.model.text_side()).float()
        ce = F.cross_entropy(logits, label)
        with torch.no_grad():
            teacher = self.model.hand_logits(img)
        kl = prograd_kl(logits, teacher, self.method_cfg.T)
        params = [p for _, p in self.learnable_parameters()]
        # retain_graph: CE's backward reuses the student's graph
        general = torch.autograd.grad(kl, params, retain_graph=True, allow_unused=True)
        self.projection.set_general(params, general)
        # forward_backward reads the terms after the optimizer step, so transform_gradients can add "proj"
        self._terms = {"loss": ce, "kl_loss": kl, "acc": compute_accuracy(logits, label)[0]}
        return ce, self._terms

    def transform_gradients(self) -> None:
        """Project each parameter's CE gradient away from the KL gradient where they conflict (ProGrad's rule)."""
        self._terms["proj"] = self.projection.apply([p for _, p in self.learnable_parameters()])
