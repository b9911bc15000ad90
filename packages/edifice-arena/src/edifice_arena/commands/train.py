"""``edifice train ARCH``: train one registered causal sequence architecture on an arena task, a text file or a token
file, with checkpoints, exact resume and data parallelism (``torchrun``).

Torch-free at import (building the CLI parser for any command calls :func:`configure`); :func:`run` imports torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edifice.cli.commands import UsageError

if TYPE_CHECKING:
    from torch import nn

    from edifice_arena.batches import BatchSource
    from edifice_arena.training import StepRecord, Trainer

HELP = "train one sequence architecture on a task, a text file or a token file (checkpoints, resume, torchrun)"

_DEFAULT_TASK = "char_lm"


def _assignment(text: str) -> tuple[str, Any]:
    from edifice.cli.commands.summary import parse_assignment

    return parse_assignment(text)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's arguments."""
    parser.add_argument("arch", metavar="ARCH", help="registry name of a causal sequence architecture")
    data = parser.add_argument_group("data (one of; default: --task char_lm)")
    source = data.add_mutually_exclusive_group()
    source.add_argument("--task", metavar="NAME", help="an arena task: mqar, selective_copying, induction_heads, ...")
    source.add_argument("--text", metavar="FILE", help="a UTF-8 text file (bytes as tokens, or --tokenizer)")
    source.add_argument("--tokens", metavar="FILE", help="token ids: a 1-D .npy array or a raw .bin (--token-dtype)")
    data.add_argument(
        "--task-set", dest="task_fields", metavar="KEY=VALUE", action="append", type=_assignment, default=[],
        help="set a field of the task (repeatable), e.g. num_kv_pairs=8",
    )  # fmt: skip
    data.add_argument("--tokenizer", metavar="NAME_OR_PATH", help="Hugging Face tokenizer for --text (offline)")
    data.add_argument("--token-dtype", default="uint16", choices=("uint16", "uint32"), help="ids of a .bin file")
    data.add_argument("--seq-len", type=int, metavar="T", help="sequence length (default: the task's, or 256)")

    model = parser.add_argument_group("model")
    model.add_argument(
        "--set", dest="overrides", metavar="KEY=VALUE", action="append", type=_assignment, default=[],
        help="override a config field of the architecture (repeatable), e.g. d_model=256",
    )  # fmt: skip
    model.add_argument("--tiny", action="store_true", help="start from the architecture's tiny test config")

    train = parser.add_argument_group("training")
    train.add_argument("--steps", type=int, default=1000, help="optimizer steps (default 1000)")
    train.add_argument("--batch-size", type=int, default=32, help="sequences per step over all ranks (default 32)")
    train.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    train.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay on matrices (default 0.1)")
    train.add_argument("--warmup", type=int, default=0, metavar="STEPS", help="linear warmup steps (default 0)")
    train.add_argument("--schedule", default="cosine", help="cosine (default), linear or constant")
    train.add_argument("--grad-accum", type=int, default=1, metavar="N", help="micro-batches per step (default 1)")
    train.add_argument("--clip", type=float, default=1.0, metavar="NORM", help="gradient norm clip; 0: off (1.0)")
    train.add_argument("--precision", default="fp32", help="fp32 (default) or bf16 (autocast)")
    train.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the data (default 0)")
    train.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    train.add_argument("--compile", action="store_true", help="train through torch.compile (inductor)")
    train.add_argument("--distributed", choices=("ddp", "fsdp2"), help="data parallel across torchrun's processes")

    out = parser.add_argument_group("evaluation, checkpoints and output")
    out.add_argument("--eval-every", type=int, default=0, metavar="N", help="evaluate every N steps (0: at the end)")
    out.add_argument("--eval-batches", type=int, default=4, metavar="N", help="held-out batches per evaluation")
    out.add_argument("--checkpoint-dir", metavar="DIR", help="write checkpoints here")
    out.add_argument("--checkpoint-every", type=int, default=0, metavar="N", help="every N steps (0: at the end)")
    out.add_argument("--keep-checkpoints", type=int, default=2, metavar="N", help="newest checkpoints kept (2)")
    out.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --checkpoint-dir")
    out.add_argument("--save", metavar="FILE", help="write the trained model here (edifice.save)")
    out.add_argument("--json", metavar="FILE", help="write every step's loss, learning rate and time here")
    out.add_argument("--log-every", type=int, default=0, metavar="N", help="print a line every N steps")


def run(args: argparse.Namespace) -> int:
    """Train as ``args`` say; rank 0 prints progress and writes files."""
    import torch

    from edifice_arena import distributed

    try:
        requested = torch.device(args.device)
    except (RuntimeError, TypeError):
        raise UsageError(f"--device {args.device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if requested.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: no CUDA device is available")
    device = args.device
    if args.distributed is not None:
        device = str(distributed.init_distributed(args.device))
    try:
        return _train(args, device, torch.device(device))
    finally:
        if args.distributed is not None:
            distributed.shutdown()


def _train(args: argparse.Namespace, device_name: str, device: Any) -> int:
    import torch

    from edifice_arena.checkpoint import latest_checkpoint
    from edifice_arena.training import TrainConfig, Trainer, held_out_evaluator

    resume = None
    if args.resume:
        if args.checkpoint_dir is None:
            raise UsageError("--resume needs --checkpoint-dir, the directory to resume from")
        resume = latest_checkpoint(args.checkpoint_dir)
        if resume is None:
            raise UsageError(f"--resume: no checkpoint in {args.checkpoint_dir!r}")
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup,
        schedule=args.schedule,
        grad_accum=args.grad_accum,
        clip_norm=args.clip if args.clip > 0 else None,
        precision=args.precision,
        seed=args.seed,
        device=device_name,
        eval_every=args.eval_every,
        compile=args.compile,
        parallel=args.distributed or "none",
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
    )
    if args.save is not None and args.distributed == "fsdp2":
        raise UsageError("--save is not available with fsdp2 (the model is sharded); use --checkpoint-dir")
    if args.eval_batches < 1:
        raise UsageError(f"--eval-batches must be >= 1, got {args.eval_batches}")
    source = _source(args)
    torch.manual_seed(args.seed)  # the same initialisation on every rank
    model = _model(args, source.vocab_size)
    # Every rank evaluates the same held-out batches, one global micro-batch each: the numbers of one process.
    eval_rows = max(1, args.batch_size // args.grad_accum)
    progress = _Progress(args, model, config) if _is_main(args) else None
    try:
        trainer = Trainer(
            model,
            source,
            config,
            evaluate=held_out_evaluator(source, batch_size=eval_rows, batches=args.eval_batches),
            callbacks=[progress.update] if progress is not None else [],
        )
        if resume is not None:
            trainer.load_checkpoint(resume)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if progress is not None:
        progress.start(trainer, resume)
    try:
        records = trainer.fit()
    finally:
        if progress is not None:
            progress.stop()
    if trainer.world.is_main:
        _write_outputs(args, trainer, records, progress)
    return 0


def _is_main(args: argparse.Namespace) -> bool:
    import torch.distributed as dist

    return args.distributed is None or dist.get_rank() == 0


def _source(args: argparse.Namespace) -> BatchSource:
    """The data the arguments name (default: the arena's char_lm task)."""
    from edifice_arena.corpus import TokenWindows, read_text, read_token_file

    if args.tokenizer is not None and args.text is None:
        raise UsageError("--tokenizer applies to --text")
    if args.task_fields and (args.text or args.tokens):
        raise UsageError("--task-set applies to --task")
    if args.seq_len is not None and args.seq_len < 1:
        raise UsageError(f"--seq-len must be >= 1, got {args.seq_len}")
    try:
        if args.text is not None or args.tokens is not None:
            if args.text is not None:
                tokens, vocab_size = read_text(args.text, args.tokenizer)
            else:
                tokens, vocab_size = read_token_file(args.tokens, args.token_dtype)
            name = Path(args.text or args.tokens).name
            return TokenWindows(tokens, vocab_size, args.seq_len or 256, seed=args.seed, name=name)
        from edifice_arena.tasks import make_task

        fields = dict(args.task_fields)
        if args.seq_len is not None:
            fields["seq_len"] = args.seq_len
        return make_task(args.task or _DEFAULT_TASK, seed=args.seed, **fields)
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def _model(args: argparse.Namespace, vocab_size: int) -> nn.Module:
    """The architecture, built to read the data's token ids (a larger ``--set vocab_size`` is allowed)."""
    import edifice

    spec = edifice.get_spec(args.arch)  # UnknownArchitecture names close matches
    if not spec.causal:
        raise UsageError(
            f"{args.arch} is not causal (positions see later ones): next-token training needs a causal model"
        )
    overrides = {**(spec.tiny if args.tiny else {}), "vocab_size": vocab_size, **dict(args.overrides)}
    if "vocab_size" not in edifice.config(args.arch).field_names():
        raise UsageError(f"{args.arch} does not read token ids (its config has no vocab_size)")
    return edifice.build(args.arch, **overrides)


class _Progress:
    """Rank 0's live view: a progress bar with the loss and throughput, and a line every ``--log-every`` steps."""

    def __init__(self, args: argparse.Namespace, model: nn.Module, config: Any) -> None:
        from rich.console import Console

        self.console = Console(stderr=False)
        self.args = args
        self.steps = config.steps
        self.parameters = sum(p.numel() for p in model.parameters())
        self.tokens_per_step = config.batch_size
        self.seconds: deque[float] = deque(maxlen=20)  # the last steps' times, for the throughput shown
        self.progress: Any = None
        self.task: Any = None

    def start(self, trainer: Trainer, resume: Path | None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        data = trainer.source.describe() if hasattr(trainer.source, "describe") else {}
        what = data.get("task") or data.get("data") or type(trainer.source).__name__
        parallel = f", {trainer.config.parallel} x {trainer.world.size}" if trainer.world.size > 1 else ""
        self.tokens_per_step = trainer.config.batch_size * trainer.source.seq_len
        self.console.print(
            f"edifice train: {self.args.arch} ({self.parameters:,} parameters) on {what}, {self.steps} steps of "
            f"{trainer.config.batch_size} x {trainer.source.seq_len} tokens, {trainer.config.device}{parallel}"
        )
        if resume is not None:
            self.console.print(f"resumed from {resume} at step {trainer.completed_steps}")
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  {task.fields[rate]} tok/s"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = self.progress.add_task(
            "train", total=self.steps, completed=trainer.completed_steps, loss="-", rate="-"
        )
        self.progress.start()

    def update(self, record: StepRecord) -> None:
        """The Trainer's callback: advance the bar; print a line every ``--log-every`` steps and at evaluations."""
        self.seconds.append(record.seconds)
        rate = self.tokens_per_step * len(self.seconds) / max(sum(self.seconds), 1e-9)
        if self.progress is not None:
            self.progress.update(self.task, completed=record.step, loss=f"{record.loss:.4f}", rate=f"{rate:,.0f}")
        evaluated = {k: v for k, v in record.metrics.items() if k.startswith("eval_")}
        every = self.args.log_every
        if evaluated or (every > 0 and record.step % every == 0):
            extra = "  ".join(f"{k} {v:.4f}" for k, v in evaluated.items())
            self.console.print(f"step {record.step:>6}  loss {record.loss:.4f}  lr {record.lr:.2e}  {extra}".rstrip())

    def stop(self) -> None:
        """Close the live display."""
        if self.progress is not None:
            self.progress.stop()


def _write_outputs(
    args: argparse.Namespace, trainer: Trainer, records: list[StepRecord], progress: _Progress | None
) -> None:
    """The final model (``--save``), the records (``--json``) and a closing line."""
    import dataclasses

    import edifice

    if args.save is not None:
        edifice.save(trainer.module, args.save)
    if args.json is not None:
        payload = {
            "arch": args.arch,
            "parameters": sum(p.numel() for p in trainer.module.parameters()),
            "config": dataclasses.asdict(trainer.config),
            "world_size": trainer.world.size,
            "records": [dataclasses.asdict(r) for r in records],
        }
        Path(args.json).write_text(json.dumps(payload, indent=1))
    if progress is not None and records:
        seconds = sum(r.seconds for r in records)
        tokens = records[-1].tokens - records[0].tokens + trainer.config.batch_size * trainer.source.seq_len
        evaluated = "  ".join(f"{k} {v:.4f}" for k, v in records[-1].metrics.items() if k.startswith("eval_"))
        progress.console.print(
            f"done: step {records[-1].step}, loss {records[-1].loss:.4f}  {evaluated}  "
            f"{tokens / max(seconds, 1e-9):,.0f} tok/s"
        )
    sys.stdout.flush()
