"""A real, pretrained mini CLIP on Fashion-MNIST, committed as a promptot asset.

``miniclip-fmnist`` is an OpenAI-format CLIP state dict (3.4 M parameters, fp16, ~6.6 MB) trained
on the clean Fashion-MNIST training split (see :mod:`promptot.miniclip.pretrain`); it loads with
``open_clip.load_openai_model(checkpoint_path())``. :func:`register` makes it available to
``promptot.clip.loader.load_clip("miniclip-fmnist")``.

Only light modules are imported here; torch/open_clip are imported when training or loading.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Dict, Optional

from promptot.fileio import sha256_file

DEFAULT_NAME = "miniclip-fmnist"
CHECKPOINT_FILE = "miniclip-fmnist.pt"
RECIPE_FILE = "RECIPE.json"
ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "miniclip"
ENV_CACHE = "PROMPTOT_CACHE"

__all__ = ["DEFAULT_NAME", "ASSET_DIR", "checkpoint_path", "committed_checkpoint", "cache_dir",
           "load_recipe", "register"]

_REGISTERED = False


def committed_checkpoint() -> Path:
    """Path of the checkpoint shipped in the package (may be absent in a stripped install)."""
    return ASSET_DIR / CHECKPOINT_FILE


def cache_dir() -> Path:
    """Folder for a locally built checkpoint: ``$PROMPTOT_CACHE/miniclip`` or ``~/.cache/promptot/miniclip``."""
    base = os.environ.get(ENV_CACHE) or os.path.join(os.path.expanduser("~"), ".cache", "promptot")
    return Path(base) / "miniclip"


def load_recipe(path: Optional[os.PathLike] = None) -> Dict:
    """Read a recipe JSON (default: the committed ``promptot/assets/miniclip/RECIPE.json``); {} if absent."""
    path = Path(path) if path else ASSET_DIR / RECIPE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def _verified(ckpt: Path, recipe: Dict) -> bool:
    return ckpt.is_file() and bool(recipe.get("sha256")) and sha256_file(ckpt) == recipe["sha256"]


def checkpoint_path(build: bool = True) -> str:
    """Path of the ``miniclip-fmnist`` checkpoint, building it if needed.

    1. the committed ``promptot/assets/miniclip/miniclip-fmnist.pt`` if its sha256 matches the
       committed recipe;
    2. else a cached build in :func:`cache_dir` whose own ``RECIPE.json`` matches it;
    3. else (``build=True``) trains one there with the committed recipe's seed/epochs/threads
       (a few minutes on 2 CPU cores; needs the Fashion-MNIST apt package).
    """
    recipe = load_recipe()
    if _verified(committed_checkpoint(), recipe):
        return str(committed_checkpoint())
    cached = cache_dir() / CHECKPOINT_FILE
    if _verified(cached, load_recipe(cache_dir() / RECIPE_FILE)):
        return str(cached)
    if not build:
        raise FileNotFoundError(
            f"No verified {DEFAULT_NAME} checkpoint (looked at {committed_checkpoint()} and {cached}); "
            f"build one with `python -m promptot.miniclip pretrain --out {cached}`."
        )
    from . import pretrain

    seed = int(recipe.get("seed", pretrain.DEFAULT_SEED))
    epochs = int(recipe.get("epochs", pretrain.DEFAULT_EPOCHS))
    threads = int(recipe.get("threads", 2))
    print(f"[promptot.miniclip] building {DEFAULT_NAME} into {cached} (seed {seed}, {epochs} epochs, "
          f"{threads} threads); this takes a few minutes on CPU ...", file=sys.stderr, flush=True)
    cached.parent.mkdir(parents=True, exist_ok=True)
    pretrain.pretrain(seed=seed, epochs=epochs, threads=threads, out=cached,
                      recipe=cache_dir() / RECIPE_FILE)
    return str(cached)


def register() -> bool:
    """Register ``miniclip-fmnist`` with ``promptot.clip.loader``; idempotent.

    Returns True once registered, False if ``promptot.clip.loader.register_backbone`` is not
    available (yet). The checkpoint is resolved lazily (only when the backbone is loaded).
    """
    global _REGISTERED
    if _REGISTERED:
        return True
    try:
        from promptot.clip.loader import declare_image_size, register_backbone
    except ImportError:
        return False
    register_backbone(DEFAULT_NAME, checkpoint_path)
    declare_image_size(DEFAULT_NAME, 32)  # the committed recipe's input side (checked against the file when loaded)
    _REGISTERED = True
    return True
