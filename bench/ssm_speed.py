"""Speed of the SSM entries, side by side in one process (DESIGN §10; the edifice-ssm issue's benchmark).

Two cases::

    python bench/ssm_speed.py cpu [--out DIR]   # Mamba-2 (mamba_ssd), 2 layers, d_model 256, B=4, T=1024, forward +
                                                # backward: the chunked SSD op (chunks of 256 and 64) against the same
                                                # model with the SSD op swapped for its per-timestep recurrence
                                                # (``ssd_naive``)
    python bench/ssm_speed.py gpu [--out DIR]   # mamba and mamba_ssd, 2 layers, d_model 1024, B=8, T=2048, against
                                                # transformers' own pure-PyTorch MambaModel / Mamba2Model paths

On the GPU both sides hold the same weights (mapped by the converters users get) and their outputs are compared
before timing; times are ``triton.testing.do_bench`` medians, memory is the peak allocated by one call. transformers'
Mamba runs its default sequential scan (``use_mambapy=False``) and, when the ``mambapy`` package is installed, its
``mamba.py`` parallel scan (``use_mambapy=True``; without that package the flag falls back to the sequential scan, so
the row is skipped). A call that runs out of memory is recorded as such. Without the ``mamba_ssm``/``causal_conv1d``
CUDA packages both transformers models take their pure-PyTorch paths, which is what they are compared against here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

from harness import Results, cpu_ms, gpu_ms, peak_mib

import edifice
from edifice import ops
from edifice.ops.ssd import ssd_naive


def train_step(
    model: torch.nn.Module, x: torch.Tensor, call: Callable[[torch.Tensor], torch.Tensor]
) -> Callable[[], None]:
    """A closure running forward + backward of ``sum(call(x))`` (gradients are zeroed by being set to None)."""

    def run() -> None:
        for p in model.parameters():
            p.grad = None
        call(x).float().sum().backward()

    return run


def bench_cpu(out: Path) -> None:
    """Mamba-2 forward + backward on the CPU: the chunked SSD (two chunk sizes) against its per-timestep recurrence.

    The chunk size changes only the speed (the result does not depend on it): 256, the default, suits GPUs; 64 does
    less O(C^2) intra-chunk work, which is what a CPU is short of.
    """
    results = Results("ssm_cpu", "Mamba-2 (mamba_ssd) forward + backward on the CPU, chunked SSD vs per-timestep scan")
    shape = "B=4 T=1024 d=256 L=2"
    x = torch.randn(4, 1024, 256)
    steps = {}
    for chunk in (256, 64):
        torch.manual_seed(0)
        model = edifice.build("mamba_ssd", d_model=256, n_layers=2, chunk_size=chunk)
        steps[chunk] = train_step(model, x, lambda t, m=model: m(x=t))
        results.add("mamba_ssd fwd+bwd", f"edifice chunked SSD, chunk {chunk}", shape, cpu_ms(steps[chunk], repeats=5))
    with ops.swap("ssd", ssd_naive):
        loop = cpu_ms(steps[256], repeats=2, warmup=1)
    results.add("mamba_ssd fwd+bwd", "per-timestep recurrence (ssd_naive)", shape, loop)
    for row in results.rows[:-1]:
        speedup = loop / row.ms
        row.extra["speed-up vs loop"] = round(speedup, 1)
        print(f"{row.impl}: {speedup:.1f}x faster than the per-timestep recurrence (target >= 10x)")
    results.write(out)


def _hf_mamba(d_model: int, n_layers: int, mambapy: bool) -> Any:
    import transformers

    config = transformers.MambaConfig(
        hidden_size=d_model, num_hidden_layers=n_layers, state_size=16, expand=2, conv_kernel=4, vocab_size=16,
        use_mambapy=mambapy, use_cache=False,
    )  # fmt: skip
    return transformers.MambaModel(config)


def _hf_mamba2(d_model: int, n_layers: int) -> Any:
    import transformers

    config = transformers.Mamba2Config(
        hidden_size=d_model, num_hidden_layers=n_layers, state_size=128, expand=2, head_dim=64,
        num_heads=2 * d_model // 64, n_groups=1, conv_kernel=4, chunk_size=256, vocab_size=16, use_cache=False,
    )  # fmt: skip
    return transformers.Mamba2Model(config)


def _edifice_from(name: str, hf: Any) -> torch.nn.Module:
    """A feature-input Edifice model holding ``hf``'s weights (the converter's key map, embeddings dropped)."""
    from edifice_ssm.convert_mamba import mamba_config, map_mamba_state_dict
    from edifice_ssm.convert_mamba2 import mamba2_config, map_mamba2_state_dict

    if name == "mamba":
        config: Any = mamba_config(hf.config, vocab_size=None, tie_embeddings=False)
        weights = map_mamba_state_dict(hf.state_dict(), config)
    else:
        config = mamba2_config(hf.config, vocab_size=None, tie_embeddings=False)
        weights = map_mamba2_state_dict(hf.state_dict(), config)
    model = edifice.registry.model_class(name)(config)
    weights.pop("embed_tokens.weight", None)
    weights.pop("lm_head.weight", None)
    model.load_state_dict(weights)
    return model


def _mambapy_available() -> bool:
    """Whether transformers' ``use_mambapy`` path can run (it needs the ``mambapy`` package's parallel scan)."""
    import importlib.util

    return importlib.util.find_spec("mambapy") is not None


def _measure(results: Results, case: str, impl: str, shape: str, fn: Callable[[], None], err: float) -> None:
    """Time ``fn`` and record its peak memory; an out-of-memory call is recorded as such (a finding, not a crash)."""
    try:
        ms = gpu_ms(fn, warmup_ms=50, rep_ms=200)
        peak: float | str = round(peak_mib(fn), 1)
    except torch.OutOfMemoryError:
        ms, peak = float("nan"), "out of memory"
    torch.cuda.empty_cache()
    results.add(case, impl, shape, ms, peak_mib=peak, rel_err=f"{err:.1e}")


def bench_gpu(out: Path, dtype: torch.dtype) -> None:
    """mamba / mamba_ssd against transformers' pure-PyTorch Mamba / Mamba2 at B=8, T=2048, d_model 1024."""
    label = str(dtype).removeprefix("torch.")
    results = Results(f"ssm_gpu_{label}", f"Mamba and Mamba-2 against transformers' PyTorch paths ({label})")
    B, T, D, L = 8, 2048, 1024, 2
    shape = f"B={B} T={T} d={D} L={L}"
    device = torch.device("cuda")
    x = torch.randn(B, T, D, device=device, dtype=dtype)
    pairs = [("mamba", "transformers MambaModel (sequential)", lambda: _hf_mamba(D, L, mambapy=False))]
    if _mambapy_available():
        pairs.append(("mamba", "transformers MambaModel (use_mambapy)", lambda: _hf_mamba(D, L, mambapy=True)))
    else:
        print("mambapy is not installed: transformers' use_mambapy path would run the sequential scan, skipped")
    pairs.append(("mamba_ssd", "transformers Mamba2Model (torch_forward)", lambda: _hf_mamba2(D, L)))
    built: dict[str, torch.nn.Module] = {}
    pairs_run = [(name, hf_label) for name, hf_label, _ in pairs]  # the pairs whose transformers side ran
    for name, hf_label, make in pairs:
        torch.manual_seed(0)
        hf = make().to(device=device, dtype=dtype)
        if name not in built:
            built[name] = _edifice_from(name, hf).to(device=device, dtype=dtype)
        ours = built[name]
        try:
            with torch.no_grad():
                want = hf(inputs_embeds=x).last_hidden_state.float()
        except RuntimeError as exc:  # a peer that cannot run this dtype is a finding, not a crash
            reason = f"fails: {str(exc).splitlines()[0][:80]}"
            print(f"{hf_label} ({label}) {reason}")
            for mode in ("forward", "fwd+bwd"):
                results.add(f"{name} {mode}", hf_label, shape, float("nan"), peak_mib=reason, rel_err="")
            pairs_run.remove((name, hf_label))
            want = None
        with torch.no_grad():
            got = ours(x=x).float()
        err = float("nan") if want is None else ((got - want).norm() / want.norm()).item()
        sides: list[tuple[str, torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]] = []
        if want is not None:
            sides.append((hf_label, hf, lambda t, m=hf: m(inputs_embeds=t).last_hidden_state))
        if not any(r.impl == f"edifice {name}" for r in results.rows):
            sides.insert(0, (f"edifice {name}", ours, lambda t, m=ours: m(x=t)))
        for impl, module, call in sides:

            def forward(call: Callable[[torch.Tensor], torch.Tensor] = call) -> None:
                with torch.no_grad():
                    call(x)

            _measure(results, f"{name} forward", impl, shape, forward, err)
            _measure(results, f"{name} fwd+bwd", impl, shape, train_step(module, x, call), err)
        del hf
        torch.cuda.empty_cache()
    for name, hf_label in pairs_run:
        for mode in ("forward", "fwd+bwd"):
            ratio = results.ratio(f"{name} {mode}", shape, hf_label, f"edifice {name}")
            print(f"{name} {mode}: edifice is {ratio:.2f}x the speed of {hf_label}")
    results.write(out)


def main() -> None:
    """Run the chosen case and write its tables and plots."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=("cpu", "gpu"))
    parser.add_argument("--out", default="bench-results", help="folder for the .json/.md/.png results")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="GPU case dtype")
    args = parser.parse_args()
    out = Path(args.out)
    if args.case == "cpu":
        bench_cpu(out)
    else:
        bench_gpu(out, getattr(torch, args.dtype))


if __name__ == "__main__":
    main()
