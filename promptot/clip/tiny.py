"""Tiny random-init OpenAI-format CLIP models for CPU tests and smoke runs.

The models are plain ``open_clip.model.CLIP`` instances with QuickGELU and the
OpenAI key names, built so that ``open_clip.model.build_model_from_openai_state_dict``
reconstructs exactly the same architecture from their state dict. That function
derives the number of heads as ``width // 64`` (text, ViT) and ``width * 32 // 64``
(ModifiedResNet attention pool), so widths must be multiples of 64 for the
transformers (64 → 1 head, 128 → 2 heads).
"""
from __future__ import annotations

import os
import warnings
from typing import Optional, Sequence, Union

import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

__all__ = ["build_tiny_clip", "save_openai_state_dict"]

_VOCAB_SIZE = 49408  # the real BPE vocabulary, so the real tokenizer works on tiny models


def build_tiny_clip(
    vision: str = "vit",
    embed_dim: int = 32,
    image_size: Optional[int] = None,
    width: Optional[int] = None,
    layers: Optional[Union[int, Sequence[int]]] = None,
    patch_size: int = 8,
    text_width: int = 64,
    text_layers: int = 2,
    context_length: int = 77,
    seed: int = 0,
) -> CLIP:
    """Build a deterministic random-init OpenAI-format CLIP (fp32, eval mode).

    Args:
        vision: ``"vit"`` (VisionTransformer) or ``"rn"`` (ModifiedResNet).
        embed_dim: joint embedding size E.
        image_size: input side; default 32 (ViT) / 64 (RN: attnpool grid = image_size / 32 = 2×2).
        width: vision width; default 64 (ViT, must be a multiple of 64) / 16 (RN stem width;
            attnpool width = 32·width).
        layers: ViT depth (default 2) or RN blocks per stage (int or 4-tuple, default (1, 1, 1, 1)).
        patch_size: ViT patch size (image_size must be divisible by it).
        text_width: text width, a multiple of 64 (heads = text_width // 64).
        text_layers: text depth.
        context_length: text context length L.
        seed: the model's weights depend only on this seed.
    """
    if text_width % 64:
        raise ValueError(f"text_width={text_width} must be a multiple of 64: OpenAI state dicts imply heads = width // 64")
    if vision == "vit":
        width = 64 if width is None else width
        layers = 2 if layers is None else layers
        image_size = 32 if image_size is None else image_size
        if width % 64:
            raise ValueError(f"ViT width={width} must be a multiple of 64 (heads = width // 64 when reloaded)")
        if not isinstance(layers, int):
            raise ValueError(f"ViT layers must be an int, got {layers!r}")
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} is not divisible by patch_size={patch_size}")
        vision_cfg = CLIPVisionCfg(layers=layers, width=width, patch_size=patch_size, image_size=image_size)
    elif vision == "rn":
        width = 16 if width is None else width
        layers = (1, 1, 1, 1) if layers is None else layers
        layers = (layers,) * 4 if isinstance(layers, int) else tuple(layers)
        image_size = 64 if image_size is None else image_size
        if len(layers) != 4 or image_size % 32 or (width * 32) % 64:
            raise ValueError(
                f"ModifiedResNet needs 4 stage depths, image_size a multiple of 32 and width*32 a multiple of 64; "
                f"got layers={layers}, image_size={image_size}, width={width}")
        vision_cfg = CLIPVisionCfg(layers=layers, width=width, image_size=image_size)
    else:
        raise ValueError(f"vision must be 'vit' or 'rn', got {vision!r}")
    text_cfg = CLIPTextCfg(
        context_length=context_length, vocab_size=_VOCAB_SIZE, width=text_width, heads=text_width // 64,
        layers=text_layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # cast_dtype=float16 only selects LayerNormFp32, exactly as build_model_from_openai_state_dict does,
        # so a reloaded copy has the same module classes; the parameters stay float32.
        model = CLIP(embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=True, cast_dtype=torch.float16)
    return model.eval()


def save_openai_state_dict(model: CLIP, path: Union[str, os.PathLike], jit: bool = False) -> str:
    """Write ``model`` as an OpenAI-format checkpoint that ``load_clip("custom", path=path)`` reads back.

    ``jit=False`` saves a plain state dict (OpenAI key names, tensors on CPU). ``jit=True`` saves a
    TorchScript archive traced with ``forward``/``encode_text``/``encode_image`` like the files OpenAI
    distributes (slower; mainly to test the archive branch of the loader). Returns the path.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not jit:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
        return path
    import copy

    m = copy.deepcopy(model).cpu().float().eval()
    side = m.visual.image_size
    side = side[0] if isinstance(side, (tuple, list)) else side
    images = torch.ones(1, 3, side, side)
    text = torch.zeros(1, m.context_length, dtype=torch.long)
    # Not open_clip.model.trace_model: it builds example images from visual.image_size, a tuple on ViTs.
    with torch.no_grad(), warnings.catch_warnings():
        # Tracing open_clip emits shape-check TracerWarnings and TorchScript deprecation notices; the
        # archive is only a fixture for the loader's TorchScript branch, traced at a fixed shape.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(
            m, {"forward": (images, text), "encode_text": (text,), "encode_image": (images,)}, check_trace=False)
        torch.jit.save(traced, path)
    return path
