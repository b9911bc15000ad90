"""Data-parallel training across processes launched by ``torchrun``: the process group, and wrapping the model.

``torchrun`` starts one process per device and sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``. Every rank builds
the same model from the same seed, reads the same global batch and takes its rows (:meth:`Batch.shard`), so N
processes train on exactly the data one process would. Two ways to keep the replicas in step:

* ``ddp`` (``torch.nn.parallel.DistributedDataParallel``): every rank holds the whole model and optimizer state;
  gradients are averaged by all-reduce, overlapped with the backward pass.
* ``fsdp2`` (``torch.distributed.fsdp.fully_shard``): parameters, gradients and optimizer state are sharded across
  ranks (as ``DTensor``); each layer of every ``nn.ModuleList`` is its own unit, all-gathered just before it runs and
  freed after, so peak memory falls with the number of ranks. The root module shards what is left (embeddings,
  final norm, LM head).

Both average gradients over ranks; the trainer scales each rank's loss by the world size so that the average equals
the full batch's gradient.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "PARALLEL",
    "World",
    "full_state_dicts",
    "gather_tensor",
    "gradient_sync",
    "init_distributed",
    "launched_by_torchrun",
    "load_full_state_dicts",
    "shutdown",
    "wrap_model",
]

#: Ways of running data-parallel: a single process, DDP or FSDP2.
PARALLEL = ("none", "ddp", "fsdp2")


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among the data-parallel processes (``rank 0 of 1`` without torch.distributed)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 prints and writes checkpoints."""
        return self.rank == 0

    @classmethod
    def current(cls) -> World:
        """The world of the initialised default process group, or a world of one."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()


def launched_by_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (its environment names a rank and a world size)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: str) -> torch.device:
    """Join the process group ``torchrun`` set up (NCCL on CUDA, gloo on CPU); return this rank's device."""
    if not launched_by_torchrun():
        raise RuntimeError(
            "data-parallel training needs the environment torchrun sets (RANK, WORLD_SIZE); launch with "
            "`torchrun --nproc_per_node N -m edifice train ...`"
        )
    target = torch.device(device)
    if target.type == "cuda":
        # One process per GPU: LOCAL_RANK picks this process's card.
        target = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(target)
    if not dist.is_initialized():
        backend = "nccl" if target.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=target if target.type == "cuda" else None)
    return target


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(module: nn.Module, parallel: str, device: torch.device) -> nn.Module:
    """The model the training step calls: ``module`` itself, a DDP wrapper around it, or ``module`` sharded in place."""
    if parallel == "none":
        return module
    if not dist.is_initialized():
        raise RuntimeError(f"parallel={parallel!r} needs an initialised process group (see init_distributed)")
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # Parameters the architecture declares gradient-free (ArchSpec.grad_exempt), and experts no token was routed
        # to (models with an auxiliary balance loss), get no gradient in some steps: DDP must then look for unused
        # parameters instead of waiting for their all-reduce forever.
        exempt = bool(getattr(getattr(module, "spec", None), "grad_exempt", None))
        exempt = exempt or bool(getattr(module, "returns_aux_loss", False))
        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=exempt)
    from torch.distributed.fsdp import fully_shard

    for layers in [m for m in module.modules() if isinstance(m, nn.ModuleList)]:
        for layer in layers:
            fully_shard(layer)
    fully_shard(module)
    return module


@contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Run a micro-batch's forward and backward with or without the gradient reduction across ranks.

    Gradient accumulation reduces only on the last micro-batch of a step: earlier ones accumulate locally.
    """
    no_sync = getattr(model, "no_sync", None)  # a DistributedDataParallel wrapper
    if no_sync is not None:
        context: Any = nullcontext() if enabled else no_sync()
        with context:
            yield
        return
    set_sync = getattr(model, "set_requires_gradient_sync", None)  # an FSDP2 module
    if set_sync is not None:
        set_sync(enabled)
    yield


def gather_tensor(tensor: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (same shape and dtype on all ranks), on the CPU, in rank order."""
    world = World.current()
    if world.size == 1:
        return [tensor.cpu()]
    # NCCL moves only device tensors; gloo only CPU ones.
    home = device if dist.get_backend() == "nccl" else torch.device("cpu")
    local = tensor.to(home)
    parts = [torch.empty_like(local) for _ in range(world.size)]
    dist.all_gather(parts, local)
    return [part.cpu() for part in parts]


def full_state_dicts(module: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model's and the optimizer's whole (unsharded) state on the CPU, keyed by parameter name.

    Collective under FSDP2: every rank must call it; only rank 0 gets the tensors (the others get empty dicts).
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(module, options=options), get_optimizer_state_dict(module, optimizer, options=options)


def load_full_state_dicts(
    module: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict[str, Any], optimizer_state: dict[str, Any]
) -> None:
    """Load whole (unsharded) state dicts, as :func:`full_state_dicts` returns them, into ``module`` and ``optimizer``.

    Every rank reads the checkpoint itself, so each loads the full state and keeps its own shard.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(module, model_state, options=options)
    set_optimizer_state_dict(module, optimizer, optimizer_state, options=options)
