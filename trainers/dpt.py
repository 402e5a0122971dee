"""DPT: dual modality prompt tuning — CoOp's text context + deep visual prompts + class-aware visual prompts (CAVPT)
(Xing et al., "Dual Modality Prompt Tuning for Vision-Language Pre-Trained Model", IEEE TMM 2023; reference code
fanrena/DPT ``trainers/DPT.py`` at 11fef90).

Config ``TRAINER.DPT``: VLP's keys (:mod:`trainers.vlp`: text context, ``VPT_N_CTX``, ``TEMPLATE``, the warm-up
``PRETRAIN_C`` and its weights, ``TEXT_LR``/``TEXT_WARMUP_EPOCH``, ``VPT_LR``/``VPT_WARMUP_EPOCH``) plus, with the
launch script's defaults (reference key in brackets; ``train.py`` default in parentheses):

* ``BOTTOMLIMIT 12`` [``TRAINER.TOPDOWN_SECOVPT.BOTTOMLIMIT``]: the deep visual prompts fill ViT layers
  1..BOTTOMLIMIT-1 (1-based) and CAVPT layers BOTTOMLIMIT..L; 12 on ViT-B/32 = 11 VPT layers and CAVPT in the last;
* ``CPN 10`` (5) [``TRAINER.SELECTED_COVPT.CPN``]: K, the classes selected per image (clamped to the number of
  classes, as the reference does);
* ``ALPHA 0.3`` (1.0) [``TRAINER.ALPHA``]: weight of the auxiliary class-aware loss, in every epoch;
* ``CAVPT_LR``, ``CAVPT_WARMUP_EPOCH`` (-1: ``OPTIM.LR``/``OPTIM.WARMUP_EPOCH``, as the reference; its unused
  ``TRAINER.TOPDOWN_SECOVPT.LR`` is not carried over);
* ``CAVPT_KV_TOKENS 10``, ``CAVPT_ATTN_DIM 32``: the learnable key/value tokens and the query/key width of the
  cross-attention (both hard-coded in the reference).

Forward (:mod:`promptot.class_prompts`): the frozen, unprompted CLIP scores each image against the template class
features and keeps its top K classes; the text tower gives the learned class features ``t`` (``[C, E]``); the
prompted image tower runs deep visual prompts in blocks 0..BOTTOMLIMIT-2 and, in each later block, K class-aware
prompts made by the CAVPT layer from ``t`` of the selected classes (cross-attention over the block's detached CLS +
patch tokens and the key/value tokens), appended to the block's input and dropped after it. Logits are CLIP's cosine
logits against the normalised ``t``. Loss: VLP's warm-up schedule plus ``ALPHA`` times the auxiliary loss in every
epoch, cross-entropy of the C-way classifier on the prompt of the ground-truth class (per CAVPT layer, for images
whose ground truth is in their top K; images without get none). Logged terms: ``ce``, ``gk_text``, ``gk_image``
(warm-up), ``aux`` and ``aux_n`` (prompts it averaged over). Evaluation: main logits only, from one batched frozen
pass (top K) and one batched prompted pass per test batch; the template and the learned class features are computed
once per evaluation.

Learners (each its own optimizer, LR trace ``train/lr_<name>`` and checkpoint folder): ``prompt_learner`` (``ctx``),
``visual_prompts`` (``deep.vision_shallow``, ``deep.vision.{k}``; absent with BOTTOMLIMIT 1), ``cavpt``
(``layers.{j}.*``). The auxiliary classifiers ``layers.{j}.classifier.weight`` ``[C, D_v]`` are class-specific and
dropped when a checkpoint is loaded into another class set (base-to-new, cross-dataset).

Official checkpoints load with ``--model-dir`` (folders ``prompt_learner/``, ``image_encoder.transformer.ctx_learner/``,
``image_encoder.transformer.extractor/``). Name map, official -> ours (``j`` the CAVPT layer):

* ``ctx [L_b, n, D_v]`` (ctx_learner) -> ``deep.vision_shallow`` (row 0), ``deep.vision.{k-1}`` (row k)
* ``meta_nets.j.{weight,bias}`` -> ``layers.j.meta_net.*``; ``attns.j.qmlp.weight`` -> ``layers.j.q_proj.weight``;
  ``attns.j.kmlp.weight`` -> ``layers.j.k_proj.weight``; ``attns.j.vmlp.weight`` -> ``layers.j.out_proj.weight``
  (applied after the attention, not to the values); ``lns.j.*`` -> ``layers.j.norm_aux.*``; ``lns2.j.*`` ->
  ``layers.j.norm_prompt.*``; ``classfiers.j.weight`` -> ``layers.j.classifier.weight``; ``ctx [L_c, 10, D_v]``
  (extractor) -> ``layers.j.kv_tokens`` (row j).

Reference defects and what is done here: CAVPT is cast to fp16 whatever ``PREC`` says (here it follows ``PREC``); the
``amp`` branch treats the tuple output as logits (here ``amp`` works); the ImageNet warm-up of 1 epoch
is an ``if dataset == ImageNet`` (here ``VPT_WARMUP_EPOCH``/``CAVPT_WARMUP_EPOCH``, set in
``configs/trainers/DPT/vit_b32_deep_cross_datasets.yaml``); there are no base-to-new or cross-dataset scripts (here
``scripts/base2new.sh DPT vit_b32_deep_base2new ...`` and the ``_cross_datasets`` config with ``--eval-only``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, Tuple

import torch.nn.functional as F
from torch import Tensor

from promptot.class_prompts import AUX_KEY, ClassAwarePromptHook, ClassAwarePrompts, class_aware_loss, top_classes
from promptot.config import register_trainer_config
from promptot.engine import TRAINER_REGISTRY
from promptot.errors import ConfigError
from promptot.model import ModelOutput
from promptot.trainer import CheckpointMismatchError, rename_state

from .vlp import VLP, DualPrompts, VLPConfig, VLPModel

#: the reference's CAVPT keys -> ours (the key/value tokens ``ctx`` are split per layer in convert_checkpoint_state)
CAVPT_KEYS = (
    (r"meta_nets\.(\d+)\.(weight|bias)", r"layers.\1.meta_net.\2"),
    (r"attns\.(\d+)\.qmlp\.weight", r"layers.\1.q_proj.weight"),
    (r"attns\.(\d+)\.kmlp\.weight", r"layers.\1.k_proj.weight"),
    (r"attns\.(\d+)\.vmlp\.weight", r"layers.\1.out_proj.weight"),
    (r"lns\.(\d+)\.(weight|bias)", r"layers.\1.norm_aux.\2"),
    (r"lns2\.(\d+)\.(weight|bias)", r"layers.\1.norm_prompt.\2"),
    (r"classfiers\.(\d+)\.weight", r"layers.\1.classifier.weight"),
)


@register_trainer_config("DPT")
@dataclass
class DPTConfig(VLPConfig):
    BOTTOMLIMIT: int = 12
    CPN: int = 10
    ALPHA: float = 0.3
    CAVPT_LR: float = -1.0  # < 0: OPTIM.LR
    CAVPT_WARMUP_EPOCH: int = -1  # < 0: OPTIM.WARMUP_EPOCH
    CAVPT_KV_TOKENS: int = 10
    CAVPT_ATTN_DIM: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_positive("BOTTOMLIMIT", "CPN", "CAVPT_ATTN_DIM")
        self.check_positive("CAVPT_KV_TOKENS", minimum=0)
        if self.ALPHA < 0:
            raise ConfigError(f"{self.key('ALPHA')} is a loss weight and must be >= 0, got {self.ALPHA}")
        self.check_group("CAVPT")


class DPTModel(VLPModel):
    """DPT's model. ``text_side()``: the learned class features ``[C, E]`` (unnormalised: CAVPT's meta-net reads
    them); ``image_side(images)``: the images and their frozen zero-shot features ``[B, E]``; ``logits``: the top-K
    classes, the prompted pass with the class-aware prompts (it needs the text features, so it runs here) and the
    cosine logits, with ``aux`` holding ``image``/``text`` (normalised), ``frozen_image``, ``topk [B, K]`` and the
    per-layer auxiliary logits (``AUX_KEY``)."""

    def __init__(self, clip, prompt_learner: DualPrompts, zs_text: Tensor, first: int, k: int) -> None:
        super().__init__(clip, prompt_learner, zs_text)
        self.first, self.k = first, k

    def text_side(self) -> Tensor:
        return self.encode_text_prompts().features

    def image_side(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        return images, self.frozen_image(images)

    def logits(self, image: Tuple[Tensor, Tensor], text: Tensor) -> ModelOutput:
        images, frozen = image
        topk = top_classes(frozen, self.zs_text, self.k)
        hook = ClassAwarePromptHook(self.prompt_learner.cavpt, self.first, text[topk])
        out = self.encode_images(images, hooks=hook)
        img, txt = F.normalize(out.features, dim=-1), F.normalize(text, dim=-1)
        logits = self.scale * img @ txt.to(img.dtype).t()
        return ModelOutput(logits, aux={"image": img, "text": txt, "frozen_image": frozen, "topk": topk,
                                        AUX_KEY: out.aux[AUX_KEY]})


@TRAINER_REGISTRY.register()
class DPT(VLP):
    config_class = DPTConfig
    checkpoint_aliases = {**VLP.checkpoint_aliases, "cavpt": ("image_encoder.transformer.extractor",)}

    def vpt_depth(self, clip, c: DPTConfig) -> int:
        """Deep visual prompts in the first BOTTOMLIMIT - 1 layers; CAVPT in the others."""
        if c.BOTTOMLIMIT > clip.vision_layers:
            raise ConfigError(
                f"{c.key('BOTTOMLIMIT')} is {c.BOTTOMLIMIT} but the backbone's vision transformer has "
                f"{clip.vision_layers} layers: use 1..{clip.vision_layers} (CAVPT in layers BOTTOMLIMIT..L, deep "
                "visual prompts below); for no CAVPT layer at all, train VLP")
        return c.BOTTOMLIMIT - 1

    def compose(self, clip, c: DPTConfig) -> DPTModel:
        learner = self.compose_learner(clip, c)
        first = self.vpt_depth(clip, c)
        learner.cavpt = ClassAwarePrompts(clip.vision_layers - first, clip.embed_dim, clip.vision_width,
                                          len(self.classnames), c.CAVPT_KV_TOKENS, c.CAVPT_ATTN_DIM,
                                          dtype=self.param_dtype)
        k = min(c.CPN, len(self.classnames))
        if k != c.CPN:
            self.note_effective(c.key("CPN"), k, f"there are only {len(self.classnames)} classes to select from")
        return DPTModel(clip, learner, self.zero_shot_classifier(clip, c), first, k)

    def register_learners(self, c: DPTConfig) -> None:
        super().register_learners(c)
        self.register_learner("cavpt", self.model.prompt_learner.cavpt,
                              optim_cfg=self.group_optim(c.CAVPT_LR, c.CAVPT_WARMUP_EPOCH))

    def extra_loss(self, out: ModelOutput, label: Tensor, terms: Dict[str, Any]) -> Tensor:
        """``ALPHA`` times the auxiliary class-aware loss (:func:`~promptot.class_prompts.class_aware_loss`)."""
        aux, n = class_aware_loss(out.aux[AUX_KEY], out.aux["topk"], label)
        terms.update(aux=aux, aux_n=float(n))
        return self.method_cfg.ALPHA * aux

    def convert_checkpoint_state(self, name: str, state: Dict[str, Tensor], meta: Dict[str, Any]) -> Dict[str, Tensor]:
        """The reference's CAVPT keys -> ours (module docstring); other learners as VLP."""
        if name == "cavpt" and any(re.fullmatch(p, k) for p, _ in CAVPT_KEYS for k in state):
            own = self._models[name].state_dict()
            kv = state.get("ctx")
            out = rename_state({k: v for k, v in state.items() if k != "ctx"}, CAVPT_KEYS, own)
            if kv is not None:
                out.update({f"layers.{j}.kv_tokens": kv[j] for j in range(kv.shape[0])})
                if kv.shape[0] != len(self.model.prompt_learner.cavpt.layers):
                    raise CheckpointMismatchError(
                        f"the checkpoint has {kv.shape[0]} CAVPT layers and this run "
                        f"{len(self.model.prompt_learner.cavpt.layers)}: set the TRAINER.DPT.BOTTOMLIMIT it was "
                        "trained with")
            return out
        return super().convert_checkpoint_state(name, state, meta)
