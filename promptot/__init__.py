"""promptot: prompt learning for CLIP with batched optimal-transport heads."""
__version__ = "0.1.0"
