"""Low-rank adapters on the ``nn.Linear`` layers of any module: LoRA and DoRA, merge/unmerge, save/load, peft import.

LoRA (Hu et al. 2021, arXiv:2106.09685, eq. 3)::

    h = W x + (alpha / r) B A dropout(x),    A in R^{r x d_in} Kaiming-uniform,  B in R^{d_out x r} zero

so the adapted model starts as the base model. DoRA (Liu et al. 2024, arXiv:2402.09353, eq. 5) splits the adapted
weight into a magnitude ``m`` (one per output feature) and a direction::

    W' = m * (W + dW) / ||W + dW||_c,    dW = (alpha / r) B A,    m initialised to ||W||_c

where ``||.||_c`` is the norm of each output row of ``W [d_out, d_in]`` (the paper's column of ``W [d, k]``), treated
as a constant in the backward pass (§4.3). With dropout on the adapter input we follow peft's DoRA layer
(``peft/tuners/lora/dora.py``): ``h = W x + b + (m / n - 1) W x_d + (m / n) dW x_d`` with ``x_d = dropout(x)``, which
is ``W' x + b`` whenever dropout is inactive.

:func:`apply_adapter` replaces the matching layers in place by an adapter layer that holds the *same* ``weight`` and
``bias`` parameters (state-dict keys of the base model are unchanged, tied weights stay tied) and freezes everything
but the adapter. :func:`merge` folds the adapter into ``weight`` and keeps a copy of the original, which
:func:`unmerge` restores bit for bit (nothing is subtracted).
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "METHODS",
    "AdapterLinear",
    "DoRALinear",
    "LoRALinear",
    "ParameterCount",
    "adapter_layers",
    "adapter_state_dict",
    "apply_adapter",
    "from_peft",
    "load_adapter",
    "merge",
    "save_adapter",
    "trainable_parameters",
    "unmerge",
]


class AdapterLinear(nn.Module):
    """Base of the adapter layers: the wrapped layer's ``weight``/``bias`` plus LoRA's ``lora_A``, ``lora_B``."""

    method: ClassVar[str] = ""

    def __init__(self, base: nn.Linear, *, rank: int = 8, alpha: float = 8.0, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"{type(self).__name__} wraps an nn.Linear, got {type(base).__name__}")
        if not isinstance(rank, int) or rank <= 0:
            raise ValueError(f"{self.method}: rank must be a positive int, got {rank!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{self.method}: dropout must lie in [0, 1), got {dropout!r}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.rank, self.alpha, self.scaling = rank, float(alpha), float(alpha) / rank
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        device, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, rank, device=device, dtype=dtype))
        self.unmerged_weight: torch.Tensor | None
        self.register_buffer("unmerged_weight", None, persistent=False)
        self._build_extra(device, dtype)
        self.reset_parameters()

    def _build_extra(self, device: torch.device, dtype: torch.dtype) -> None:
        """Create a subclass's further adapter parameters (before :meth:`reset_parameters` runs)."""

    @property
    def options(self) -> dict[str, Any]:
        """The options this layer was built with (what :func:`apply_adapter` needs to rebuild it)."""
        p = self.dropout.p if isinstance(self.dropout, nn.Dropout) else 0.0
        return {"rank": self.rank, "alpha": self.alpha, "dropout": p}

    @property
    def merged(self) -> bool:
        """Whether the adapter is folded into ``weight``."""
        return self.unmerged_weight is not None

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """The adapter's own parameters by name (the base ``weight``/``bias`` excluded)."""
        return {"lora_A": self.lora_A, "lora_B": self.lora_B}

    def reset_parameters(self) -> None:
        """LoRA's initialisation: ``A`` as nn.Linear's Kaiming-uniform (a = sqrt 5), ``B`` zero (the base model)."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        """The low-rank update ``(alpha / r) B A`` as a ``[d_out, d_in]`` matrix."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def merged_weight(self) -> torch.Tensor:
        """The weight that reproduces the adapted layer with a plain ``F.linear`` (dropout inactive)."""
        return self.weight + self.delta_weight()

    def _lora(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return F.linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias) + self._lora(self.dropout(x))

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into ``weight`` in place, keeping the original weight for :meth:`unmerge`."""
        if self.merged:
            return
        merged = self.merged_weight()
        self.unmerged_weight = self.weight.detach().clone()
        self.weight.copy_(merged)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the original ``weight`` exactly (the copy kept by :meth:`merge`)."""
        if self.unmerged_weight is None:
            return
        self.weight.copy_(self.unmerged_weight)
        self.unmerged_weight = None

    def extra_repr(self) -> str:
        return f"{self.method}: in={self.in_features}, out={self.out_features}, r={self.rank}, alpha={self.alpha:g}"


class LoRALinear(AdapterLinear):
    """LoRA: ``W x + b + (alpha / r) B A dropout(x)`` (Hu et al. 2021, eq. 3)."""

    method = "lora"


class DoRALinear(AdapterLinear):
    """DoRA: ``m * (W + dW) / ||W + dW||_c`` with the norm detached (Liu et al. 2024, eq. 5 and §4.3)."""

    method = "dora"

    def _build_extra(self, device: torch.device, dtype: torch.dtype) -> None:
        self.magnitude = nn.Parameter(torch.empty(self.out_features, device=device, dtype=dtype))

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        return {**super().adapter_parameters(), "magnitude": self.magnitude}

    def reset_parameters(self) -> None:
        """LoRA's initialisation, and ``m = ||W + dW||_c`` (``= ||W||_c``) so the adapted layer starts as the base."""
        super().reset_parameters()
        with torch.no_grad():
            self.magnitude.copy_(self.weight_norm())

    def weight_norm(self) -> torch.Tensor:
        """``||W + dW||_c`` per output feature, detached (§4.3: a constant in the backward pass)."""
        norm: torch.Tensor = torch.linalg.vector_norm(self.weight + self.delta_weight(), dim=1)
        return norm.detach()

    def merged_weight(self) -> torch.Tensor:
        adapted = self.weight + self.delta_weight()
        return (self.magnitude / self.weight_norm())[:, None] * adapted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return F.linear(x, self.weight, self.bias)
        scale = self.magnitude / self.weight_norm()
        x_d = self.dropout(x)
        if x_d is x:
            out = scale * (F.linear(x, self.weight) + self._lora(x))
            return out if self.bias is None else out + self.bias
        base = F.linear(x, self.weight, self.bias)
        return base + (scale - 1) * F.linear(x_d, self.weight) + scale * self._lora(x_d)


#: Adapter methods by name.
METHODS: dict[str, type[AdapterLinear]] = {"lora": LoRALinear, "dora": DoRALinear}


# -- applying and accounting -----------------------------------------------------------------------------------------
def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


def apply_adapter(model: nn.Module, method: str, targets: Sequence[str] | str = ("*",), **options: Any) -> list[str]:
    """Wrap every ``nn.Linear`` whose module path matches a glob in ``targets`` with ``method``'s adapter, in place.

    Options are the adapter layer's (``rank``, ``alpha``, ``dropout``). Every parameter outside the adapters is
    frozen. Returns the wrapped paths; raises ``ValueError`` for an unknown method or when nothing matches.
    """
    if method not in METHODS:
        raise ValueError(f"unknown adapter method {method!r}; valid: {', '.join(sorted(METHODS))}")
    patterns = [targets] if isinstance(targets, str) else list(targets)
    if not patterns:
        raise ValueError("targets must name at least one module-path glob pattern, e.g. ['*.q_proj']")
    chosen = [
        name
        for name, module in model.named_modules()
        if type(module) is nn.Linear and name and any(fnmatch.fnmatchcase(name, p) for p in patterns)
    ]
    if not chosen:
        linears = [n for n, m in model.named_modules() if type(m) is nn.Linear]
        raise ValueError(f"targets {patterns} match no nn.Linear; the model's linear layers are: {linears}")
    for name in chosen:
        _set_submodule(model, name, METHODS[method](model.get_submodule(name), **options))  # type: ignore[arg-type]
    mark_only_adapters_trainable(model)
    return chosen


def adapter_layers(model: nn.Module) -> dict[str, AdapterLinear]:
    """The adapter layers of ``model`` by module path."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLinear)}


def mark_only_adapters_trainable(model: nn.Module) -> None:
    """Freeze every parameter of ``model`` except the adapters' own."""
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in adapter_layers(model).values():
        for p in layer.adapter_parameters().values():
            p.requires_grad_(True)


@dataclass(frozen=True)
class ParameterCount:
    """Trainable and total parameter counts (shared parameters counted once)."""

    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        """Trainable share of all parameters."""
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"trainable {self.trainable:,} of {self.total:,} ({100 * self.fraction:.4f}%)"


def trainable_parameters(model: nn.Module) -> ParameterCount:
    """Count the trainable and all parameters of ``model`` (``nn.Module.parameters`` visits a shared one once)."""
    params = list(model.parameters())
    return ParameterCount(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def merge(model: nn.Module) -> None:
    """Fold every adapter into its layer's weight (the original weights are kept for :func:`unmerge`).

    Raises ``ValueError`` for an adapted layer whose weight is tied to another module's (an ``lm_head`` tied to the
    embedding): merging would change that module too.
    """
    layers = _require_layers(model)
    uses: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        uses.setdefault(id(p), []).append(name)
    for name, layer in layers.items():
        if len(uses[id(layer.weight)]) > 1:
            raise ValueError(f"merge: '{name}'.weight is tied to {uses[id(layer.weight)]}; merging would change both")
    for layer in layers.values():
        layer.merge()


def unmerge(model: nn.Module) -> None:
    """Restore every merged layer's original weight exactly."""
    for layer in _require_layers(model).values():
        layer.unmerge()


def _require_layers(model: nn.Module) -> dict[str, AdapterLinear]:
    layers = adapter_layers(model)
    if not layers:
        raise ValueError("the model has no adapter layers; call apply_adapter(model, method, targets=...) first")
    return layers


# -- saving and loading ----------------------------------------------------------------------------------------------
_FORMAT = "edifice-adapter/1"


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' parameters alone, keyed ``<module path>.<lora_A|lora_B|magnitude>``."""
    return {
        f"{name}.{key}": p.detach()
        for name, layer in _require_layers(model).items()
        for key, p in layer.adapter_parameters().items()
    }


def save_adapter(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write the adapter weights alone to a safetensors file; its metadata records each layer's method and options."""
    from safetensors.torch import save_file

    layers = _require_layers(model)
    if any(layer.merged for layer in layers.values()):
        raise ValueError("save_adapter: unmerge(model) first (a merged layer's weight is no longer the base weight)")
    layout = {name: {"method": layer.method, **layer.options} for name, layer in layers.items()}
    tensors = {k: v.contiguous() for k, v in adapter_state_dict(model).items()}
    save_file(tensors, str(path), metadata={"format": _FORMAT, "layers": json.dumps(layout, sort_keys=True)})


def load_adapter(model: nn.Module, path: str | os.PathLike[str]) -> list[str]:
    """Load adapter weights saved by :func:`save_adapter`; adapters are applied first where the model has none.

    Returns the adapted paths. Raises ``ValueError`` when the file's layers or shapes do not fit the model.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != _FORMAT:
            raise ValueError(f"{path}: not an Edifice adapter file (metadata format {metadata.get('format')!r})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    layout: dict[str, dict[str, Any]] = json.loads(metadata["layers"])
    _ensure_layers(model, layout)
    _load_tensors(model, tensors, str(path))
    return list(layout)


def _ensure_layers(model: nn.Module, layout: Mapping[str, Mapping[str, Any]]) -> None:
    """Apply the adapters ``layout`` describes where the model has none; check the ones it has agree."""
    existing = adapter_layers(model)
    for name, spec in layout.items():
        options = {k: v for k, v in spec.items() if k != "method"}
        layer = existing.get(name)
        if layer is None:
            apply_adapter(model, spec["method"], [name], **options)
        elif layer.method != spec["method"] or layer.rank != options["rank"]:
            raise ValueError(
                f"'{name}' holds a {layer.method} adapter of rank {layer.rank}; "
                f"the file has {spec['method']} of rank {options['rank']}"
            )
    mark_only_adapters_trainable(model)


def _load_tensors(model: nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    own = {
        f"{name}.{key}": p
        for name, layer in adapter_layers(model).items()
        for key, p in layer.adapter_parameters().items()
    }
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise ValueError(f"{source}: adapter tensors do not fit the model (missing {missing}, unexpected {unexpected})")
    with torch.no_grad():
        for key, p in own.items():
            if tensors[key].shape != p.shape:
                raise ValueError(f"{source}: '{key}' has shape {tuple(tensors[key].shape)}, expected {tuple(p.shape)}")
            p.copy_(tensors[key])


# -- peft ------------------------------------------------------------------------------------------------------------
_PEFT_SUFFIXES = {
    ".lora_A.weight": "lora_A",
    ".lora_B.weight": "lora_B",
    ".lora_magnitude_vector": "magnitude",
    ".lora_magnitude_vector.weight": "magnitude",
}


def _peft_source(source: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a peft model, a saved adapter directory, or a state dict, as ``(state dict, adapter config)``."""
    if isinstance(source, nn.Module):
        from peft import get_peft_model_state_dict

        name = getattr(source, "active_adapter", "default")
        config = cast(Any, source).peft_config[name]
        return get_peft_model_state_dict(source, adapter_name=name), config.to_dict()
    if isinstance(source, (str, os.PathLike)):
        directory = Path(source)
        config = json.loads((directory / "adapter_config.json").read_text())
        weights = directory / "adapter_model.safetensors"
        if weights.exists():
            from safetensors.torch import load_file

            return load_file(str(weights)), config
        return torch.load(directory / "adapter_model.bin", map_location="cpu", weights_only=True), config
    if isinstance(source, Mapping):
        return dict(source), {}
    raise TypeError(f"from_peft reads a PeftModel, a saved adapter directory or a state dict, got {type(source)}")


def from_peft(model: nn.Module, source: Any, *, alpha: float | None = None, dropout: float | None = None) -> list[str]:
    """Load peft LoRA/DoRA adapter weights (a ``PeftModel``, its ``save_pretrained`` directory, or a state dict).

    Where ``model`` has no adapters they are applied first: the method from the presence of DoRA's magnitude, the
    rank from the shapes, ``alpha``/``dropout`` from peft's config (or the arguments, which a bare state dict needs).
    Module paths are peft's with the ``base_model.model.`` prefix and the adapter name removed. Returns the paths.
    """
    state, config = _peft_source(source)
    if config.get("use_rslora"):
        raise ValueError("from_peft: rsLoRA scaling (alpha / sqrt(r)) is not supported; use_rslora must be False")
    if config.get("fan_in_fan_out"):
        raise ValueError("from_peft: fan_in_fan_out (GPT-2 Conv1D) adapters are not supported")
    adapter_name = config.get("adapter_name") or "default"
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("base_model.model.").replace(f".{adapter_name}.", ".")
        for suffix, ours in _PEFT_SUFFIXES.items():
            if key.endswith(suffix):
                tensors[key.removesuffix(suffix) + "." + ours] = value
                break
        else:
            raise ValueError(f"from_peft: unsupported peft key '{key}' (only LoRA and DoRA linear adapters)")
    layout: dict[str, dict[str, Any]] = {}
    alpha_default = alpha if alpha is not None else config.get("lora_alpha")
    for key, value in tensors.items():
        if key.endswith(".lora_A"):
            name = key.removesuffix(".lora_A")
            rank = int(value.shape[0])
            pattern_alphas: Mapping[str, float] = config.get("alpha_pattern") or {}
            layer_alpha = next((a for p, a in pattern_alphas.items() if name.endswith(p)), alpha_default)
            if layer_alpha is None:
                raise ValueError("from_peft: a bare state dict carries no lora_alpha; pass alpha=")
            method = "dora" if f"{name}.magnitude" in tensors else "lora"
            p = dropout if dropout is not None else float(config.get("lora_dropout", 0.0))
            layout[name] = {"method": method, "rank": rank, "alpha": float(layer_alpha), "dropout": p}
    _ensure_layers(model, layout)
    _load_tensors(model, tensors, "peft adapter")
    return list(layout)
