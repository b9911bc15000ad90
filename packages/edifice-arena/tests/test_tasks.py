"""The arena's tasks: each batch a function of the seed and its index, the layouts their papers define, the metrics."""

from __future__ import annotations

import math

import pytest
import torch

from edifice.errors import ConfigError
from edifice_arena.batches import BatchSource
from edifice_arena.tasks import MQAR, TASKS, CharLM, InductionHeads, Parity, SelectiveCopying, make_task
from edifice_arena.tasks.char_lm import corpus

# Small instances of every task (their defaults are sized for training, not for tests).
SMALL = {
    "mqar": {"seq_len": 32, "num_kv_pairs": 4, "vocab": 64},
    "selective_copying": {"seq_len": 24, "num_tokens": 4, "vocab": 10},
    "induction_heads": {"seq_len": 24, "vocab": 8},
    "parity": {"seq_len": 24},
    "char_lm": {"seq_len": 24},
}


@pytest.mark.parametrize("name", list(TASKS))
def test_batches_are_a_function_of_seed_and_index(name: str) -> None:
    task = make_task(name, **SMALL[name])
    assert isinstance(task, BatchSource)
    first = task.batch(3, 16, micro_step=1)
    again = make_task(name, **SMALL[name]).batch(3, 16, micro_step=1)
    for a, b in ((first.inputs, again.inputs), (first.targets, again.targets), (first.mask, again.mask)):
        assert torch.equal(a, b)
    others = [
        task.batch(4, 16, micro_step=1),
        task.batch(3, 16, micro_step=0),
        task.batch(3, 16, micro_step=1, split="test"),
        make_task(name, **SMALL[name], seed=1).batch(3, 16, micro_step=1),
    ]
    for other in others:
        assert not torch.equal(other.inputs, first.inputs)
    assert first.inputs.shape == (16, task.seq_len) and first.inputs.dtype == torch.int64
    assert int(first.inputs.min()) >= 0 and int(first.inputs.max()) < task.vocab_size
    assert int(first.targets[first.mask].max()) < task.vocab_size


def test_mqar_follows_zoology_layout() -> None:
    task = MQAR(seq_len=32, num_kv_pairs=4, vocab=64)
    batch = task.batch(0, 64)
    half, context = 32, 8
    keys, values = batch.inputs[:, 0:context:2], batch.inputs[:, 1:context:2]
    assert bool(((keys >= 1) & (keys < half)).all()) and bool(((values >= half) & (values < 64)).all())
    for row in range(batch.size):
        assert len(set(keys[row].tolist())) == 4 and len(set(values[row].tolist())) == 4
        positions = batch.mask[row].nonzero().flatten()
        assert (
            len(positions) == 4 and bool((positions >= context).all()) and bool(((positions - context) % 2 == 0).all())
        )
        binding = dict(zip(keys[row].tolist(), values[row].tolist(), strict=True))
        queried = batch.inputs[row, positions].tolist()
        assert sorted(queried) == sorted(binding)  # each key is queried once, answered at the query itself
        assert batch.targets[row, positions].tolist() == [binding[k] for k in queried]
        rest = torch.ones(task.seq_len, dtype=torch.bool)
        rest[:context] = False
        rest[positions] = False
        assert int(batch.inputs[row, rest].abs().sum()) == 0  # Figure 2's random_non_queries=False: zeros
    assert task.chance == pytest.approx(1 / 32)


def test_mqar_power_law_places_queries_early() -> None:
    batch = MQAR(seq_len=128, num_kv_pairs=4, vocab=256).batch(0, 256)
    offsets = (batch.mask.nonzero()[:, 1] - 8) // 2  # the gap of every query
    assert float(offsets.float().mean()) < 60 * 0.5  # power_a = 0.01 favours the first of the 60 gaps
    filled = MQAR(seq_len=32, num_kv_pairs=4, vocab=64, random_non_queries=True).batch(0, 8)
    assert int((filled.inputs[:, 8:] == 0).sum()) < 8 * 24 // 4


def test_selective_copying_answers_tokens_in_order() -> None:
    task = SelectiveCopying(seq_len=24, num_tokens=4, vocab=10)
    batch = task.batch(0, 32)
    region = task.seq_len - 4
    assert bool((batch.inputs[:, region:] == 9).all()) and bool(batch.mask[:, region:].all())
    assert not bool(batch.mask[:, :region].any())
    for row in range(batch.size):
        data = batch.inputs[row, :region]
        assert batch.targets[row, region:].tolist() == data[data != 0].tolist()
    assert task.chance == pytest.approx(1 / 8)


def test_induction_heads_answer_follows_the_trigger() -> None:
    task = InductionHeads(seq_len=24, vocab=8)
    batch = task.batch(0, 64)
    assert batch.mask.sum().item() == 64 and bool(batch.mask[:, -1].all())
    for row in range(batch.size):
        triggers = (batch.inputs[row] == 7).nonzero().flatten().tolist()
        assert len(triggers) == 2 and triggers[1] == 23 and triggers[0] <= 21
        assert batch.targets[row, -1] == batch.inputs[row, triggers[0] + 1]


def test_parity_targets_are_prefix_parities() -> None:
    batch = Parity(seq_len=24).batch(0, 8)
    for row in range(batch.size):
        bits = batch.inputs[row].tolist()
        assert batch.targets[row].tolist() == [sum(bits[: t + 1]) % 2 for t in range(24)]
    assert bool(batch.mask.all())


def test_char_lm_predicts_the_next_character_of_its_split() -> None:
    task = CharLM(seq_len=24)
    alphabet, ids = corpus()
    assert task.vocab_size == len(alphabet) == 62 and len(ids) < 1_000_000
    train, test = task.batch(0, 8), task.batch(0, 8, split="test")
    assert torch.equal(train.inputs[:, 1:], train.targets[:, :-1])
    boundary = len(ids) - len(ids) // 10
    text = "".join(alphabet[i] for i in ids.tolist())
    for row in range(8):
        window = "".join(alphabet[i] for i in test.inputs[row].tolist())
        assert text.find(window, boundary - 24) >= boundary - 24
    assert task.chance == pytest.approx(math.log2(62))


@pytest.mark.parametrize("name", list(TASKS))
def test_metric_of_perfect_and_uniform_predictions(name: str) -> None:
    task = make_task(name, **SMALL[name])
    batch = task.batch(0, 8)
    perfect = torch.nn.functional.one_hot(batch.targets, task.vocab_size).float() * 50
    total, count = task.score(perfect, batch)
    assert count == int(batch.mask.sum())
    assert total / count == pytest.approx(1.0 if task.metric == "accuracy" else 0.0, abs=1e-6)
    if task.metric == "bits_per_char":
        uniform = torch.zeros(*batch.targets.shape, task.vocab_size)
        total, count = task.score(uniform, batch)
        assert total / count == pytest.approx(task.chance)
    assert task.describe()["chance"] == task.chance


@pytest.mark.parametrize(
    ("name", "fields", "message"),
    [
        ("mqar", {"seq_len": 64, "vocab": 64}, "field 'vocab'=64 must exceed seq_len=64"),
        ("mqar", {"seq_len": 31}, "field 'seq_len'=31 must be even"),
        ("mqar", {"seq_len": 16, "num_kv_pairs": 5}, "field 'num_kv_pairs'=5 needs seq_len >= 4 * num_kv_pairs"),
        ("selective_copying", {"seq_len": 8, "num_tokens": 5}, "field 'num_tokens'=5"),
        ("induction_heads", {"vocab": 2}, "field 'vocab'=2 must be at least 3"),
        ("parity", {"seq_len": 0}, "field 'seq_len'=0 must be a positive integer"),
        ("parity", {"seed": -1}, "field 'seed'=-1 must be a non-negative integer"),
        ("parity", {"pairs": 3}, "unknown field 'pairs'; valid fields are seq_len, seed"),
        ("mqarr", {}, "unknown task 'mqarr'; choose one of mqar, selective_copying"),
    ],
)
def test_bad_fields_name_the_field(name: str, fields: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("*", r"\*")):
        make_task(name, **fields)


def test_bad_batch_index() -> None:
    task = Parity(seq_len=8)
    with pytest.raises(ValueError, match="split must be one of train, test"):
        task.batch(0, 2, split="valid")
    with pytest.raises(ValueError, match="batch_size >= 1"):
        task.batch(0, 0)
