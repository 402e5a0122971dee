"""Load CLIP backbones as eager ``open_clip.model.CLIP`` models (one loader for every trainer).

Resolution order of :func:`load_clip`:

1. ``path`` given → a local OpenAI-format file (TorchScript archive as cached in ``~/.cache/clip`` by
   the reference repos, or a state dict with OpenAI key names, optionally under ``"state_dict"``);
2. a name registered with :func:`register_backbone` → its resolver's file, loaded as in 1;
3. a reference name (``"RN50"``, ``"ViT-B/16"``, ...) → the OpenAI file from the cache directory,
   downloaded there by open_clip if missing;
4. any open_clip ``"model:tag"`` (or an OpenAI-family open_clip model name, tag ``openai``).
"""
from __future__ import annotations

import difflib
import os
import pickle
import warnings
from typing import Callable, Dict, Mapping, Optional, Tuple, Union

import open_clip
import open_clip.pretrained as oc_pretrained
import torch
from open_clip.model import CLIP, build_model_from_openai_state_dict, convert_weights_to_lp

from promptot.errors import UserError

from .tokenizer import EOT_TOKEN, SOT_TOKEN, token_length, tokenize

__all__ = [
    "BackboneError", "BackboneNotFoundError",
    "REFERENCE_NAMES", "register_backbone", "registered_backbones", "load_clip",
    "tokenize", "token_length", "SOT_TOKEN", "EOT_TOKEN", "DEFAULT_CACHE_DIR",
]

DEFAULT_CACHE_DIR = os.path.expanduser("~/.cache/clip")  # where OpenAI's clip.load (the reference) caches files
PRECISIONS = ("fp16", "fp32", "amp")


class BackboneNotFoundError(UserError, RuntimeError):
    """The requested CLIP weights are not available locally and could not be downloaded."""


class BackboneError(UserError, ValueError):
    """An unknown backbone name, or a file or model that promptot cannot use as a CLIP backbone."""


# Reference-repo backbone name (MODEL.BACKBONE.NAME) -> (open_clip model name, pretrained tag).
REFERENCE_NAMES: Dict[str, Tuple[str, str]] = {
    "RN50": ("RN50", "openai"),
    "RN101": ("RN101", "openai"),
    "RN50x4": ("RN50x4", "openai"),
    "RN50x16": ("RN50x16", "openai"),
    "ViT-B/32": ("ViT-B-32", "openai"),
    "ViT-B/16": ("ViT-B-16", "openai"),
    "ViT-L/14": ("ViT-L-14", "openai"),
    "ViT-L/14@336px": ("ViT-L-14-336", "openai"),
}

_REGISTRY: Dict[str, Callable[[], str]] = {}

# Input resolution of the named backbones (known before loading: lets a config be checked before any weight is read).
_IMAGE_SIZE: Dict[str, int] = {"RN50": 224, "RN101": 224, "RN50x4": 288, "RN50x16": 384, "ViT-B/32": 224,
                               "ViT-B/16": 224, "ViT-L/14": 224, "ViT-L/14@336px": 336}


def expected_image_size(name: str) -> Optional[int]:
    """Input side of a named backbone (reference names and registered backbones that declare it), else None."""
    return _IMAGE_SIZE.get(name)


def declare_image_size(name: str, size: int) -> None:
    """Declare the input side of a registered backbone, so configs are checked before it is loaded."""
    _IMAGE_SIZE[name] = int(size)


def register_backbone(name: str, resolver: Callable[[], str]) -> None:
    """Register a named local backbone; ``resolver()`` returns the path of an OpenAI-format file
    (it may build or train the file first). Registering an existing name replaces it."""
    if not callable(resolver):
        raise TypeError(f"resolver for backbone {name!r} must be a callable returning a file path, got {resolver!r}")
    _REGISTRY[name] = resolver


def registered_backbones() -> Tuple[str, ...]:
    """Names registered with :func:`register_backbone`."""
    return tuple(sorted(_REGISTRY))


# --------------------------------------------------------------------------------------------- files
def _read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Read an OpenAI-format checkpoint: TorchScript archive first, then a pickled state dict."""
    try:
        # OpenAI's own files are TorchScript archives; clip.load opens them the same way.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated but still needed here
            return dict(torch.jit.load(path, map_location="cpu").eval().state_dict())
    except RuntimeError:
        pass
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Checkpoints written by older training code may pickle non-tensor objects; the user chose this file.
        warnings.warn(f"{path}: not loadable with weights_only=True; loading it as a full pickle")
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise BackboneError(f"{path}: expected a TorchScript archive or a state dict, found {type(obj).__name__}")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):  # saved from DataParallel / DDP
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _build_from_state_dict(sd: Dict[str, torch.Tensor], source: str, precision: str) -> CLIP:
    """Eager open_clip CLIP from an OpenAI-key state dict, in the reference precision conventions."""
    needed = ("token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection")
    missing = [k for k in needed if k not in sd]
    if missing or not any(k.startswith("visual.") for k in sd):
        raise BackboneError(
            f"{source} is not an OpenAI-format CLIP checkpoint (missing {missing or 'visual.* keys'}); "
            f"expected keys like token_embedding.weight, visual.conv1.weight, transformer.resblocks.0.*")
    # JIT archives carry these ints as buffers; they are not parameters of the eager model.
    sd = {k: v for k, v in sd.items() if k not in ("input_resolution", "context_length", "vocab_size", "attn_mask")}
    # open_clip converts conv/linear/attention weights to fp16 before loading (OpenAI's own convention).
    model = build_model_from_openai_state_dict(dict(sd), quick_gelu=True, cast_dtype=torch.float16)
    if precision != "fp16":
        # Unlike open_clip.load_openai_model (which rounds through the fp16 model), reload the state dict
        # after .float() so a float32 checkpoint (e.g. our tiny / mini CLIPs) keeps full precision.
        model.float()
        model.load_state_dict(sd)
    return model


def _finish(model: CLIP, device: Union[str, torch.device]) -> CLIP:
    model = model.to(device).eval()
    model.visual.image_mean = open_clip.OPENAI_DATASET_MEAN
    model.visual.image_std = open_clip.OPENAI_DATASET_STD
    return model


def _load_file(path: str, precision: str, device: Union[str, torch.device], what: str) -> CLIP:
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise BackboneNotFoundError(
            f"CLIP weights for {what} not found at {path!r}. Put an OpenAI-format checkpoint there (a TorchScript "
            f".pt archive as downloaded by OpenAI's clip package into {DEFAULT_CACHE_DIR}, or a state dict with "
            f"OpenAI key names), or point MODEL.BACKBONE.PATH at an existing file.")
    return _finish(_build_from_state_dict(_read_state_dict(path), path, precision), device)


# --------------------------------------------------------------------------------------------- names
def _openai_file(model_name: str, reference: str, precision: str, device, cache_dir: Optional[str]) -> CLIP:
    """OpenAI weights: reuse a cached file, else download it with open_clip into the cache dir."""
    cfg = oc_pretrained.get_pretrained_cfg(model_name, "openai")
    url = cfg.get("url", "")
    filename = os.path.basename(url) if url else f"{model_name}.pt"
    dirs = [d for d in (cache_dir, DEFAULT_CACHE_DIR) if d]
    for d in dirs:
        cached = os.path.join(os.path.expanduser(d), filename)
        if os.path.isfile(cached):
            return _load_file(cached, precision, device, reference)
    target_dir = os.path.expanduser(dirs[0])
    try:
        # prefer_hf_hub=False: fetch the OpenAI archive itself into target_dir, as the reference repos do.
        path = oc_pretrained.download_pretrained(cfg, prefer_hf_hub=False, cache_dir=target_dir)
    except Exception as e:  # no network, proxy, checksum ... : all mean "no weights here"
        raise BackboneNotFoundError(
            f"Could not get the OpenAI weights of CLIP backbone {reference!r} (open_clip model {model_name!r}): "
            f"no cached file was found in {' or '.join(dirs)} and the download failed ({type(e).__name__}: {e}). "
            f"On a machine without network, copy the official file {filename} (from {url or 'the OpenAI CLIP release'}) "
            f"to {os.path.join(target_dir, filename)}, or pass its location with MODEL.BACKBONE.PATH "
            f"/path/to/{filename} (load_clip(..., path=...)).") from e
    if not path:
        raise BackboneNotFoundError(f"open_clip has no download source for {model_name!r} with tag 'openai'")
    return _load_file(path, precision, device, reference)


def _open_clip_tagged(model_name: str, tag: str, precision: str, device, cache_dir: Optional[str]) -> CLIP:
    """Non-OpenAI open_clip weights (e.g. ``ViT-B-32:laion2b_s34b_b79k``) through open_clip's factory."""
    try:
        model = open_clip.create_model(model_name, pretrained=tag, precision="fp32", device="cpu", cache_dir=cache_dir)
    except Exception as e:
        raise BackboneNotFoundError(
            f"Could not load open_clip model {model_name!r} with pretrained tag {tag!r} ({type(e).__name__}: {e}). "
            f"Without network, download the checkpoint elsewhere and pass it with MODEL.BACKBONE.PATH "
            f"(OpenAI-format files only) or place it in open_clip's cache dir ({cache_dir or 'its default'}).") from e
    if not isinstance(model, CLIP):
        raise BackboneError(
            f"{model_name}:{tag} builds a {type(model).__name__}, but promptot needs an open_clip CLIP with a "
            f"built-in text tower (token_embedding, transformer, ln_final); choose another model")
    if precision == "fp16":
        convert_weights_to_lp(model, torch.float16)
    return _finish(model, device)


def _unknown(name: str) -> "BackboneError":
    known = list(REFERENCE_NAMES) + list(_REGISTRY)
    close = difflib.get_close_matches(name, known + open_clip.list_models(), n=3)
    return BackboneError(
        f"Unknown CLIP backbone {name!r}. Reference names: {', '.join(REFERENCE_NAMES)}. "
        f"Registered names: {', '.join(sorted(_REGISTRY)) or '(none)'}. Any open_clip model also works as "
        f"'MODEL:TAG' (see open_clip.list_pretrained(), e.g. 'ViT-B-32:laion2b_s34b_b79k'), and a local file via "
        f"path=... (MODEL.BACKBONE.PATH)." + (f" Did you mean: {', '.join(close)}?" if close else ""))


def load_clip(
    name: str,
    path: str = "",
    precision: str = "fp32",
    device: Union[str, torch.device] = "cpu",
    cache_dir: Optional[str] = None,
) -> CLIP:
    """Load a CLIP backbone as an eager ``open_clip.model.CLIP`` in eval mode on ``device``.

    Args:
        name: reference name (``REFERENCE_NAMES``), registered name, or open_clip ``"model[:tag]"``.
            Only used for messages when ``path`` is given.
        path: local OpenAI-format file (TorchScript archive or state dict); overrides ``name``.
        precision: ``"fp16"`` keeps the reference half-precision weights (conv/linear/attention/projections,
            as OpenAI's ``convert_weights``); ``"fp32"`` and ``"amp"`` give float32.
        device: target device.
        cache_dir: where OpenAI files are looked up / downloaded (default ``~/.cache/clip``).

    Raises:
        BackboneNotFoundError: the file is missing or the weights cannot be downloaded.
        BackboneError: unknown name, bad precision, or a file that is not an OpenAI-format CLIP.
    """
    if precision not in PRECISIONS:
        raise BackboneError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if path:
        return _load_file(path, precision, device, repr(name) if name else "the given path")
    if name in _REGISTRY:
        return _load_file(_REGISTRY[name](), precision, device, f"registered backbone {name!r}")
    if name in REFERENCE_NAMES:
        model_name, tag = REFERENCE_NAMES[name]
        return _openai_file(model_name, name, precision, device, cache_dir)
    model_name, _, tag = name.partition(":")
    if model_name in open_clip.list_models():
        if not tag:
            if not oc_pretrained.get_pretrained_url(model_name, "openai"):
                tags = oc_pretrained.list_pretrained_tags_by_model(model_name)
                raise BackboneError(
                    f"open_clip model {model_name!r} has no OpenAI weights; name a tag as '{model_name}:TAG' "
                    f"(available: {', '.join(tags) or 'none'})")
            tag = "openai"
        if tag == "openai":
            return _openai_file(model_name, name, precision, device, cache_dir)
        return _open_clip_tagged(model_name, tag, precision, device, cache_dir)
    raise _unknown(name)
