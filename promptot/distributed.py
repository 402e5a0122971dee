"""Data-parallel training over several processes (``torchrun --nproc_per_node=K train.py ...``), built-in engine.

Design (why it is exact): the *global* batch stays ``DATALOADER.TRAIN_X.BATCH_SIZE`` and each of the K ranks gets an
equal contiguous slice of it, drawn from the permutation a single process would draw (the seed comes from the global
torch generator exactly as ``RandomSampler`` takes it, and rank 0's value is broadcast so the ranks can never disagree).
Each rank's loss is the mean over its slice, so the mean of the K gradients — all-reduced after backward — is the
gradient of the global-batch loss, and every rank steps the same optimizer on the same numbers. With deterministic
transforms, K processes therefore follow the single process's loss trajectory and end with its prompts up to float
summation order (tested with gloo and K = 2 on CPU). Random augmentations are drawn per rank (each rank loads its own
images), so they then differ from the single process's draws: same distribution, other samples.

Only the learnable parameters travel (one flat all-reduce per step: prompt learners are small), which is what
DistributedDataParallel's gradient bucketing does for them, without wrapping models whose forward is not ``forward``.
Rank 0 writes logs, checkpoints, results records and the run lock; evaluation is sharded (rank r takes items r, r+K,
...) and the predictions are gathered before the metrics are computed.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterator, List, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["init_from_env", "is_distributed", "rank", "world_size", "is_main", "barrier", "all_reduce_mean_",
           "broadcast_int", "gather_objects", "GlobalBatchSampler", "ShardSampler"]


def init_from_env(use_cuda: bool = False) -> bool:
    """Start the process group when launched by torchrun (``WORLD_SIZE`` > 1): gloo on CPU, nccl on CUDA.
    Returns whether the run is distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if use_cuda and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _device_of(tensors: Sequence[torch.Tensor]) -> torch.device:
    return tensors[0].device if tensors else torch.device("cpu")


def all_reduce_mean_(tensors: Sequence[torch.Tensor], weight: float = 1.0) -> None:
    """Replace ``tensors`` by their ``weight``-weighted mean over the ranks, in place, with one collective
    (flattened in float64). With ``weight`` = the rank's number of items and per-rank means as inputs, the result is
    the mean over all items: exact even when the ranks hold unequal shares of a batch."""
    if not is_distributed() or not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) * weight for t in tensors] +
                     [torch.tensor([float(weight)], dtype=torch.float64, device=_device_of(tensors))])
    if dist.get_backend() == "nccl":
        flat = flat.cuda()
    dist.all_reduce(flat)
    flat = flat[:-1] / flat[-1]
    i = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[i:i + n].view_as(t).to(t.device, t.dtype))
        i += n


def broadcast_int(value: int) -> int:
    """Rank 0's ``value`` on every rank."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.broadcast(t, src=0)
    return int(t.item())


def gather_objects(obj: Any) -> List[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


class GlobalBatchSampler(Sampler[int]):
    """Rank r's share of each global batch of the single-process epoch order.

    The epoch's permutation is ``randperm(n)`` under a generator seeded like ``torch.utils.data.RandomSampler``
    (one int64 drawn from the global torch generator at ``__iter__``), the seed taken from rank 0. Global batches of
    ``global_batch`` items (the last one dropped when ``drop_last``, as the single-process loader does) are cut into
    ``world`` equal contiguous slices; this sampler yields slice ``rank`` of each, so a loader over it with
    ``batch_size = global_batch // world`` gives rank r exactly its slice of every global batch. A partial last batch
    (kept only when the split is smaller than one batch) is cut into slices that differ by at most one item; every
    rank gets at least one (``n >= world`` is required), so all ranks run the same number of steps.
    """

    def __init__(self, n: int, global_batch: int, rank_: int, world: int, drop_last: bool) -> None:
        if global_batch % world:
            from .errors import ConfigError

            raise ConfigError(f"DATALOADER.TRAIN_X.BATCH_SIZE {global_batch} is the global batch and must be divisible "
                              f"by the {world} processes (each takes an equal share)")
        if n < world:
            from .errors import ConfigError

            raise ConfigError(f"{n} training items cannot be shared by {world} processes; use fewer processes")
        self.n, self.global_batch, self.rank, self.world, self.drop_last = n, global_batch, rank_, world, drop_last
        self.local = global_batch // world

    def _slice(self, size: int) -> range:
        """This rank's positions in a batch of ``size`` items (equal shares, the first ones one larger)."""
        base, extra = divmod(size, self.world)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (self.rank < extra))

    def __len__(self) -> int:
        full = self.n // self.global_batch
        rest = 0 if self.drop_last else self.n % self.global_batch
        return full * self.local + (len(self._slice(rest)) if rest else 0)

    def __iter__(self) -> Iterator[int]:
        seed = broadcast_int(int(torch.empty((), dtype=torch.int64).random_().item()))
        g = torch.Generator()
        g.manual_seed(seed)
        order = torch.randperm(self.n, generator=g).tolist()
        n_batches = self.n // self.global_batch if self.drop_last else math.ceil(self.n / self.global_batch)
        for b in range(n_batches):
            batch = order[b * self.global_batch:(b + 1) * self.global_batch]
            for i in self._slice(len(batch)):
                yield batch[i]


class ShardSampler(Sampler[int]):
    """Items ``rank, rank + world, ...`` in order: every item is evaluated by exactly one rank (no padding)."""

    def __init__(self, n: int, rank_: int, world: int) -> None:
        self.n, self.rank, self.world = n, rank_, world

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))
