"""The contract checks against toy architectures: a correct one passes, and each fault fails exactly its check.

The toys live in ``edifice_kit_toys.py`` (loaded by the conftest under that module name); each mutant breaks one rule
of DESIGN §8, sometimes with spec flags that keep the fault from showing up in a second check (a model that peeks
at the future cannot also be stepped, so its spec says it is not stateful).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

import edifice
from edifice import TensorSpec
from edifice.testing import CHECKS, check_architecture, timing
from edifice.testing._runner import hang_guard
from edifice.testing.contract import ContractError, check_forward, check_gradients, warm_up

Register = Callable[..., str]


@pytest.fixture(scope="module", autouse=True)
def _warm() -> None:
    """The one-time process costs (TorchDynamo) once, in set-up, so that no test's call pays them."""
    warm_up()


@pytest.fixture(autouse=True)
def _generous_time_limit(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """These tests check what the checks detect; the time limit has its own tests (and shared CI cores are noisy)."""
    monkeypatch.setenv(timing.ENV_VAR, "60")
    timing.reset_time_limit()
    yield
    timing.reset_time_limit()


def failures_of(name: str) -> str:
    """The AssertionError message of check_architecture(name); fails the test when every check passes."""
    with pytest.raises(AssertionError) as info:
        check_architecture(name)
    return str(info.value)


def test_the_checks_are_the_ten_of_the_design_in_order() -> None:
    assert list(CHECKS) == [
        "build",
        "forward",
        "gradients",
        "batch_independence",
        "save_load",
        "bad_inputs",
        "causality",
        "stateful",
        "bf16_and_compile",
        "stochastic",
    ]
    assert all(fn.__name__ == f"check_{name}" and fn.__doc__ for name, fn in CHECKS.items())


def test_a_correct_causal_stateful_stochastic_toy_passes_every_check(register_toy: Register) -> None:
    name = register_toy()
    results = check_architecture(name)
    assert list(results) == list(CHECKS)
    assert {r.status for r in results.values()} == {"passed"}
    assert all(r.seconds >= 0 for r in results.values())
    assert results["stochastic"].notes == ("checked sample, loss",)
    assert str(results["build"]).startswith("kit_toy: build: passed in ")


NO_STEP = {"stateful": False, "variable_length": False}
FAULTS = [  # model, spec changes, the one check that must fail, a fragment of its message
    ("ToyRecurrent", {"tiny": {"d_in": 3, "d_model": 256}}, "build", "67,328 parameters; the contract allows 50,000"),
    ("NanOnZeros", {}, "forward", "(batch 1, x set to zero): 64 of 64 values are not finite"),
    ("CountsCalls", {}, "forward", "an eval forward changed model state: 'calls' changed"),
    ("DetachedSkip", {}, "gradients", "no gradient (not connected to the outputs): skip"),
    ("MixesBatch", {"variable_length": False}, "batch_independence", "of the other samples changed when sample 1"),
    ("UnsavedScale", {}, "save_load", "output 'y' after save -> load: max abs error"),
    ("Unchecked", {}, "bad_inputs", "input 'x' with an extra leading dimension: accepted silently"),
    ("VagueError", {}, "bad_inputs", "the InputError message 'bad x' does not start \"kit_toy: input 'x' expected\""),
    ("PeeksAhead", NO_STEP, "causality", "output 'y' at positions <= 0 changed when inputs at positions > 0 changed"),
    ("DriftingStep", {}, "stateful", "output 'y' from prefill (4 positions) + step, dynamic state, against forward"),
    ("GraphBreak", {}, "bf16_and_compile", "torch.compile(fullgraph=True, backend='eager') failed"),
    ("GlobalRandomSample", {}, "stochastic", "sample() is not deterministic given a seeded generator"),
    ("NanGradient", {}, "gradients", "non-finite gradients: 'skip' (8 of 8 not finite)"),
    ("ZeroGradient", {}, "gradients", "parameters with an all-zero gradient: skip"),
    ("NoStep", {}, "stateful", "stateful entries implement init_state() and step()"),
    ("GrowingState", {}, "stateful", "static state (max_len given): step changed the state's shapes"),
    ("Bf16Fragile", {}, "bf16_and_compile", "output 'y' under bf16: relative L2 error"),
    ("IgnoresGenerator", {}, "stochastic", "sample() gives the same result for different generator seeds"),
]
FAULT_IDS = ["tiny-too-big", "nan", "eval-mutates", "no-grad", "mixes-batch", "unsaved-buffer", "unchecked"]
FAULT_IDS += ["vague-error", "peeks-ahead", "drifting-step", "graph-break", "global-rng", "nan-grad", "zero-grad"]
FAULT_IDS += ["no-step", "growing-state", "bf16-fragile", "ignores-generator"]


@pytest.mark.parametrize(("model", "changes", "check", "fragment"), FAULTS, ids=FAULT_IDS)
def test_each_fault_fails_exactly_its_check(
    register_toy: Register, model: str, changes: dict[str, Any], check: str, fragment: str
) -> None:
    name = register_toy(model=model, **changes)
    message = failures_of(name)
    assert message.startswith(f"{name}: 1 of 10 contract checks failed:\n- {name}: {check}: "), message
    assert fragment in message
    # The check on its own raises the same failure, naming the architecture and the check.
    with pytest.raises(ContractError, match=f"^{name}: {check}: "):
        CHECKS[check](name)


PACKED_INPUTS = {
    "x": TensorSpec(("B", "T", "d_in")),
    "attention_mask": TensorSpec(("B", "T"), dtype="bool", domain="bool", optional=True),
    # sequence_inputs(packed=True) declares [N + 1]; the validator cannot bind N from an expression yet.
    "cu_seqlens": TensorSpec(("S",), dtype="int32", domain="int[0, T]", optional=True),
}


def test_packed_sequences_must_equal_padded_ones(register_toy: Register) -> None:
    assert check_architecture(register_toy(model="Packed", inputs=PACKED_INPUTS))["stateful"].status == "passed"
    wrong = register_toy("kit_wrong_packing", model="IgnoresPacking", inputs=PACKED_INPUTS)
    with pytest.raises(ContractError, match="output 'y' of packed sequence 1 against padded: max abs error"):
        CHECKS["stateful"](wrong)


def test_variable_length_entries_need_an_attention_mask(register_toy: Register) -> None:
    name = register_toy(inputs={"x": TensorSpec(("B", "T", "d_in"))})
    with pytest.raises(ContractError, match="variable_length entries take an 'attention_mask' input"):
        CHECKS["stateful"](name)


def test_aux_loss_joins_the_gradient_objective(register_toy: Register) -> None:
    outputs = {"y": TensorSpec(("B", "T", "d_model")), "aux_loss": TensorSpec(())}
    assert {r.status for r in check_architecture(register_toy(model="WithAux", outputs=outputs)).values()} == {"passed"}
    # Undeclared, an aux_loss field is still allowed (a scalar, by convention).
    assert check_forward(register_toy("kit_aux_undeclared", model="WithAux")).status == "passed"


def test_tied_weights_survive_save_and_load(register_toy: Register) -> None:
    assert CHECKS["save_load"](register_toy(model="Tied")).status == "passed"


def test_stochastic_entries_need_a_generator_somewhere(edifice_plugin: Callable[..., Any]) -> None:
    from edifice_kit_toys import graph_spec

    edifice_plugin(graph_spec(stochastic=True))
    with pytest.raises(ContractError, match="stochastic entries take a `generator` keyword in sample"):
        CHECKS["stochastic"]("kit_graph")


def test_a_constructor_that_reads_values_fails_on_the_meta_device(register_toy: Register) -> None:
    message = failures_of(register_toy(model="NotOnMeta"))
    assert "kit_toy: build: raised RuntimeError: Tensor.item() cannot be called on meta tensors" in message


def test_outputs_must_be_a_tensor_or_a_dataclass(register_toy: Register) -> None:
    with pytest.raises(ContractError, match=r"forward returned tuple; .* \(never a bare tuple\)"):
        check_forward(register_toy(model="ReturnsTuple"))


@pytest.mark.parametrize(
    ("outputs", "fragment"),
    [
        ({"y": TensorSpec(("B", "T", "d_in"))}, r"output 'y' \(batch 1\) has shape \[1, 8, 8\], expected \[1, 8, 3\]"),
        ({"y": TensorSpec(("B", "T", "d_model"), dtype="int64", domain="int")}, "the spec declares int64"),
        ({"y": TensorSpec(("B", "T", "d_model"), domain="float[0, 1]")}, r"outside its domain \[0, 1\]"),
        (
            {"y": TensorSpec(("B", "T", "d_model")), "z": TensorSpec(("B",))},
            "returned one tensor but the spec declares",
        ),
    ],
    ids=["shape", "dtype", "domain", "undeclared-field"],
)
def test_forward_checks_outputs_against_the_spec(
    register_toy: Register, outputs: dict[str, TensorSpec], fragment: str
) -> None:
    with pytest.raises(ContractError, match=fragment):
        check_forward(register_toy(outputs=outputs))


def test_dataclass_outputs_must_match_the_declared_fields(register_toy: Register) -> None:
    pair = {"y": TensorSpec(("B", "T", "d_model")), "similarity": TensorSpec(("B", "B"))}
    missing = register_toy("kit_missing", model="Contrastive", outputs={**pair, "extra": TensorSpec(("B",))})
    with pytest.raises(ContractError, match="forward output lacks 'extra' declared in the spec's outputs"):
        check_forward(missing)
    undeclared = register_toy("kit_undeclared", model="Contrastive", outputs={"y": pair["y"]})
    with pytest.raises(ContractError, match="has tensors 'similarity' that the spec's outputs do not declare"):
        check_forward(undeclared)


def test_needs_fit_entries_are_prepared_first(register_toy: Register) -> None:
    name = register_toy(model="Fitted", needs_fit=True, reasons={"needs_fit": "input scale fitted on data"})
    assert {r.status for r in check_architecture(name).values()} == {"passed"}
    model = edifice.build(name)
    with pytest.raises(RuntimeError, match="prepare"):
        model(torch.zeros(1, 2, 3))


def test_needs_fit_without_prepare_fails(register_toy: Register) -> None:
    name = register_toy(needs_fit=True, reasons={"needs_fit": "says so"})
    with pytest.raises(ContractError, match="needs_fit but the model has no prepare"):
        check_forward(name)


def test_batch_coupled_entries_compare_only_per_sample_outputs(register_toy: Register) -> None:
    outputs = {"y": TensorSpec(("B", "T", "d_model")), "similarity": TensorSpec(("B", "B"))}
    coupled = {"batch_coupled": True, "reasons": {"batch_coupled": "similarity compares samples"}}
    name = register_toy(model="Contrastive", outputs=outputs, stateful=False, **coupled)
    results = check_architecture(name)
    assert results["batch_independence"].notes == (
        "output 'similarity' not compared: batch_coupled (similarity compares samples)",
    )
    assert "not stateful: step not checked" in results["stateful"].notes
    # Without the flag, the [B, B] output is compared row by row and fails.
    uncoupled = register_toy("kit_uncoupled", model="Contrastive", outputs=outputs, stateful=False)
    with pytest.raises(ContractError, match="output 'similarity' of the other samples changed"):
        CHECKS["batch_independence"](uncoupled)


def test_stochastic_eval_entries_get_a_seeded_generator_in_every_call(register_toy: Register) -> None:
    flags = {
        "stochastic_eval": True,
        "stateful": False,
        "variable_length": False,
        "reasons": {"stochastic_eval": "noisy"},
    }
    results = check_architecture(register_toy(model="NoisyInEval", **flags))
    assert results["stateful"].status == "skipped"
    assert results["stochastic"].notes == ("checked sample, forward, loss",)
    assert "compiled outputs not compared: stochastic_eval" in results["bf16_and_compile"].notes[0]


def test_grad_exempt_parameters_and_stale_globs(register_toy: Register) -> None:
    with pytest.raises(ContractError, match=r"no gradient \(not connected to the outputs\): spare"):
        check_gradients(register_toy("kit_unused", model="WithUnused"))
    exempt = register_toy("kit_exempt", model="WithUnused", grad_exempt={"spa*": "kept for checkpoint compatibility"})
    assert check_gradients(exempt).notes == ("grad_exempt: spa* (kept for checkpoint compatibility)",)
    stale = register_toy("kit_stale", model="WithUnused", grad_exempt={"spare": "unused", "gone.*": "renamed"})
    with pytest.raises(ContractError, match=r"grad_exempt globs match no trainable parameter: gone\.\*"):
        check_gradients(stale)


def test_graph_layout_samples_are_graphs(edifice_plugin: Callable[..., Any]) -> None:
    from edifice_kit_toys import graph_spec

    edifice_plugin(graph_spec())
    results = check_architecture("kit_graph")
    assert results["batch_independence"].status == "passed"
    # A layer that averages over every node of the batch leaks between graphs.
    edifice_plugin(graph_spec("GraphLeaks", name="kit_graph_leaks"))
    with pytest.raises(ContractError, match="output 'h' of the other samples changed when sample 1 changed"):
        CHECKS["batch_independence"]("kit_graph_leaks")


@pytest.mark.parametrize(
    ("changes", "check", "reason"),
    [
        ({"causal": False, "stateful": False}, "causality", "not causal (spec.causal is False)"),
        ({"stateful": False, "variable_length": False}, "stateful", "neither stateful nor variable_length"),
        ({"stochastic": False}, "stochastic", "not stochastic (spec.stochastic is False)"),
        (
            {"needs_cuda": True, "reasons": {"needs_cuda": "Triton kernel only"}},
            "forward",
            "needs CUDA (Triton kernel only)",
        ),
        ({"requires_blocks": ("kit_no_such_block",)}, "build", "needs the block 'kit_no_such_block'"),
    ],
    ids=["not-causal", "not-stateful", "not-stochastic", "needs-cuda", "missing-block"],
)
def test_checks_skip_what_the_spec_exempts_saying_why(
    register_toy: Register, changes: dict[str, Any], check: str, reason: str
) -> None:
    if changes.get("needs_cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    name = register_toy(**changes)
    with pytest.raises(pytest.skip.Exception, match=f"^{check}: .*{re.escape(reason)}"):
        CHECKS[check](name)
    results = check_architecture(name, [check])
    assert results[check].status == "skipped"
    assert reason in results[check].notes[0]
    assert not results[check].notes[0].startswith(name)


def test_no_compile_fullgraph_is_noted_with_its_reason(register_toy: Register) -> None:
    name = register_toy(compile_fullgraph=False, reasons={"no_compile_fullgraph": "data-dependent routing"})
    result = CHECKS["bf16_and_compile"](name)
    assert result.notes == ("compile not checked: compile_fullgraph is False (data-dependent routing)",)


def test_checks_take_config_overrides(register_toy: Register) -> None:
    name = register_toy()
    assert check_forward(name, overrides={"d_model": 5}).status == "passed"
    with pytest.raises(edifice.ConfigError, match="d_model"):
        check_forward(name, overrides={"d_model": 0})


def test_check_architecture_runs_a_selection_and_refuses_unknown_checks(register_toy: Register) -> None:
    name = register_toy()
    assert list(check_architecture(name, ["forward", "build"])) == ["forward", "build"]
    with pytest.raises(ValueError, match="unknown contract checks \\['speed'\\]; valid checks: build, forward"):
        check_architecture(name, ["speed"])


def test_a_slow_check_passes_and_is_reported_with_its_time(
    register_toy: Register, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Timing never fails a check: the budget is reported, a busy machine must not turn the suite red.
    name = register_toy()
    wall, cpu = iter(range(0, 10_000, 30)), iter(range(0, 10_000, 30))  # each call: 30 s on, far over the budget
    monkeypatch.setattr("edifice.testing._runner.time.perf_counter", lambda: float(next(wall)))
    monkeypatch.setattr("edifice.testing._runner.time.process_time", lambda: float(next(cpu)))
    result = check_forward(name)
    assert result.status == "passed" and result.seconds == 30 > timing.BUDGET
    assert timing.drain()[-1] == timing.Timing(name, "forward", 30.0)


def test_a_check_past_the_hang_guard_fails_naming_it(register_toy: Register, monkeypatch: pytest.MonkeyPatch) -> None:
    name = register_toy()
    # Where no timer can interrupt the check, the wall clock measured after it is the guard.
    clock = iter(range(0, 10_000, 90))
    monkeypatch.setattr("edifice.testing._runner.time.perf_counter", lambda: float(next(clock)))
    with pytest.raises(ContractError, match=rf"^{name}: forward: took 90\.0 s: over the 60 s hang guard"):
        check_forward(name)
    monkeypatch.undo()
    # A check that really hangs is interrupted by the guard's timer.
    hung = register_toy("kit_hangs", "Hangs")
    monkeypatch.setenv(timing.ENV_VAR, "0.2")
    with pytest.raises(ContractError, match=r"^kit_hangs: forward: still running after 0\.2 s: over the 0\.2 s hang"):
        check_forward(hung)
    monkeypatch.setenv(timing.ENV_VAR, "off")
    assert check_forward(name).status == "passed"


def test_hang_guard_is_off_without_a_limit_and_outside_the_main_thread() -> None:
    with hang_guard(None):
        time.sleep(0.01)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with hang_guard(0.01):
                time.sleep(0.05)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert errors == []


def test_time_given_to_other_processes_does_not_count(register_toy: Register, monkeypatch: pytest.MonkeyPatch) -> None:
    # A check is charged the smaller of wall-clock and CPU time: waiting (here: the scheduler running another
    # process, simulated by a sleeping clock) is not the check's cost.
    name = register_toy()
    clock = iter(range(0, 10_000, 50))  # every perf_counter() call jumps 50 s ahead
    monkeypatch.setattr("edifice.testing._runner.time.perf_counter", lambda: float(next(clock)))
    result = check_forward(name)
    assert result.status == "passed" and result.seconds < timing.BUDGET


def test_time_limit_sources_and_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(timing.ENV_VAR, raising=False)
    assert timing.time_limit() == timing.DEFAULT_TIME_LIMIT == 60.0
    assert timing.BUDGET == 2.0
    monkeypatch.setenv(timing.ENV_VAR, "3.5")
    assert timing.time_limit() == 3.5
    for off in ("0", "off", "none", " None "):
        assert timing.parse_limit(off) is None
    with pytest.raises(ValueError, match="expected seconds"):
        timing.parse_limit("fast")
    with pytest.raises(ValueError, match="non-negative"):
        timing.parse_limit("-1")
    timing.set_time_limit(7.0)
    assert timing.time_limit() == 7.0
    timing.set_time_limit(None)
    assert timing.time_limit() is None
    timing.reset_time_limit()
    assert timing.time_limit() == 3.5


def test_unexpected_exceptions_become_failures_naming_the_check(register_toy: Register) -> None:
    name = register_toy(
        inputs={"x": TensorSpec(("B", "T", "d_in")), "mask": TensorSpec(("B", "T"), dtype="bool", domain="bool")}
    )
    # The spec promises an input the model does not take: the forward raises TypeError.
    with pytest.raises(ContractError, match=f"^{name}: forward: raised TypeError: .*mask") as info:
        check_forward(name)
    assert isinstance(info.value.__cause__, TypeError)
