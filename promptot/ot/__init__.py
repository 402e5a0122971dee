"""Optimal-transport numerics: batched masked Sinkhorn and the hierarchical (token + prompt level) OT head."""
from .sinkhorn import DOMAINS, GRADS, STOPS, SinkhornResult, ot_cost, plan_entropy, sinkhorn
from .hierarchical import HierarchicalOTHead, OTHeadConfig, TokenPieces, TokenTerm

__all__ = ["DOMAINS", "GRADS", "STOPS", "SinkhornResult", "sinkhorn", "ot_cost", "plan_entropy", "HierarchicalOTHead", "OTHeadConfig",
           "TokenPieces", "TokenTerm"]
