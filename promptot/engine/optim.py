"""Optimizers and LR schedules with Dassl's semantics (docs/dassl.md#optim).

The warmup wrapper here is the project's own and is used under BOTH engines:
Dassl's warmup class passes ``verbose`` to torch's scheduler constructor and
dies with current torch (docs/dassl.md#shims, 1), and it pickles the successor scheduler object,
which ``torch.load(weights_only=True)`` refuses (docs/dassl.md#shims, 2). This one stores the
successor's ``state_dict`` instead and reproduces the same LR trace:
``MAX_EPOCH 3``, constant warmup 1 epoch at 1e-5, ``LR 2e-3`` gives
1e-5, 2e-3, 1.5e-3.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, Iterable, List, Optional, Union

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LRScheduler

from promptot.errors import ConfigError

AVAI_OPTIMS = ["adam", "amsgrad", "sgd", "rmsprop", "radam", "adamw"]
AVAI_SCHEDS = ["single_step", "multi_step", "cosine"]


def build_optimizer(model_or_params: Union[nn.Module, Iterable], optim_cfg, param_groups=None) -> torch.optim.Optimizer:
    """Build the optimizer named by ``optim_cfg.NAME`` over a module's parameters or an iterable."""
    name = optim_cfg.NAME
    if name not in AVAI_OPTIMS:
        raise ConfigError(f"OPTIM.NAME must be one of {AVAI_OPTIMS}, but got {name!r}")
    lr, wd = optim_cfg.LR, optim_cfg.WEIGHT_DECAY
    if param_groups is not None and optim_cfg.STAGED_LR:
        warnings.warn("STAGED_LR will be ignored, if you need to use STAGED_LR, please bind it with param_groups yourself.")
    if param_groups is None:
        if optim_cfg.STAGED_LR:
            if not isinstance(model_or_params, nn.Module):
                raise TypeError("When STAGED_LR is True, a model given to build_optimizer() must be an nn.Module")
            model = model_or_params.module if isinstance(model_or_params, nn.DataParallel) else model_or_params
            new_layers = optim_cfg.NEW_LAYERS
            new_layers = [new_layers] if isinstance(new_layers, str) else list(new_layers)
            if not new_layers:
                warnings.warn("STAGED_LR is True but NEW_LAYERS is empty")
            base_params, new_params = [], []
            for child_name, module in model.named_children():
                (new_params if child_name in new_layers else base_params).extend(module.parameters())
            param_groups = [{"params": base_params, "lr": lr * optim_cfg.BASE_LR_MULT}, {"params": new_params}]
        elif isinstance(model_or_params, nn.Module):
            param_groups = model_or_params.parameters()
        else:
            param_groups = model_or_params
    betas = (optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2)
    if name == "adam":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=wd, betas=betas)
    if name == "amsgrad":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=wd, betas=betas, amsgrad=True)
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=optim_cfg.MOMENTUM, weight_decay=wd,
                               dampening=optim_cfg.SGD_DAMPNING, nesterov=optim_cfg.SGD_NESTEROV)
    if name == "rmsprop":
        return torch.optim.RMSprop(param_groups, lr=lr, momentum=optim_cfg.MOMENTUM, weight_decay=wd,
                                   alpha=optim_cfg.RMSPROP_ALPHA)
    if name == "radam":
        return torch.optim.RAdam(param_groups, lr=lr, weight_decay=wd, betas=betas)
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=wd, betas=betas)


def build_base_scheduler(optimizer: torch.optim.Optimizer, optim_cfg) -> LRScheduler:
    """The schedule without warmup: single_step, multi_step or cosine (T_max = MAX_EPOCH)."""
    sched, stepsize, gamma, max_epoch = optim_cfg.LR_SCHEDULER, optim_cfg.STEPSIZE, optim_cfg.GAMMA, optim_cfg.MAX_EPOCH
    if sched not in AVAI_SCHEDS:
        raise ConfigError(f"OPTIM.LR_SCHEDULER must be one of {AVAI_SCHEDS}, but got {sched!r}")
    if sched == "single_step":
        if isinstance(stepsize, (list, tuple)):
            stepsize = stepsize[-1]
        if not isinstance(stepsize, int):
            raise ConfigError(f"For single_step, OPTIM.STEPSIZE must be an integer, got {type(stepsize).__name__}")
        if stepsize <= 0:
            stepsize = max_epoch
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=stepsize, gamma=gamma)
    if sched == "multi_step":
        if not isinstance(stepsize, (list, tuple)):
            raise ConfigError(f"For multi_step, OPTIM.STEPSIZE must be a list, got {type(stepsize).__name__}")
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(stepsize), gamma=gamma)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(max_epoch))


class WarmupLR(LRScheduler):
    """Constant or linear warmup for ``warmup_epoch`` steps, then delegate to ``successor``.

    Constant: lr = ``warmup_lr`` while ``last_epoch < warmup_epoch``. Linear: ``warmup_lr``
    at step 0, then ``base_lr * last_epoch / warmup_epoch``. From ``warmup_epoch`` on,
    each ``step()`` steps the successor (whose own counter starts at 0 unless
    ``WARMUP_RECOUNT`` is False), matching Dassl's trace step for step.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, successor: LRScheduler, warmup_epoch: int,
                 warmup_type: str = "constant", warmup_lr: float = 1e-5, last_epoch: int = -1) -> None:
        if warmup_type not in ("constant", "linear"):
            raise ConfigError(f"OPTIM.WARMUP_TYPE must be 'constant' or 'linear', got {warmup_type!r}")
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        self.warmup_type = warmup_type
        self.warmup_lr = warmup_lr
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        if self.warmup_type == "constant" or self.last_epoch == 0:
            return [self.warmup_lr for _ in self.base_lrs]
        return [lr * self.last_epoch / self.warmup_epoch for lr in self.base_lrs]

    def step(self, epoch: Optional[int] = None) -> None:  # noqa: D102
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step()
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step()

    def state_dict(self) -> Dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "successor")}
        state["successor"] = self.successor.state_dict()
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        state = dict(state_dict)
        succ = state.pop("successor")
        if not isinstance(succ, dict):
            # A Dassl-era checkpoint pickled the scheduler object itself.
            succ = succ.state_dict()
        succ = {k: v for k, v in succ.items() if k != "optimizer"}
        self.__dict__.update(state)
        self.successor.load_state_dict(succ)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, optim_cfg) -> LRScheduler:
    """Dassl's ``build_lr_scheduler`` with the project's warmup wrapper (works with current torch)."""
    scheduler = build_base_scheduler(optimizer, optim_cfg)
    if optim_cfg.WARMUP_EPOCH > 0:
        if not optim_cfg.WARMUP_RECOUNT:
            scheduler.last_epoch = optim_cfg.WARMUP_EPOCH
        wtype = optim_cfg.WARMUP_TYPE
        wlr = optim_cfg.WARMUP_CONS_LR if wtype == "constant" else optim_cfg.WARMUP_MIN_LR
        scheduler = WarmupLR(optimizer, scheduler, optim_cfg.WARMUP_EPOCH, wtype, wlr)
    return scheduler
