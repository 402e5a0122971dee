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
import subprocess
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import __version__
from .config import check_choice, config_hash, group_hash
from .errors import ConfigError
from .engine import (ENGINE, DataManager, DatasetWrapper, TrainerX, build_lr_scheduler, build_optimizer,
                     compute_accuracy, load_checkpoint, save_checkpoint)

PRECISIONS = ("fp16", "fp32", "amp")


class CheckpointMismatchError(ValueError):
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


class PromptTrainer(TrainerX):
    """Base class of the prompt trainers (subclass it, then override ``build_model`` and ``forward_backward``)."""

    #: precision of the run (set by subclasses from their typed config before ``build_clip``)
    precision: str = "fp32"

    def __init__(self, cfg) -> None:
        self._eval_cache: Optional[Dict[str, Any]] = None
        self._scaler = None
        self._last_results: Dict[str, float] = {}
        super().__init__(cfg)
        evaluate = self.evaluator.evaluate

        def _evaluate_and_keep() -> Dict[str, float]:
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

    @property
    def classnames(self) -> List[str]:
        return list(self.dm.dataset.classnames)

    # ------------------------------------------------------------------ model
    def build_clip(self, precision: str):
        """Load the frozen CLIP named by ``MODEL.BACKBONE.NAME``/``PATH`` and wrap it in a ``PromptedCLIP``."""
        from .clip import PromptedCLIP, load_clip

        try:  # the project's own mini CLIP is selectable by name (MODEL.BACKBONE.NAME miniclip-fmnist)
            from .miniclip import register as register_miniclip

            register_miniclip()
        except ImportError:
            pass

        check_choice("PREC", precision, PRECISIONS)
        self.precision = precision
        cfg = self.cfg
        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME or '-'}"
              f"{', path: ' + cfg.MODEL.BACKBONE.PATH if cfg.MODEL.BACKBONE.PATH else ''})")
        clip_model = load_clip(cfg.MODEL.BACKBONE.NAME, path=cfg.MODEL.BACKBONE.PATH,
                               precision="fp16" if precision == "fp16" else "fp32", device=self.device)
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

    def register_learner(self, name: str, module: nn.Module, params: Optional[Iterable] = None) -> None:
        """Build optimizer + scheduler over ``params`` (default: the module's trainable parameters)
        and register ``module`` under ``name`` (also its checkpoint sub-folder)."""
        trainable = [p for p in (params if params is not None else module.parameters()) if p.requires_grad]
        if not trainable:
            raise ValueError(f"{type(self).__name__}: module {name!r} has no trainable parameters")
        optim = build_optimizer(trainable, self.cfg.OPTIM)
        sched = build_lr_scheduler(optim, self.cfg.OPTIM)
        self.register_model(name, module, optim, sched)
        if self.precision == "amp" and self.device.type == "cuda":
            self._scaler = torch.amp.GradScaler("cuda")
        n = sum(p.numel() for p in trainable)
        print(f"Learnable parameters ({name}): {n:,}")

    def autocast(self):
        """Mixed precision context for ``PREC amp`` (fp16 on CUDA, bf16 on CPU); a no-op otherwise."""
        if self.precision != "amp":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def optimize(self, loss: torch.Tensor, names=None) -> None:
        """Backward + step (through the grad scaler under amp), then the per-epoch LR step on the last batch."""
        if self._scaler is not None:
            self.model_zero_grad(names)
            self.detect_anomaly(loss)
            self._scaler.scale(loss).backward()
            for name in self.get_model_names(names):
                if self._optims[name] is not None:
                    self._scaler.step(self._optims[name])
            self._scaler.update()
        else:
            self.model_backward_and_update(loss, names)
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    # ------------------------------------------------------------------ default step and inference
    def training_logits(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]`` for a training batch (default: ``self.model(image)``)."""
        return self.model(image)

    def forward_backward(self, batch) -> Dict[str, float]:
        """Cross-entropy on :meth:`training_logits`; logs ``loss`` and ``acc``."""
        image, label = self.parse_batch_train(batch)
        with self.autocast():
            output = self.training_logits(image)
            loss = F.cross_entropy(output.float(), label)
        self.optimize(loss)
        summary = {"loss": loss.item(), "acc": compute_accuracy(output, label)[0].item()}
        summary.update(self.step_diagnostics())
        return summary

    def step_diagnostics(self) -> Dict[str, float]:
        """Extra per-step values for the training line and TensorBoard. With an OT head (``self.model.head``):
        ``plan_ent``, the normalised entropy of the prompt-level plans (1 = uniform: the OT has no effect)."""
        head = getattr(getattr(self, "model", None), "head", None)
        diag = getattr(head, "last_diagnostics", None)
        if not diag or "plan_entropy" not in diag:
            return {}
        return {"plan_ent": float(diag["plan_entropy"])}

    def static_text(self) -> Any:
        """The text side when it does not depend on the image (e.g. ``self.model.text_features()``), or None.
        At test time it is computed once per evaluation and passed as ``self.model(image, text)``."""
        return None

    def model_inference(self, image: torch.Tensor) -> torch.Tensor:
        text = self.eval_cached("text", self.static_text)
        with self.autocast():
            out = self.model(image) if text is None else self.model(image, text)
        return out.float()

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
        """Append one JSON line for this evaluation to ``OUTPUT_DIR/results.jsonl``."""
        cfg = self.cfg
        record = {
            "time": datetime.datetime.now().isoformat(timespec="seconds"),
            "method": cfg.TRAINER.NAME,
            "dataset": cfg.DATASET.NAME,
            "subsample_classes": cfg.DATASET.SUBSAMPLE_CLASSES,
            "num_shots": cfg.DATASET.NUM_SHOTS,
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
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        with open(osp.join(cfg.OUTPUT_DIR, "results.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
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

    def save_model(self, epoch: int, directory: str, is_best: bool = False, val_result=None, model_name: str = "") -> None:
        for name in self.get_model_names():
            optim, sched = self._optims[name], self._scheds[name]
            save_checkpoint(
                {
                    "state_dict": self._models[name].state_dict(),
                    "epoch": epoch + 1,
                    "optimizer": optim.state_dict() if optim is not None else None,
                    "scheduler": sched.state_dict() if sched is not None else None,
                    "val_result": val_result,
                    "meta": self.checkpoint_meta(),
                },
                osp.join(directory, name),
                is_best=is_best,
                model_name=model_name,
            )

    #: state-dict keys dropped when loading (class-dependent buffers that reference checkpoints stored)
    transient_keys = ("token_prefix", "token_suffix")

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        """Load learned prompts for eval-only runs; checks shapes and says why a load cannot work."""
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given (ignore this if it's done on purpose)")
            return
        model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
        for name in self.get_model_names():
            sub = osp.join(directory, name)
            path = osp.join(sub, model_file)
            if not osp.exists(path):
                have = sorted(f for f in os.listdir(sub) if f.startswith("model")) if osp.isdir(sub) else []
                hint = (f" Files there: {', '.join(have)}; pick one with --load-epoch N." if have else
                        f" {sub} does not exist: --model-dir must be the OUTPUT_DIR of the training run "
                        f"(it holds a '{name}/' folder).")
                if epoch is None and have:
                    hint += " (Without --load-epoch the best-val model is loaded, which exists only with TEST.FINAL_MODEL best_val.)"
                raise FileNotFoundError(f"No model at {path}.{hint}")
            checkpoint = load_checkpoint(path)
            state = {k: v for k, v in checkpoint["state_dict"].items()
                     if not any(k.endswith(t) for t in self.transient_keys)}
            model = self._models[name]
            own = model.state_dict()
            meta = checkpoint.get("meta") or {}
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
            missing = [k for k in own if k not in state and not any(k.endswith(t) for t in self.transient_keys)]
            if missing:
                raise CheckpointMismatchError(
                    f"{path} lacks parameters this model needs ({', '.join(missing[:5])}); it was written by "
                    f"{meta.get('method', 'another method/config')} — check --model-dir and the trainer/config."
                )
            if meta.get("method") and meta["method"] != self.cfg.TRAINER.NAME:
                print(f"Note: checkpoint was trained with {meta['method']}, loading into {self.cfg.TRAINER.NAME}")
            if meta.get("classnames") and meta["classnames"] != self.classnames:
                print(f"Note: prompts learned on {len(meta['classnames'])} classes are evaluated on "
                      f"{self.num_classes} other/relabelled classes")
            vr = checkpoint.get("val_result")
            print(f"Load {path} to {name} (epoch={checkpoint['epoch']}, val_result={'None' if vr is None else f'{vr:.1f}'})")
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
        super().after_epoch()


def cfg_name(trainer) -> str:
    return trainer.cfg.TRAINER.NAME or type(trainer).__name__
