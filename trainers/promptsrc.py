"""PromptSRC: IVLP prompts regulated by the frozen CLIP (Khattak et al., ICCV 2023; reference code
muzairkhattak/PromptSRC, trainer ``PromptSRC``).

Config ``TRAINER.PROMPTSRC`` (reference defaults): ``N_CTX_VISION 4``, ``N_CTX_TEXT 4``, ``CTX_INIT "a photo of a"``,
``PREC fp16``, ``PROMPT_DEPTH_VISION 9``, ``PROMPT_DEPTH_TEXT 9``, ``TEXT_LOSS_WEIGHT 25``, ``IMAGE_LOSS_WEIGHT 10``,
``GPA_MEAN 15``, ``GPA_STD 1``, plus ``LOGIT_LOSS_WEIGHT 1.0`` (a constant 1 in the reference). The reference's keys
are integers there and here, so its yaml files merge unchanged.

Prompts and logits are IVLP's (:mod:`trainers.ivlp`). The training loss adds the self-regulating terms, with
``f``/``g`` the prompted and frozen CLIP's normalised features and ``s`` CLIP's logit scale:

* ``L_ce`` = cross-entropy of the prompted logits ``s·f_img·f_txtᵀ``;
* ``L_text`` = TEXT_LOSS_WEIGHT · mean |f_txt − g_txt| over ``[C, E]``, where g_txt is the frozen CLIP's class
  feature averaged over the 60 templates of :data:`~promptot.templates.IMAGENET_TEMPLATES` (raw features averaged,
  then normalised: the "textual diversity" term) and computed once per run;
* ``L_image`` = IMAGE_LOSS_WEIGHT · mean |f_img − g_img| over ``[B, E]``, g_img from the unprompted image tower;
* ``L_logits`` = LOGIT_LOSS_WEIGHT · KL(softmax(s·g_img·g_txtᵀ) ‖ softmax(prompted logits)), summed and divided by
  ``B·C`` (the reference's ``reduction="sum"`` over ``logits.numel()``);
* loss = L_ce + L_text + L_image + L_logits (each term is logged).

**Gaussian prompt aggregation (GPA).** After epoch e of N the prompts ``θ_e`` are added to a running sum with weight
``w_e ∝ exp(-(e − GPA_MEAN)² / (2·GPA_STD²))``, ``Σ w_e = 1`` (:mod:`promptot.averaging`); after the last epoch the sum
replaces the prompts, so the final test and ``model.pth.tar-N`` hold the aggregate. The running sum is saved in every
checkpoint beside the optimizer state (``learner_state``), so a crashed run resumes it exactly. With
``--load-epoch N`` (the last epoch) evaluation uses the aggregate; an earlier ``--load-epoch k`` gives that epoch's
own prompts, as in the reference.

Official checkpoints (``VLPromptLearner/``, the whole model plus a second frozen image encoder under
``prompt_learner.ZS_image_encoder``) load with ``--model-dir`` through IVLP's name map; the frozen parts are dropped.

Reference quirks and what is done here: the frozen-feature branch and the loss only exist outside ``amp`` (``amp``
crashes there; here it works); fp32 crashes there too (the frozen image encoder stays half, and its logits use
``fixed_embeddings.half()``); the reference keeps a second full CLIP for the frozen features, here the frozen towers
are the shared unmodified CLIP run without prompts; the aggregate is computed over the whole model state in the model
dtype (frozen weights included) and not saved, so a resumed run loses it; here it is an fp32 sum over the learnable
parameters, saved with the checkpoints.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from promptot.averaging import ParameterAverage, gaussian_epoch_weights
from promptot.config import register_trainer_config
from promptot.engine import TRAINER_REGISTRY, compute_accuracy
from promptot.errors import ConfigError, UserError
from promptot.model import CosineModel, ModelOutput, template_features
from promptot.templates import IMAGENET_TEMPLATES

from .ivlp import IVLP, IVLPConfig, independent_prompts


@register_trainer_config("PROMPTSRC")
@dataclass
class PromptSRCConfig(IVLPConfig):
    N_CTX_VISION: int = 4
    N_CTX_TEXT: int = 4
    PROMPT_DEPTH_VISION: int = 9
    PROMPT_DEPTH_TEXT: int = 9
    TEXT_LOSS_WEIGHT: int = 25
    IMAGE_LOSS_WEIGHT: int = 10
    LOGIT_LOSS_WEIGHT: float = 1.0
    GPA_MEAN: int = 15
    GPA_STD: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        for k in ("TEXT_LOSS_WEIGHT", "IMAGE_LOSS_WEIGHT", "LOGIT_LOSS_WEIGHT"):
            if getattr(self, k) < 0:
                raise ConfigError(f"{self.key(k)} is a loss weight and must be >= 0, got {getattr(self, k)}")
        if self.GPA_STD <= 0:
            raise ConfigError(f"{self.key('GPA_STD')} (the spread, in epochs, of the Gaussian that weights each "
                              f"epoch's prompts) must be > 0, got {self.GPA_STD}")


class PromptSRCModel(CosineModel):
    """IVLP's cosine model whose output also carries the prompted features (``aux["image"]`` ``[B, E]``,
    ``aux["text"]`` ``[C, E]``), with the frozen CLIP's template-ensemble class features ``zs_text [C, E]``."""

    def __init__(self, clip, prompt_learner, zs_text: Tensor) -> None:
        super().__init__(clip, prompt_learner)
        self.register_buffer("zs_text", zs_text, persistent=False)

    def logits(self, image: Tensor, text: Tensor) -> ModelOutput:
        return ModelOutput(super().logits(image, text), aux={"image": image, "text": text})

    @torch.no_grad()
    def frozen(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """The frozen CLIP's normalised image features ``[B, E]`` and its logits ``[B, C]`` against ``zs_text``."""
        g_img = F.normalize(self.clip.encode_image(images).features.float(), dim=-1)
        return g_img, self.scale.float() * g_img @ self.zs_text.t()


@TRAINER_REGISTRY.register()
class PromptSRC(IVLP):
    config_class = PromptSRCConfig

    def compose(self, clip, c: PromptSRCConfig) -> PromptSRCModel:
        print(f"Frozen class features: mean over {len(IMAGENET_TEMPLATES)} templates (PromptSRC's textual diversity)")
        zs_text = template_features(clip, self.classnames, IMAGENET_TEMPLATES, verbose=False, normalize_each=False)
        return PromptSRCModel(clip, independent_prompts(self, clip, c), zs_text)

    def register_learners(self, c: PromptSRCConfig) -> None:
        super().register_learners(c)
        self.gpa_weights: List[float] = gaussian_epoch_weights(self.cfg.OPTIM.MAX_EPOCH, c.GPA_MEAN, c.GPA_STD)
        self.gpa = ParameterAverage()

    def training_loss(self, batch) -> Tuple[Tensor, Dict[str, Any]]:
        """L_ce + the three self-regulating terms (module docstring); each is logged."""
        c = self.method_cfg
        image, label = self.parse_batch_train(batch)
        out = self.model.run(image)
        g_img, zs_logits = self.model.frozen(image)
        logits = out.logits.float()
        ce = F.cross_entropy(logits, label)
        l_text = c.TEXT_LOSS_WEIGHT * F.l1_loss(out.aux["text"].float(), self.model.zs_text)
        l_image = c.IMAGE_LOSS_WEIGHT * F.l1_loss(out.aux["image"].float(), g_img)
        # KL(frozen ‖ prompted) per image, summed over the batch and divided by B·C as the reference does
        kl = F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(zs_logits, dim=1), reduction="sum", log_target=True)
        l_logits = c.LOGIT_LOSS_WEIGHT * kl / logits.numel()
        loss = ce + l_text + l_image + l_logits
        return loss, {"loss": loss, "ce": ce, "scl_text": l_text, "scl_image": l_image, "scl_logits": l_logits,
                      "acc": compute_accuracy(logits, label)[0]}

    # ------------------------------------------------------------------ Gaussian prompt aggregation
    def _prompts(self):
        return [(n, p) for n, p in self.model.prompt_learner.named_parameters() if p.requires_grad]

    def after_epoch(self) -> None:
        """Add this epoch's prompts to the aggregate; after the last epoch the aggregate replaces them (before the
        base class saves the checkpoint and, with TEST.FINAL_MODEL best_val, evaluates)."""
        epoch = self.epoch + 1
        self.gpa.add(self._prompts(), self.gpa_weights[epoch - 1], epoch)
        if epoch == len(self.gpa_weights):
            peak = max(range(epoch), key=lambda i: self.gpa_weights[i])
            print(f"Gaussian prompt aggregation: the prompts are now the weighted mean of epochs 1-{epoch} (weights "
                  f"peak at epoch {peak + 1} with {self.gpa_weights[peak]:.3g}; first {self.gpa_weights[0]:.3g}, last "
                  f"{self.gpa_weights[-1]:.3g})")
            self.gpa.copy_to(self._prompts())
        super().after_epoch()

    def learner_state(self, name: str):
        return {"gpa": self.gpa.state_dict()} if name == "prompt_learner" else None

    def load_learner_state(self, name: str, state: Dict[str, Any]) -> None:
        if "gpa" in state:
            self.gpa.load_state_dict(state["gpa"], self.device)

    def before_train(self) -> None:
        super().before_train()
        if 0 < self.start_epoch < len(self.gpa_weights) and self.gpa.epochs != list(range(1, self.start_epoch + 1)):
            raise UserError(
                f"Cannot resume PromptSRC at epoch {self.start_epoch + 1}: the checkpoint in "
                f"{self.cfg.RESUME or self.output_dir} has no prompt aggregate for epochs 1-{self.start_epoch} (it was "
                "written by other code), so the final Gaussian prompt aggregation would be wrong; train in a new "
                "--output-dir")
