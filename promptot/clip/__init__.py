"""CLIP loading, tokenization and the prompted-CLIP wrapper shared by every trainer."""
from .loader import REFERENCE_NAMES, BackboneNotFoundError, load_clip, register_backbone, registered_backbones
from .prompted import LayerHooks, PromptedCLIP, TextOutput, VisionOutput
from .tiny import build_tiny_clip, save_openai_state_dict
from .tokenizer import EOT_TOKEN, SOT_TOKEN, token_length, tokenize

__all__ = [
    "BackboneNotFoundError", "REFERENCE_NAMES", "register_backbone", "registered_backbones", "load_clip",
    "tokenize", "token_length", "SOT_TOKEN", "EOT_TOKEN",
    "PromptedCLIP", "TextOutput", "VisionOutput", "LayerHooks",
    "build_tiny_clip", "save_openai_state_dict",
]
