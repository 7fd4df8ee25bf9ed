"""Process-group helpers for DDP through ``torchrun`` (nccl on GPU, gloo on CPU).

Every helper works unchanged in a single process (world size 1), so the trainer calls
them unconditionally.
"""

from __future__ import annotations

import datetime
import gc
import os
from typing import Any

import torch
import torch.distributed as dist

from detmine.errors import ConfigError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed(backend: str | None = None, timeout_minutes: float = 30.0) -> bool:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). Returns True when distributed.

    Without those variables (a plain ``python tools/train.py``) nothing happens. On GPU each
    process uses ``cuda:LOCAL_RANK``.
    """
    if is_distributed():
        return True
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return True


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module behind DistributedDataParallel / DataParallel (which hide ``predict`` and the
    head's attributes); any other module as it is."""
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def reduce_dict(values: dict[str, torch.Tensor], average: bool = True) -> dict[str, torch.Tensor]:
    """All-reduce a dict of scalar tensors (same keys on every rank): mean (or sum) over ranks.
    Keys are reduced in sorted order so the ranks agree on the stacking."""
    if not is_distributed():
        return values
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float() for k in keys])
    dist.all_reduce(stacked)
    if average:
        stacked /= get_world_size()
    return dict(zip(keys, stacked, strict=True))


def all_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True only when ``flag`` is True on every rank (e.g. "my loss is finite")."""
    if not is_distributed():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def cleanup() -> None:
    """Destroy the process group. Objects that hold it (DDP's reducer, a trainer left in a
    reference cycle) are collected first: destroyed at interpreter exit after the group, they
    can abort the process (``terminate called without an active exception``)."""
    if is_distributed():
        gc.collect()
        dist.destroy_process_group()


def pick_device(name: str, *, key: str | None = None) -> torch.device:
    """The device for ``name`` in auto | cpu | cuda (the local rank's GPU under torchrun);
    ``key`` names the config key it came from in the error (default: the ``--device`` flag)."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if key is not None:
            raise ConfigError(f"{key}=cuda but no CUDA device is available; use {key}=auto or cpu")
        raise ConfigError("device 'cuda' was asked for but no CUDA device is available; use --device cpu")
    return torch.device("cuda", get_local_rank())
