"""VLP: CoOp's text context + deep visual prompts in every ViT layer, trained with DPT's general-knowledge warm-up
(the text + visual ablation of DPT, Xing et al., "Dual Modality Prompt Tuning", IEEE TMM 2023; reference code
fanrena/DPT ``trainers/VLP.py``). DPT (:mod:`trainers.dpt`) is this trainer plus class-aware visual prompts.

Config ``TRAINER.VLP`` (defaults of the reference's launch script ``train_single.sh``; reference key in brackets):

* text: ``N_CTX 16``, ``CSC False``, ``CTX_INIT ""``, ``CLASS_TOKEN_POSITION end`` [``TRAINER.COOP.*``], ``PREC fp16``;
* visual: ``VPT_N_CTX 10`` [``TRAINER.VPT.N_CTX``; its ``train.py`` default is 5] prompt tokens per layer, appended
  after ``ln_pre`` to the input of each ViT block and dropped after it (fresh prompts in every layer);
* frozen classifier for the warm-up and the top-K: ``TEMPLATE ""`` = the dataset's hand-crafted template (CoOp's
  table, as the reference's ``CUSTOM_TEMPLATES``);
* warm-up [``PRETRAIN.C``]: ``PRETRAIN_C 30`` epochs with ``GK_TEXT_WEIGHT 1.0``, ``GK_IMAGE_WEIGHT 1.0``,
  ``GK_MAIN_WEIGHT 0.1`` (below);
* one optimizer per parameter group, all with the ``OPTIM`` settings except: text ``TEXT_LR 0.002``,
  ``TEXT_WARMUP_EPOCH 1`` (hard-coded in the reference); visual prompts ``VPT_LR``, ``VPT_WARMUP_EPOCH`` (-1:
  ``OPTIM.LR`` and ``OPTIM.WARMUP_EPOCH``, as the reference; its ImageNet runs use 1 warm-up epoch, an
  ``if dataset == ImageNet`` there, a config value here: ``configs/trainers/VLP/vit_b32_deep_cross_datasets.yaml``).

Loss, with ``s`` CLIP's logit scale, ``f``/``g`` the prompted/frozen normalised features and ``t`` the frozen template
class features: main logits ``s·f_img·f_txtᵀ``, text general knowledge ``s·g_img·f_txtᵀ`` (learned text vs the
zero-shot image feature), image general knowledge ``s·f_img·tᵀ`` (prompted image vs the hand-crafted classifier).
For epochs ``e < PRETRAIN_C``:
``GK_TEXT_WEIGHT·CE(text GK) + GK_IMAGE_WEIGHT·CE(image GK) + GK_MAIN_WEIGHT·CE(main)``; afterwards ``CE(main)``.
Each term is logged (``ce``, ``gk_text``, ``gk_image``). The defaults are what the reference code computes: 1 on each
general-knowledge term and 0.1 on the *main* term. Descriptions of the method that put 0.1 on the general-knowledge
terms do not match that code, and the paper's equation could not be checked here; its variant is
``GK_TEXT_WEIGHT 0.1 GK_IMAGE_WEIGHT 0.1 GK_MAIN_WEIGHT 1.0``. Inference uses the main logits only and one (prompted)
ViT pass; the frozen pass runs only during the warm-up.

Composition: :func:`~trainers.coop.coop_prompts` (:class:`~promptot.prompts.TextPrompts`) + a
:class:`~promptot.prompts.MultiModalPrompts` with no text side and ``vision_insert="append"`` (the visual prompts of
DPT's VPT, :mod:`trainers.vpt` with ``INSERT append``) + :class:`~promptot.model.CosineModel`. Learners (checkpoint
folders, each its own optimizer): ``prompt_learner`` (``ctx``) and ``visual_prompts`` (``deep.vision_shallow``,
``deep.vision.{k}``). Official checkpoints load with ``--model-dir``: ``prompt_learner/`` as is (``ctx``; the
``token_prefix``/``token_suffix`` buffers are skipped), ``image_encoder.transformer.ctx_learner/`` for
``visual_prompts/`` with ``ctx [L, n, D_v]`` split per layer (``ctx[0]`` -> ``deep.vision_shallow``, ``ctx[k]`` ->
``deep.vision.{k-1}``).

Reference defects not reproduced: the ``amp`` branch treats the tuple of logits as logits and steps one optimizer
(here ``amp`` runs the same loss under autocast and steps every group); ``train_single.sh`` calls a
``submit_train.py`` that is not in the repository (here ``train.py`` with ``configs/trainers/VLP/vit_b32_deep.yaml``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from promptot.config import register_trainer_config
from promptot.engine import TRAINER_REGISTRY, compute_accuracy
from promptot.errors import ConfigError
from promptot.model import CosineModel, ModelOutput, template_features
from promptot.prompts import MultiModalPrompts, TextInputs, TextPrompts, VisionInputs
from promptot.templates import dataset_template
from promptot.trainer import PromptTrainer

from .coop import CoOpConfig, coop_prompts
from .vpt import DPT_VPT_FOLDER, split_layer_prompts


@register_trainer_config("VLP")
@dataclass
class VLPConfig(CoOpConfig):
    """CoOp's keys (``N_CTX``, ``CSC``, ``CTX_INIT``, ``CLASS_TOKEN_POSITION``, ``PREC``) and VLP's own."""

    VPT_N_CTX: int = 10
    TEMPLATE: str = ""  # "" = the dataset's hand-crafted template
    PRETRAIN_C: int = 30
    GK_TEXT_WEIGHT: float = 1.0
    GK_IMAGE_WEIGHT: float = 1.0
    GK_MAIN_WEIGHT: float = 0.1
    TEXT_LR: float = 0.002
    TEXT_WARMUP_EPOCH: int = 1
    VPT_LR: float = -1.0  # < 0: OPTIM.LR
    VPT_WARMUP_EPOCH: int = -1  # < 0: OPTIM.WARMUP_EPOCH

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_positive("VPT_N_CTX")
        self.check_positive("PRETRAIN_C", "TEXT_WARMUP_EPOCH", minimum=0)
        for k in ("GK_TEXT_WEIGHT", "GK_IMAGE_WEIGHT", "GK_MAIN_WEIGHT"):
            if getattr(self, k) < 0:
                raise ConfigError(f"{self.key(k)} is a loss weight and must be >= 0, got {getattr(self, k)}")
        if self.TEXT_LR <= 0:
            raise ConfigError(f"{self.key('TEXT_LR')} (the text prompt's learning rate) must be > 0, got "
                              f"{self.TEXT_LR}")
        self.check_group("VPT")

    def check_group(self, group: str) -> None:
        """``<group>_LR`` must be > 0 or -1 (OPTIM.LR), ``<group>_WARMUP_EPOCH`` >= 0 or -1 (OPTIM.WARMUP_EPOCH)."""
        lr, warm = getattr(self, f"{group}_LR"), getattr(self, f"{group}_WARMUP_EPOCH")
        if lr <= 0 and lr != -1:
            raise ConfigError(f"{self.key(group + '_LR')} must be > 0, or -1 to use OPTIM.LR; got {lr}")
        if warm < -1:
            raise ConfigError(f"{self.key(group + '_WARMUP_EPOCH')} must be >= 0, or -1 to use OPTIM.WARMUP_EPOCH; "
                              f"got {warm}")


class DualPrompts(nn.Module):
    """The prompt learner of VLP and DPT: ``text`` (CoOp's context), ``visual`` (deep visual prompts appended per
    layer, or None) and ``cavpt`` (DPT's :class:`~promptot.class_prompts.ClassAwarePrompts`, or None). Each part is
    a learner of its own (own optimizer and checkpoint folder)."""

    def __init__(self, text: TextPrompts, visual: Optional[MultiModalPrompts], cavpt: Optional[nn.Module] = None):
        super().__init__()
        self.text, self.visual, self.cavpt = text, visual, cavpt

    def text_inputs(self) -> TextInputs:
        return self.text.text_inputs()

    def vision_inputs(self) -> Optional[VisionInputs]:
        return None if self.visual is None else self.visual.vision_inputs()


class VLPModel(CosineModel):
    """CLIP's cosine classifier over the learned prompts, whose output also carries the normalised features
    (``aux["image"] [B, E]``, ``aux["text"] [C, E]``); ``zs_text [C, E]``: the frozen template class features."""

    def __init__(self, clip, prompt_learner: DualPrompts, zs_text: Tensor) -> None:
        super().__init__(clip, prompt_learner)
        self.register_buffer("zs_text", zs_text, persistent=False)

    def logits(self, image: Tensor, text: Tensor) -> ModelOutput:
        return ModelOutput(super().logits(image, text), aux={"image": image, "text": text})

    @torch.no_grad()
    def frozen_image(self, images: Tensor) -> Tensor:
        """The frozen (unprompted) CLIP's normalised image features ``[B, E]`` (fp32)."""
        return F.normalize(self.clip.encode_image(images).features.float(), dim=-1)


def appended_visual_prompts(trainer: PromptTrainer, clip, n_ctx: int, depth: int) -> MultiModalPrompts:
    """DPT-style deep visual prompts: ``n_ctx`` fresh tokens appended to the input of each of the first ``depth``
    ViT blocks (after ``ln_pre``) and dropped after it; in the run's parameter dtype, as the reference."""
    return MultiModalPrompts(clip, trainer.classnames, learn_text=False, coupled=False, n_ctx_vision=n_ctx,
                             vision_depth=depth, vision_sets=1, deep_dtype=trainer.param_dtype, vision_insert="append")


@TRAINER_REGISTRY.register()
class VLP(PromptTrainer):
    config_class = VLPConfig
    checkpoint_aliases = {"visual_prompts": (DPT_VPT_FOLDER,)}

    def vpt_depth(self, clip, c) -> int:
        """Number of ViT layers with deep visual prompts: all of them."""
        return clip.vision_layers

    def zero_shot_classifier(self, clip, c) -> Tensor:
        """The frozen template class features ``[C, E]`` (normalised, fp32), computed once."""
        template = dataset_template(self.cfg.DATASET.NAME, self.dm.dataset, "coop", c.TEMPLATE)
        return template_features(clip, self.classnames, [template])

    def compose_learner(self, clip, c) -> DualPrompts:
        if not clip.is_vit:
            raise ConfigError(f"{self.cfg.TRAINER.NAME} prompts the vision transformer: use a ViT backbone (e.g. "
                              "ViT-B/32); this model has a ModifiedResNet image tower")
        depth = self.vpt_depth(clip, c)
        visual = appended_visual_prompts(self, clip, c.VPT_N_CTX, depth) if depth > 0 else None
        return DualPrompts(coop_prompts(self, clip, c), visual)

    def compose(self, clip, c: VLPConfig) -> VLPModel:
        return VLPModel(clip, self.compose_learner(clip, c), self.zero_shot_classifier(clip, c))

    def group_optim(self, lr: float, warmup: int):
        """The OPTIM settings of a parameter group: its own LR and warm-up, or OPTIM's where they are -1."""
        o = self.cfg.OPTIM
        return self.optim_config(LR=o.LR if lr < 0 else lr, WARMUP_EPOCH=o.WARMUP_EPOCH if warmup < 0 else warmup)

    def register_learners(self, c: VLPConfig) -> None:
        pl = self.model.prompt_learner
        self.register_learner("prompt_learner", pl.text, optim_cfg=self.optim_config(
            LR=c.TEXT_LR, WARMUP_EPOCH=c.TEXT_WARMUP_EPOCH))
        if pl.visual is not None:
            self.register_learner("visual_prompts", pl.visual,
                                  optim_cfg=self.group_optim(c.VPT_LR, c.VPT_WARMUP_EPOCH))

    # ------------------------------------------------------------------ loss
    def training_loss(self, batch) -> Tuple[Tensor, Dict[str, Any]]:
        """The general-knowledge warm-up for epochs < PRETRAIN_C, then the main cross-entropy (module docstring),
        plus :meth:`extra_loss`; every term is logged."""
        c = self.method_cfg
        image, label = self.parse_batch_train(batch)
        out = self.model.run(image)
        logits = out.logits.float()
        ce = F.cross_entropy(logits, label)
        terms: Dict[str, Any] = {"ce": ce}
        if self.epoch < c.PRETRAIN_C:
            frozen = out.aux.get("frozen_image")
            frozen = self.model.frozen_image(image) if frozen is None else frozen
            scale = self.model.scale.float()
            terms["gk_text"] = F.cross_entropy(scale * frozen @ out.aux["text"].float().t(), label)
            terms["gk_image"] = F.cross_entropy(scale * out.aux["image"].float() @ self.model.zs_text.t(), label)
            loss = c.GK_TEXT_WEIGHT * terms["gk_text"] + c.GK_IMAGE_WEIGHT * terms["gk_image"] + c.GK_MAIN_WEIGHT * ce
        else:
            loss = ce
        loss = loss + self.extra_loss(out, label, terms)
        terms.update(loss=loss, acc=compute_accuracy(logits, label)[0])
        return loss, terms

    def extra_loss(self, out: ModelOutput, label: Tensor, terms: Dict[str, Any]) -> Tensor:
        """Hook for loss terms beyond the warm-up schedule (DPT's auxiliary loss); logs into ``terms``."""
        return out.logits.new_zeros(())

    # ------------------------------------------------------------------ official checkpoints
    def convert_checkpoint_state(self, name: str, state: Dict[str, Tensor], meta: Dict[str, Any]) -> Dict[str, Tensor]:
        """The reference's visual prompts ``ctx [L, n, D_v]`` -> one entry per layer (module docstring)."""
        if name == "visual_prompts" and set(state) == {"ctx"}:
            return split_layer_prompts(state, self._models[name].state_dict())
        return super().convert_checkpoint_state(name, state, meta)
