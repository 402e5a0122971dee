"""Optimal-transport numerics: batched masked Sinkhorn and the hierarchical (token + prompt level) OT head."""
from .sinkhorn import SinkhornResult, ot_cost, plan_entropy, sinkhorn
from .hierarchical import HierarchicalOTHead, OTHeadConfig

__all__ = ["SinkhornResult", "sinkhorn", "ot_cost", "plan_entropy", "HierarchicalOTHead", "OTHeadConfig"]
