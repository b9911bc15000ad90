"""``edifice summary NAME``: parameter counts, input/output shapes and FLOPs of one configuration.

Unlike the other built-in commands this one builds the model, so it imports torch -- inside :func:`summarize`,
never at module level, so that the CLI can register it without paying for torch.

Where its time goes (``edifice summary mamba``, measured with ``python -X importtime``): importing torch, then the
FLOP count -- ``torch.utils.flop_counter`` runs the forward under a dispatch mode, whose first use imports
``torch._dynamo`` (more than torch itself); building and running a default-size model are a fraction of a second.
So on a terminal the command says what it is waiting for, and ``--no-flops`` skips the count.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from edifice.cli.commands import Command, UsageError
from edifice.cli.output import fmt_count, fmt_shape, key_values, section, table, to_json
from edifice.errors import EdificeError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["COMMAND", "parse_assignment", "render", "summarize"]


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE``; the value is read as a JSON literal (``64``, ``0.1``, ``true``, ``null``, ``[2, 2]``)
    and falls back to the plain string (``output=last``)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def _dimension(text: str) -> tuple[str, int]:
    key, value = parse_assignment(text)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise argparse.ArgumentTypeError(f"expected SYMBOL=N with a positive integer N, got {text!r}")
    return key, value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="registry name of the architecture")
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        type=parse_assignment,
        default=[],
        help="override a config field (repeatable); VALUE is read as JSON (64, 0.1, true, null, [2, 2]) or as a string",
    )
    parser.add_argument("--tiny", action="store_true", help="start from the architecture's tiny test config")
    parser.add_argument("--batch-size", type=_positive_int, default=2, metavar="N", help="batch size (default 2)")
    parser.add_argument(
        "--dim",
        dest="dims",
        metavar="SYMBOL=N",
        action="append",
        type=_dimension,
        default=[],
        help="size of a shape symbol of the example inputs, e.g. T=128 (repeatable)",
    )
    parser.add_argument(
        "--no-flops", dest="flops", action="store_false", help="skip the FLOP count (its first use takes seconds)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _say(step: str) -> None:
    print(f"edifice summary: {step} ...", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    result = summarize(
        args.name,
        dict(args.overrides),
        tiny=args.tiny,
        batch_size=args.batch_size,
        dims=dict(args.dims),
        flops=args.flops,
        progress=_say if sys.stderr.isatty() else None,
    )
    print(to_json(result) if args.json else render(result))
    return 0


def summarize(
    name: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    tiny: bool = False,
    batch_size: int = 2,
    dims: Mapping[str, int] | None = None,
    flops: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build ``name`` with ``overrides``, run one eval forward on example inputs and describe it (JSON-native).

    ``flops=False`` skips the FLOP count (``None`` in the result); ``progress(step)`` is told each slow step.
    """
    say = progress or (lambda step: None)
    say("importing torch")
    import torch

    from edifice.api import example_inputs
    from edifice.inputs import active_specs
    from edifice.registry import build, config, get_spec
    from edifice.shapes import names_in

    spec = get_spec(name)
    cfg = config(name, **{**(spec.tiny if tiny else {}), **(overrides or {})})
    symbols = {n for ts in active_specs(spec.inputs, cfg).values() for d in ts.shape for n in names_in(d)}
    symbols -= {*cfg.field_names(), "B"}
    for symbol in dims or {}:
        if symbol not in symbols:
            used = ", ".join(sorted(symbols)) or "-"
            raise UsageError(
                f"{name}: --dim {symbol} is not a dimension of its inputs, which use {used}"
                + (" (the batch size is --batch-size)" if symbol == "B" else "")
            )
    say(f"building {name}")
    model = build(cfg).eval()
    inputs = example_inputs(model, batch_size, generator=torch.Generator().manual_seed(0), **(dims or {}))
    if flops:
        say("counting FLOPs (its first use imports torch._dynamo; --no-flops skips it)")
        output, count = _forward(model, inputs)
    else:
        with torch.no_grad():
            output, count = model(**inputs), None
    parameters = list(model.parameters())  # each shared (tied) parameter once
    return {
        "arch": name,
        "model": type(model).__name__,
        "config": cfg.to_dict(),
        "batch_size": batch_size,
        "parameters": sum(p.numel() for p in parameters),
        "trainable": sum(p.numel() for p in parameters if p.requires_grad),
        "buffers": sum(b.numel() for b in model.buffers()),
        "flops": count,
        "inputs": {key: _describe(tensor) for key, tensor in inputs.items()},
        "outputs": _outputs(output, list(active_specs(spec.outputs, cfg))),
        "modules": _modules(model),
    }


def _outputs(output: Any, declared: list[str]) -> dict[str, dict[str, Any]]:
    """Each output tensor by field name; a bare tensor takes the spec's name for it when only one is declared."""
    import torch

    from edifice.outputs import tensor_leaves

    if isinstance(output, torch.Tensor):
        return {declared[0] if len(declared) == 1 else "output": _describe(output)}
    return {path.lstrip("."): _describe(tensor) for path, tensor in tensor_leaves(output)}


def _modules(model: nn.Module) -> list[dict[str, Any]]:
    """Parameters per top-level child (a shared parameter counts in each child using it), then the model's own."""
    rows = [
        {"name": name, "type": type(child).__name__, "parameters": sum(p.numel() for p in child.parameters())}
        for name, child in model.named_children()
    ]
    own = sum(p.numel() for p in model.parameters(recurse=False))
    if own:
        rows.append({"name": "(own parameters)", "type": type(model).__name__, "parameters": own})
    return rows


def _forward(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> tuple[Any, int | None]:
    """The eval forward's output and its FLOPs as ``torch.utils.flop_counter`` counts them (``None`` if it cannot)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad():
        try:
            with FlopCounterMode(display=False) as counter:
                output = model(**inputs)
            return output, int(counter.get_total_flops())
        except EdificeError:
            raise
        except Exception:
            # The counter runs every op through a dispatch mode, which some kernels (custom ops without a flop
            # rule, host callbacks) cannot take. FLOPs are best effort; shapes come from a plain forward.
            return model(**inputs), None


def _describe(tensor: torch.Tensor) -> dict[str, Any]:
    return {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}


def render(result: Mapping[str, Any]) -> str:
    """The table ``edifice summary`` prints for a :func:`summarize` result."""
    head = key_values(
        [
            ("parameters", fmt_count(result["parameters"])),
            ("trainable", fmt_count(result["trainable"])),
            ("buffers", fmt_count(result["buffers"])),
            ("FLOPs", fmt_count(result["flops"])),
        ]
    )

    def tensors(entries: Mapping[str, Any]) -> str:
        rows = [(key, fmt_shape(t["shape"]), t["dtype"]) for key, t in entries.items()]
        return table(("NAME", "SHAPE", "DTYPE"), rows, indent="  ")

    modules = [(m["name"], m["type"], fmt_count(m["parameters"])) for m in result["modules"]]
    return "\n".join(
        [
            f"{result['arch']} ({result['model']}), batch size {result['batch_size']}\n",
            head,
            section("inputs", tensors(result["inputs"])),
            section("outputs", tensors(result["outputs"])),
            section("modules", table(("NAME", "TYPE", "PARAMETERS"), modules, right=(2,), indent="  ")),
        ]
    )


COMMAND = Command("summary", "build one configuration and show parameters, shapes and FLOPs", _configure, _run)
