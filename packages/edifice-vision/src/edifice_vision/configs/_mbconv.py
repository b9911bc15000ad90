"""The torch-free half of the inverted-residual networks (MobileNetV2/V3, EfficientNet): block tables and scaling.

A network is a table of stages, each a tuple of block strings in the notation of the authors' TensorFlow code
(``efficientnet_builder.BlockDecoder``) as timm writes it: ``"ir_r2_k3_s2_e6_c24_se0.25"`` is an inverted residual
(``ir``; ``ds`` a depthwise-separable block without expansion; ``cn`` a plain 1x1 conv-BN-act) repeated 2 times,
3x3 depthwise kernel, stride 2 in the first repeat, expansion 6, 24 output channels, squeeze-excitation of ratio 0.25;
``nre`` makes the block use ReLU instead of the network's activation (MobileNetV3's early layers).

Width and depth scale by compound scaling (Tan & Le 2019, Eq. 3): channels ``make_divisible(c * width, 8)`` (the
rounding of the authors' ``round_filters``), repeats ``ceil(r * depth)`` per stage (``round_repeats``), shared among
a stage's rows as timm does. :meth:`MBConvConfig.levels` resolves the table into concrete blocks grouped by output
stride, the feature levels of ``forward_intermediates``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import ClassVar

from edifice import field
from edifice_vision.configs._image import ImageConfig

__all__ = ["Block", "MBConvConfig", "make_divisible", "parse_block"]

_TOKEN = re.compile(r"^(se|r|k|s|e|c)(\d+(?:\.\d+)?)$")


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """The multiple of ``divisor`` nearest ``value`` (at least ``divisor``), never below ``round_limit * value``."""
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return out + divisor if out < round_limit * value else out


@dataclasses.dataclass(frozen=True)
class Row:
    """One parsed block string: kind, repeats, kernel, stride, expansion, channels, SE ratio, activation override."""

    kind: str
    repeats: int
    kernel: int
    stride: int
    expand: float
    channels: int
    se: float
    act: str | None


@dataclasses.dataclass(frozen=True)
class Block:
    """A resolved block: its widths (expanded ``mid``, squeeze ``se_channels``), kernel, stride and activation."""

    kind: str
    in_channels: int
    out_channels: int
    mid_channels: int
    kernel: int
    stride: int
    se_channels: int
    act: str


def parse_block(text: str) -> Row:
    """Parse ``"ir_r2_k3_s2_e6_c24_se0.25"``; a ``ValueError`` names the part it cannot read."""
    kind, *tokens = text.split("_")
    if kind not in ("ds", "ir", "cn"):
        raise ValueError(f"block {text!r}: kind {kind!r} is not 'ds', 'ir' or 'cn'")
    values: dict[str, float] = {}
    act = None
    for token in tokens:
        if token == "nre":
            act = "relu"
            continue
        match = _TOKEN.match(token)
        if match is None:
            raise ValueError(f"block {text!r}: cannot read {token!r} (r<repeats> k<kernel> s<stride> e<expansion> "
                             "c<channels> se<ratio> nre)")  # fmt: skip
        values[match.group(1)] = float(match.group(2))
    if "c" not in values:
        raise ValueError(f"block {text!r}: no output channels (c<channels>)")
    row = Row(
        kind,
        int(values.get("r", 1)),
        int(values.get("k", 3)),
        int(values.get("s", 1)),
        values.get("e", 1.0),
        int(values["c"]),
        values.get("se", 0.0),
        act,
    )
    if row.kernel % 2 == 0 or row.stride not in (1, 2) or row.repeats < 1 or row.expand <= 0 or row.channels < 1:
        raise ValueError(f"block {text!r}: kernel must be odd, stride 1 or 2, repeats, expansion, channels positive")
    if kind == "ds" and "e" in values:
        raise ValueError(f"block {text!r}: a depthwise-separable block has no expansion")
    return row


def scale_repeats(repeats: list[int], multiplier: float) -> list[int]:
    """``ceil(sum(repeats) * multiplier)`` blocks for a stage, shared among its rows from the last one (timm's)."""
    total, scaled = sum(repeats), math.ceil(sum(repeats) * multiplier)
    out = []
    for r in reversed(repeats):
        share = max(1, round(r / total * scaled))
        out.append(share)
        total, scaled = total - r, scaled - share
    return out[::-1]


@dataclasses.dataclass(kw_only=True)
class MBConvConfig(ImageConfig):
    """Base config of the inverted-residual networks: a block table scaled in width and depth."""

    arch_def: tuple[tuple[str, ...], ...] | None = field(None, "Stages of block strings; None: the paper's table.")
    width_multiplier: float = field(
        1.0, "Width multiplier (alpha): every width times this, rounded to channel_divisor."
    )
    depth_multiplier: float = field(1.0, "Depth multiplier: each stage's repeats times this, rounded up.")
    channel_divisor: int = field(8, "Widths are rounded to multiples of this.")
    stem_channels: int | None = field(None, "Output channels of the 3x3 stride-2 stem (unscaled); None: the paper's.")
    fix_stem: bool = field(False, "Keep the stem width unscaled.")
    head_channels: int = field(1280, "Channels of the 1x1 head convolution (before width scaling, where it scales).")
    activation: str | None = field(None, "Activation of the network; None: the paper's.")
    norm_eps: float = field(1e-5, "BatchNorm epsilon.")

    aliases: ClassVar[Mapping[str, str]] = {**ImageConfig.aliases, "channel_multiplier": "width_multiplier"}
    spec_properties: ClassVar[tuple[str, ...]] = ("num_features",)

    # -- what a subclass fixes -------------------------------------------------------------------------------------
    def default_table(self) -> tuple[tuple[str, ...], ...]:
        """The paper's block table."""
        raise NotImplementedError

    def default_activation(self) -> str:
        """The paper's activation."""
        raise NotImplementedError

    def default_stem(self) -> int:
        """The paper's stem width (before scaling)."""
        return 32

    @property
    def se_act(self) -> str | None:
        """The squeeze-excitation's inner activation (None: the block's, EfficientNet's choice)."""
        return None

    @property
    def se_gate(self) -> str:
        """The squeeze-excitation's gate."""
        return "sigmoid"

    @property
    def se_from_expanded(self) -> bool:
        """Whether the SE ratio applies to the expanded width (MobileNetV3) rather than the block's input."""
        return False

    @property
    def head_after_pool(self) -> bool:
        """Whether the head convolution follows the pooling (MobileNetV3) rather than precedes it."""
        return False

    @property
    def head_width(self) -> int:
        """Channels of the head convolution (EfficientNet scales it with the width)."""
        return self.round_channels(self.head_channels)

    @property
    def num_features(self) -> int:
        """The pooled feature size the classifier sees."""
        return self.head_width

    # -- resolution ------------------------------------------------------------------------------------------------
    @property
    def table(self) -> tuple[tuple[str, ...], ...]:
        """The block table in use."""
        return self.arch_def if self.arch_def is not None else self.default_table()

    @property
    def act(self) -> str:
        """The network's activation."""
        return self.activation if self.activation is not None else self.default_activation()

    def round_channels(self, channels: int) -> int:
        """``channels * width_multiplier`` rounded to a multiple of ``channel_divisor`` (Eq. 3's width)."""
        return make_divisible(channels * self.width_multiplier, self.channel_divisor)

    @property
    def stem_width(self) -> int:
        """Output channels of the stem."""
        stem = self.stem_channels if self.stem_channels is not None else self.default_stem()
        return stem if self.fix_stem else self.round_channels(stem)

    def levels(self) -> list[list[Block]]:
        """The resolved blocks, grouped into feature levels (a new level at every stride-2 stage)."""
        levels: list[list[Block]] = []
        channels = self.stem_width
        for stage in self.table:
            rows = [parse_block(text) for text in stage]
            counts = scale_repeats([r.repeats for r in rows], self.depth_multiplier)
            blocks: list[Block] = []
            for row, count in zip(rows, counts, strict=True):
                for _ in range(count):
                    stride = row.stride if not blocks else 1  # only a stage's first block strides
                    blocks.append(self._block(row, channels, stride))
                    channels = blocks[-1].out_channels
            if not levels or blocks[0].stride > 1:
                levels.append([])
            levels[-1].extend(blocks)
        return levels

    def _block(self, row: Row, in_channels: int, stride: int) -> Block:
        out = self.round_channels(row.channels)
        mid = make_divisible(in_channels * row.expand) if row.kind == "ir" else in_channels
        se = 0
        if row.se:
            if self.se_from_expanded:
                se = make_divisible(mid * row.se)
            else:  # the authors' EfficientNet: se_ratio of the block's input width
                se = round(mid * row.se / (row.expand if row.kind == "ir" else 1.0))
        return Block(row.kind, in_channels, out, mid, row.kernel, stride, se, row.act or self.act)

    def validate(self) -> None:
        """Multipliers positive; the table parses; the activation is known."""
        super().validate()
        self.check_positive("width_multiplier", "depth_multiplier", "channel_divisor", "stem_channels")
        self.check_positive("head_channels", "norm_eps")
        if self.activation is not None and self.activation.lower() not in _ACTIVATIONS:
            self.check_choice("activation", sorted(_ACTIVATIONS))
        if self.arch_def is not None:
            if not self.arch_def or not all(self.arch_def):
                self.fail("arch_def", "must list at least one stage of at least one block")
            for stage in self.arch_def:
                for text in stage:
                    try:
                        parse_block(text)
                    except ValueError as exc:
                        self.fail("arch_def", f"has a bad block: {exc}")


_ACTIVATIONS = frozenset({"relu", "relu6", "silu", "swish", "hard_swish", "hardswish", "gelu", "identity"})
