"""IVLP: independent deep vision and language prompts, and deep language-only prompting (the baselines of the MaPLe
paper; reference code muzairkhattak/multimodal-prompt-learning, trainer ``IVLP``).

Config ``TRAINER.IVLP`` (reference defaults): ``N_CTX_VISION 2``, ``N_CTX_TEXT 2``, ``CTX_INIT "a photo of a"``,
``PREC fp16``, ``PROMPT_DEPTH_VISION 9``, ``PROMPT_DEPTH_TEXT 9``.

* text: MaPLe's context (the first N_CTX_TEXT words of CTX_INIT learnable, the rest fixed words); deep text prompts
  ``[N_CTX_TEXT, D_t]`` replace positions 1..N_CTX_TEXT of the input of text layers 1..PROMPT_DEPTH_TEXT-1
  (depth 0 and 1 both mean the input context only).
* vision (PROMPT_DEPTH_VISION > 0): ``[N_CTX_VISION, D_v]`` appended after CLS + patches, replaced in vision layers
  1..PROMPT_DEPTH_VISION-1 by that layer's own prompt. Nothing couples the two towers.
* **language-only** deep prompting is this trainer with ``N_CTX_VISION 0`` and ``PROMPT_DEPTH_VISION 0``
  (``configs/trainers/IVLP/vit_b16_c2_ep5_batch4_4ctx_language_only.yaml``).

Composition: :class:`~promptot.prompts.MultiModalPrompts` (independent, one prompt set) +
:class:`~promptot.model.CosineModel`. Learned and saved: ``text.ctx``, ``deep.text.{k}``, ``deep.vision_shallow``,
``deep.vision.{k}``.

Official checkpoints (the reference registers the whole model as ``VLPromptLearner``; so does PromptSRC) load with
``--model-dir``; the name map (official -> ours; every other key, the frozen CLIP included, is dropped):

* ``prompt_learner.ctx`` ``[n_t, D_t]`` -> ``text.ctx`` ``[n_t, D_t]``
* ``text_encoder.transformer.resblocks.{i}.VPT_shallow`` ``[n_t, D_t]`` -> ``deep.text.{i-1}`` ``[1, n_t, D_t]``
* ``image_encoder.VPT`` ``[n_v, D_v]`` -> ``deep.vision_shallow`` ``[1, n_v, D_v]``
* ``image_encoder.transformer.resblocks.{i}.VPT_shallow`` ``[n_v, D_v]`` -> ``deep.vision.{i-1}`` ``[1, n_v, D_v]``

Reference quirks: the deep and visual prompts are cast to half inside the blocks even under fp32 (here they take
the model dtype); checkpoints hold the whole CLIP (here only the prompts); N_CTX_TEXT > 4 with CTX_INIT set silently
gives a random context (here a ConfigError).
"""
from __future__ import annotations

from dataclasses import dataclass

from promptot.config import PrecisionConfig, register_trainer_config
from promptot.engine import TRAINER_REGISTRY
from promptot.errors import ConfigError
from promptot.model import CosineModel
from promptot.prompts import MultiModalPrompts, check_prompt_depth
from promptot.trainer import PromptTrainer


def _deep(tower: str):
    """Official block ``i`` prompt -> our deep entry ``i - 1`` (ours replace the input of block ``k + 1``)."""
    return lambda m: f"deep.{tower}.{int(m[1]) - 1}"


#: official vision-prompt keys (IVLP, VPT, PromptSRC) -> ours
VISION_KEYS = (
    (r"image_encoder\.VPT", "deep.vision_shallow"),
    (r"image_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow", _deep("vision")),
)
#: official IVLP / PromptSRC keys -> ours (see the module docstring)
IVLP_KEYS = (
    (r"prompt_learner\.ctx", "text.ctx"),
    (r"text_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow", _deep("text")),
) + VISION_KEYS


@register_trainer_config("IVLP")
@dataclass
class IVLPConfig(PrecisionConfig):
    N_CTX_VISION: int = 2
    N_CTX_TEXT: int = 2
    CTX_INIT: str = "a photo of a"
    PROMPT_DEPTH_VISION: int = 9
    PROMPT_DEPTH_TEXT: int = 9

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_first_words_context("N_CTX_TEXT")
        self.check_positive("PROMPT_DEPTH_VISION", "PROMPT_DEPTH_TEXT", "N_CTX_VISION", minimum=0)
        check_vision_prompts(self)


def check_vision_prompts(c) -> None:
    """Visual prompts (PROMPT_DEPTH_VISION > 0) need at least one token."""
    if c.PROMPT_DEPTH_VISION > 0 and c.N_CTX_VISION < 1:
        raise ConfigError(f"{c.key('PROMPT_DEPTH_VISION')} {c.PROMPT_DEPTH_VISION} prompts the vision tower, so "
                          f"{c.key('N_CTX_VISION')} must be >= 1 (got {c.N_CTX_VISION}); set both to 0 for "
                          "language-only prompting")


def independent_prompts(trainer: PromptTrainer, clip, c, learn_text: bool = True) -> MultiModalPrompts:
    """IVLP's prompt learner (also PromptSRC's; VPT's with ``learn_text=False``), its depths checked against the
    CLIP."""
    if learn_text:
        check_prompt_depth(clip, c.key("PROMPT_DEPTH_TEXT"), c.PROMPT_DEPTH_TEXT, "text")
    check_prompt_depth(clip, c.key("PROMPT_DEPTH_VISION"), c.PROMPT_DEPTH_VISION, "vision")
    return MultiModalPrompts(
        clip, trainer.classnames, n_ctx=getattr(c, "N_CTX_TEXT", 0), ctx_init=c.CTX_INIT,
        text_depth=getattr(c, "PROMPT_DEPTH_TEXT", 0), learn_text=learn_text, coupled=False,
        n_ctx_vision=c.N_CTX_VISION, vision_depth=c.PROMPT_DEPTH_VISION if c.N_CTX_VISION > 0 else 0,
        vision_sets=1, dtype=trainer.param_dtype, vision_insert=getattr(c, "INSERT", "replace"))


def require_learnables(trainer: PromptTrainer, c) -> None:
    """A ConfigError when the prompts leave nothing to learn (the method is then zero-shot CLIP)."""
    if not any(p.numel() for p in trainer.model.prompt_learner.parameters()):
        raise ConfigError(f"TRAINER.{type(c).CFG_NODE}: these context lengths and depths leave nothing to learn "
                          "(the model is zero-shot CLIP); run ZeroshotCLIP, or set a context length and depth >= 1")


@TRAINER_REGISTRY.register()
class IVLP(PromptTrainer):
    config_class = IVLPConfig
    checkpoint_aliases = {"prompt_learner": ("VLPromptLearner",)}
    official_keys = IVLP_KEYS

    def compose(self, clip, c: IVLPConfig) -> CosineModel:
        return CosineModel(clip, independent_prompts(self, clip, c))

    def register_learners(self, c) -> None:
        require_learnables(self, c)
        super().register_learners(c)
