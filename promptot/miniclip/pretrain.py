"""Pretrain the mini CLIP on Fashion-MNIST (clean domain only) and save it in OpenAI format.

Model: an open_clip ``CLIP`` with QuickGELU whose state dict uses the OpenAI key layout, so
``open_clip.load_openai_model(path)`` rebuilds it (``build_model_from_openai_state_dict``
infers every size from the tensors; heads = width // 64, hence widths are multiples of 64).

Objective: image -> class-caption cross-entropy over the 10 classes. Every step encodes the
captions of all classes under all :data:`TRAIN_TEMPLATES` and each image is scored against the
captions of one template drawn at random for it. Images are the 28 px grey images resized to
32 px with PIL bicubic (exactly what open_clip's eval preprocess does to a 28 px PNG), replicated
to RGB and normalised with CLIP's mean/std; augmentation = random shift of up to 2 px and random
horizontal flip. Only the clean training split is used: no test images, and never the
:func:`~promptot.datasets.fmnist.invert_recolor` domain, which stays a domain shift.

Determinism: model init, data order and augmentation come from ``seed`` through one
``torch.Generator`` in a single process. Float reductions on CPU may depend on the number of
threads and on the CPU's instruction set, so bit-identical weights need the same thread count
(recorded in the recipe) and a similar machine; accuracies agree to a fraction of a point.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from promptot.datasets import fmnist as data
from promptot.fileio import sha256_file

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 32

#: Caption templates used for training.
TRAIN_TEMPLATES: tuple = (
    "a photo of a {}.",
    "a picture of a {}.",
    "a {} on a plain background.",
    "an image of a {}.",
    "a photo of the {}.",
    "a low resolution photo of a {}.",
    "a black and white photo of a {}.",
    "a cropped photo of a {}.",
    "a product photo of a {}.",
    "a {}.",
)
#: Held-out template (never seen in training) used for the recorded zero-shot accuracy.
EVAL_TEMPLATE = "a photo of a {}, a type of clothing."

#: Architecture (OpenAI CLIP layout). Text width must be a multiple of 64 (heads = width // 64).
MODEL_CFG: Dict = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": IMAGE_SIZE, "patch_size": 8, "layers": 2, "width": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}

#: Training hyper-parameters (the recipe; ``seed``/``epochs``/``threads`` come from the CLI).
HPARAMS: Dict = {
    "batch_size": 256,
    "lr": 2e-3,
    "weight_decay": 0.05,
    "warmup_steps": 100,
    "max_shift": 2,
    "hflip": True,
    "color_prob": 0.5,
}
DEFAULT_SEED = 0
DEFAULT_EPOCHS = 2
SUBSET = 1000  # first N test images: the fast check recorded for tests


# --------------------------------------------------------------------------- model

def build_model(cfg: Optional[Dict] = None):
    """Return a fresh fp32 open_clip ``CLIP`` (QuickGELU) of the mini size, in train mode."""
    from open_clip.model import CLIP

    cfg = cfg or MODEL_CFG
    if cfg["text_cfg"]["width"] % 64:
        raise ValueError("text width must be a multiple of 64 (OpenAI loader infers heads = width // 64)")
    if cfg["vision_cfg"]["width"] % 64:
        raise ValueError("vision width must be a multiple of 64 (open_clip head_width = 64)")
    return CLIP(cfg["embed_dim"], vision_cfg=dict(cfg["vision_cfg"]), text_cfg=dict(cfg["text_cfg"]),
                quick_gelu=True)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def openai_state_dict(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The model's state dict in fp16 (OpenAI layout: the open_clip CLIP keys are the OpenAI keys)."""
    return {k: v.detach().to(torch.float16).clone() for k, v in model.state_dict().items()}


def load_checkpoint(path: os.PathLike):
    """Load a saved mini CLIP through ``open_clip.load_openai_model`` (fp32, CPU, eval mode)."""
    import open_clip

    return open_clip.load_openai_model(str(path), precision="fp32", device="cpu").eval()


# --------------------------------------------------------------------------- images

def resize_to_model(images: np.ndarray) -> np.ndarray:
    """Resize uint8 images ``[N, 28, 28]`` (grey) or ``[N, 28, 28, 3]`` to 32 px with PIL bicubic.

    Matches open_clip's eval preprocess (Resize(32, bicubic) on a PIL image). Returns uint8
    ``[N, 32, 32, C]`` with C = 1 for grey input, 3 for RGB input.
    """
    from PIL import Image

    images = np.asarray(images, dtype=np.uint8)
    grey = images.ndim == 3
    out = np.empty((images.shape[0], IMAGE_SIZE, IMAGE_SIZE, 1 if grey else 3), dtype=np.uint8)
    for i, img in enumerate(images):
        r = np.asarray(Image.fromarray(img).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC))
        out[i] = r[..., None] if grey else r
    return out


def normalize(batch: torch.Tensor, gen: Optional[torch.Generator] = None, color_prob: float = 0.0) -> torch.Tensor:
    """uint8 ``[B, H, W, C]`` (C in {1, 3}) -> CLIP-normalised float ``[B, 3, H, W]``.

    With ``color_prob > 0`` (training only) :func:`color_augment` is applied before normalising.
    """
    x = batch.permute(0, 3, 1, 2).float().div_(255.0)
    if color_prob > 0:
        x = color_augment(x, gen, color_prob)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def domain_images(split: str, domain: str = "clean", limit: Optional[int] = None) -> tuple:
    """Model-ready uint8 images ``[N, 32, 32, C]`` and int64 labels for a split and domain."""
    images, labels = data.load_fmnist(split)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    if domain == "clean":
        src = images
    else:
        fn = data.DOMAIN_TRANSFORMS[domain]
        src = np.stack([fn(img, i) for i, img in enumerate(images)])
    return resize_to_model(src), labels.astype(np.int64)


def color_augment(x: torch.Tensor, gen: torch.Generator, prob: float) -> torch.Tensor:
    """Polarity-preserving random recolouring of a fraction ``prob`` of a float NCHW batch in [0, 1].

    Per image and channel: ``x' = lo + (hi - lo) * x`` with ``lo ~ U(0, 0.45)``, ``hi ~ U(0.55, 1)``,
    so the garment stays brighter than the background in every channel. The shifted test domain
    (:func:`~promptot.datasets.fmnist.invert_recolor`) reverses that polarity, so it is never seen.
    """
    b, c = x.shape[:2]
    if c == 1:
        x = x.expand(-1, 3, -1, -1)
    lo = torch.rand(b, 3, 1, 1, generator=gen) * 0.45
    hi = 0.55 + torch.rand(b, 3, 1, 1, generator=gen) * 0.45
    use = (torch.rand(b, 1, 1, 1, generator=gen) < prob).float()
    return use * (lo + (hi - lo) * x) + (1 - use) * x


def augment(batch: torch.Tensor, gen: torch.Generator, max_shift: int, hflip: bool) -> torch.Tensor:
    """Random shift (zero padding) of up to ``max_shift`` px and random horizontal flip, uint8 NHWC."""
    b, h, w, _ = batch.shape
    if max_shift > 0:
        padded = F.pad(batch.permute(0, 3, 1, 2), (max_shift,) * 4).permute(0, 2, 3, 1)
        offs = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=gen)
        batch = torch.stack([padded[i, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offs.tolist())])
    if hflip:
        flip = torch.rand(b, generator=gen) < 0.5
        batch = torch.where(flip.view(b, 1, 1, 1), batch.flip(2), batch)
    return batch


# --------------------------------------------------------------------------- text / eval

def tokenize_templates(templates: Sequence[str], classnames: Sequence[str] = data.CLASSNAMES) -> torch.Tensor:
    """Token ids ``[T * C, 77]`` for every (template, class) caption, template-major."""
    import open_clip

    return open_clip.tokenize([t.format(c) for t in templates for c in classnames])


def class_text_features(model, templates: Sequence[str], classnames: Sequence[str] = data.CLASSNAMES,
                        tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
    """L2-normalised caption features ``[T, C, D]``."""
    tokens = tokenize_templates(templates, classnames) if tokens is None else tokens
    feats = F.normalize(model.encode_text(tokens), dim=-1)
    return feats.view(len(templates), len(classnames), -1)


@torch.no_grad()
def zero_shot_accuracy(model, images: np.ndarray, labels: np.ndarray, template: str = EVAL_TEMPLATE,
                       batch_size: int = 1000) -> float:
    """Top-1 zero-shot accuracy in percent of ``model`` on model-ready uint8 images with ``template``."""
    model.eval()
    text = class_text_features(model, [template])[0]
    correct = 0
    for s in range(0, len(images), batch_size):
        x = normalize(torch.from_numpy(images[s:s + batch_size]))
        pred = (F.normalize(model.encode_image(x), dim=-1) @ text.T).argmax(-1)
        correct += int((pred == torch.from_numpy(labels[s:s + batch_size])).sum())
    return 100.0 * correct / len(images)


def evaluate(model, subset: int = SUBSET) -> Dict[str, float]:
    """Zero-shot accuracies (held-out template) on the clean and shifted test sets and their first ``subset``."""
    out = {}
    for domain in ("clean", "invert_recolor"):
        x, y = domain_images("test", domain)
        out[f"test_{domain}"] = round(zero_shot_accuracy(model, x, y), 2)
        out[f"test_{domain}_first{subset}"] = round(zero_shot_accuracy(model, x[:subset], y[:subset]), 2)
    return out


# --------------------------------------------------------------------------- training

def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * t))


def train(seed: int = DEFAULT_SEED, epochs: int = DEFAULT_EPOCHS, hparams: Optional[Dict] = None,
          progress: bool = True):
    """Train a fresh mini CLIP on the clean Fashion-MNIST training split; returns the fp32 model."""
    from tqdm import tqdm

    hp = dict(HPARAMS, **(hparams or {}))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_model()
    model.train()

    x_np, y_np = domain_images("train", "clean")
    x_all, y_all = torch.from_numpy(x_np), torch.from_numpy(y_np)
    tokens = tokenize_templates(TRAIN_TEMPLATES)
    n_t, n_c = len(TRAIN_TEMPLATES), len(data.CLASSNAMES)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "positional" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "positional" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=hp["lr"], betas=(0.9, 0.98), eps=1e-6)
    bs = hp["batch_size"]
    steps_per_epoch = len(x_all) // bs
    total = steps_per_epoch * epochs
    bar = tqdm(total=total, desc="miniclip pretrain", disable=not progress, dynamic_ncols=True)
    step = 0
    for _epoch in range(epochs):
        perm = torch.randperm(len(x_all), generator=gen)
        for b in range(steps_per_epoch):
            idx = perm[b * bs:(b + 1) * bs]
            x = normalize(augment(x_all[idx], gen, hp["max_shift"], hp["hflip"]), gen, hp["color_prob"])
            y = y_all[idx]
            t_idx = torch.randint(0, n_t, (len(idx),), generator=gen)
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, hp["lr"], hp["warmup_steps"])
            img = F.normalize(model.encode_image(x), dim=-1)
            txt = F.normalize(model.encode_text(tokens), dim=-1).view(n_t, n_c, -1)
            logits = model.logit_scale.exp() * torch.einsum("bd,bcd->bc", img, txt[t_idx])
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            bar.update(1)
            if step % 20 == 0:
                acc = (logits.argmax(-1) == y).float().mean().item()
                bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.2f}")
    bar.close()
    return model.eval()


@torch.no_grad()
def verify_reload(path: os.PathLike, state_dict: Dict[str, torch.Tensor]) -> float:
    """Check that ``open_clip.load_openai_model(path)`` equals a model built here from ``state_dict``.

    Returns the max abs difference of image and text features on a fixed probe (must be 0).
    """
    ref = build_model()
    ref.load_state_dict(state_dict)
    ref.eval()
    loaded = load_checkpoint(path)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    t = tokenize_templates([EVAL_TEMPLATE])[:4]
    diff = max((ref.encode_image(x) - loaded.encode_image(x)).abs().max().item(),
               (ref.encode_text(t) - loaded.encode_text(t)).abs().max().item(),
               abs(ref.logit_scale.item() - loaded.logit_scale.item()))
    missing = set(ref.state_dict()) ^ set(loaded.state_dict())
    if missing or diff > 0:
        raise RuntimeError(f"reload through open_clip.load_openai_model differs: keys {sorted(missing)}, "
                           f"max abs diff {diff}")
    return diff


def recipe_path_for(checkpoint: os.PathLike) -> Path:
    """The recipe JSON written beside a checkpoint: ``<dir>/RECIPE.json``."""
    return Path(checkpoint).parent / "RECIPE.json"


def pretrain(seed: int = DEFAULT_SEED, epochs: int = DEFAULT_EPOCHS, out: os.PathLike = "miniclip-fmnist.pt",
             threads: int = 2, recipe: Optional[os.PathLike] = None, command: Optional[str] = None,
             progress: bool = True) -> Dict:
    """Train, save the fp16 OpenAI-format state dict to ``out``, verify, evaluate, write the recipe.

    Returns the recipe dict (also written to ``recipe`` or ``<dir of out>/RECIPE.json``).
    """
    import open_clip

    torch.set_num_threads(threads)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model = train(seed=seed, epochs=epochs, progress=progress)
    train_s = time.time() - t0
    sd = openai_state_dict(model)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(sd, tmp)
    os.replace(tmp, out)
    verify_reload(out, sd)
    accs = evaluate(load_checkpoint(out))
    rec = {
        "name": "miniclip-fmnist",
        "command": command or f"python -m promptot.miniclip pretrain --seed {seed} --epochs {epochs} "
                              f"--threads {threads} --out {out}",
        "seed": seed,
        "epochs": epochs,
        "threads": threads,
        "hparams": HPARAMS,
        "model_cfg": MODEL_CFG,
        "quick_gelu": True,
        "train_templates": list(TRAIN_TEMPLATES),
        "eval_template": EVAL_TEMPLATE,
        "classnames": list(data.CLASSNAMES),
        "image_mean": list(MEAN),
        "image_std": list(STD),
        "train_data": "Fashion-MNIST train split (60k), clean domain only",
        "parameters": count_parameters(model),
        "file": out.name,
        "file_bytes": out.stat().st_size,
        "sha256": sha256_file(out),
        "dtype": "float16",
        "zero_shot": accs,
        "subset": SUBSET,
        "train_seconds": round(train_s, 1),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "open_clip": open_clip.__version__, "numpy": np.__version__},
        "machine": platform.machine(),
    }
    rpath = Path(recipe) if recipe else recipe_path_for(out)
    rpath.write_text(json.dumps(rec, indent=2) + "\n")
    return rec
