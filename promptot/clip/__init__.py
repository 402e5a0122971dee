"""CLIP loading, tokenization and the prompted-CLIP wrapper shared by every trainer."""
from .loader import (REFERENCE_NAMES, BackboneError, BackboneNotFoundError, load_clip, register_backbone,
                     registered_backbones)
from .prompted import (AppendTokensHook, BlockHook, BlockState, DeepPromptHook, PromptedCLIP, TextOutput,
                       VisionOutput)
from .tiny import build_tiny_clip, save_openai_state_dict
from .tokenizer import EOT_TOKEN, SOT_TOKEN, token_length, tokenize

__all__ = [
    "BackboneError", "BackboneNotFoundError", "REFERENCE_NAMES", "register_backbone", "registered_backbones",
    "load_clip",
    "tokenize", "token_length", "SOT_TOKEN", "EOT_TOKEN",
    "PromptedCLIP", "TextOutput", "VisionOutput", "BlockHook", "BlockState", "DeepPromptHook", "AppendTokensHook",
    "build_tiny_clip", "save_openai_state_dict",
]
