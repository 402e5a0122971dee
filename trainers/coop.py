"""CoOp: learnable context vectors for the text prompts of a frozen CLIP (Zhou et al., IJCV 2022).

Config ``TRAINER.COOP``: ``N_CTX 16``, ``CSC False``, ``CTX_INIT ""``, ``PREC fp16``,
``CLASS_TOKEN_POSITION end`` (as in the reference). Only the context is learned and saved; its checkpoint key
``ctx`` is the reference's, so CoOp's released prompt learners load as they are.

Composition: :class:`~promptot.prompts.TextPrompts` + :class:`~promptot.model.CosineModel`.
"""
from __future__ import annotations

from dataclasses import dataclass

from promptot.config import PrecisionConfig, check_choice, check_context, register_trainer_config
from promptot.engine import TRAINER_REGISTRY
from promptot.model import CosineModel
from promptot.prompts import POSITIONS, TextPrompts
from promptot.trainer import PromptTrainer


@register_trainer_config("COOP")
@dataclass
class CoOpConfig(PrecisionConfig):
    N_CTX: int = 16
    CSC: bool = False
    CTX_INIT: str = ""
    CLASS_TOKEN_POSITION: str = "end"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.key("CLASS_TOKEN_POSITION"), self.CLASS_TOKEN_POSITION, POSITIONS)
        check_context(self)


def coop_prompts(trainer: PromptTrainer, clip, c: CoOpConfig) -> TextPrompts:
    """CoOp's prompt learner for a trainer's class names (also the learner of KgCoOp and ProGrad)."""
    return TextPrompts(clip, trainer.classnames, n_ctx=c.N_CTX, ctx_init=c.CTX_INIT, init_mode="coop", csc=c.CSC,
                       position=c.CLASS_TOKEN_POSITION, dtype=trainer.param_dtype)


@TRAINER_REGISTRY.register()
class CoOp(PromptTrainer):
    config_class = CoOpConfig

    def compose(self, clip, c: CoOpConfig) -> CosineModel:
        return CosineModel(clip, coop_prompts(self, clip, c))
