"""``PromptTrainer``: the shared base of every prompt-learning trainer.

It sits on the engine's ``TrainerX`` (Dassl's or the built-in one) and adds what
every method needs and none should re-implement: the frozen prompted CLIP,
precision handling (fp16 | fp32 | amp with fp32 master copies), the per-epoch LR
step, checkpoints holding only learnable parameters plus metadata, a loader
that reports unreadable images clearly, eval-time caches for static text
features, and a JSON results record for every evaluation.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import os.path as osp
import random
import re
import subprocess
from collections import Counter
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import __version__
from .clip import PromptedCLIP
from .config import config_hash, group_hash, resolve
from .engine import (ENGINE, DataManager, DatasetWrapper, TrainerX, build_lr_scheduler, build_optimizer,
                     compute_accuracy, load_checkpoint)
# promptot's own (atomic) writer under both engines: Dassl's is not atomic
from .engine.utils import CheckpointNotFoundError, checkpoint_dict, save_checkpoint
from . import distributed as ddp
from .errors import ConfigError, UserError
from .fileio import atomic_write_text
from .model import PromptModel
from .precision import Precision

class CheckpointMismatchError(UserError, ValueError):
    """A checkpoint cannot be loaded into the model built for this run."""


class SafeDatasetWrapper(DatasetWrapper):
    """Dataset wrapper whose image reads go through :func:`promptot.datasets.common.read_image`:
    an unreadable image stops the run with its path and the doctor command, or, with
    ``DATASET.SKIP_CORRUPT True``, is skipped (the next readable item takes its place) and counted.
    Works over Dassl's wrapper too (same output dict: img, label, domain, impath, index, img0)."""

    def __getitem__(self, idx: int):
        from .datasets.common import read_image
        from .engine.data import wrapper_output

        skip = bool(getattr(self.cfg.DATASET, "SKIP_CORRUPT", False))
        n = len(self.data_source)
        for attempt in range(min(n, 100)):
            j = (idx + attempt) % n
            item = self.data_source[j]
            img0 = read_image(item.impath, skip_corrupt=skip)
            if img0 is not None:
                break
        else:
            raise RuntimeError(f"100 consecutive unreadable images from index {idx} (DATASET.SKIP_CORRUPT is True); "
                               "check the dataset with `python -m promptot.datasets check --root <DATA>`")
        return wrapper_output(self, item, j, img0)


def git_sha() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=osp.dirname(osp.abspath(__file__)),
                             capture_output=True, text=True, timeout=5)
        sha = out.stdout.strip()
        return sha if out.returncode == 0 and len(sha) == 40 else None
    except Exception:  # noqa: BLE001 - not a git checkout
        return None


LossTerms = Dict[str, Union[float, Tensor]]

#: Sinkhorn marginal error (L1, plans of total mass 1) above which a run warns once: logits are scale·<T, S>, so an
#: error δ moves a logit by up to about scale·δ ≈ 100·δ (0.1 at δ = 1e-3).
OT_WARN_MARGINAL_ERR = 1e-3
NONFINITE_MODES = ("stop", "skip")


class NonFiniteError(UserError, FloatingPointError):
    """A NaN or Inf in a loss, logits, features or OT plans stopped training (the message names step and tensor)."""


def rng_state() -> Dict[str, Any]:
    """Every random state a training epoch consumes: Python, NumPy, torch CPU and CUDA (the data loader's shuffling
    and its worker seeds are drawn from torch's global generator)."""
    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class PromptTrainer(TrainerX):
    """Base class of the prompt trainers.

    A trainer overrides :meth:`build_model` (build the CLIP with :meth:`build_clip`, compose a
    :class:`~promptot.model.PromptModel` as ``self.model`` and call :meth:`register_learner` for each group of
    learnable parameters). The base does the rest; its hooks replace overriding the training step:

    * :meth:`training_loss` ``(batch) -> (loss, logged terms)``: cross-entropy on the model's logits by default;
      methods add terms (KgCoOp, DPT) by overriding it.
    * :meth:`transform_gradients`: called between backward and the optimizer steps (ProGrad's projection).
    * several :meth:`register_learner` calls give several parameter groups, each with its own optimizer, LR and
      schedule (DPT), stepped together in one training loop.
    """

    #: the method's typed config dataclass (``TRAINER.<NODE>``); :meth:`method_config` resolves it
    config_class: Optional[type] = None
    #: False for trainers with nothing to learn (zero-shot CLIP): they run with ``--eval-only`` only
    trains: bool = True
    #: folder of the method's yaml configs, relative to the repository root (default ``configs/trainers/<Name>``)
    config_dir: Optional[str] = None

    @classmethod
    def configs_dir(cls) -> str:
        return cls.config_dir or f"configs/trainers/{cls.__name__}"

    def __init__(self, cfg) -> None:
        self._eval_cache: Optional[Dict[str, Any]] = None
        self._scaler = None
        self._last_results: Dict[str, float] = {}
        self.prec: Optional[Precision] = None
        super().__init__(cfg)
        evaluate = self.evaluator.evaluate

        def _evaluate_and_keep() -> Dict[str, float]:
            if ddp.is_distributed():  # sharded evaluation: every rank's predictions, then the metrics once
                merge_evaluations(self.evaluator)
            results = evaluate()
            self._last_results = dict(results)
            return results

        self.evaluator.evaluate = _evaluate_and_keep

    # ------------------------------------------------------------------ data
    def build_data_loader(self) -> None:
        dm = DataManager(self.cfg, dataset_wrapper=SafeDatasetWrapper)
        self.train_loader_x = dm.train_loader_x
        self.train_loader_u = dm.train_loader_u
        self.val_loader = dm.val_loader
        self.test_loader = dm.test_loader
        self.num_classes = dm.num_classes
        self.num_source_domains = dm.num_source_domains
        self.lab2cname = dm.lab2cname
        self.dm = dm
        self.shots = self._shots_used()
        if ddp.is_distributed():
            self._distribute_loaders()

    def _distribute_loaders(self) -> None:
        """Rank r trains on its slice of every global batch and evaluates items r, r+K, ... (see
        :mod:`promptot.distributed`)."""
        from torch.utils.data import DataLoader

        cfg, k, r = self.cfg, ddp.world_size(), ddp.rank()
        x = cfg.DATALOADER.TRAIN_X

        def loader(old, sampler, batch):
            return DataLoader(old.dataset, batch_size=batch, sampler=sampler, num_workers=cfg.DATALOADER.NUM_WORKERS,
                              drop_last=False, pin_memory=old.pin_memory)

        data = self.train_loader_x.dataset
        drop = len(data) >= x.BATCH_SIZE  # Dassl's rule for the training loader
        self.train_loader_x = loader(self.train_loader_x, ddp.GlobalBatchSampler(len(data), x.BATCH_SIZE, r, k, drop),
                                     x.BATCH_SIZE // k)
        for name in ("val_loader", "test_loader"):
            old = getattr(self, name)
            if old is not None:
                setattr(self, name, loader(old, ddp.ShardSampler(len(old.dataset), r, k), old.batch_size))
        print(f"Distributed: {k} processes, global batch {x.BATCH_SIZE} ({x.BATCH_SIZE // k} per process)")

    def _shots_used(self) -> Dict[str, Any]:
        """What ``DATASET.NUM_SHOTS`` gave (Dassl's rules, stated instead of silent): ``-1`` trains on all images, and
        a class with fewer images than asked contributes all it has."""
        asked = int(self.cfg.DATASET.NUM_SHOTS)
        counts = Counter(int(d.label) for d in self.dm.dataset.train_x)
        names = self.dm.lab2cname
        if asked < 1:
            print(f"Shots: all training images ({sum(counts.values())} for {len(counts)} classes; DATASET.NUM_SHOTS "
                  f"{asked})")
            return {"requested": asked, "used": "all"}
        short = {names.get(k, str(k)): n for k, n in sorted(counts.items()) if n < asked}
        if short and getattr(self.cfg.DATASET, "STRICT_SHOTS", False):
            shown = ", ".join(f"{k} ({n})" for k, n in list(short.items())[:10])
            raise ConfigError(f"DATASET.STRICT_SHOTS is True and {len(short)} class(es) have fewer training images "
                              f"than DATASET.NUM_SHOTS {asked}: {shown}. Lower NUM_SHOTS, or set STRICT_SHOTS False to "
                              "let such classes use all their images (Dassl's rule).")
        if short:
            shown = ", ".join(f"{k} ({n})" for k, n in list(short.items())[:10])
            print(f"WARNING: {len(short)} class(es) have fewer training images than DATASET.NUM_SHOTS {asked} and use "
                  f"all they have: {shown}{' ...' if len(short) > 10 else ''}")
        return {"requested": asked, "used": asked, "short_classes": short}

    @property
    def classnames(self) -> List[str]:
        return list(self.dm.dataset.classnames)

    # ------------------------------------------------------------------ model
    def build_model(self) -> None:
        """Resolve the method's config (``self.method_cfg``), load the CLIP in its precision, :meth:`compose` the
        model and :meth:`register_learners`. Most trainers only implement :meth:`compose`."""
        self.method_cfg = c = self.method_config()
        clip = self.build_typed_clip(c)
        self.model = self.compose(clip, c).to(self.device)
        self.model.text_chunk = int(getattr(self.cfg.MODEL, "TEXT_CHUNK", 0))
        self._note_replaced_context_lengths(c)
        self.register_learners(c)

    #: values the run used that differ from the config as given (key -> (value, why)); written to config.yaml
    effective: Dict[str, Tuple[Any, str]]

    def note_effective(self, key: str, value: Any, why: str) -> None:
        """Record (and print) a config value the run replaced by another, e.g. ``N_CTX`` by CTX_INIT's word count."""
        if not hasattr(self, "effective"):
            self.effective = {}
        self.effective[key] = (value, why)
        print(f"Note: {key} is {value!r} in this run ({why})")

    def _note_replaced_context_lengths(self, c) -> None:
        from .prompts import TextPrompts

        for m in self.model.modules():
            if isinstance(m, TextPrompts) and m.requested_n_ctx != m.n_ctx:
                key = c.key("N_CTX") if hasattr(c, "N_CTX") else "N_CTX"
                self.note_effective(key, m.n_ctx, f"CTX_INIT has {m.n_ctx} words and replaces N_CTX "
                                                  f"{m.requested_n_ctx}, as in the reference code")
                break

    def compose(self, clip: PromptedCLIP, c) -> PromptModel:
        """Build the method's :class:`~promptot.model.PromptModel` from the frozen CLIP and the typed config."""
        raise NotImplementedError(f"{type(self).__name__} must implement compose(clip, config) or build_model()")

    def register_learners(self, c) -> None:
        """Register the learnable parameter groups (default: ``self.model.prompt_learner`` as ``prompt_learner``)."""
        self.register_learner("prompt_learner", self.model.prompt_learner)

    def hand_template(self, c) -> str:
        """The hand-crafted template of this run's dataset for a :class:`~promptot.config.HandTemplateConfig`."""
        from .templates import dataset_template

        return dataset_template(self.cfg.DATASET.NAME, self.dm.dataset, c.TEMPLATES, c.TEMPLATE)

    def method_config(self):
        """The typed, validated config of this method (``resolve(cfg, config_class)``)."""
        if self.config_class is None:
            raise TypeError(f"{type(self).__name__} must set config_class to its registered config dataclass")
        return resolve(self.cfg, self.config_class)

    def build_clip(self, precision: str, key: str = "PREC") -> PromptedCLIP:
        """Load the frozen CLIP named by ``MODEL.BACKBONE.NAME``/``PATH`` in the run's precision and wrap it in a
        :class:`PromptedCLIP`. Sets ``self.prec`` (the :class:`~promptot.precision.Precision` every trainer reads);
        ``key`` names the precision config key in error messages (e.g. ``TRAINER.COOP.PREC``)."""
        from .clip import load_clip

        try:  # the project's own mini CLIP is selectable by name (MODEL.BACKBONE.NAME miniclip-fmnist)
            from .miniclip import register as register_miniclip

            register_miniclip()
        except ImportError:
            pass

        self.prec = Precision.from_config(precision, self.device, key)
        self._scaler = self.prec.grad_scaler()
        cfg = self.cfg
        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME or '-'}"
              f"{', path: ' + cfg.MODEL.BACKBONE.PATH if cfg.MODEL.BACKBONE.PATH else ''}, precision: {precision})")
        clip_model = load_clip(cfg.MODEL.BACKBONE.NAME, path=cfg.MODEL.BACKBONE.PATH,
                               precision=self.prec.load_precision, device=self.device)
        for p in clip_model.parameters():
            p.requires_grad_(False)
        pclip = PromptedCLIP(clip_model)
        size = tuple(cfg.INPUT.SIZE)
        if size[0] != pclip.image_size:
            raise ConfigError(
                f"INPUT.SIZE is {size} but the CLIP backbone expects {pclip.image_size}x{pclip.image_size} images; "
                f"set INPUT.SIZE ({pclip.image_size}, {pclip.image_size}) in the config."
            )
        return pclip

    def build_typed_clip(self, config) -> PromptedCLIP:
        """:meth:`build_clip` with the precision of a :class:`~promptot.config.PrecisionConfig`."""
        return self.build_clip(config.PREC, config.key("PREC"))

    @property
    def param_dtype(self) -> torch.dtype:
        """dtype of new learnable parameters (``self.prec.param_dtype``; fp32 before :meth:`build_clip`)."""
        return self.prec.param_dtype if self.prec is not None else torch.float32

    def optim_config(self, **overrides: Any):
        """A copy of ``cfg.OPTIM`` with ``overrides`` (e.g. ``LR=0.01, WARMUP_EPOCH=10``) for a learner that
        needs its own optimizer settings; unknown keys raise a :class:`ConfigError`."""
        optim_cfg = self.cfg.OPTIM.clone()
        optim_cfg.defrost()
        for k, v in overrides.items():
            if k not in optim_cfg:
                raise ConfigError(f"OPTIM has no key {k!r} (keys: {', '.join(sorted(optim_cfg))})")
            optim_cfg[k] = v
        optim_cfg.freeze()
        return optim_cfg

    def register_learner(self, name: str, module: nn.Module, params: Optional[Iterable] = None,
                         optim_cfg=None) -> None:
        """Build an optimizer + LR schedule over ``params`` (default: ``module``'s trainable parameters) from
        ``optim_cfg`` (default ``cfg.OPTIM``; see :meth:`optim_config`) and register ``module`` under ``name``,
        which is also its checkpoint sub-folder. Call it once per parameter group."""
        trainable = [p for p in (params if params is not None else module.parameters()) if p.requires_grad]
        if not trainable:
            raise ValueError(f"{type(self).__name__}: module {name!r} has no trainable parameters")
        taken = {id(p) for n in self.get_model_names() if self._optims[n] is not None
                 for g in self._optims[n].param_groups for p in g["params"]}
        if any(id(p) in taken for p in trainable):
            raise ValueError(f"{type(self).__name__}: learner {name!r} shares parameters with a learner registered "
                             "before it; each parameter must belong to one learner")
        optim_cfg = self.cfg.OPTIM if optim_cfg is None else optim_cfg
        optim = build_optimizer(trainable, optim_cfg)
        sched = build_lr_scheduler(optim, optim_cfg)
        self.register_model(name, module, optim, sched)
        n = sum(p.numel() for p in trainable)
        lr = f", lr {optim_cfg.LR:g}" if optim_cfg is not self.cfg.OPTIM else ""
        print(f"Learnable parameters ({name}): {n:,}{lr}")

    def autocast(self):
        """The forward-pass context of the run's precision (autocast under ``amp``)."""
        return self.prec.autocast() if self.prec is not None else contextlib.nullcontext()

    # ------------------------------------------------------------------ training step
    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def training_loss(self, batch) -> Tuple[Tensor, LossTerms]:
        """``(loss, logged terms)`` for one batch (run under the precision's autocast).

        Default: cross-entropy on the model's logits; logs ``loss``, ``acc`` and the model's diagnostics.
        Override to add terms; log each term under its own name.
        """
        image, label = self.parse_batch_train(batch)
        out = self.model.run(image)
        check_finite(out.logits, "logits")
        loss = F.cross_entropy(out.logits.float(), label)
        terms: LossTerms = {"loss": loss, "acc": compute_accuracy(out.logits, label)[0]}
        terms.update(out.diagnostics)
        return loss, terms

    def forward_backward(self, batch) -> Dict[str, float]:
        """:meth:`training_loss`, then backward, :meth:`transform_gradients` and the optimizer steps.

        A NaN/Inf in the loss or in a checked tensor (logits, OT inputs and plans) stops the run with a
        :class:`NonFiniteError` naming the step and the tensor, or, with ``TRAIN.NONFINITE skip``, skips the batch
        (no update) and counts it in the log as ``nonfinite_skipped``.
        """
        self._local_n = int(batch["label"].shape[0]) if isinstance(batch, dict) and "label" in batch else 1
        problem = ""
        try:
            with self.autocast():
                loss, terms = self.training_loss(batch)
            if not bool(torch.isfinite(loss.detach())):
                problem = f"the loss is {float(loss.detach())}"
        except FloatingPointError as e:
            problem = str(e)
        if ddp.is_distributed():  # every rank takes the same path, or the collectives below would not match
            flag = torch.tensor([0.0 if problem else 1.0])
            ddp.all_reduce_mean_([flag])
            if float(flag) < 1.0 and not problem:
                problem = "a non-finite value on another process"
        if problem:
            return self._nonfinite(problem)
        self.optimize(loss)
        summary = {k: float(v.detach()) if isinstance(v, Tensor) else float(v) for k, v in terms.items()}
        if ddp.is_distributed():  # the logged values are those of the global batch
            vals = torch.tensor([summary[k] for k in sorted(summary)], dtype=torch.float64)
            ddp.all_reduce_mean_([vals], weight=self._local_n)
            summary = dict(zip(sorted(summary), vals.tolist()))
        self.check_convergence(summary)
        if getattr(self, "_nonfinite_skipped", 0):
            summary["nonfinite_skipped"] = float(self._nonfinite_skipped)
        return summary

    def _nonfinite(self, what: str) -> Dict[str, float]:
        where = f"epoch {self.epoch + 1}, batch {self.batch_idx + 1}"
        if str(getattr(self.cfg.TRAIN, "NONFINITE", "stop")) != "skip":
            raise NonFiniteError(
                f"Training stopped at {where}: {what}. The prompts were not updated by this batch; the last "
                "checkpoint is intact. Lower OPTIM.LR, use PREC fp32 or amp instead of fp16, or set TRAIN.NONFINITE "
                "skip to skip such batches (they are counted in the log).")
        self._nonfinite_skipped = getattr(self, "_nonfinite_skipped", 0) + 1
        print(f"WARNING: skipping the batch at {where}: {what} (TRAIN.NONFINITE skip; "
              f"{self._nonfinite_skipped} skipped so far)")
        self.model_zero_grad()
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()  # the schedule advances per epoch whatever happened to the last batch
        return {"nonfinite_skipped": float(self._nonfinite_skipped)}

    def check_convergence(self, diagnostics: Dict[str, float]) -> None:
        """Warn once per run when a Sinkhorn solve stopped with a marginal error above :data:`OT_WARN_MARGINAL_ERR`
        (``ot_err`` in the model's diagnostics; also printed with every training line)."""
        err = diagnostics.get("ot_err")
        if err is None or err <= OT_WARN_MARGINAL_ERR or getattr(self, "_ot_warned", False):
            return
        self._ot_warned = True
        c = getattr(self, "method_cfg", None)
        key = c.key if c is not None and hasattr(c, "key") else (lambda k: k)
        print(f"WARNING: Sinkhorn stopped before convergence (marginal error {err:.2e} > {OT_WARN_MARGINAL_ERR:g}; "
              f"logits may be off by about {100 * err:.2g}). Raise {key('MAX_ITER')}, use {key('DOMAIN')} log for "
              f"small eps, or a larger eps. Shown once per run; ot_err in the training lines tracks it.")

    def transform_gradients(self) -> None:
        """Hook between backward and the optimizer steps: the learnable parameters hold their gradients in
        ``.grad`` (unscaled, also under amp); modify them in place (e.g. ProGrad's projection). Default: nothing."""

    def _transforms_gradients(self) -> bool:
        return type(self).transform_gradients is not PromptTrainer.transform_gradients

    def optimize(self, loss: Tensor, names=None) -> None:
        """Zero the gradients, backward (through the grad scaler under amp), :meth:`transform_gradients`, step every
        registered optimizer, then the per-epoch LR step on the last batch of the epoch."""
        names = self.get_model_names(names)
        optims = [self._optims[n] for n in names if self._optims[n] is not None]
        self.model_zero_grad(names)
        if self._scaler is not None:
            self.detect_anomaly(loss)
            self._scaler.scale(loss).backward()
            self._average_gradients()
            if self._transforms_gradients():
                for o in optims:
                    self._scaler.unscale_(o)
            self.transform_gradients()
            for o in optims:
                self._scaler.step(o)
            self._scaler.update()
        else:
            self.model_backward(loss)
            self._average_gradients()
            self.transform_gradients()
            self.model_update(names)
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()

    def _average_gradients(self) -> None:
        """Distributed runs: each learnable gradient becomes the mean over every rank's items (one all-reduce)."""
        if not ddp.is_distributed():
            return
        grads = [p.grad for _, p in self.learnable_parameters() if p.grad is not None]
        ddp.all_reduce_mean_(grads, weight=getattr(self, "_local_n", 1))

    def learnable_parameters(self) -> List[Tuple[str, nn.Parameter]]:
        """``(qualified name, parameter)`` of every parameter an optimizer steps, in registration order."""
        out = []
        for name in self.get_model_names():
            if self._optims[name] is None:
                continue
            ids = {id(p) for g in self._optims[name].param_groups for p in g["params"]}
            out += [(f"{name}.{k}", p) for k, p in self._models[name].named_parameters() if id(p) in ids]
        return out

    # ------------------------------------------------------------------ inference
    def static_text(self) -> Any:
        """The text side when it does not depend on the image (``model.text_is_static``), else None. At test
        time it is computed once per evaluation and passed back as ``self.model.run(image, text)``."""
        return self.model.text_side() if getattr(self.model, "text_is_static", False) else None

    def model_inference(self, image: Tensor) -> Tensor:
        text = self.eval_cached("text", self.static_text)
        with self.autocast():
            out = self.model.run(image, text)
        if out.diagnostics:
            self.check_convergence({k: float(v) for k, v in out.diagnostics.items()})
        return out.logits.float()

    # ------------------------------------------------------------------ eval caches
    def eval_cached(self, key: str, fn: Callable[[], Any]) -> Any:
        """During ``test()``, compute ``fn()`` once per evaluation (e.g. static text features); otherwise call it."""
        if self._eval_cache is None:
            return fn()
        if key not in self._eval_cache:
            self._eval_cache[key] = fn()
        return self._eval_cache[key]

    def test(self, split: Optional[str] = None) -> float:
        self._eval_cache = {}
        try:
            result = super().test(split)
        finally:
            self._eval_cache = None
        used = split or self.cfg.TEST.SPLIT
        if used != "val" or self.val_loader is None:
            used = "test"
        self.write_results_record(used)
        return result

    def write_results_record(self, split: str) -> Dict[str, Any]:
        """Append one JSON line for this evaluation to ``OUTPUT_DIR/results.jsonl`` (rank 0 only)."""
        cfg = self.cfg
        record = {
            "time": datetime.datetime.now().isoformat(timespec="seconds"),
            "method": cfg.TRAINER.NAME,
            "dataset": cfg.DATASET.NAME,
            "subsample_classes": cfg.DATASET.SUBSAMPLE_CLASSES,
            "num_shots": cfg.DATASET.NUM_SHOTS,
            "shots_used": getattr(self, "shots", None),
            "seed": cfg.SEED,
            "backbone": cfg.MODEL.BACKBONE.NAME or cfg.MODEL.BACKBONE.PATH,
            "split": split,
            "epoch": self._record_epoch(),
            "num_classes": self.num_classes,
            "metrics": {k: float(v) for k, v in self._last_results.items()},
            "model_dir": getattr(self, "loaded_from", None),
            "engine": ENGINE,
            "promptot_version": __version__,
            "config_hash": config_hash(cfg),  # the job (engine-independent, see promptot.config.config_hash)
            "group_hash": group_hash(cfg),  # the job without its seed: what seeds are averaged over
            "git_sha": git_sha(),
        }
        if not ddp.is_main():
            return record
        path = osp.join(cfg.OUTPUT_DIR, "results.jsonl")
        old = open(path).read() if osp.exists(path) else ""
        if old and not old.endswith("\n"):
            old += "\n"
        atomic_write_text(path, old + json.dumps(record) + "\n")  # a kill never leaves half a record
        return record

    def _record_epoch(self) -> int:
        """Epochs of training behind the evaluated prompts (0 = untrained / zero-shot)."""
        if getattr(self, "_trained_epochs", False):
            return int(self.epoch) + 1
        return int(getattr(self, "loaded_epoch", 0))

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_meta(self) -> Dict[str, Any]:
        cfg = self.cfg
        return {
            "method": cfg.TRAINER.NAME,
            "backbone": cfg.MODEL.BACKBONE.NAME or cfg.MODEL.BACKBONE.PATH,
            "classnames": self.classnames,
            "dataset": cfg.DATASET.NAME,
            "subsample_classes": cfg.DATASET.SUBSAMPLE_CLASSES,
            "config_hash": config_hash(cfg),
            "promptot_version": __version__,
        }

    def save_model(self, epoch: int, directory: str, is_best: bool = False, val_result=None,
                   model_name: str = "") -> None:
        """Dassl's layout (``<directory>/<learner>/model.pth.tar-<epoch>``), holding only each learner's state
        (its parameters; no frozen CLIP weights) plus ``meta`` (method, backbone, class names, config hash)."""
        if not ddp.is_main():  # rank 0 writes; the others wait until the files exist
            ddp.barrier()
            return
        meta = self.checkpoint_meta()
        run_state = {"rng": rng_state(), "scaler": self._scaler.state_dict() if self._scaler is not None else None,
                     "nonfinite_skipped": getattr(self, "_nonfinite_skipped", 0)}
        for name in self.get_model_names():
            extra: Dict[str, Any] = {"meta": meta, "run_state": run_state}
            learner_state = self.learner_state(name)
            if learner_state is not None:
                extra["learner_state"] = learner_state
            save_checkpoint(checkpoint_dict(self._models[name], self._optims[name], self._scheds[name], epoch + 1,
                                            val_result, **extra),
                            osp.join(directory, name), is_best=is_best, model_name=model_name)
        ddp.barrier()

    def init_writer(self, log_dir: str) -> None:
        if ddp.is_main():  # one TensorBoard writer per run
            super().init_writer(log_dir)

    def learner_state(self, name: str) -> Optional[Dict[str, Any]]:
        """Hook: training state of learner ``name`` that is not a parameter but must survive a resume (e.g.
        PromptSRC's running prompt aggregate). Saved beside the optimizer state under ``learner_state`` in each of
        the learner's checkpoints and handed back to :meth:`load_learner_state` on resume. Default: none."""
        return None

    def load_learner_state(self, name: str, state: Dict[str, Any]) -> None:
        """Hook: restore what :meth:`learner_state` saved for learner ``name`` (called on resume only)."""

    def resume_model_if_exist(self, directory: str) -> int:
        """The engine's resume (parameters, optimizer, scheduler), then each learner's :meth:`learner_state`, the random
        states, the grad scaler and the counters saved with the checkpoint, so that a resumed run continues exactly as
        the uninterrupted one would."""
        start_epoch = super().resume_model_if_exist(directory)
        if start_epoch > 0:
            run_state = None
            for name in self.get_model_names():
                sub = osp.join(directory, name)
                with open(osp.join(sub, "checkpoint")) as f:
                    checkpoint = load_checkpoint(osp.join(sub, f.readline().strip()))
                if checkpoint.get("learner_state") is not None:
                    self.load_learner_state(name, checkpoint["learner_state"])
                run_state = run_state or checkpoint.get("run_state")
            if run_state is None:
                print("WARNING: this checkpoint holds no random states (written by promptot < 0.2): the resumed run "
                      "draws other batches than an uninterrupted one would")
            else:
                set_rng_state(run_state["rng"])
                if self._scaler is not None and run_state.get("scaler"):
                    self._scaler.load_state_dict(run_state["scaler"])
                self._nonfinite_skipped = int(run_state.get("nonfinite_skipped", 0))
        return start_epoch

    #: state-dict key suffixes never loaded (class-dependent buffers that reference checkpoints stored)
    transient_keys = ("token_prefix", "token_suffix")
    #: learner name -> other sub-folder names :meth:`load_model` accepts for it when ``<model-dir>/<name>/`` is
    #: absent (the folders official code bases register their models under, e.g. MaPLe's
    #: ``MultiModalPromptLearner``), so ``--model-dir`` also reads their released weights
    checkpoint_aliases: Dict[str, Tuple[str, ...]] = {}

    #: ``(regex, replacement)`` rules from the key names of the method's reference code base to ours (see
    #: :func:`rename_state`): a checkpoint with a key matching a rule is renamed, promptot's own load as they are
    official_keys: Sequence["KeyRule"] = ()

    def convert_checkpoint_state(self, name: str, state: Dict[str, Tensor], meta: Dict[str, Any]) -> Dict[str, Tensor]:
        """Hook: map a loaded state dict to this model's key names (e.g. an official repository's names). Default:
        a checkpoint of the reference code (a key matches :attr:`official_keys`) goes through :func:`rename_state`;
        any other is unchanged."""
        if any(re.fullmatch(pattern, k) for pattern, _ in self.official_keys for k in state):
            return rename_state(state, self.official_keys, self._models[name].state_dict())
        return state

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        """Load learned prompts for eval-only runs; checks shapes and says why a load cannot work.

        Keys a learner lists in ``class_specific_keys`` (key prefixes of parameters that depend on the class set
        but are not needed at inference, e.g. DPT's auxiliary classifier) are dropped when the checkpoint was
        trained on other classes, so prompts transfer to another class set (base-to-new, cross-dataset).
        """
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given (ignore this if it's done on "
                  "purpose)")
            return
        if not osp.isdir(directory):
            raise CheckpointNotFoundError(f"--model-dir {directory} does not exist: it must be the OUTPUT_DIR of a "
                                          "finished training run (it holds a folder per learner, e.g. "
                                          f"'{self.get_model_names()[0]}/').")
        model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
        for name in self.get_model_names():
            sub = osp.join(directory, name)
            for alias in self.checkpoint_aliases.get(name, ()):
                if not osp.isdir(sub) and osp.isdir(osp.join(directory, alias)):
                    print(f"Note: no '{name}/' folder in {directory}; reading the official layout's '{alias}/'")
                    sub = osp.join(directory, alias)
            path = osp.join(sub, model_file)
            if not osp.exists(path):
                have = sorted(f for f in os.listdir(sub) if f.startswith("model")) if osp.isdir(sub) else []
                hint = (f" Files there: {', '.join(have)}; pick one with --load-epoch N." if have else
                        f" {sub} does not exist: --model-dir must be the OUTPUT_DIR of the training run "
                        f"(it holds a '{name}/' folder).")
                if epoch is None and have:
                    hint += (" (Without --load-epoch the best-val model is loaded, which exists only with "
                             "TEST.FINAL_MODEL best_val.)")
                raise CheckpointNotFoundError(f"No model at {path}.{hint}")
            checkpoint = load_checkpoint(path)
            meta = checkpoint.get("meta") or {}
            state = self.convert_checkpoint_state(name, dict(checkpoint["state_dict"]), meta)
            state = {k: v for k, v in state.items() if not any(k.endswith(t) for t in self.transient_keys)}
            model = self._models[name]
            own = model.state_dict()
            other_classes = bool(meta.get("classnames")) and meta["classnames"] != self.classnames
            droppable = tuple(getattr(model, "class_specific_keys", ()))
            # a checkpoint without class names (e.g. an official one) shows another class set by the shapes
            dropped = [k for k in list(state) if droppable and k.startswith(droppable)
                       and (other_classes or (k in own and own[k].shape != state[k].shape))]
            for k in dropped:
                del state[k]
            mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                          for k, v in state.items() if k in own and own[k].shape != v.shape]
            if mismatched:
                n_ckpt = len(meta.get("classnames", [])) or "?"
                raise CheckpointMismatchError(
                    f"Cannot load {path} into {cfg_name(self)}: parameter shapes differ ({'; '.join(mismatched[:3])}). "
                    f"The checkpoint was trained with {n_ckpt} classes and this run has {self.num_classes}; "
                    "class-specific parameters (e.g. CSC contexts) cannot transfer to another class set. "
                    "Evaluate on the same classes, or train with generic (shared) prompts."
                )
            missing = [k for k in own if k not in state and not any(k.endswith(t) for t in self.transient_keys)
                       and not (dropped and k.startswith(droppable))]
            if missing:
                raise CheckpointMismatchError(
                    f"{path} lacks parameters this model needs ({', '.join(missing[:5])}); it was written by "
                    f"{meta.get('method', 'another method/config')} — check --model-dir and the trainer/config."
                )
            if meta.get("method") and meta["method"] != self.cfg.TRAINER.NAME:
                print(f"Note: checkpoint was trained with {meta['method']}, loading into {self.cfg.TRAINER.NAME}")
            if other_classes:
                skipped = f"; class-specific parameters not loaded: {', '.join(sorted(dropped))}" if dropped else ""
                print(f"Note: prompts learned on {len(meta['classnames'])} classes are evaluated on "
                      f"{self.num_classes} other/relabelled classes{skipped}")
            elif dropped:
                print(f"Note: class-specific parameters of another class set not loaded: {', '.join(sorted(dropped))}")
            vr = checkpoint.get("val_result")
            print(f"Load {path} to {name} (epoch={checkpoint['epoch']}, "
                  f"val_result={'None' if vr is None else f'{vr:.1f}'})")
            model.load_state_dict(state, strict=False)
            self.loaded_epoch = int(checkpoint["epoch"])
        self.loaded_from = directory

    def before_train(self) -> None:
        super().before_train()
        if self.start_epoch > 0:
            self.loaded_epoch = int(self.start_epoch)
            if self.start_epoch >= self.max_epoch:
                print(f"Training already finished in {self.cfg.RESUME or self.output_dir} "
                      f"(epoch {self.start_epoch}/{self.max_epoch}): skipping training, testing the saved model. "
                      "Use another --output-dir to train again.")
            else:
                print(f"Resuming training at epoch {self.start_epoch + 1}/{self.max_epoch}")

    def after_epoch(self) -> None:
        self._trained_epochs = True
        from .datasets.common import skipped_images

        n_skipped = len(skipped_images())
        if n_skipped:
            print(f"Skipped {n_skipped} unreadable image(s) so far (DATASET.SKIP_CORRUPT True; counted in the main "
                  "process only when DATALOADER.NUM_WORKERS > 0)")
        names = [n for n in self.get_model_names() if self._optims[n] is not None]
        if len(names) > 1:  # several parameter groups: TensorBoard gets each one's LR
            for n in names:
                self.write_scalar(f"train/lr_{n}", self._optims[n].param_groups[0]["lr"], self.epoch)
        super().after_epoch()


def merge_evaluations(evaluator) -> None:
    """Replace a Classification evaluator's accumulated predictions by those of every rank (sharded evaluation)."""
    parts = ddp.gather_objects((evaluator._correct, evaluator._total, evaluator._y_true, evaluator._y_pred,
                                dict(evaluator._per_class_res) if evaluator._per_class_res is not None else None))
    evaluator._correct = sum(p[0] for p in parts)
    evaluator._total = sum(p[1] for p in parts)
    evaluator._y_true = [y for p in parts for y in p[2]]
    evaluator._y_pred = [y for p in parts for y in p[3]]
    if evaluator._per_class_res is not None:
        evaluator._per_class_res.clear()
        for p in parts:
            for label, res in p[4].items():
                evaluator._per_class_res[label].extend(res)


def check_finite(x: Tensor, name: str) -> None:
    """Raise ``FloatingPointError`` naming ``name`` and its shape when ``x`` holds a NaN or Inf."""
    if not bool(torch.isfinite(x.detach()).all()):
        bad = int((~torch.isfinite(x.detach())).sum())
        raise FloatingPointError(f"{bad} non-finite value(s) in {name} of shape {tuple(x.shape)}")


def cfg_name(trainer) -> str:
    return trainer.cfg.TRAINER.NAME or type(trainer).__name__


KeyRule = Tuple[str, Union[str, Callable[["re.Match[str]"], str]]]


def rename_state(state: Mapping[str, Tensor], rules: Sequence[KeyRule],
                 own: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Map another code base's state dict onto ours (for :meth:`PromptTrainer.convert_checkpoint_state`).

    Each key is matched in full against ``rules`` (``(regex, replacement)`` pairs; the replacement is a
    :func:`re.sub` template or a function of the match; the first matching rule wins). Keys no rule matches are
    dropped: official checkpoints of the MaPLe family hold the whole model, frozen CLIP included. A value whose
    target in ``own`` (this learner's ``state_dict()``) has the same number of elements but another shape is
    reshaped (e.g. an official ``[n, D]`` prompt onto our ``[1, n, D]`` prompt set); dtypes follow on load. A
    mapped key this model lacks raises (e.g. an official checkpoint with deeper prompts than this run's config).
    """
    out: Dict[str, Tensor] = {}
    for key, value in state.items():
        for pattern, repl in rules:
            m = re.fullmatch(pattern, key)
            if m is None:
                continue
            new = m.expand(repl) if isinstance(repl, str) else repl(m)
            if new in out:
                raise CheckpointMismatchError(f"checkpoint keys map twice onto {new!r} (second: {key!r})")
            if new not in own:
                raise CheckpointMismatchError(
                    f"the checkpoint holds {key!r} (ours: {new!r}), which this model does not have: it was trained "
                    "with more prompt layers or other prompt options than this run's config; set the config the "
                    "checkpoint was trained with")
            target = own[new]
            if target.shape != value.shape and target.numel() == value.numel():
                value = value.reshape(target.shape)
            out[new] = value
            break
    return out
