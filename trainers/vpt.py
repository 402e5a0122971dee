"""VPT: deep vision prompts with a frozen hand-crafted text classifier (the deep vision prompting baseline of the
MaPLe paper; reference code muzairkhattak/multimodal-prompt-learning, trainer ``VPT``).

Config ``TRAINER.VPT`` (reference defaults): ``N_CTX_VISION 2``, ``CTX_INIT "a photo of a"``, ``PREC fp16``,
``PROMPT_DEPTH_VISION 1``, plus ``INSERT replace`` and ``TEMPLATE ""`` (DPT's variant, below); the paper config
``vit_b16_c2_ep5_batch4_4`` uses 8 tokens and depth 12.

* text: the frozen CLIP's features of ``"<CTX_INIT> <class>."``, computed once when the model is built (a
  buffer, never saved; rebuilt for the class names of each run, so prompts transfer to new classes).
* vision: IVLP's vision side, ``[N_CTX_VISION, D_v]`` appended after CLS + patches and replaced in layers
  1..PROMPT_DEPTH_VISION-1.

Composition: :class:`~promptot.prompts.MultiModalPrompts` (no text side) + :func:`~promptot.model.template_features`
+ :class:`~promptot.model.CosineModel`. Learned and saved: ``deep.vision_shallow``, ``deep.vision.{k}``.

Official checkpoints (the whole model registered as ``prompt_learner``, as here) load with ``--model-dir``:
``image_encoder.VPT`` -> ``deep.vision_shallow``, ``image_encoder.transformer.resblocks.{i}.VPT_shallow`` ->
``deep.vision.{i-1}`` (shapes ``[n, D_v]`` -> ``[1, n, D_v]``); every other key is dropped.

Reference quirks: the text prompt is hard-coded to "a photo of a" (CTX_INIT, whose default that is, is unused);
here the classifier reads CTX_INIT. The reference converts CLIP to fp32 whatever PREC says and still rounds the
prompts to half inside the blocks; here PREC is honoured and prompts take the model dtype. Its forward moves the
text features to CUDA unconditionally; here they live on the model's device.

**DPT's VPT** (fanrena/DPT ``trainers/VPT.py``, the visual-only ablation of DPT) is the same method — deep visual
prompts, a frozen hand-crafted classifier, cross-entropy, one optimizer — with the prompts inserted differently, so it
is this trainer with two options (configs ``configs/trainers/VPT/vit_b32_deep_dpt*.yaml``, ``miniclip_dpt.yaml``):

* ``INSERT``: ``replace`` (default, MaPLe's VPT): layer 0's prompts are appended after CLS + patches *before*
  ``ln_pre`` (they are layer-normalised with the image tokens) and layer k's prompts replace those slots in the input
  of block k; past depth J the prompt outputs of block J-1 travel on through the deeper blocks. ``append`` (DPT): the
  prompts of layer k are appended *after* ``ln_pre`` to the input of block k and their outputs dropped after it
  (fresh prompts in every prompted layer; past depth J the blocks see CLS + patches only). At full depth the two
  differ only in whether layer 0's prompts pass through ``ln_pre``; as block 0 layer-normalises its input again, that
  changes the output through ``ln_pre``'s affine weights only (``tests/test_append_prompts.py``).
* ``TEMPLATE``: the classifier's prompt. ``""`` (default): ``"<CTX_INIT> {}."``; ``dataset``: the dataset's
  hand-crafted template (CoOp's table or the dataset's own, e.g. ``"a photo of a {}, a type of pet."``), as DPT; any
  other value is a template with ``{}`` for the class name.

DPT's reference keys map as ``TRAINER.VPT.N_CTX`` -> ``N_CTX_VISION`` (its prompts fill every layer: depth = the number
of ViT layers). Its checkpoints (``image_encoder.transformer.ctx_learner/``, one parameter ``ctx [L, n, D_v]``) load
with ``--model-dir``: ``ctx[0]`` -> ``deep.vision_shallow``, ``ctx[k]`` -> ``deep.vision.{k-1}``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

from torch import Tensor

from promptot.config import PrecisionConfig, check_choice, register_trainer_config
from promptot.engine import TRAINER_REGISTRY
from promptot.errors import ConfigError
from promptot.model import CosineModel, template_features
from promptot.prompts import VISION_INSERTS
from promptot.templates import dataset_template
from promptot.trainer import CheckpointMismatchError

from .ivlp import IVLP, VISION_KEYS, check_vision_prompts, independent_prompts

#: the folder DPT's reference code registers its deep visual prompts under
DPT_VPT_FOLDER = "image_encoder.transformer.ctx_learner"


@register_trainer_config("VPT")
@dataclass
class VPTConfig(PrecisionConfig):
    N_CTX_VISION: int = 2
    CTX_INIT: str = "a photo of a"
    PROMPT_DEPTH_VISION: int = 1
    INSERT: str = "replace"  # replace (MaPLe's VPT) | append (DPT's VPT)
    TEMPLATE: str = ""  # "" = "<CTX_INIT> {}." | dataset | a template with {}

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_positive("PROMPT_DEPTH_VISION", "N_CTX_VISION", minimum=0)
        check_vision_prompts(self)
        check_choice(self.key("INSERT"), self.INSERT, VISION_INSERTS)
        if self.TEMPLATE not in ("", "dataset") and "{}" not in self.TEMPLATE:
            raise ConfigError(f"{self.key('TEMPLATE')} must be \"\" (the classifier prompt is \"<CTX_INIT> {{}}.\"), "
                              f"\"dataset\" (the dataset's hand-crafted template) or a template with {{}} for the "
                              f"class name, got {self.TEMPLATE!r}")

    def template(self, dataset_name: str = "", dataset: Any = None) -> str:
        """The frozen classifier's prompt: ``TEMPLATE``, the dataset's template (``TEMPLATE dataset``) or
        ``"<CTX_INIT> {}."`` (braces in the init escaped)."""
        if self.TEMPLATE == "dataset":
            return dataset_template(dataset_name, dataset)
        if self.TEMPLATE:
            return self.TEMPLATE
        init = self.CTX_INIT.replace("_", " ").strip().replace("{", "{{").replace("}", "}}")
        return f"{init} {{}}." if init else "{}."


def split_layer_prompts(state: Dict[str, Tensor], own: Dict[str, Tensor], prefix: str = "deep.") -> Dict[str, Tensor]:
    """DPT's deep VPT parameter ``ctx [L, n, D_v]`` (row k: the prompts of layer k) -> our ``<prefix>vision_shallow``
    (row 0) and ``<prefix>vision.{k-1}`` (row k), each ``[1, n, D_v]``; ``own`` is the learner's state dict."""
    ctx = state["ctx"]
    out = {f"{prefix}vision_shallow": ctx[:1]}
    out.update({f"{prefix}vision.{k - 1}": ctx[k:k + 1] for k in range(1, ctx.shape[0])})
    mine = sorted(k for k in own if k.startswith(f"{prefix}vision"))
    if sorted(out) != mine or any(own[k].shape != v.shape for k, v in out.items()):
        raise CheckpointMismatchError(
            f"the checkpoint's deep visual prompts 'ctx' have shape {tuple(ctx.shape)} (layers, tokens, width), but "
            f"this run's config gives {len(mine)} prompted layers of shape "
            f"{tuple(own[mine[0]].shape[1:]) if mine else '-'}: set the prompt depth and length it was trained with")
    return out


@TRAINER_REGISTRY.register()
class VPT(IVLP):
    config_class = VPTConfig
    checkpoint_aliases = {"prompt_learner": (DPT_VPT_FOLDER,)}
    official_keys = VISION_KEYS

    def compose(self, clip, c: VPTConfig) -> CosineModel:
        template = c.template(self.cfg.DATASET.NAME, self.dm.dataset)
        text = template_features(clip, self.classnames, [template])
        return CosineModel(clip, independent_prompts(self, clip, c, learn_text=False), frozen_text=text)

    def convert_checkpoint_state(self, name: str, state: Dict[str, Tensor], meta: Dict[str, Any]) -> Dict[str, Tensor]:
        """MaPLe's official keys (:data:`VISION_KEYS`) or DPT's ``ctx`` (:func:`split_layer_prompts`) -> ours."""
        if set(state) == {"ctx"} and state["ctx"].dim() == 3:
            return split_layer_prompts(state, self._models[name].state_dict())
        return super().convert_checkpoint_state(name, state, meta)
