"""VPT: deep vision prompts with a frozen hand-crafted text classifier (the deep vision prompting baseline of the
MaPLe paper; reference code muzairkhattak/multimodal-prompt-learning, trainer ``VPT``).

Config ``TRAINER.VPT`` (reference defaults): ``N_CTX_VISION 2``, ``CTX_INIT "a photo of a"``, ``PREC fp16``,
``PROMPT_DEPTH_VISION 1``; the paper config ``vit_b16_c2_ep5_batch4_4`` uses 8 tokens and depth 12.

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
"""
from __future__ import annotations

from dataclasses import dataclass

from promptot.config import PrecisionConfig, register_trainer_config
from promptot.engine import TRAINER_REGISTRY
from promptot.model import CosineModel, template_features

from .ivlp import IVLP, VISION_KEYS, check_vision_prompts, independent_prompts


@register_trainer_config("VPT")
@dataclass
class VPTConfig(PrecisionConfig):
    N_CTX_VISION: int = 2
    CTX_INIT: str = "a photo of a"
    PROMPT_DEPTH_VISION: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_positive("PROMPT_DEPTH_VISION", "N_CTX_VISION", minimum=0)
        check_vision_prompts(self)

    def template(self) -> str:
        """The frozen classifier's prompt, ``"<CTX_INIT> {}."`` (braces in the init escaped)."""
        init = self.CTX_INIT.replace("_", " ").strip().replace("{", "{{").replace("}", "}}")
        return f"{init} {{}}." if init else "{}."


@TRAINER_REGISTRY.register()
class VPT(IVLP):
    config_class = VPTConfig
    checkpoint_aliases = {}
    official_keys = VISION_KEYS

    def compose(self, clip, c: VPTConfig) -> CosineModel:
        text = template_features(clip, self.classnames, [c.template()])
        return CosineModel(clip, independent_prompts(self, clip, c, learn_text=False), frozen_text=text)
