"""MaPLe: multi-modal prompt learning with text→vision coupling (Khattak et al., CVPR 2023; reference code
muzairkhattak/multimodal-prompt-learning, trainer ``MaPLe``).

Config ``TRAINER.MAPLE`` (reference defaults): ``N_CTX 2``, ``CTX_INIT "a photo of a"``, ``PREC fp16``,
``PROMPT_DEPTH 9`` (J, 1 <= J <= the CLIP's layers).

Prompts, with D_t / D_v the text / vision widths of the loaded CLIP (never hard-coded):

* text: ``[SOS][ctx 1..N_CTX][rest of CTX_INIT][CLASS][.][EOT]``; ``ctx [N_CTX, D_t]`` starts from the first N_CTX
  words of the init ("a photo"), the rest of the init ("of a") stays as fixed words. Deep text prompts
  ``[N_CTX, D_t]`` replace positions 1..N_CTX of the input of layers 1..J-1.
* vision: ``F_0(ctx)`` (one ``Linear(D_t, D_v)``) is appended after CLS + patches; in layers 1..J-1 those slots are
  replaced by ``F_k(deep text prompt k)``, one coupling ``Linear(D_t, D_v)`` per layer.
* logits: CLIP's cosine classifier; loss: cross-entropy.

Composition: :class:`~promptot.prompts.MultiModalPrompts` (coupled, one prompt set) +
:class:`~promptot.model.CosineModel`. Learned and saved (learner ``prompt_learner``): ``text.ctx``, ``deep.text.{k}``,
``deep.shallow_proj.*``, ``deep.proj.{k}.*``.

Official checkpoints (the reference registers the whole model as ``MultiModalPromptLearner``; its files hold the
full CLIP) load with ``--model-dir`` as they are; the name map (official -> ours; every other key is dropped):

* ``prompt_learner.ctx`` ``[n, D_t]`` -> ``text.ctx`` ``[n, D_t]``
* ``prompt_learner.proj.{weight,bias}`` -> ``deep.shallow_proj.{weight,bias}``
* ``prompt_learner.compound_prompts_text.{k}`` ``[n, D_t]`` -> ``deep.text.{k}`` ``[1, n, D_t]``
* ``prompt_learner.compound_prompt_projections.{k}.{weight,bias}`` -> ``deep.proj.{k}.{weight,bias}``

Reference quirks and what is done here (checked against the reference code's forward in fp32,
``tests/test_maple_family.py``):

* Q1: ``proj`` (the shallow coupling) is half precision under every PREC, so PREC fp32 crashes in the reference
  (half Linear on a float context). Here it is fp32 like the deep couplings under every PREC; under fp16 the shallow
  visual prompt is computed in fp32 and then cast to half, which differs from the reference by fp16 rounding only.
* Q2: the prompts entering each block are cast to half even under fp32 (``.half()`` in the blocks); here they take
  the model dtype, so fp32 runs are not rounded.
* Q3: checkpoints hold the whole CLIP (hundreds of MB); here only the learnable parameters plus metadata.
* Q4: 512 / 768 widths hard-coded (only ViT-B/16-like models run); here they come from the CLIP.
* Q5: with CTX_INIT set and N_CTX > 4 the reference silently switches to a random context; here that is a
  ConfigError asking for ``CTX_INIT ""``.
"""
from __future__ import annotations

from dataclasses import dataclass

from promptot.config import PrecisionConfig, register_trainer_config
from promptot.engine import TRAINER_REGISTRY
from promptot.model import CosineModel
from promptot.prompts import MultiModalPrompts, check_prompt_depth
from promptot.trainer import PromptTrainer

#: official MaPLe key -> ours (see the module docstring)
MAPLE_KEYS = (
    (r"prompt_learner\.ctx", "text.ctx"),
    (r"prompt_learner\.proj\.(weight|bias)", r"deep.shallow_proj.\1"),
    (r"prompt_learner\.compound_prompts_text\.(\d+)", r"deep.text.\1"),
    (r"prompt_learner\.compound_prompt_projections\.(\d+)\.(weight|bias)", r"deep.proj.\1.\2"),
)


@register_trainer_config("MAPLE")
@dataclass
class MaPLeConfig(PrecisionConfig):
    N_CTX: int = 2
    CTX_INIT: str = "a photo of a"
    PROMPT_DEPTH: int = 9

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_first_words_context("N_CTX")
        self.check_positive("PROMPT_DEPTH")


@TRAINER_REGISTRY.register()
class MaPLe(PromptTrainer):
    config_class = MaPLeConfig
    checkpoint_aliases = {"prompt_learner": ("MultiModalPromptLearner",)}
    official_keys = MAPLE_KEYS

    def compose(self, clip, c: MaPLeConfig) -> CosineModel:
        check_prompt_depth(clip, c.key("PROMPT_DEPTH"), c.PROMPT_DEPTH)
        learner = MultiModalPrompts(clip, self.classnames, n_ctx=c.N_CTX, ctx_init=c.CTX_INIT,
                                    text_depth=c.PROMPT_DEPTH, coupled=True, dtype=self.param_dtype)
        return CosineModel(clip, learner)
