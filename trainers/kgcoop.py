"""KgCoOp: CoOp plus a knowledge-guided term that keeps the learned class features near the hand-crafted ones
(Yao et al., "Visual-Language Prompt Tuning with Knowledge-guided Context Optimization", CVPR 2023).

Loss, in the form of the reference code (htyao89/KgCoOp ``trainers/kgcoop.py``)::

    L = CE(logits, y) + W · (1 − mean_c cos(t_c, t_c^clip))

t_c: the normalised text feature of class c from the learned prompt; t_c^clip: the frozen CLIP feature of the
dataset's hand-crafted prompt (``TEMPLATES`` table ``kgcoop``, KgCoOp's ``CUSTOM_TEMPLATES``). For unit vectors
``1 − cos = ‖t − t^clip‖² / 2``, so W = 8 equals 4 × the mean squared distance of the paper's summary. The reference
default of W is 1.0; every reference script passes 8.0 (``configs/trainers/KgCoOp/*.yaml`` set it). Inference uses
the logits only, exactly as CoOp.

Config ``TRAINER.KGCOOP``: CoOp's keys with their reference defaults (``N_CTX 16``, ``CSC False``, ``CTX_INIT ""``,
``PREC fp16``, ``CLASS_TOKEN_POSITION end``) plus ``W 1.0``, ``TEMPLATES kgcoop`` (a table of
:mod:`promptot.templates`) and ``TEMPLATE ""`` (one template for every dataset; a dataset's own ``prompt_template``,
e.g. Fashion-MNIST's, wins over the table). From the reference command line: ``TRAINER.COOP.{N_CTX,CSC,
CLASS_TOKEN_POSITION,PREC}`` → ``TRAINER.KGCOOP.*``, ``TRAINER.COOP.W`` → ``TRAINER.KGCOOP.W``, and the reference
yaml's ``CTX_INIT: True`` (which hard-codes "a photo of a") → ``CTX_INIT "a photo of a"``.

Official checkpoints: the reference prompt learner also saves ``bias_vectors`` and ``meta_net.linear1.*``, which
its forward pass never uses; :meth:`KgCoOp.convert_checkpoint_state` drops them and keeps ``ctx`` (same name here).

Composition: CoOp's :class:`~promptot.prompts.TextPrompts` + :class:`~promptot.model.CosineModel` holding the frozen
hand-crafted features (``hand_text``, from :func:`~promptot.model.template_features`); the term in
:meth:`KgCoOp.training_loss`.
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
from promptot.model import CosineModel, template_features
from promptot.trainer import PromptTrainer

from .coop import CoOpConfig, coop_prompts


@register_trainer_config("KGCOOP")
@dataclass
class KgCoOpConfig(CoOpConfig, HandTemplateConfig):
    W: float = 1.0
    TEMPLATES: str = "kgcoop"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_templates()
        if self.W < 0:
            raise ConfigError(f"{self.key('W')} weighs the knowledge-guided term and must be >= 0, got {self.W}")


def knowledge_guided_distance(text: Tensor, hand: Tensor) -> Tensor:
    """KgCoOp's term ``1 − mean_c cos(text_c, hand_c)`` for class features ``text [C, E]`` and ``hand [C, E]``
    (fp32 scalar; the reference's cosine eps 1e-7)."""
    return 1.0 - F.cosine_similarity(text.float(), hand.float(), dim=-1, eps=1e-7).mean()


@TRAINER_REGISTRY.register()
class KgCoOp(PromptTrainer):
    config_class = KgCoOpConfig

    def compose(self, clip, c: KgCoOpConfig) -> CosineModel:
        """CoOp's model with the hand-crafted class features beside it (``hand_text``, rebuilt from the class names,
        so checkpoints transfer to other classes)."""
        template = self.hand_template(c)
        return CosineModel(clip, coop_prompts(self, clip, c),
                           hand_text=template_features(clip, self.classnames, [template]))

    def training_loss(self, batch) -> Tuple[Tensor, Dict[str, Any]]:
        """``CE + W · (1 − mean cos(t, t^clip))``; logs ``loss`` (the total, as the reference), ``ce``, ``kg`` and
        ``acc``. The class features of the logits are those of the term (one text pass)."""
        image, label = self.parse_batch_train(batch)
        text = self.model.text_side()
        logits = self.model.run(image, text).logits.float()
        ce = F.cross_entropy(logits, label)
        kg = knowledge_guided_distance(text, self.model.hand_text)
        loss = ce + self.method_cfg.W * kg
        return loss, {"loss": loss, "ce": ce, "kg": kg, "acc": compute_accuracy(logits, label)[0]}

    #: parameters of the reference prompt learner that its forward pass never uses
    unused_reference_keys = ("bias_vectors", "meta_net.")

    def convert_checkpoint_state(self, name: str, state: Dict[str, torch.Tensor],
                                 meta: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """Official KgCoOp checkpoints: keep ``ctx``, drop the unused ``bias_vectors`` / ``meta_net.*``."""
        dropped = sorted(k for k in state if k.startswith(self.unused_reference_keys))
        if dropped:
            print(f"Note: ignoring {', '.join(dropped)} (saved by the reference KgCoOp, unused by its forward pass)")
        return {k: v for k, v in state.items() if k not in dropped}
