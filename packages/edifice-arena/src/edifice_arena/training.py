"""The one training loop: ``edifice train`` and every arena entry train through :class:`Trainer`.

One optimizer step of :class:`Trainer` (:meth:`Trainer.step`)::

    batches  = source.batch(step, batch_size / grad_accum, micro_step=m)   for m < grad_accum   (the global batch)
    for each micro-batch:  this rank's rows (Batch.shard) -> forward under autocast -> masked cross-entropy -> backward
    clip the gradient norm -> AdamW step -> learning-rate schedule step

* **The loss is the mean over every counted position of the global batch** (``mask``), whatever the split into
  micro-batches and ranks: each micro-batch contributes the *sum* of its token losses divided by the number of
  counted positions in the whole step (known up front: the batches are generated on the host), times the world
  size because DDP and FSDP2 average gradients over ranks. Accumulated gradients therefore equal the full batch's.
  A source whose rows do not depend on how a step's batch is split (row ``r`` of micro-batch ``m`` is row
  ``m * rows + r`` of the step) gives the very same data too; the text sources of :mod:`edifice_arena.corpus` do.
* **No host synchronisation per step** on a GPU beyond reading the logged loss, and that read is one step late:
  :meth:`Trainer.fit` launches step ``s + 1`` before it waits for step ``s``'s loss (copied to pinned memory and
  marked by a CUDA event), so the device never idles while the host logs. Evaluation and checkpoints wait for the
  step they follow.
* **Checkpoints** (:meth:`Trainer.save_checkpoint`) hold the model (``edifice.save``), the optimizer and scheduler
  state, every rank's CPU and CUDA RNG states and the step, the data position; the batches are a function of the
  step, so :meth:`Trainer.load_checkpoint` resumes exactly: the resumed run's losses equal the uninterrupted run's.
* **Data parallel** (``parallel="ddp"`` or ``"fsdp2"``, under ``torchrun``; see :mod:`edifice_arena.distributed`):
  every rank generates the same global batch and trains on its shard; rank 0 writes checkpoints.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from edifice.errors import ConfigError
from edifice_arena.batches import Batch, BatchSource
from edifice_arena.checkpoint import read_checkpoint, write_checkpoint
from edifice_arena.distributed import (
    PARALLEL,
    World,
    full_state_dicts,
    gather_tensor,
    gradient_sync,
    load_full_state_dicts,
    wrap_model,
)
from edifice_arena.optim import SCHEDULES, WarmupSchedule, build_optimizer, decayed_parameter_names

__all__ = [
    "PRECISIONS",
    "StepRecord",
    "TrainConfig",
    "Trainer",
    "held_out_evaluator",
    "masked_accuracy",
    "masked_cross_entropy",
]

#: Numeric precisions of the forward pass: fp32, or bf16 autocast (parameters and optimizer state stay fp32).
PRECISIONS = ("fp32", "bf16")
#: Version of the checkpoint's trainer state.
_STATE_FORMAT = 1
#: Config fields that shape the training trajectory: a checkpoint resumes only under the same values.
_TRAJECTORY = (
    "steps",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_steps",
    "schedule",
    "min_lr_ratio",
    "betas",
    "eps",
    "clip_norm",
    "precision",
    "seed",
)


# -- configuration ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run; validates itself (:class:`~edifice.ConfigError` naming the field)."""

    steps: int
    """Number of optimizer steps."""
    batch_size: int
    """Sequences per optimizer step, over all micro-batches and ranks (the global batch)."""
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.1
    """Decoupled weight decay, applied to weight matrices only (see :mod:`edifice_arena.optim`)."""
    warmup_steps: int = 0
    """Steps of linear warmup from ``lr / warmup_steps`` to ``lr``."""
    schedule: str = "cosine"
    """Learning-rate schedule after warmup: ``"cosine"``, ``"linear"`` (both decay to ``min_lr_ratio * lr``) or
    ``"constant"``."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; gradients are accumulated so the step equals the full batch's."""
    clip_norm: float | None = 1.0
    """Clip the global gradient norm to this value (``None``: no clipping)."""
    precision: str = "fp32"
    """``"fp32"``, or ``"bf16"``: the forward runs under bf16 autocast; parameters and optimizer state stay fp32."""
    seed: int = 0
    """Seed of the RNG stochastic layers (dropout) draw from during training (plus the rank under data parallel)."""
    device: str = "cpu"
    """Device to train on (``"cpu"``, ``"cuda"``, ``"cuda:1"``)."""
    eval_every: int = 0
    """Evaluate every this many steps (0: only at the end), when an ``evaluate`` function is given."""
    min_lr_ratio: float = 0.1
    """Final learning rate of the cosine and linear schedules, as a fraction of ``lr``."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW's moment decay rates (0.95 for the second moment, as in GPT-3, is steadier than 0.999 at small batch)."""
    eps: float = 1e-8
    """AdamW's denominator epsilon."""
    compile: bool = False
    """Run the training forward and backward through ``torch.compile`` (evaluation and checkpoints use the module)."""
    parallel: str = "none"
    """Data parallelism across the ``torchrun`` processes: ``"none"``, ``"ddp"`` or ``"fsdp2"``."""
    checkpoint_dir: str | None = None
    """Directory to write checkpoints to (``None``: no checkpoints)."""
    checkpoint_every: int = 0
    """Write a checkpoint every this many steps (0: only at the end), when ``checkpoint_dir`` is set."""
    keep_checkpoints: int | None = 2
    """How many of the newest checkpoints to keep (``None``: all)."""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]  # a JSON round trip gives a list
        if not isinstance(self.compile, bool):
            self._fail("compile", "must be true or false")
        self._check_int("steps", "batch_size", "grad_accum")
        self._check_int("warmup_steps", "seed", "eval_every", "checkpoint_every", allow_zero=True)
        if self.keep_checkpoints is not None:
            self._check_int("keep_checkpoints")
        self._check_float("lr", "eps")
        self._check_float("weight_decay", allow_zero=True)
        if self.clip_norm is not None:
            self._check_float("clip_norm")
        for name, choices in (("schedule", SCHEDULES), ("precision", PRECISIONS), ("parallel", PARALLEL)):
            self._check_choice(name, choices)
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            self._fail("min_lr_ratio", "must lie in [0, 1]")
        if len(self.betas) != 2 or not all(isinstance(b, float | int) and 0.0 <= b < 1.0 for b in self.betas):
            self._fail("betas", "must be two numbers in [0, 1)")
        if self.batch_size % self.grad_accum:
            self._fail("batch_size", f"must be divisible by grad_accum={self.grad_accum}")
        if self.warmup_steps > self.steps:
            self._fail("warmup_steps", f"must not exceed steps={self.steps}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            self._fail("device", "is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1')")

    def _fail(self, name: str, message: str) -> None:
        raise ConfigError(f"TrainConfig: field '{name}'={getattr(self, name)!r} {message}")

    def _check_int(self, *names: str, allow_zero: bool = False) -> None:
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
                self._fail(name, "must be an integer " + (">= 0" if allow_zero else ">= 1"))

    def _check_float(self, *names: str, allow_zero: bool = False) -> None:
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, float | int) or not math.isfinite(value):
                self._fail(name, "must be a finite number")
            if value < 0 or (value == 0 and not allow_zero):
                self._fail(name, "must be " + (">= 0" if allow_zero else "> 0"))

    def _check_choice(self, name: str, choices: Sequence[str]) -> None:
        value = getattr(self, name)
        if value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            self._fail(name, f"is not one of {', '.join(map(repr, choices))}.{hint}")


@dataclasses.dataclass
class StepRecord:
    """What one optimizer step did."""

    step: int
    """Optimizer steps completed, this one included (1 for the first step)."""
    loss: float
    """Mean cross-entropy (nats) over the counted positions of the step's global batch."""
    lr: float
    """Learning rate this step used."""
    tokens: int
    """Input tokens trained on so far, this step included, over all ranks (cumulative)."""
    seconds: float
    """Wall-clock seconds of this step (evaluation and checkpointing excluded)."""
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    """``grad_norm`` (before clipping) when clipping, and the evaluation's metrics on evaluation steps."""


# -- losses and metrics -----------------------------------------------------------------------------------------------
def _check_logits(logits: Tensor, batch: Batch) -> None:
    if logits.dim() != 3 or logits.shape[:2] != batch.targets.shape:
        raise ValueError(
            f"expected logits [B, T, vocab] with [B, T] = {list(batch.targets.shape)}, got {list(logits.shape)}"
        )


def _masked_nats(logits: Tensor, batch: Batch) -> Tensor:
    """Sum of the cross-entropy (nats, fp32) over the positions ``batch.mask`` marks."""
    _check_logits(logits, batch)
    # Positions that do not count get the ignored target, so the sum needs no mask multiply and no host sync.
    targets = batch.targets.masked_fill(~batch.mask, -100)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")


def masked_cross_entropy(logits: Tensor, batch: Batch) -> Tensor:
    """Mean cross-entropy (nats) over the positions ``batch.mask`` marks (``logits`` ``[B, T, vocab]``)."""
    return _masked_nats(logits, batch) / batch.mask.sum().clamp(min=1)


def masked_accuracy(logits: Tensor, batch: Batch) -> float:
    """Fraction of the masked positions where the argmax of ``logits`` is the target."""
    _check_logits(logits, batch)
    correct = (logits.argmax(dim=-1) == batch.targets) & batch.mask
    return float(correct.sum()) / max(1, int(batch.mask.sum()))


def _logits_and_aux(output: Any) -> tuple[Tensor, Tensor | None]:
    """The logits and the (already weighted) auxiliary loss of a model's output."""
    if isinstance(output, Tensor):
        return output, None
    logits = getattr(output, "logits", None)
    if not isinstance(logits, Tensor):
        raise TypeError(
            f"the model returned {type(output).__name__} without logits; train a model built with vocab_size set"
        )
    return logits, getattr(output, "aux_loss", None)


def held_out_evaluator(
    source: BatchSource, *, batch_size: int, batches: int = 4, split: str = "test"
) -> Callable[[nn.Module], dict[str, float]]:
    """An ``evaluate`` function: loss and accuracy over ``batches`` fixed held-out batches of ``split``.

    A source with a ``metric`` name and a ``score(logits, batch) -> (total, count)`` method (an arena task) also
    gets that metric (``accuracy`` or ``bits_per_char``) under ``eval_<metric>``.
    """
    score = getattr(source, "score", None)
    metric = getattr(source, "metric", None)

    def evaluate(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        nats = correct = counted = 0.0
        scored = [0.0, 0.0]
        for index in range(batches):
            batch = source.batch(index, batch_size, split=split).to(device)
            logits, _ = _logits_and_aux(model(input_ids=batch.inputs))
            nats += float(_masked_nats(logits, batch))
            count = int(batch.mask.sum())
            correct += masked_accuracy(logits, batch) * count
            counted += count
            if score is not None and metric is not None:
                total, n = score(logits, batch)
                scored[0] += total
                scored[1] += n
        out = {"eval_loss": nats / max(counted, 1), "eval_accuracy": correct / max(counted, 1)}
        if score is not None and metric is not None and metric != "accuracy":
            out[f"eval_{metric}"] = scored[0] / max(scored[1], 1)
        return out

    return evaluate


# -- the trainer ------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Launched:
    """A step whose work is queued on the device; its loss is read when :meth:`Trainer._finish` completes it."""

    step: int
    lr: float
    tokens: int
    values: Tensor  # [loss, grad_norm] on the host, filled when ``event`` completes
    event: torch.cuda.Event | None


class Trainer:
    """Trains ``model`` on ``source`` as ``config`` says: AdamW, warmup and schedule, accumulation, clipping, autocast,
    checkpoints and data parallelism.

    ``evaluate(model) -> {name: value}`` runs in eval mode without gradients every ``eval_every`` steps and after the
    last; each callback gets every :class:`StepRecord` in order (on every rank; print on ``trainer.world.is_main``).
    The model must take ``input_ids [B, T]`` and return logits ``[B, T, vocab]`` (or an output with ``logits``
    and optionally ``aux_loss``, which is added to the loss).
    """

    def __init__(
        self,
        model: nn.Module,
        source: BatchSource,
        config: TrainConfig,
        *,
        evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
        callbacks: Sequence[Callable[[StepRecord], None]] = (),
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"Trainer: config must be a TrainConfig, got {type(config).__name__}")
        if not isinstance(source, BatchSource):
            raise TypeError(f"Trainer: source must be a BatchSource (vocab_size, seq_len, batch()), got {source!r}")
        self.config = config
        self.source = source
        self.evaluate = evaluate
        self.callbacks = list(callbacks)
        self.world = World.current() if config.parallel != "none" else World()
        if config.batch_size % (config.grad_accum * self.world.size):
            raise ConfigError(
                f"TrainConfig: field 'batch_size'={config.batch_size} must be divisible by grad_accum x world size "
                f"= {config.grad_accum} x {self.world.size}"
            )
        _check_vocabulary(model, source)
        self.device = torch.device(config.device)
        self.module = model.to(self.device)
        """The model itself (under DDP, the module inside the wrapper; under FSDP2, sharded in place)."""
        decayed = decayed_parameter_names(self.module)
        wrapped = wrap_model(self.module, config.parallel, self.device)
        self.model: nn.Module = torch.compile(wrapped) if config.compile else wrapped  # type: ignore[assignment]
        """What the training step calls: :attr:`module` or its DDP wrapper, compiled if ``config.compile``."""
        self.optimizer = build_optimizer(
            self.module.named_parameters(),
            decayed,
            lr=config.lr,
            weight_decay=config.weight_decay,
            betas=config.betas,
            eps=config.eps,
            # The fused CUDA kernel does the whole update in one launch; FSDP2's sharded DTensors take foreach.
            fused=self.device.type == "cuda" and config.parallel != "fsdp2",
        )
        # Listed once, after wrapping (FSDP2 replaces the parameters with sharded ones).
        self._trainable = [p for p in self.module.parameters() if p.requires_grad]
        self.scheduler = LambdaLR(
            self.optimizer, WarmupSchedule(config.steps, config.warmup_steps, config.schedule, config.min_lr_ratio)
        )
        self.completed_steps = 0
        """Optimizer steps done so far (restored by :meth:`load_checkpoint`)."""
        self.tokens = 0
        """Input tokens trained on so far, over all ranks."""
        self.history: list[StepRecord] = []
        """Every completed step's record, in order."""
        self._clock: float | None = None
        torch.manual_seed(config.seed + self.world.rank)

    # -- training -------------------------------------------------------------------------------------------------
    def fit(self) -> list[StepRecord]:
        """Train up to ``config.steps`` steps (from :attr:`completed_steps`); evaluate and checkpoint on the way."""
        records = []
        self.model.train()
        self._clock = time.perf_counter()
        pending: _Launched | None = None
        while self.completed_steps < self.config.steps:
            launched = self._launch()
            if pending is not None:  # read step s's loss while step s + 1 runs on the device
                records.append(self._finish(pending))
            pending = launched
            if self._evaluation_due(launched.step) or self._checkpoint_due(launched.step):
                records.append(self._finish(pending))
                pending = None
        if pending is not None:
            records.append(self._finish(pending))
        return records

    def step(self) -> StepRecord:
        """One optimizer step (``grad_accum`` micro-batches; under data parallel, this rank's shard of each)."""
        if self._clock is None:
            self._clock = time.perf_counter()
        self.model.train()
        return self._finish(self._launch())

    def _launch(self) -> _Launched:
        """Queue one optimizer step's work on the device; nothing here waits for the device."""
        config, world = self.config, self.world
        if self.completed_steps >= config.steps:
            raise RuntimeError(f"Trainer: all {config.steps} steps are done")
        rows = config.batch_size // config.grad_accum
        micro_batches = [self.source.batch(self.completed_steps, rows, micro_step=m) for m in range(config.grad_accum)]
        # Host-side batches: counting their positions costs no device sync.
        counted = sum(int(batch.mask.sum()) for batch in micro_batches)
        if counted == 0:
            raise ValueError(f"Trainer: no position of step {self.completed_steps}'s batch counts (mask all False)")
        # DDP and FSDP2 average gradients over ranks; scale by the world size so the average is the batch's mean.
        scale = world.size / counted
        nats = torch.zeros((), device=self.device)
        for index, batch in enumerate(micro_batches):
            local = self._to_device(batch.shard(world.rank, world.size))
            with gradient_sync(self.model, index == len(micro_batches) - 1):
                with self._autocast():
                    output = self.model(input_ids=local.inputs)
                logits, aux_loss = _logits_and_aux(output)
                batch_nats = _masked_nats(logits, local)
                loss = batch_nats * scale
                if aux_loss is not None:
                    loss = loss + aux_loss / len(micro_batches)
                loss.backward()  # type: ignore[no-untyped-call]
            nats += batch_nats.detach()
        if world.size > 1:
            dist.all_reduce(nats)
        grad_norm = self._clip_gradients()
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.completed_steps += 1
        self.tokens += config.batch_size * micro_batches[0].inputs.shape[1]
        values = torch.stack([nats / counted, grad_norm if grad_norm is not None else torch.full_like(nats, math.nan)])
        event = None
        if values.is_cuda:
            values = values.to("cpu", non_blocking=True)  # into pinned memory, marked done by the event
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record()
        return _Launched(self.completed_steps, lr, self.tokens, values.detach(), event)

    def _finish(self, launched: _Launched) -> StepRecord:
        """Wait for a launched step, then evaluate, call back and checkpoint as due."""
        if launched.event is not None:
            launched.event.synchronize()
        loss, grad_norm = launched.values.tolist()
        now = time.perf_counter()
        assert self._clock is not None
        record = StepRecord(launched.step, loss, launched.lr, launched.tokens, now - self._clock)
        if not math.isnan(grad_norm):
            record.metrics["grad_norm"] = grad_norm
        self._clock = now
        if self._evaluation_due(launched.step):
            record.metrics.update(self.run_evaluation())
        self.history.append(record)
        for callback in self.callbacks:
            callback(record)
        if self._checkpoint_due(launched.step):
            self.save_checkpoint()
        if self._evaluation_due(launched.step) or self._checkpoint_due(launched.step):
            self._clock = time.perf_counter()  # the next step's time leaves evaluation and checkpointing out
        return record

    def _evaluation_due(self, step: int) -> bool:
        every = self.config.eval_every
        return self.evaluate is not None and (step == self.config.steps or (every > 0 and step % every == 0))

    def _checkpoint_due(self, step: int) -> bool:
        every = self.config.checkpoint_every
        due = step == self.config.steps or (every > 0 and step % every == 0)
        return self.config.checkpoint_dir is not None and due

    def run_evaluation(self) -> dict[str, float]:
        """Call ``evaluate`` on the model in eval mode, without gradients, under the training precision."""
        if self.evaluate is None:
            return {}
        self.module.eval()
        try:
            with torch.no_grad(), self._autocast():
                return {name: float(value) for name, value in self.evaluate(self.module).items()}
        finally:
            self.model.train()

    def _autocast(self) -> AbstractContextManager[Any]:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16")

    def _to_device(self, batch: Batch) -> Batch:
        if self.device.type != "cuda":
            return batch.to(self.device)
        # Pinned host memory lets the copy run asynchronously, behind the previous step's kernels.
        return Batch(
            *(t.pin_memory().to(self.device, non_blocking=True) for t in (batch.inputs, batch.targets, batch.mask))
        )

    def _clip_gradients(self) -> Tensor | None:
        """Clip the global gradient norm to ``clip_norm``; return the norm before clipping (no host sync)."""
        if self.config.clip_norm is None:
            return None
        parameters = [p for p in self._trainable if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
        full_tensor = getattr(norm, "full_tensor", None)  # a DTensor under FSDP2: the norm over every shard
        if full_tensor is not None:
            norm = full_tensor()
        torch.nn.utils.clip_grads_with_norm_(parameters, self.config.clip_norm, norm)
        return norm

    # -- checkpoints ------------------------------------------------------------------------------------------------
    def save_checkpoint(self, directory: str | Path | None = None) -> Path | None:
        """Write the full training state after the last completed step (collective: every rank calls it).

        Rank 0 writes and gets the checkpoint's path; the other ranks get ``None``.
        """
        import edifice

        target = directory if directory is not None else self.config.checkpoint_dir
        if target is None:
            raise ValueError("Trainer.save_checkpoint: no directory given and config.checkpoint_dir is None")
        model_state, optimizer_state = full_state_dicts(self.module, self.optimizer)
        rng = {f"rng/cpu/{rank}": state for rank, state in enumerate(gather_tensor(torch.get_rng_state(), self.device))}
        if self.device.type == "cuda":
            cuda = gather_tensor(torch.cuda.get_rng_state(self.device), self.device)
            rng.update({f"rng/cuda/{rank}": state for rank, state in enumerate(cuda)})
        path = None
        if self.world.is_main:
            tensors, scalars = _flatten_optimizer_state(optimizer_state["state"])

            def write_model(file: Path) -> None:
                if self.config.parallel == "fsdp2":  # the sharded module: save a whole copy built from the full state
                    whole = edifice.build(self.module.config)  # type: ignore[arg-type]
                    whole.load_state_dict(model_state)
                    edifice.save(whole, file)
                else:
                    edifice.save(self.module, file)

            state = {
                "format": _STATE_FORMAT,
                "step": self.completed_steps,
                "tokens": self.tokens,
                "world_size": self.world.size,
                "config": dataclasses.asdict(self.config),
                "scheduler": self.scheduler.state_dict(),
                "optimizer": {"param_groups": optimizer_state["param_groups"], "scalars": scalars},
                # The batches are a function of (source, step): the step is the data position.
                "data": {"position": self.completed_steps, "source": _describe(self.source)},
            }
            path = write_checkpoint(
                target,
                self.completed_steps,
                write_model=write_model,
                tensors={**tensors, **rng},
                state=state,
                keep_last=self.config.keep_checkpoints,
            )
        if self.world.size > 1:
            dist.barrier()
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore the model, optimizer, scheduler, RNG states and step from a :meth:`save_checkpoint` directory."""
        import edifice
        from edifice.io import read_metadata

        model_file, tensors, state = read_checkpoint(path)
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(f"{path}: trainer state format {state.get('format')!r}, expected {_STATE_FORMAT}")
        saved = TrainConfig(**state["config"])
        changed = [
            f"{name}={getattr(saved, name)!r} there, {getattr(self.config, name)!r} here"
            for name in _TRAJECTORY
            if getattr(saved, name) != getattr(self.config, name)
        ]
        if changed:
            raise ValueError(f"{path}: the checkpoint was trained with other settings: {'; '.join(changed)}")
        described = _describe(self.source)
        if state["data"]["source"] != described:
            raise ValueError(f"{path}: the checkpoint was trained on {state['data']['source']}, not on {described}")
        own = getattr(self.module, "config", None)
        stored = read_metadata(model_file).config
        if own is not None and hasattr(own, "to_dict") and own.to_dict() != stored:
            mine = own.to_dict()
            differ = sorted(k for k in stored.keys() | mine.keys() if stored.get(k) != mine.get(k))
            raise ValueError(f"{path}: the checkpoint's model differs from this one in {', '.join(differ)}")
        model_state = edifice.load(model_file).state_dict()
        optimizer_state = {
            "state": _unflatten_optimizer_state(tensors, state["optimizer"]["scalars"]),
            "param_groups": [{**g, "betas": tuple(g["betas"])} for g in state["optimizer"]["param_groups"]],
        }
        load_full_state_dicts(self.module, self.optimizer, model_state, optimizer_state)
        self.scheduler.load_state_dict(state["scheduler"])
        # Each rank takes back its own RNG states (rank r of a world of another size takes saved rank r mod that).
        rank = self.world.rank % int(state["world_size"])
        torch.set_rng_state(tensors[f"rng/cpu/{rank}"])
        if self.device.type == "cuda" and f"rng/cuda/{rank}" in tensors:
            torch.cuda.set_rng_state(tensors[f"rng/cuda/{rank}"], self.device)
        self.completed_steps = int(state["step"])
        self.tokens = int(state["tokens"])


def _check_vocabulary(model: nn.Module, source: BatchSource) -> None:
    """An Edifice model must read token ids and cover the source's vocabulary."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "vocab_size"):
        return  # a plain module: its forward is the caller's business
    arch = getattr(config, "arch", type(model).__name__)
    if config.vocab_size is None:
        raise ValueError(f"{arch}: built without vocab_size, so it reads features, not token ids; set vocab_size")
    if config.vocab_size < source.vocab_size:
        raise ValueError(f"{arch}: vocab_size={config.vocab_size} is smaller than the data's {source.vocab_size}")


def _describe(source: BatchSource) -> Any:
    """What identifies a source's stream (its own ``describe()`` where it has one)."""
    describe = getattr(source, "describe", None)
    if callable(describe):
        return describe()
    return {"type": type(source).__name__, "vocab_size": source.vocab_size, "seq_len": source.seq_len}


def _flatten_optimizer_state(state: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``{param: {key: value}}`` as tensors named ``optimizer/<param>/<key>`` plus JSON scalars."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for name, entries in state.items():
        for key, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer/{name}/{key}"] = value
            else:
                scalars.setdefault(name, {})[key] = value
    return tensors, scalars


def _unflatten_optimizer_state(tensors: Mapping[str, Tensor], scalars: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    state: dict[str, dict[str, Any]] = {name: dict(entries) for name, entries in scalars.items()}
    for full, tensor in tensors.items():
        if full.startswith("optimizer/"):
            name, key = full.removeprefix("optimizer/").rsplit("/", 1)
            state.setdefault(name, {})[key] = tensor
    return state
