"""The training loop: schedule, weight-decay groups, accumulation, clipping, bf16, exact resume, token windows."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import safetensors
import torch
from torch import nn

import edifice
from edifice_arena.batches import Batch, BatchSource
from edifice_arena.checkpoint import latest_checkpoint
from edifice_arena.corpus import TokenWindows, read_text, read_token_file
from edifice_arena.optim import WarmupSchedule, decayed_parameter_names
from edifice_arena.training import (
    StepRecord,
    TrainConfig,
    Trainer,
    held_out_evaluator,
    masked_accuracy,
    masked_cross_entropy,
)


@dataclasses.dataclass
class RowSource:
    """Rows that depend on the row's index in the step only (any split of a step gives the same data); the number of
    counted positions varies from row to row, so a micro-batch mean differs from the step mean."""

    vocab_size: int = 16
    seq_len: int = 8

    def batch(self, step: int, batch_size: int, *, micro_step: int = 0, split: str = "train") -> Batch:
        rows = []
        for r in range(micro_step * batch_size, (micro_step + 1) * batch_size):
            gen = torch.Generator().manual_seed(1000 * step + r + (10**6 if split == "test" else 0))
            rows.append(torch.randint(0, self.vocab_size, (self.seq_len + 1,), generator=gen))
        tokens = torch.stack(rows)
        first = (torch.arange(micro_step * batch_size, (micro_step + 1) * batch_size) % 5)[:, None]
        mask = torch.arange(self.seq_len)[None, :] >= first
        return Batch(tokens[:, :-1], tokens[:, 1:], mask)


class BigramLM(nn.Module):
    """A plain (non-Edifice) next-token model: what the Trainer needs is ``forward(input_ids) -> logits``."""

    def __init__(self, vocab_size: int = 16, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.embed(input_ids)))


def _bigram(seed: int = 0) -> BigramLM:
    torch.manual_seed(seed)
    return BigramLM()


def _tiny_lm(vocab_size: int, **overrides: object) -> nn.Module:
    if "decoder_only" not in edifice.list_architectures():
        pytest.skip("decoder_only (edifice-attention) is not installed")
    torch.manual_seed(0)
    return edifice.build("decoder_only", d_model=16, n_layers=1, n_heads=2, vocab_size=vocab_size, **overrides)


def _text_source(seq_len: int = 12) -> TokenWindows:
    text = np.frombuffer(b"the quick brown fox jumps over the lazy dog; " * 40, dtype=np.uint8)
    return TokenWindows(text, 256, seq_len, seed=3, name="fox.txt")


# -- configuration, schedule, parameter groups ----------------------------------------------------------------------
def test_schedule_warms_up_then_decays_to_the_floor() -> None:
    cosine = WarmupSchedule(steps=10, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    assert [cosine(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert cosine(4) == 1.0 and cosine(7) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cosine(10) == pytest.approx(0.1)
    linear = WarmupSchedule(steps=10, warmup_steps=0, schedule="linear", min_lr_ratio=0.0)
    assert [linear(s) for s in (0, 5, 10)] == [1.0, 0.5, 0.0]
    assert WarmupSchedule(steps=10, schedule="constant")(9) == 1.0


def test_trainer_follows_the_schedule() -> None:
    config = TrainConfig(steps=6, batch_size=4, lr=0.01, warmup_steps=2, schedule="linear", min_lr_ratio=0.0)
    records = Trainer(_bigram(), RowSource(), config).fit()
    assert [r.lr for r in records] == pytest.approx([0.005, 0.01, 0.01, 0.0075, 0.005, 0.0025])
    assert [r.step for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r.tokens for r in records] == [32 * s for s in range(1, 7)]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"steps": 0}, "steps"),
        ({"batch_size": 6, "grad_accum": 4}, "batch_size"),
        ({"schedule": "cosin"}, "schedule"),
        ({"precision": "fp16"}, "precision"),
        ({"lr": -1.0}, "lr"),
        ({"parallel": "zero3"}, "parallel"),
    ],
)
def test_config_errors_name_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(edifice.ConfigError, match=f"field '{field}'"):
        TrainConfig(**{"steps": 4, "batch_size": 4, **changes})  # type: ignore[arg-type]


def test_weight_decay_only_on_feature_mixing_matrices() -> None:
    model = nn.ModuleDict(
        {
            "embed": nn.Embedding(10, 4),
            "proj": nn.Linear(4, 4),
            "conv": nn.Conv1d(4, 4, 3, groups=4),
            "norm": nn.LayerNorm(4),
            "lstm": nn.LSTM(4, 4),
            "head": nn.Linear(4, 10, bias=False),
        }
    )
    model.register_parameter("A_log", nn.Parameter(torch.zeros(4, 2)))  # SSM dynamics: no decay
    model["head"].weight = model["embed"].weight  # tied to the embedding: no decay
    decayed = decayed_parameter_names(model)
    assert decayed == {"proj.weight", "conv.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0"}
    trainer = Trainer(model["proj"], RowSource(4, 2), TrainConfig(steps=1, batch_size=2))
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["decay", "no_decay"]
    assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [0.1, 0.0]


# -- losses --------------------------------------------------------------------------------------------------------
def test_masked_loss_and_accuracy_count_only_masked_positions() -> None:
    batch = RowSource().batch(0, 3)
    logits = torch.randn(3, 8, 16, generator=torch.Generator().manual_seed(0))
    every = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch.targets, reduction="none")
    assert masked_cross_entropy(logits, batch).item() == pytest.approx(every[batch.mask].mean().item(), rel=1e-6)
    right = logits.argmax(-1) == batch.targets
    assert masked_accuracy(logits, batch) == pytest.approx(right[batch.mask].float().mean().item())
    with pytest.raises(ValueError, match=r"expected logits \[B, T, vocab\]"):
        masked_cross_entropy(logits[:, :4], batch)


# -- the step ------------------------------------------------------------------------------------------------------
def test_gradient_accumulation_equals_the_full_batch() -> None:
    full = Trainer(_bigram(), RowSource(), TrainConfig(steps=3, batch_size=8, clip_norm=None))
    accumulated = Trainer(_bigram(), RowSource(), TrainConfig(steps=3, batch_size=8, grad_accum=4, clip_norm=None))
    losses = [r.loss for r in full.fit()], [r.loss for r in accumulated.fit()]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for a, b in zip(full.module.parameters(), accumulated.module.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_clipping_bounds_the_gradient_the_optimizer_sees() -> None:
    trainer = Trainer(_bigram(), RowSource(), TrainConfig(steps=2, batch_size=4, lr=1.0, clip_norm=0.01))
    seen: list[float] = []

    def norm_at_step(optimizer: torch.optim.Optimizer, *_: object) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        seen.append(torch.nn.utils.get_total_norm(grads).item())

    trainer.optimizer.register_step_pre_hook(norm_at_step)
    records = trainer.fit()
    assert all(r.metrics["grad_norm"] > 0.01 for r in records)  # the norm before clipping is logged
    assert seen == pytest.approx([0.01, 0.01], rel=1e-4)


def test_bf16_autocast_trains_and_keeps_fp32_state() -> None:
    losses = {}
    for precision in ("fp32", "bf16"):
        trainer = Trainer(_bigram(), RowSource(), TrainConfig(steps=3, batch_size=4, precision=precision))
        losses[precision] = [r.loss for r in trainer.fit()]
        assert all(p.dtype == torch.float32 for p in trainer.module.parameters())
    assert all(math.isfinite(x) for x in losses["bf16"])
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=2e-2)


def test_evaluation_runs_every_n_steps_and_at_the_end() -> None:
    source = RowSource()
    seen: list[StepRecord] = []
    config = TrainConfig(steps=5, batch_size=4, eval_every=2)
    evaluate = held_out_evaluator(source, batch_size=4, batches=2)
    Trainer(_bigram(), source, config, evaluate=evaluate, callbacks=[seen.append]).fit()
    assert [r.step for r in seen if "eval_loss" in r.metrics] == [2, 4, 5]
    assert [r.step for r in seen] == [1, 2, 3, 4, 5]


def test_model_must_cover_the_data_vocabulary() -> None:
    with pytest.raises(ValueError, match="vocab_size=64 is smaller than the data's 256"):
        Trainer(_tiny_lm(64), _text_source(), TrainConfig(steps=1, batch_size=2))


# -- checkpoints ---------------------------------------------------------------------------------------------------
def test_resumed_run_equals_the_uninterrupted_run_bit_for_bit(tmp_path: Path) -> None:
    # Dropout makes the RNG state part of what must be restored.
    source = _text_source()
    config = TrainConfig(
        steps=6, batch_size=4, lr=3e-3, warmup_steps=2, checkpoint_dir=str(tmp_path), checkpoint_every=3
    )
    whole = Trainer(_tiny_lm(256, dropout=0.1), source, config)
    uninterrupted = [r.loss for r in whole.fit()]

    resumed = Trainer(_tiny_lm(256, dropout=0.1), source, config)
    resumed.load_checkpoint(tmp_path / "step-00000003")
    assert resumed.completed_steps == 3 and resumed.tokens == 3 * 4 * 12
    assert [r.loss for r in resumed.fit()] == uninterrupted[3:]
    for a, b in zip(whole.module.state_dict().values(), resumed.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    # The layout: safetensors and JSON only; the model file loads on its own; `latest` names the newest.
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000006"
    files = sorted(p.name for p in (tmp_path / "step-00000006").iterdir())
    assert files == ["model.safetensors", "trainer.json", "trainer.safetensors"]
    assert isinstance(edifice.load(tmp_path / "step-00000006" / "model.safetensors"), nn.Module)
    with safetensors.safe_open(str(tmp_path / "step-00000006" / "trainer.safetensors"), "pt") as fh:
        names = list(fh.keys())
    assert "rng/cpu/0" in names and any(k.startswith("optimizer/") for k in names)
    state = json.loads((tmp_path / "step-00000006" / "trainer.json").read_text())
    assert state["step"] == 6 and state["data"]["position"] == 6


def test_resume_refuses_a_different_trajectory(tmp_path: Path) -> None:
    source = _text_source()
    config = TrainConfig(steps=2, batch_size=2, checkpoint_dir=str(tmp_path))
    Trainer(_tiny_lm(256), source, config).fit()
    other = Trainer(_tiny_lm(256), source, dataclasses.replace(config, lr=0.5))
    with pytest.raises(ValueError, match=r"lr=0.001 there, 0.5 here"):
        other.load_checkpoint(tmp_path / "step-00000002")


def test_keep_checkpoints_prunes_the_oldest(tmp_path: Path) -> None:
    config = TrainConfig(steps=4, batch_size=2, checkpoint_dir=str(tmp_path), checkpoint_every=1, keep_checkpoints=2)
    Trainer(_tiny_lm(256), _text_source(), config).fit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000003", "step-00000004"]


# -- token windows ---------------------------------------------------------------------------------------------------
def test_token_windows_are_the_same_however_a_step_is_split() -> None:
    source = _text_source()
    assert isinstance(source, BatchSource)
    whole = source.batch(5, 8)
    parts = [source.batch(5, 2, micro_step=m) for m in range(4)]
    assert torch.equal(whole.inputs, torch.cat([p.inputs for p in parts]))
    assert torch.equal(whole.inputs[:, 1:], whole.targets[:, :-1]) and bool(whole.mask.all())
    assert not torch.equal(whole.inputs, source.batch(6, 8).inputs)
    test = source.batch(0, 64, split="test")  # windows from the held-out tail only
    assert int(test.inputs.numel()) == 64 * 12


def test_token_files_npy_and_bin(tmp_path: Path) -> None:
    ids = np.arange(100, dtype=np.uint16) % 37
    np.save(tmp_path / "ids.npy", ids)
    ids.tofile(tmp_path / "ids.bin")
    for name in ("ids.npy", "ids.bin"):
        tokens, vocab_size = read_token_file(tmp_path / name)
        assert vocab_size == 37 and np.array_equal(np.asarray(tokens), ids)
    with pytest.raises(ValueError, match="not below vocab_size=10"):
        read_token_file(tmp_path / "ids.bin", vocab_size=10)
    with pytest.raises(ValueError, match="fewer than one window"):
        TokenWindows(ids, 37, seq_len=99)


def test_text_through_a_local_tokenizer(tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, "the": 1, "fox": 2, "dog": 3}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "text.txt").write_text("the fox the dog a fox")
    for name in (tmp_path / "tokenizer.json", tmp_path):  # the file, or the directory holding it
        tokens, vocab_size = read_text(tmp_path / "text.txt", str(name))
        assert vocab_size == 4 and tokens.tolist() == [1, 2, 1, 3, 0, 2]
    with pytest.raises(ValueError, match="local Hugging Face cache"):
        read_text(tmp_path / "text.txt", "no-such-org/no-such-tokenizer")


def test_auxiliary_losses_join_the_loss() -> None:
    model = _tiny_lm(256, n_experts=2, moe_top_k=1)
    output = model(input_ids=torch.zeros(1, 4, dtype=torch.long))
    assert getattr(output, "aux_loss", None) is not None  # a mixture of experts returns its balance loss
    records = Trainer(model, _text_source(), TrainConfig(steps=2, batch_size=2)).fit()
    assert all(math.isfinite(r.loss) for r in records)


def test_resume_refuses_another_model(tmp_path: Path) -> None:
    config = TrainConfig(steps=1, batch_size=2, checkpoint_dir=str(tmp_path))
    Trainer(_tiny_lm(256), _text_source(), config).fit()
    wider = Trainer(_tiny_lm(256, d_ff=48), _text_source(), config)
    with pytest.raises(ValueError, match="model differs from this one in d_ff"):
        wider.load_checkpoint(tmp_path / "step-00000001")


@pytest.mark.slow
def test_compiled_training_matches_eager() -> None:
    """``compile=True`` trains through inductor (slow: a compile on the CPU) to the eager losses."""
    runs = [
        [r.loss for r in Trainer(_bigram(), RowSource(), TrainConfig(steps=3, batch_size=4, compile=c)).fit()]
        for c in (False, True)
    ]
    assert runs[1] == pytest.approx(runs[0], rel=1e-4)
