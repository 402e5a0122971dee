"""Classification evaluator and accuracy metric with Dassl's printed result block."""
from __future__ import annotations

import os.path as osp
from collections import OrderedDict, defaultdict
from typing import Dict, List, Optional

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, f1_score

from promptot.errors import ConfigError

from .registry import EVALUATOR_REGISTRY


def compute_accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> List[torch.Tensor]:
    """Top-k accuracies in percent. output [B, C] logits, target [B] labels."""
    maxk = max(topk)
    batch_size = target.size(0)
    if isinstance(output, (tuple, list)):
        output = output[0]
    _, pred = output.topk(maxk, 1, True, True)
    pred = pred.t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    res = []
    for k in topk:
        correct_k = correct[:k].reshape(-1).float().sum(0, keepdim=True)
        res.append(correct_k.mul_(100.0 / batch_size))
    return res


class EvaluatorBase:
    def __init__(self, cfg) -> None:
        self.cfg = cfg

    def reset(self) -> None:
        raise NotImplementedError

    def process(self, mo, gt) -> None:
        raise NotImplementedError

    def evaluate(self) -> Dict[str, float]:
        raise NotImplementedError


@EVALUATOR_REGISTRY.register()
class Classification(EvaluatorBase):
    """Accumulates predictions; ``evaluate`` prints the ``=> result`` block and returns
    ``accuracy``, ``error_rate``, ``macro_f1`` (and ``perclass_accuracy``), in percent."""

    def __init__(self, cfg, lab2cname: Optional[Dict[int, str]] = None, **kwargs) -> None:
        super().__init__(cfg)
        self._lab2cname = lab2cname
        self._per_class = cfg.TEST.PER_CLASS_RESULT
        if self._per_class and lab2cname is None:
            raise ValueError("TEST.PER_CLASS_RESULT needs the label->classname map")
        self.reset()

    def reset(self) -> None:
        self._correct = 0
        self._total = 0
        self._y_true: List[int] = []
        self._y_pred: List[int] = []
        self._per_class_res = defaultdict(list) if self._per_class else None

    def process(self, mo: torch.Tensor, gt: torch.Tensor) -> None:
        pred = mo.max(1)[1]
        matches = pred.eq(gt).float()
        self._correct += int(matches.sum().item())
        self._total += gt.shape[0]
        self._y_true.extend(gt.data.cpu().numpy().tolist())
        self._y_pred.extend(pred.data.cpu().numpy().tolist())
        if self._per_class_res is not None:
            for i, label in enumerate(gt):
                self._per_class_res[label.item()].append(int(matches[i].item()))

    def evaluate(self) -> Dict[str, float]:
        results: Dict[str, float] = OrderedDict()
        acc = 100.0 * self._correct / self._total
        err = 100.0 - acc
        macro_f1 = 100.0 * f1_score(self._y_true, self._y_pred, average="macro", labels=np.unique(self._y_true))
        results["accuracy"] = acc
        results["error_rate"] = err
        results["macro_f1"] = macro_f1
        print(
            "=> result\n"
            f"* total: {self._total:,}\n"
            f"* correct: {self._correct:,}\n"
            f"* accuracy: {acc:.1f}%\n"
            f"* error: {err:.1f}%\n"
            f"* macro_f1: {macro_f1:.1f}%"
        )
        if self._per_class_res is not None:
            print("=> per-class result")
            accs = []
            for label in sorted(self._per_class_res.keys()):
                res = self._per_class_res[label]
                correct, total = sum(res), len(res)
                acc_c = 100.0 * correct / total
                accs.append(acc_c)
                print(f"* class: {label} ({self._lab2cname[label]})\ttotal: {total:,}\tcorrect: {correct:,}\tacc: {acc_c:.1f}%")
            mean_acc = float(np.mean(accs))
            print(f"* average: {mean_acc:.1f}%")
            results["perclass_accuracy"] = mean_acc
        if self.cfg.TEST.COMPUTE_CMAT:
            cmat = confusion_matrix(self._y_true, self._y_pred, normalize="true")
            save_path = osp.join(self.cfg.OUTPUT_DIR, "cmat.pt")
            torch.save(cmat, save_path)
            print(f"Confusion matrix is saved to {save_path}")
        return results


def build_evaluator(cfg, **kwargs) -> EvaluatorBase:
    name = cfg.TEST.EVALUATOR
    if name not in EVALUATOR_REGISTRY:
        raise ConfigError(f"Unknown TEST.EVALUATOR {name!r}; registered: {EVALUATOR_REGISTRY.registered_names()}")
    if cfg.VERBOSE:
        print(f"Loading evaluator: {name}")
    return EVALUATOR_REGISTRY.get(name)(cfg, **kwargs)
