"""The arena: several architectures trained on the same task under the same budget, side by side.

Fair by construction: every entry sees the same batches (the task is a function of the seed and the step), the same
number of steps, batch size, optimizer, schedule and seeds, and is sized to the same parameter count (or, with
``d_model`` set, the same width, as the Zoology sweep does). Because a single learning rate favours some
architectures, ``lr_sweep`` trains each entry at several and keeps the best (the Zoology protocol: the best of four
learning rates per point). Every run goes through :class:`~edifice_arena.training.Trainer`, the loop ``edifice train``
uses too.

An entry that cannot enter -- not installed, not a causal token model, no width within the tolerance, or a failure
while training -- is skipped with its reason; the others still run.

On a CPU the arena's models are small and their steps short, so PyTorch's intra-op threads leave cores idle (two
threads made a step only ~1.4x faster than one on two cores). ``jobs`` trains that many entries at once instead, each
in its own worker process with ``cores // jobs`` threads; results are identical whatever the order the workers finish
in, since every run is seeded and sized alone.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import multiprocessing
import os
import queue
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import torch

import edifice
from edifice.errors import ConfigError
from edifice_arena.measure import decode_cost, peak_memory, tokens_per_second
from edifice_arena.progress import NullProgress, Progress
from edifice_arena.results import ArenaResults, EntryResult, RunResult
from edifice_arena.sizing import Entry, Skip, count_parameters, eligibility, size_entry
from edifice_arena.tasks import TASKS, Task, make_task
from edifice_arena.training import StepRecord, TrainConfig, Trainer, held_out_evaluator

__all__ = ["ArenaConfig", "run"]

#: Entries of the default arena, in table order: a transformer, Mamba-2, Gated DeltaNet, an LSTM and minGRU.
DEFAULT_ARCHS = ("decoder_only", "mamba_ssd", "gated_delta_net", "lstm", "min_gru")
#: Entries that join the default arena when their distribution is installed (and stay silent otherwise).
OPTIONAL_ARCHS = ("rwkv",)


def default_archs() -> tuple[str, ...]:
    """The default entries, plus the optional ones that are installed."""
    installed = set(edifice.list_architectures())
    return DEFAULT_ARCHS + tuple(name for name in OPTIONAL_ARCHS if name in installed)


#: Config fields that cap the sequence length an entry accepts; set to the task's length when they are shorter.
_CONTEXT_FIELDS = ("max_len", "max_seq_len", "max_position_embeddings")


@dataclasses.dataclass
class ArenaConfig:
    """One arena: the entries, the task, the common budget and how entries are sized; validates itself."""

    archs: tuple[str, ...] = dataclasses.field(default_factory=default_archs)
    """Registry names of the entries (names not installed are skipped with the reason)."""
    task: str = "mqar"
    """Task name (see :data:`edifice_arena.tasks.TASKS`)."""
    task_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Fields of the task (``seq_len``, ``num_kv_pairs``, ...); its defaults otherwise."""
    params: int | None = 100_000
    """Target parameter count: each entry's ``d_model`` is scaled to land within ``tolerance`` of it."""
    d_model: int | None = None
    """A common width instead of a parameter target (set ``params=None``); counts are reported, not matched."""
    tolerance: float = 0.10
    """Largest relative distance of an entry's parameter count from ``params``."""
    n_layers: int = 2
    """Layers of every entry."""
    overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Per-entry config fields on top of its defaults (e.g. ``{"mamba_ssd": {"head_dim": 16}}``)."""
    steps: int = 500
    """Optimizer steps of every run."""
    batch_size: int = 32
    """Sequences per step."""
    lr: float = 3e-3
    """Peak learning rate (the only one unless ``lr_sweep`` is given)."""
    lr_sweep: tuple[float, ...] = ()
    """Learning rates to try per entry; the best mean final metric over the seeds wins. Empty: ``lr`` only."""
    warmup_steps: int = 0
    """Linear warmup steps."""
    schedule: str = "cosine"
    """Learning-rate schedule after warmup (``cosine``, ``linear``, ``constant``)."""
    weight_decay: float = 0.1
    """AdamW weight decay (Zoology's value)."""
    seeds: int = 1
    """Runs per entry (and learning rate), with seeds ``0 .. seeds - 1``: data and initialisation both change."""
    device: str = "cpu"
    """Device to train on."""
    precision: str = "fp32"
    """``fp32``, or ``bf16`` autocast."""
    eval_every: int = 0
    """Evaluate every this many steps for the learning curves (0: only at the end)."""
    eval_batches: int = 4
    """Held-out batches of the final (and every) evaluation."""
    eval_batch_size: int = 64
    """Sequences per held-out batch."""
    measure_decode: bool = True
    """Time ``model.step`` decoding and measure its state after training."""
    jobs: int = 1
    """Entries trained at once, each in a worker process (CPU only); 0: one per CPU core, at most one per entry."""

    def __post_init__(self) -> None:
        self.archs = tuple(self.archs)
        self.lr_sweep = tuple(float(lr) for lr in self.lr_sweep)
        if not self.archs:
            self._fail("archs", "must name at least one architecture")
        if self.task not in TASKS:
            close = difflib.get_close_matches(self.task, TASKS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            self._fail("task", f"is not a task; choose one of {', '.join(TASKS)}.{hint}")
        if (self.params is None) == (self.d_model is None):
            raise ConfigError("ArenaConfig: set exactly one of 'params' (matched counts) and 'd_model' (one width)")
        for name in ("params", "d_model"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                self._fail(name, "must be a positive integer")
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 0:
            self._fail("jobs", "must be an integer >= 0 (0: one per CPU core)")
        for name in ("n_layers", "steps", "batch_size", "seeds", "eval_batches", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                self._fail(name, "must be a positive integer")
        if not 0.0 < self.tolerance < 1.0:
            self._fail("tolerance", "must lie in (0, 1)")
        for lr in (self.lr, *self.lr_sweep):
            if not (math.isfinite(lr) and lr > 0):
                self._fail("lr" if lr == self.lr else "lr_sweep", "must hold finite learning rates > 0")
        unknown = sorted(set(self.overrides) - set(self.archs))
        if unknown:
            self._fail("overrides", f"names {unknown[0]!r}, which is not an entry ({', '.join(self.archs)})")
        self.training_config(self.lr, seed=0)  # the trainer's own checks (schedule, warmup, precision, device)
        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            self._fail("device", "asks for CUDA, which this machine does not have")

    def _fail(self, name: str, message: str) -> None:
        raise ConfigError(f"ArenaConfig: field '{name}'={getattr(self, name)!r} {message}")

    @property
    def learning_rates(self) -> tuple[float, ...]:
        """The learning rates every entry trains at."""
        return self.lr_sweep or (self.lr,)

    def training_config(self, lr: float, *, seed: int) -> TrainConfig:
        """The :class:`TrainConfig` of one run (the same for every entry)."""
        return TrainConfig(
            steps=self.steps,
            batch_size=self.batch_size,
            lr=lr,
            weight_decay=self.weight_decay,
            warmup_steps=self.warmup_steps,
            schedule=self.schedule,
            precision=self.precision,
            seed=seed,
            device=self.device,
            eval_every=self.eval_every,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-native fields."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


def run(config: ArenaConfig | None = None, *, progress: Progress | None = None, **fields: Any) -> ArenaResults:
    """Run an arena (``config``, or an :class:`ArenaConfig` built from ``fields``) and return its results."""
    if config is None:
        config = ArenaConfig(**fields)
    elif fields:
        config = dataclasses.replace(config, **fields)
    progress = progress or NullProgress()
    task = make_task(config.task, **config.task_options)
    entries, skipped = _size(config, task)
    if not entries:
        reasons = "; ".join(f"{s.arch}: {s.reason}" for s in skipped)
        raise ConfigError(f"no entry can run ({reasons})")
    for skip in skipped:
        progress.skipped(skip.arch, skip.reason)
    jobs = worker_count(config, len(entries))
    outcomes = _in_workers(config, entries, jobs, progress) if jobs > 1 else _in_process(config, entries, progress)
    results = []
    for outcome in outcomes:
        if isinstance(outcome, Skip):
            skipped.append(outcome)
            progress.skipped(outcome.arch, outcome.reason)
        else:
            results.append(outcome)
    return ArenaResults(config=config, task=task.describe(), entries=results, skipped=skipped, jobs=jobs)


def worker_count(config: ArenaConfig, entries: int) -> int:
    """How many entries train at once: ``config.jobs`` (0: the CPU cores), never more than the entries; 1 on GPUs."""
    if torch.device(config.device).type != "cpu":
        return 1
    jobs = config.jobs or _cpu_cores()
    return max(1, min(jobs, entries))


def _cpu_cores() -> int:
    """Cores this process may run on (its affinity where the OS tells it, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _attempt(config: ArenaConfig, entry: Entry, progress: Progress) -> EntryResult | Skip:
    """Train one entry; an exception (its forward on these inputs, NaNs) becomes a skip, leaving the others to run."""
    try:
        return _run_entry(config, entry, make_task(config.task, **config.task_options), progress)
    except Exception as exc:
        return Skip(entry.arch, f"failed while training: {type(exc).__name__}: {exc}")


def _in_process(config: ArenaConfig, entries: Sequence[Entry], progress: Progress) -> Iterator[EntryResult | Skip]:
    """The entries one after the other, in this process."""
    for entry in entries:
        yield _attempt(config, entry, progress)


def _in_workers(
    config: ArenaConfig, entries: Sequence[Entry], jobs: int, progress: Progress
) -> list[EntryResult | Skip]:
    """The entries in ``jobs`` worker processes, their progress relayed to ``progress``; results in entry order."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools or locks
    threads = max(1, _cpu_cores() // jobs)
    # Longest first (LPT scheduling): the slowest entry starting last would finish alone, long after the others.
    order = sorted(range(len(entries)), key=lambda i: -_step_seconds(config, entries[i], threads))
    with context.Manager() as manager:
        events = manager.Queue()
        pool_options: dict[str, Any] = {"initializer": torch.set_num_threads, "initargs": (threads,)}
        with ProcessPoolExecutor(jobs, mp_context=context, **pool_options) as pool:
            submitted = {i: pool.submit(_worker, config, entries[i], events) for i in order}
            futures = [submitted[i] for i in range(len(entries))]
            relay = _Relay(progress)
            while not all(future.done() for future in futures):
                relay.drain(events, timeout=0.1)
            relay.drain(events, timeout=0.0)
            return [_outcome(future, entry) for future, entry in zip(futures, entries, strict=True)]


def _step_seconds(config: ArenaConfig, entry: Entry, threads: int) -> float:
    """A quick estimate of one training step of ``entry`` (forward and backward on one batch, after one warm-up)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        batch = make_task(config.task, **config.task_options).batch(0, config.batch_size)
        model = edifice.build(entry.arch, **entry.overrides)
        seconds = math.inf
        for _ in range(2):
            start = time.perf_counter()
            torch.autograd.backward(_logits(model(input_ids=batch.inputs)).float().logsumexp(-1).mean())
            seconds = time.perf_counter() - start
        return seconds
    except Exception:  # the entry will fail in its worker too, and be skipped with the reason there
        return 0.0
    finally:
        torch.set_num_threads(previous)


def _logits(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.logits


def _worker(config: ArenaConfig, entry: Entry, events: Any) -> EntryResult | Skip:
    """One entry in a worker process, reporting its progress as events on the ``events`` queue."""
    return _attempt(config, entry, _QueueProgress(events))


def _outcome(future: Future[EntryResult | Skip], entry: Entry) -> EntryResult | Skip:
    """A worker's result; a worker that died (killed, out of memory) skips its entry with the reason."""
    try:
        return future.result()
    except Exception as exc:
        return Skip(entry.arch, f"its worker process failed: {type(exc).__name__}: {exc}")


class _QueueProgress(Progress):
    """A worker's :class:`Progress`: every call becomes an event for the parent's :class:`_Relay`."""

    def __init__(self, events: Any) -> None:
        self.events = events

    def callback(self, label: str, steps: int) -> Callable[[StepRecord], None]:
        self.events.put(("callback", label, steps))
        return lambda record: self.events.put(("step", label, record))

    def finished(self, label: str, metric: float) -> None:
        self.events.put(("finished", label, metric))

    def skipped(self, arch: str, reason: str) -> None:
        self.events.put(("skipped", arch, reason))


class _Relay:
    """Replays the workers' progress events on the parent's :class:`Progress`."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.callbacks: dict[str, Callable[[StepRecord], None]] = {}

    def drain(self, events: Any, *, timeout: float) -> None:
        """Replay every waiting event, waiting up to ``timeout`` seconds for the first."""
        while True:
            try:
                kind, label, payload = events.get(timeout=timeout) if timeout else events.get_nowait()
            except queue.Empty:
                return
            timeout = 0.0
            if kind == "callback":
                self.callbacks[label] = self.progress.callback(label, payload)
            elif kind == "step":
                self.callbacks[label](payload)
            elif kind == "finished":
                self.progress.finished(label, payload)
            else:
                self.progress.skipped(label, payload)


def _size(config: ArenaConfig, task: Task) -> tuple[list[Entry], list[Skip]]:
    """Eligible entries, sized for ``task``; the rest with their reasons."""
    entries: list[Entry] = []
    skipped: list[Skip] = []
    for arch in config.archs:
        reason = eligibility(arch, device=config.device)
        if reason is not None:
            skipped.append(Skip(arch, reason))
            continue
        base = {"n_layers": config.n_layers, "vocab_size": task.vocab_size, **_context_fields(arch, task.seq_len)}
        base.update(config.overrides.get(arch, {}))
        if config.params is not None:
            sized = size_entry(arch, config.params, base, tolerance=config.tolerance)
        else:
            sized = _fixed_width(arch, base, config.d_model)
        (entries if isinstance(sized, Entry) else skipped).append(sized)  # type: ignore[arg-type]
    return entries, skipped


def _context_fields(arch: str, seq_len: int) -> dict[str, int]:
    """Fields bounding the context (``max_len`` of implicit long convolutions) raised to the task's length."""
    defaults = edifice.config(arch)
    return {
        name: seq_len
        for name in _CONTEXT_FIELDS
        if name in defaults.field_names()
        and isinstance(getattr(defaults, name), int)
        and getattr(defaults, name) < seq_len
    }


def _fixed_width(arch: str, base: Mapping[str, Any], d_model: int | None) -> Entry | Skip:
    """``arch`` at one given width (the Zoology sweep's x-axis); its count is reported, not matched."""
    overrides = {**base, "d_model": d_model}
    try:
        parameters = count_parameters(arch, overrides)
    except edifice.EdificeError as exc:
        return Skip(arch, f"cannot be built at d_model={d_model}: {exc}")
    return Entry(arch, overrides, parameters, parameters)


def _run_entry(config: ArenaConfig, entry: Entry, reference: Task, progress: Progress) -> EntryResult:
    """Train ``entry`` at every learning rate and seed; keep the best learning rate; measure its costs."""
    sweep: dict[float, list[RunResult]] = {}
    memory: int | None = None
    model: torch.nn.Module | None = None
    for lr in config.learning_rates:
        runs = []
        for seed in range(config.seeds):
            label = f"{entry.arch}" + (f" lr={lr:g}" if len(config.learning_rates) > 1 else "") + f" seed={seed}"
            task = make_task(config.task, **{**config.task_options, "seed": seed})
            torch.manual_seed(seed)  # the initialisation: the same per seed for every learning rate
            model = edifice.build(entry.arch, **entry.overrides)
            trainer = Trainer(
                model,
                task,
                config.training_config(lr, seed=seed),
                evaluate=held_out_evaluator(task, batch_size=config.eval_batch_size, batches=config.eval_batches),
                callbacks=[progress.callback(label, config.steps)],
            )
            with peak_memory(trainer.device) as peak:
                records = trainer.fit()
            if peak["bytes"] is not None:
                memory = max(memory or 0, peak["bytes"])
            runs.append(_run_result(seed, records, task.metric, config.batch_size * task.seq_len))
            progress.finished(label, runs[-1].metric)
        sweep[lr] = runs
    best_lr = _best(sweep, higher_is_better=reference.higher_is_better)
    cost = None
    if config.measure_decode and model is not None and edifice.get_spec(entry.arch).stateful:
        try:
            cost = decode_cost(model, reference.vocab_size, context=reference.seq_len, device=config.device)
        except Exception as exc:  # a broken step() costs the entry its decode columns, not its training result
            progress.skipped(entry.arch, f"decode cost not measured: {type(exc).__name__}: {exc}")
    best = sweep[best_lr]
    throughputs = [r.tokens_per_s for r in best if r.tokens_per_s is not None]
    return EntryResult(
        arch=entry.arch,
        parameters=entry.parameters,
        d_model=entry.width,
        overrides=dict(entry.overrides),
        lr=best_lr,
        runs=best,
        sweep={lr: statistics.fmean(r.metric for r in runs) for lr, runs in sweep.items()},
        tokens_per_s=statistics.median(throughputs) if throughputs else None,
        peak_memory_bytes=memory,
        decode_ms_per_token=None if cost is None else cost.ms_per_token,
        state_bytes=None if cost is None else cost.state_bytes,
    )


def _run_result(seed: int, records: Sequence[StepRecord], metric: str, tokens_per_step: int) -> RunResult:
    """The final metric, the loss curve and the evaluation points of one run."""
    key = f"eval_{metric}"
    evaluations = [(r.step, r.metrics[key]) for r in records if key in r.metrics]
    return RunResult(
        seed=seed,
        metric=evaluations[-1][1] if evaluations else math.nan,
        losses=[r.loss for r in records],
        evaluations=evaluations,
        tokens_per_s=tokens_per_second(records, tokens_per_step),
    )


def _best(sweep: Mapping[float, Sequence[RunResult]], *, higher_is_better: bool) -> float:
    """The learning rate with the best mean final metric (NaN runs lose)."""

    def score(lr: float) -> float:
        mean = statistics.fmean(r.metric for r in sweep[lr])
        if math.isnan(mean):
            return -math.inf
        return mean if higher_is_better else -mean

    return max(sweep, key=score)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value
