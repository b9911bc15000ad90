"""The registry-wide contract (DESIGN §8): ten checks every registered architecture passes with its tiny config.

Each check takes an architecture name, builds it with its spec's ``tiny`` config, and either returns a
:class:`CheckResult`, skips (``pytest.skip``, with the spec flag and its reason), or raises :class:`ContractError`
(an ``AssertionError``) whose message starts with ``"<name>: <check>:"`` and gives the numbers. Every check is timed
for the report against the 2 s budget of :mod:`edifice.testing.timing` (one-time process warm-ups such as importing
the model module or TorchDynamo are done before the clock starts); only a hang past the 60 s guard fails a check.

Checks 2 and 4-8 run in eval mode. The checks read everything from the spec: input and output tensor specs (shapes,
``when`` conditions, domains), the flags (``causal``, ``stateful``, ``variable_length``, ``compile_fullgraph``,
``batch_coupled``, ``stochastic``, ``stochastic_eval``, ``needs_fit``, ``needs_cuda``) and ``grad_exempt``; and the
conventions of ``docs/design/conventions.md`` (the primary input, ``init_state``/``step``, ``aux_loss``).

``needs_fit`` entries are prepared with ``model.prepare(**inputs)`` (example inputs of 4 samples) when ``prepare``
takes arguments, else ``model.prepare()``. A packed batch (``cu_seqlens``, where the spec declares it) is the
primary input of batch size 1 holding the sequences back to back, with ``cu_seqlens`` their int offsets
``[0, L0, L0 + L1, ...]``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from edifice.errors import CheckpointError, InputError
from edifice.inputs import resolve_shape
from edifice.outputs import tensor_leaves
from edifice.shapes import evaluate, names_in, parse_domain
from edifice.spec import TensorSpec
from edifice.testing._harness import (
    AUX_LOSS,
    CONDITIONING_INPUTS,
    SEED,
    Case,
    ContractError,
    accepts,
    compare_or_fail,
)
from edifice.testing._runner import CheckFunction, CheckResult, contract_check, first_lines, warm_up
from edifice.testing.tol import BF16_REL_L2, EXACT, FP32, SCAN, assert_relative_l2, compare, first_nonfinite

__all__ = [
    "CHECKS",
    "CheckFunction",
    "CheckResult",
    "ContractError",
    "check_architecture",
    "check_bad_inputs",
    "check_batch_independence",
    "check_bf16_and_compile",
    "check_build",
    "check_causality",
    "check_forward",
    "check_gradients",
    "check_save_load",
    "check_stateful",
    "check_stochastic",
    "warm_up",
]

#: The contract's limits on a spec's tiny config (DESIGN §3).
TINY_MAX_PARAMETERS = 50_000
TINY_MAX_LAYERS = 2
TINY_MAX_IMAGE = 32
#: Environment variable naming the ``torch.compile`` backend of check 9 (``eager`` by default; the slow session may
#: use ``inductor``).
COMPILE_BACKEND_ENV = "EDIFICE_COMPILE_BACKEND"
#: Standard deviation of the parameter perturbation of the gradient check (breaks zero initialisations).
PERTURB_STD = 0.02


# -- 1. build ------------------------------------------------------------------------------------------------------
@contract_check("build", warm=("meta",))
def check_build(case: Case) -> None:
    """Builds through the registry (also on the meta device); the config round-trips through JSON; tiny is tiny."""
    cfg = case.config
    again = type(cfg).from_json(cfg.to_json())
    if again != cfg:
        case.fail(f"config does not round-trip through JSON: {cfg!r} came back as {again!r}")
    model = case.build()
    if not isinstance(model, nn.Module):
        case.fail(f"build returned {type(model).__name__}, not an nn.Module")
    if getattr(model, "config", None) != cfg:
        case.fail("the built module's .config is not the config it was built from")
    n_params = sum(p.numel() for p in model.parameters())
    if n_params > TINY_MAX_PARAMETERS:
        case.fail(f"the tiny config has {n_params:,} parameters; the contract allows {TINY_MAX_PARAMETERS:,}")
    n_layers = getattr(cfg, "n_layers", None)
    if isinstance(n_layers, int) and n_layers > TINY_MAX_LAYERS:
        case.fail(f"the tiny config has n_layers={n_layers}; the contract allows {TINY_MAX_LAYERS}")
    image = getattr(cfg, "image_size", None)
    sizes = image if isinstance(image, tuple) else (image,)
    if any(isinstance(s, int) and s > TINY_MAX_IMAGE for s in sizes):
        case.fail(f"the tiny config has image_size={image}; the contract allows {TINY_MAX_IMAGE}x{TINY_MAX_IMAGE}")

    from edifice.registry import build

    meta = build(cfg, device="meta")
    expected = {n: tuple(t.shape) for n, t in _tensors(model).items()}
    got = {n: tuple(t.shape) for n, t in _tensors(meta).items()}
    if got != expected:
        diff = sorted(set(got.items()) ^ set(expected.items()))
        case.fail(f"the meta-device build differs from the CPU build in {diff[:5]}")
    off_meta = [n for n, t in _tensors(meta).items() if t.device.type != "meta"]
    if off_meta:
        case.fail(f"built on device='meta', these tensors are not on meta: {', '.join(off_meta[:5])}")


# -- 2. forward ----------------------------------------------------------------------------------------------------
@contract_check("forward")
def check_forward(case: Case) -> None:
    """Eval forward at batch 1 and 3 (and with float data inputs zero): declared shapes, finite; no state changes."""
    model = case.build().eval()
    before = _snapshot(model)
    with torch.no_grad():
        for batch_size in (1, 3):
            inputs = case.inputs(batch_size)
            outputs = case.outputs(case.call(model, inputs))
            case.check_outputs(outputs, batch_size, label=f"batch {batch_size}")
            zeroed = _zero_data_inputs(case, inputs)
            if zeroed:
                outputs = case.outputs(case.call(model, {**inputs, **zeroed}))
                label = f"batch {batch_size}, {', '.join(sorted(zeroed))} set to zero"
                case.check_outputs(outputs, batch_size, label=label)
    changed = _changes(before, _snapshot(model))
    if changed:
        case.fail("an eval forward changed model state: " + "; ".join(changed))


def _zero_data_inputs(case: Case, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Zeros for the unbounded float inputs that carry data (conditioning, masks and indices keep their values)."""
    specs = case.input_specs()
    out = {}
    for key, value in inputs.items():
        domain = parse_domain(specs[key].domain)
        unbounded_float = value.is_floating_point() and domain.kind == "float" and domain.low is None
        if unbounded_float and key not in CONDITIONING_INPUTS:
            out[key] = torch.zeros_like(value)
    return out


# -- 3. gradients --------------------------------------------------------------------------------------------------
@contract_check("gradients", warm=("autograd",))
def check_gradients(case: Case) -> None:
    """Train-mode gradients are finite; after an N(0, 0.02^2) perturbation every trainable parameter gets one."""
    model = case.build().train()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not trainable:
        case.skip("the model has no trainable parameters")
    exempt = dict(case.spec.grad_exempt)
    stale = [glob for glob in exempt if not any(fnmatch.fnmatchcase(n, glob) for n in trainable)]
    if stale:
        case.fail(f"grad_exempt globs match no trainable parameter: {', '.join(stale)}")
    inputs = case.inputs(2)

    _backward(case, model, inputs)
    bad = []
    for n, p in trainable.items():
        if p.grad is not None and (found := first_nonfinite(p.grad)) is not None:
            bad.append(f"'{n}' ({found[0]} of {p.grad.numel()} not finite)")
    if bad:
        case.fail("non-finite gradients: " + ", ".join(bad))

    # Zero initialisations (adaLN-Zero, LoRA's B) legitimately block gradients at init; a small perturbation
    # of every parameter removes them, so that a parameter without a gradient afterwards is truly disconnected.
    model.zero_grad(set_to_none=True)
    generator = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
                p.add_(noise.to(p.device, p.dtype) * PERTURB_STD)
    _backward(case, model, inputs)
    missing, zero = [], []
    for n, p in trainable.items():
        if any(fnmatch.fnmatchcase(n, glob) for glob in exempt):
            continue
        if p.grad is None:
            missing.append(n)
        elif not bool(p.grad.ne(0).any()):
            zero.append(n)
    problems = []
    if missing:
        problems.append(f"no gradient (not connected to the outputs): {', '.join(missing)}")
    if zero:
        problems.append(f"an all-zero gradient: {', '.join(zero)}")
    if problems:
        case.fail("after perturbing every parameter by N(0, 0.02^2), parameters with " + "; ".join(problems))
    if exempt:
        case.notes.append("grad_exempt: " + "; ".join(f"{g} ({r})" for g, r in exempt.items()))


def _backward(case: Case, model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> None:
    """Backward of sum_leaf <leaf, R_leaf> (R seeded Gaussian) plus ``aux_loss``, over every floating output leaf."""
    out = case.call(model, inputs)
    named = case.outputs(out)
    aux = named.get(AUX_LOSS)
    generator = torch.Generator().manual_seed(SEED)
    terms = []
    for _path, leaf in tensor_leaves(out):
        if leaf is aux or not leaf.is_floating_point() or not leaf.requires_grad:
            continue
        r = torch.randn(leaf.shape, generator=generator, dtype=torch.float32).to(leaf.device)
        terms.append((leaf.float() * r).sum())
    if aux is not None and aux.requires_grad:
        terms.append(aux.float().sum())
    if not terms:
        case.fail("no floating output depends on the parameters (nothing to differentiate)")
    torch.autograd.backward(torch.stack(terms).sum())


# -- 4. batch independence -----------------------------------------------------------------------------------------
@contract_check("batch_independence")
def check_batch_independence(case: Case) -> None:
    """Changing sample j leaves every other sample's outputs unchanged (eval)."""
    batch_size, j = 3, 1
    model = case.build().eval()
    inputs = case.inputs(batch_size)
    fresh = case.inputs(batch_size, seed=SEED + 1)
    perturbed = dict(inputs)
    in_specs = case.input_specs()
    for key, value in inputs.items():
        if case.spec.layout == "graph" and not value.is_floating_point():
            continue  # graph structure (edge_index, batch) stays; node and edge features change
        if value.dtype == torch.bool:
            continue
        found = case.sample_ids(in_specs[key], inputs, batch_size)
        if found is not None:
            axis, ids = found
            perturbed[key] = torch.where(_along(ids == j, axis, value.dim()), fresh[key], value)
    with torch.no_grad():
        base = case.outputs(case.call(model, inputs))
        moved = case.outputs(case.call(model, perturbed))
    out_specs = case.output_specs()
    checked = 0
    for key, value in base.items():
        ts = out_specs.get(key)
        if ts is None:
            continue
        if case.spec.batch_coupled and case.axes(ts, "B", batch_size) != [0]:
            case.notes.append(f"output '{key}' not compared: batch_coupled ({case.reason('batch_coupled')})")
            continue
        found = case.sample_ids(ts, inputs, batch_size)
        if found is None:
            continue
        axis, ids = found
        keep = torch.nonzero(ids != j).flatten()
        what = f"output '{key}' of the other samples changed when sample {j} changed"
        compare_or_fail(case, moved[key].index_select(axis, keep), value.index_select(axis, keep), FP32, what)
        checked += 1
    if not checked:
        case.fail("no output has a per-sample axis (B, or N/E in the graph layout), so independence cannot be checked")


def _along(mask: torch.Tensor, axis: int, ndim: int) -> torch.Tensor:
    """Reshape a 1-D mask so that it broadcasts along ``axis`` of an ``ndim``-dimensional tensor."""
    shape = [1] * ndim
    shape[axis] = mask.shape[0]
    return mask.reshape(shape)


# -- 5. save / load ------------------------------------------------------------------------------------------------
@contract_check("save_load", warm=("meta",))
def check_save_load(case: Case) -> None:
    """save -> load gives identical outputs and tied weights; a file with one mis-shaped tensor is refused."""
    import edifice

    model = case.build().eval()
    inputs = case.inputs(2)
    with torch.no_grad():
        expected = case.outputs(case.call(model, inputs))
    with tempfile.TemporaryDirectory(prefix="edifice-contract-") as tmp:
        path = Path(tmp) / "model.safetensors"
        edifice.save(model, path)
        # Load under another seed: state that lives outside the checkpoint and is re-drawn on load shows up.
        torch.manual_seed(SEED + 12345)
        loaded = edifice.load(path, device=case.device).eval()
        if type(loaded) is not type(model):
            case.fail(f"load returned {type(loaded).__name__}, saved {type(model).__name__}")
        if getattr(loaded, "config", None) != case.config:
            case.fail("the loaded model's config differs from the saved one")
        if _tie_groups(loaded) != _tie_groups(model):
            case.fail(f"tied weights not restored: saved {_tie_groups(model)}, loaded {_tie_groups(loaded)}")
        with torch.no_grad():
            got = case.outputs(case.call(loaded, inputs))
        for key, value in expected.items():
            compare_or_fail(case, got[key], value, EXACT, f"output '{key}' after save -> load")
        _check_misshaped_file(case, path, Path(tmp) / "bad.safetensors")


def _check_misshaped_file(case: Case, path: Path, bad_path: Path) -> None:
    """Rewrite the checkpoint with one tensor one row larger; loading it must raise a CheckpointError naming it."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    import edifice
    from edifice.io import checksum

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a Mapping
    if not tensors:
        case.notes.append("no tensors saved; mis-shaped file not checked")
        return
    key = sorted(tensors)[0]
    t = tensors[key]
    tensors[key] = torch.cat([t, t[:1]]) if t.dim() and t.shape[0] else torch.zeros(2, dtype=t.dtype)
    # A deliberate edit, not damage: the checksum is updated, so that the shape report is what fails the load.
    metadata["edifice.checksum"] = checksum(metadata, tensors)
    save_file(tensors, str(bad_path), metadata=metadata)
    try:
        edifice.load(bad_path)
    except CheckpointError as exc:
        if key not in str(exc):
            case.fail(f"loading a file with a mis-shaped '{key}' raised a CheckpointError that does not name it: {exc}")
        return
    except Exception as exc:
        case.fail(f"loading a file whose '{key}' has the wrong shape raised {type(exc).__name__}, not CheckpointError")
    case.fail(f"loading a file whose '{key}' has shape {list(tensors[key].shape)} (saved {list(t.shape)}) succeeded")


def _tie_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names that share one tensor, for every group of more than one."""
    groups: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(n)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


# -- 6. bad inputs -------------------------------------------------------------------------------------------------
@contract_check("bad_inputs")
def check_bad_inputs(case: Case) -> None:
    """Wrong rank, feature size, dtype and out-of-range values raise InputError in the standard format."""
    model = case.build().eval()
    inputs = case.inputs(2)
    env = case.env(2)
    problems: list[str] = []
    for key, ts in case.input_specs().items():
        if key not in inputs:
            continue
        for label, bad in _bad_values(case, ts, inputs[key], env):
            problem = _expect_input_error(case, model, {**inputs, key: bad}, key)
            if problem:
                problems.append(f"input '{key}' with {label}: {problem}")
    if problems:
        case.fail("; ".join(problems))


def _bad_values(
    case: Case, ts: TensorSpec, value: torch.Tensor, env: Mapping[str, Any]
) -> list[tuple[str, torch.Tensor]]:
    """Labelled corruptions of one valid input: rank, a config-set size, dtype, values outside the domain."""
    out = [("an extra leading dimension", value.unsqueeze(0))]
    fields = set(case.config.field_names())
    present = [dim for dim in ts.shape if evaluate(dim, env) is not None]
    # A dimension set by the config alone (a feature size such as d_in), not by a symbol such as B or T.
    fixed = [axis for axis, dim in enumerate(present) if not names_in(dim) - fields]
    if fixed:
        axis = fixed[0]
        grown = torch.cat([value, value.narrow(axis, 0, 1)], dim=axis)
        out.append((f"size {value.shape[axis] + 1} on axis {axis}", grown))
    wrong = torch.int64 if value.is_floating_point() else torch.float32
    out.append((f"dtype {str(wrong).removeprefix('torch.')}", value.to(wrong)))
    domain = parse_domain(ts.domain)
    # The validator can only check bounds it can evaluate: config fields and symbols that some input's shape fixes
    # (B bounds a graph's `batch` vector, but no graph input has a B axis).
    bound = fields | {d for spec in case.input_specs().values() for d in spec.shape if str(d).isidentifier()}
    checkable = domain.low is not None and not (names_in(domain.low) | names_in(domain.high or "0")) - bound
    low, high = domain.bounds(env) if checkable else (None, None)
    if low is not None and high is not None and value.numel():  # bounds may apply under some configs only
        above = high + 1 if domain.high_inclusive or domain.kind == "float" else high
        for label, v in (("a value above its domain", above), ("a value below its domain", low - 1)):
            bad = value.clone()
            bad.view(-1)[0] = v
            out.append((label, bad))
    return out


def _expect_input_error(case: Case, model: nn.Module, inputs: Mapping[str, torch.Tensor], key: str) -> str | None:
    """``None`` when the call raises InputError in the standard format, else what went wrong."""
    prefix = f"{case.name}: input '{key}' expected"
    try:
        with torch.no_grad():
            case.call(model, inputs)
    except InputError as exc:
        return None if str(exc).startswith(prefix) else f"the InputError message {str(exc)!r} does not start {prefix!r}"
    except Exception as exc:
        return f"raised {type(exc).__name__} ({first_lines(exc, 1)}) instead of edifice.InputError"
    return "accepted silently"


# -- 7. causality --------------------------------------------------------------------------------------------------
@contract_check("causality")
def check_causality(case: Case) -> None:
    """Perturbing inputs at positions > t leaves every output at positions <= t unchanged (eval)."""
    if not case.spec.causal:
        case.skip("not causal (spec.causal is False)")
    model = case.build().eval()
    inputs, fresh = case.inputs(2), case.inputs(2, seed=SEED + 1)
    n_steps = case.dims(2)["T"]
    in_axes = {
        k: a
        for k, ts in case.input_specs().items()
        if k in inputs and inputs[k].dtype != torch.bool and (a := case.axis(ts, "T", 2)) is not None
    }
    out_axes = {k: a for k, ts in case.output_specs().items() if (a := case.axis(ts, "T", 2)) is not None}
    if not in_axes or not out_axes:
        case.fail("a causal entry needs a time axis (T) in its primary input and outputs; the tiny config has none")
    with torch.no_grad():
        base = case.outputs(case.call(model, inputs))
        positions = torch.arange(n_steps, device=case.device)
        for t in range(n_steps - 1):
            mixed = dict(inputs)
            for key, axis in in_axes.items():
                future = _along(positions > t, axis, inputs[key].dim())
                mixed[key] = torch.where(future, fresh[key], inputs[key])
            out = case.outputs(case.call(model, mixed))
            for key, axis in out_axes.items():
                if key in base:
                    what = f"output '{key}' at positions <= {t} changed when inputs at positions > {t} changed"
                    compare_or_fail(case, out[key].narrow(axis, 0, t + 1), base[key].narrow(axis, 0, t + 1), FP32, what)


# -- 8. stateful and variable length -------------------------------------------------------------------------------
@contract_check("stateful")
def check_stateful(case: Case) -> None:
    """Prefill + step equals forward (dynamic and static state); padded + mask equals unpadded; packed equals padded."""
    if not (case.spec.stateful or case.spec.variable_length):
        case.skip("neither stateful nor variable_length")
    model = case.build().eval()
    with torch.no_grad():
        if case.spec.stateful:
            for max_len in (None, case.dims(2)["T"]):
                _check_steps(case, model, max_len)
        else:
            case.notes.append("not stateful: step not checked")
        if case.spec.variable_length:
            _check_variable_length(case, model)
        else:
            case.notes.append("not variable_length: padding not checked")


def _check_steps(case: Case, model: nn.Module, max_len: int | None) -> None:
    """Prefill the first half, then step one position at a time; compare with forward at every position."""
    init_state: Any = getattr(model, "init_state", None)
    step: Any = getattr(model, "step", None)
    if not (callable(init_state) and callable(step)):
        case.fail("stateful entries implement init_state() and step() (see docs/design/conventions.md)")
    key = case.primary_input()
    ts = case.input_specs()[key]
    inputs = case.inputs(2)
    axis = case.axis(ts, "T", 2)
    if axis is None:
        case.fail(f"the primary input '{key}' has no time axis (T)")
    n_steps = inputs[key].shape[axis]
    # Other per-position inputs that step takes (e.g. a modality id per token) are sliced like the primary input.
    specs = case.input_specs()
    extras = {k: a for k in inputs if k != key and accepts(step, k) and (a := case.axis(specs[k], "T", 2)) is not None}
    full = case.outputs(case.call(model, inputs))
    out_axes = {k: a for k, ts in case.output_specs().items() if k in full and (a := case.axis(ts, "T", 2)) is not None}
    if not out_axes:
        case.fail("stateful entries need per-position outputs (output='all') in their tiny config")
    state = init_state(2, max_len=max_len, device=case.device)
    shapes = _state_shapes(case, state)
    prefill = max(1, n_steps // 2)
    chunks = [(0, prefill)] + [(t, 1) for t in range(prefill, n_steps)]
    pieces: dict[str, list[torch.Tensor]] = {k: [] for k in out_axes}
    label = "static state (max_len given)" if max_len else "dynamic state"
    for start, length in chunks:
        sliced = {k: inputs[k].narrow(a, start, length) for k, a in extras.items()}
        y, state = step(inputs[key].narrow(axis, start, length), state, **sliced)
        named = case.outputs(y, what="step")
        for k in out_axes:
            pieces[k].append(named[k])
        if max_len is not None and _state_shapes(case, state) != shapes:
            case.fail(f"{label}: step changed the state's shapes from {shapes} to {_state_shapes(case, state)}")
    for k, a in out_axes.items():
        stepped = torch.cat(pieces[k], dim=a)
        what = f"output '{k}' from prefill ({prefill} positions) + step, {label}, against forward"
        compare_or_fail(case, stepped, full[k], SCAN, what)


def _state_shapes(case: Case, state: Any) -> dict[str, tuple[int, ...]]:
    leaves = {path: tuple(t.shape) for path, t in tensor_leaves(state)}
    if not leaves:
        case.fail(f"init_state returned {type(state).__name__} without tensors; expected a @model_output dataclass")
    return leaves


def _check_variable_length(case: Case, model: nn.Module) -> None:
    """Right padding with ``attention_mask`` equals running each sequence alone; packing equals padding."""
    specs = case.input_specs()
    if "attention_mask" not in specs:
        case.fail("variable_length entries take an 'attention_mask' input; the spec declares none")
    inputs = case.inputs(2)
    n_steps = case.dims(2)["T"]
    lengths = (n_steps, max(1, n_steps - 3))
    mask_shape = resolve_shape(specs["attention_mask"], case.config, case.dims(2))
    mask = torch.ones(mask_shape, dtype=torch.bool, device=case.device)
    mask[1, lengths[1] :] = False
    padded = case.outputs(case.call(model, {**inputs, "attention_mask": mask}))
    out_specs = case.output_specs()
    for b, length in enumerate(lengths):
        alone = {}
        for key, value in inputs.items():
            b_axis, t_axis = case.axis(specs[key], "B", 2), case.axis(specs[key], "T", 2)
            v = value.narrow(b_axis, b, 1) if b_axis is not None else value
            alone[key] = v.narrow(t_axis, 0, length) if t_axis is not None else v
        ref = case.outputs(case.call(model, alone))
        for key, value in padded.items():
            ts = out_specs.get(key)
            if ts is None or case.axes(ts, "B", 2) != [0]:
                continue  # no batch axis (aux_loss) or several ([B, B] similarities): not one sample's output
            t_axis = case.axis(ts, "T", 2)
            got = value.narrow(0, b, 1)
            got = got.narrow(t_axis, 0, length) if t_axis is not None else got
            what = f"output '{key}' of sample {b} (length {length}) padded to {n_steps} with a mask, against alone"
            compare_or_fail(case, got, ref[key], SCAN, what)
    if "cu_seqlens" in specs:
        _check_packed(case, model, inputs, lengths, padded)


def _check_packed(
    case: Case,
    model: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    lengths: tuple[int, ...],
    padded: Mapping[str, torch.Tensor],
) -> None:
    """Sequences packed back to back with ``cu_seqlens`` give the padded run's outputs at the valid positions."""
    specs = case.input_specs()
    key = case.primary_input()
    t_axis = case.axis(specs[key], "T", 2)
    if t_axis is None:
        case.fail(f"the primary input '{key}' has no time axis (T) to pack along")
    x = inputs[key]
    packed = torch.cat([x[b : b + 1].narrow(t_axis, 0, n) for b, n in enumerate(lengths)], dim=t_axis)
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    cu_dtype = {"int32": torch.int32, "int64": torch.int64}.get(specs["cu_seqlens"].dtype, torch.int32)
    cu_seqlens = torch.tensor(offsets, dtype=cu_dtype, device=case.device)
    out = case.outputs(case.call(model, {key: packed, "cu_seqlens": cu_seqlens}))
    for k, ts in case.output_specs().items():
        axis = case.axis(ts, "T", 2)
        if axis is None or k not in out:
            continue
        for b, n in enumerate(lengths):
            got = out[k].narrow(axis, offsets[b], n)
            want = padded[k][b : b + 1].narrow(axis, 0, n)
            compare_or_fail(case, got, want, SCAN, f"output '{k}' of packed sequence {b} against padded")


# -- 9. bf16 and compile -------------------------------------------------------------------------------------------
@contract_check("bf16_and_compile", warm=("autocast", "compile"))
def check_bf16_and_compile(case: Case) -> None:
    """bf16 autocast within a relative L2 of 2e-2 of fp32; ``torch.compile(fullgraph=True)`` runs and agrees."""
    model = case.build().eval()
    inputs = case.inputs(2)
    with torch.no_grad():
        reference = case.outputs(case.call(model, inputs))
        with torch.autocast(case.device.type, dtype=torch.bfloat16):
            low = case.outputs(case.call(model, inputs), what="forward under bf16 autocast")
    for key, value in reference.items():
        if value.is_floating_point():
            try:
                assert_relative_l2(low[key].float(), value.float(), BF16_REL_L2, name=f"output '{key}' under bf16")
            except AssertionError as exc:
                case.fail(str(exc))
    if not case.spec.compile_fullgraph:
        case.notes.append(f"compile not checked: compile_fullgraph is False ({case.reason('no_compile_fullgraph')})")
        return
    backend = os.environ.get(COMPILE_BACKEND_ENV, "eager")
    torch._dynamo.reset()  # a fresh cache: earlier checks must not push this model past the recompile limit
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    try:
        with torch.no_grad(), _line_tracer_paused():
            out = case.outputs(compiled(**inputs), what="the compiled forward")
    except ContractError:
        raise
    except Exception as exc:
        call = f"torch.compile(fullgraph=True, backend={backend!r})"
        case.fail(f"{call} failed: {type(exc).__name__}: {first_lines(exc, 3)}")
    if case.spec.stochastic_eval:
        case.notes.append("compiled outputs not compared: stochastic_eval (the compiled call takes no generator)")
        return
    for key, value in reference.items():
        what = f"output '{key}' of the model compiled with backend={backend!r} against eager"
        compare_or_fail(case, out[key], value, FP32 if backend == "eager" else SCAN, what)


@contextlib.contextmanager
def _line_tracer_paused() -> Iterator[None]:
    """Pause a line tracer (coverage, a debugger) while TorchDynamo traces and runs the compiled model.

    Dynamo interprets the model's bytecode symbolically, so a tracer never sees the model's lines execute; it only
    intercepts Dynamo's own calls (about two million for a tiny two-layer model), which made the compile check time
    the tracer rather than the model (40% slower under ``--cov``). Pausing it loses no coverage.
    """
    tracer = sys.gettrace()
    sys.settrace(None)
    try:
        yield
    finally:
        sys.settrace(tracer)


# -- 10. stochastic ------------------------------------------------------------------------------------------------
@contract_check("stochastic")
def check_stochastic(case: Case) -> None:
    """Random draws come from a seeded ``generator`` (sample, forward, loss): same seed, same draws."""
    if not case.spec.stochastic:
        case.skip("not stochastic (spec.stochastic is False)")
    model = case.build().eval()
    inputs = case.inputs(2)
    checked = []
    sample = getattr(model, "sample", None)
    if callable(sample):
        kwargs = _sample_kwargs(sample, inputs)
        _check_draws(case, "sample()", lambda g: sample(2, generator=g, **kwargs), must_vary=True)
        checked.append("sample")
    if accepts(model.forward, "generator"):
        _check_draws(case, "forward()", lambda g: case.call(model, inputs, generator=g), must_vary=False)
        checked.append("forward")
    loss = getattr(model, "loss", None)
    if callable(loss) and accepts(loss, "generator"):
        _check_draws(case, "loss()", lambda g: loss(dict(inputs), generator=g), must_vary=False)
        checked.append("loss")
    if not checked:
        case.fail("stochastic entries take a `generator` keyword in sample(), forward() or loss(); none does")
    case.notes.append("checked " + ", ".join(checked))


def _sample_kwargs(sample: Callable[..., Any], inputs: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``steps=2`` and the conditioning inputs that ``sample`` names (or all of them when it takes ``**cond``)."""
    import inspect

    params = inspect.signature(sample).parameters
    kwargs: dict[str, Any] = {"steps": 2} if "steps" in params else {}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key, value in inputs.items():
        if key in params or (var_kw and key in CONDITIONING_INPUTS | {"class_labels"}):
            kwargs[key] = value
    return kwargs


def _check_draws(case: Case, what: str, draw: Callable[[torch.Generator], Any], *, must_vary: bool) -> None:
    """Equal draws for equal generator seeds whatever the global RNG; with ``must_vary``, other seeds differ."""

    def run(seed: int, global_seed: int) -> list[tuple[str, torch.Tensor]]:
        torch.manual_seed(global_seed)
        with torch.no_grad():
            return list(tensor_leaves(draw(torch.Generator(case.device).manual_seed(seed))))

    first, second = run(SEED, 1), run(SEED, 2)
    if not first:
        case.fail(f"{what} returned no tensors")
    for (path, a), (_, b) in zip(first, second, strict=True):
        mismatch = compare(a.float(), b.float(), EXACT) if a.shape == b.shape else f"shapes {a.shape} != {b.shape}"
        if mismatch is not None:
            case.fail(
                f"{what} is not deterministic given a seeded generator (it draws from the global RNG?): "
                f"output{path}: {mismatch}"
            )
    if must_vary:
        other = run(SEED + 1, 1)
        if all(a.shape == b.shape and torch.equal(a, b) for (_, a), (_, b) in zip(first, other, strict=True)):
            case.fail(f"{what} gives the same result for different generator seeds: the generator is ignored")


# -- helpers -------------------------------------------------------------------------------------------------------
def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in _tensors(model).items()}


def _changes(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]) -> list[str]:
    out = [f"'{n}' was added" for n in after if n not in before]
    out += [f"'{n}' was removed" for n in before if n not in after]
    for n, old in before.items():
        new = after.get(n)
        if new is None:
            continue
        if new.shape != old.shape:
            out.append(f"'{n}' changed shape from {list(old.shape)} to {list(new.shape)}")
        elif not torch.equal(new, old):
            out.append(f"'{n}' changed: {compare(new.float(), old.float(), EXACT)}")
    return out


#: The ten checks of DESIGN §8, in order, by name.
CHECKS: dict[str, CheckFunction] = {
    "build": check_build,
    "forward": check_forward,
    "gradients": check_gradients,
    "batch_independence": check_batch_independence,
    "save_load": check_save_load,
    "bad_inputs": check_bad_inputs,
    "causality": check_causality,
    "stateful": check_stateful,
    "bf16_and_compile": check_bf16_and_compile,
    "stochastic": check_stochastic,
}


def check_architecture(
    name: str,
    checks: Iterable[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
) -> dict[str, CheckResult]:
    """Run the contract's checks (all by default) on ``name``; raise one AssertionError listing every failure.

    Returns the result of each check that passed or skipped (a skip's reason is in its ``notes``).
    """
    selected = list(CHECKS) if checks is None else list(checks)
    unknown = [c for c in selected if c not in CHECKS]
    if unknown:
        raise ValueError(f"unknown contract checks {unknown}; valid checks: {', '.join(CHECKS)}")
    results: dict[str, CheckResult] = {}
    failures: list[str] = []
    for check in selected:
        start = time.perf_counter()
        try:
            results[check] = CHECKS[check](name, overrides=overrides, device=device)
        except pytest.skip.Exception as exc:
            reason = str(exc.msg).removeprefix(f"{check}: ")
            results[check] = CheckResult(name, check, "skipped", time.perf_counter() - start, (reason,))
        except AssertionError as exc:
            failures.append(str(exc))
    if failures:
        listing = "\n".join(f"- {f}" for f in failures)
        raise ContractError(f"{name}: {len(failures)} of {len(selected)} contract checks failed:\n{listing}")
    return results
