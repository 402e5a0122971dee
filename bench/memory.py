"""Peak memory of a callable: CUDA allocator statistics on GPU; on CPU (no allocator statistics, and tracemalloc does
not see torch's allocator) a ``TorchDispatchMode`` that records every tensor storage created while the callable runs
and frees it when its last tensor dies, i.e. the peak of *live tensor bytes allocated inside* (storage that existed
before, such as parameters, buffers and inputs, is not counted, nor are views of it; kernel-internal scratch buffers
are not seen)."""
from __future__ import annotations

import weakref
from typing import Any, Callable, Dict

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["LiveTensorBytes", "peak_memory"]


class LiveTensorBytes(TorchDispatchMode):
    """Peak of live tensor-storage bytes allocated by ops run inside the mode (CPU-friendly memory probe)."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: Dict[int, int] = {}
        self.size: Dict[int, int] = {}
        self.cur = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.cur -= self.size.pop(key)
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        # An output sharing a storage with an input (a view, an in-place op) allocated nothing; when that storage was
        # created before the mode (a parameter, a buffer, the caller's input) it is not counted at all.
        aliased = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key = st.data_ptr()
                if key == 0 or (key in aliased and key not in self.refs):
                    continue
                if key not in self.refs:
                    self.refs[key] = 0
                    self.size[key] = st.nbytes()
                    self.cur += st.nbytes()
                    self.peak = max(self.peak, self.cur)
                self.refs[key] += 1
                weakref.finalize(t, self._release, key)
        return out


def peak_memory(fn: Callable[[], Any], device: str) -> int:
    """Peak bytes allocated while ``fn()`` runs (beyond what was allocated before it)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    probe = LiveTensorBytes()
    with probe:
        fn()
    return probe.peak
