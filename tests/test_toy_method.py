"""A method built in a test file from shared parts only (prompt sets, the model protocol, the trainer base).

It exists to prove that a new trainer needs no edit to any other test: the registry-driven tests
(``test_registry.py``) pick it up and run their one-step, gradient, checkpoint and reload checks on it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from promptot.config import PrecisionConfig, register_trainer_config
from promptot.engine import TRAINER_REGISTRY
from promptot.model import CosineModel
from promptot.prompts import TextPrompts
from promptot.trainer import PromptTrainer

from conftest import ROOT, plugin_trainers


@register_trainer_config("TOYENSEMBLE")
@dataclass
class ToyEnsembleConfig(PrecisionConfig):
    N_SETS: int = 2
    N_CTX: int = 4


class ToyEnsembleModel(CosineModel):
    """Class feature = normalised mean of the class's N prompt-set features."""

    def text_side(self) -> Tensor:
        feats = F.normalize(self.encode_text_prompts().features, dim=-1)
        return F.normalize(self.per_class(feats, self.prompt_learner.n_sets).mean(1), dim=-1)


@TRAINER_REGISTRY.register()
class ToyEnsemble(PromptTrainer):
    config_class = ToyEnsembleConfig
    config_dir = str((ROOT / "tests" / "fixtures" / "toy_method").relative_to(ROOT))

    def build_model(self) -> None:
        c = self.method_config()
        clip = self.build_typed_clip(c)
        learner = TextPrompts(clip, self.classnames, n_ctx=c.N_CTX, n_sets=c.N_SETS, dtype=self.param_dtype)
        self.model = ToyEnsembleModel(clip, learner).to(self.device)
        self.register_learner("prompt_learner", self.model.prompt_learner)


def test_toy_method_is_registered_for_the_registry_tests():
    assert plugin_trainers()["ToyEnsemble"] is ToyEnsemble
