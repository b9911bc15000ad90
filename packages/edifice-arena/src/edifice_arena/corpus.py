"""Your own data for ``edifice train``: a text file (bytes, or a Hugging Face tokenizer) or a file of token ids, read
as a :class:`~edifice_arena.batches.BatchSource` of random windows.

The last ``test_fraction`` of the tokens is the ``"test"`` split, the rest ``"train"``. Window starts come from a
generator seeded by a hash of ``(seed, split, step)``: row ``r`` of micro-batch ``m`` is draw ``m * rows + r`` of
that step's stream, so a step's batch is the same however it is split into micro-batches (gradient accumulation
then equals the full batch exactly, data included), and any step can be regenerated alone (exact resume).

Token files are memory-mapped: a ``.npy`` array, or a raw ``.bin`` of ``uint16`` (nanoGPT's layout, vocabularies up
to 65,536) or ``uint32`` ids. Tokenizers load offline only: a ``tokenizer.json`` file, a directory holding one, or
the name of a Hugging Face repository already in the local cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from edifice_arena.batches import Batch

if TYPE_CHECKING:
    import numpy as np

__all__ = ["SPLITS", "TOKEN_DTYPES", "TokenWindows", "load_tokenizer", "read_text", "read_token_file"]

#: The splits a :class:`TokenWindows` draws from (the arena tasks use the same names).
SPLITS = ("train", "test")
#: Element types of raw ``.bin`` token files.
TOKEN_DTYPES = ("uint16", "uint32")


@dataclasses.dataclass
class TokenWindows:
    """Random windows of ``seq_len + 1`` tokens of one long token array (inputs and next-token targets)."""

    tokens: np.ndarray = dataclasses.field(repr=False)
    """The whole token stream, 1-D (a memory map for token files)."""
    vocab_size: int
    """Number of distinct token ids (every id is below it)."""
    seq_len: int
    """Length T of every sequence."""
    seed: int = 0
    """Seed of the window positions."""
    test_fraction: float = 0.05
    """Fraction of the stream, at its end, held out as the ``"test"`` split."""
    name: str = "tokens"
    """What the data is (a file name), for checkpoints and messages."""

    def __post_init__(self) -> None:
        if self.tokens.ndim != 1:
            raise ValueError(f"{self.name}: expected a 1-D array of token ids, got shape {list(self.tokens.shape)}")
        if self.seq_len < 1:
            raise ValueError(f"{self.name}: seq_len must be >= 1, got {self.seq_len}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"{self.name}: test_fraction must lie in (0, 1), got {self.test_fraction}")
        for split in SPLITS:
            low, high = self._span(split)
            if high - low < self.seq_len + 1:
                raise ValueError(
                    f"{self.name}: {len(self.tokens)} tokens leave {high - low} for the {split!r} split, fewer than "
                    f"one window of seq_len + 1 = {self.seq_len + 1}; use a longer file or a shorter --seq-len"
                )

    def _span(self, split: str) -> tuple[int, int]:
        cut = len(self.tokens) - int(len(self.tokens) * self.test_fraction)
        return (0, cut) if split == "train" else (cut, len(self.tokens))

    def batch(self, step: int, batch_size: int, *, micro_step: int = 0, split: str = "train") -> Batch:
        """Micro-batch ``micro_step`` (``batch_size`` windows) of step ``step``'s batch of ``split``."""
        import numpy as np

        if split not in SPLITS:
            raise ValueError(f"{self.name}: split must be one of {', '.join(SPLITS)}, got {split!r}")
        if step < 0 or micro_step < 0 or batch_size < 1:
            raise ValueError(
                f"{self.name}: expected step >= 0, micro_step >= 0 and batch_size >= 1, "
                f"got {step}, {micro_step} and {batch_size}"
            )
        low, high = self._span(split)
        key = f"{self.name}/{self.seed}/{split}/{step}".encode()
        generator = torch.Generator().manual_seed(
            int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1
        )
        # Draws 0 .. (m + 1) * rows - 1 of the step's stream; this micro-batch's rows are the last `rows` of them.
        draws = torch.randint(low, high - self.seq_len, ((micro_step + 1) * batch_size,), generator=generator)
        starts = draws[micro_step * batch_size :].numpy()
        windows = torch.from_numpy(self.tokens[starts[:, None] + np.arange(self.seq_len + 1)].astype(np.int64))
        mask = torch.ones(batch_size, self.seq_len, dtype=torch.bool)
        return Batch(windows[:, :-1], windows[:, 1:], mask)

    def describe(self) -> dict[str, Any]:
        """What identifies the stream (JSON-native)."""
        return {
            "data": self.name,
            "tokens": len(self.tokens),
            "vocab_size": self.vocab_size,
            "seq_len": self.seq_len,
            "seed": self.seed,
            "test_fraction": self.test_fraction,
        }


def read_text(path: str | os.PathLike[str], tokenizer: str | None = None) -> tuple[np.ndarray, int]:
    """The tokens of a text file and the vocabulary size: its bytes (256), or ``tokenizer``'s ids."""
    import numpy as np

    file = _existing(path, "text file")
    if tokenizer is None:
        return np.frombuffer(file.read_bytes(), dtype=np.uint8), 256
    encoder = load_tokenizer(tokenizer)
    ids = encoder.encode(file.read_text(encoding="utf-8")).ids
    return np.asarray(ids, dtype=np.uint32), int(encoder.get_vocab_size())


def load_tokenizer(name_or_path: str) -> Any:
    """A ``tokenizers.Tokenizer`` from a ``tokenizer.json``, a directory with one, or the local Hugging Face cache."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ValueError(f"tokenizer {name_or_path!r} needs the `tokenizers` package: pip install tokenizers") from None
    local = Path(name_or_path)
    if local.is_dir():
        local = local / "tokenizer.json"
    if local.is_file():
        return Tokenizer.from_file(str(local))
    try:  # a repository name: only what is already cached (edifice train never downloads)
        from huggingface_hub import hf_hub_download

        return Tokenizer.from_file(hf_hub_download(name_or_path, "tokenizer.json", local_files_only=True))
    except Exception:
        raise ValueError(
            f"tokenizer {name_or_path!r} is neither a tokenizer.json file, nor a directory with one, nor a repository "
            "in the local Hugging Face cache (edifice train works offline)"
        ) from None


def read_token_file(
    path: str | os.PathLike[str], dtype: str = "uint16", vocab_size: int | None = None
) -> tuple[np.ndarray, int]:
    """A memory-mapped token file (``.npy``, or raw ``.bin`` of ``dtype``) and its vocabulary size.

    Without ``vocab_size`` the vocabulary is the largest id plus one (one pass over the file).
    """
    import numpy as np

    file = _existing(path, "token file")
    if file.suffix == ".npy":
        tokens = np.load(file, mmap_mode="r")
        if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
            raise ValueError(f"{file}: expected a 1-D integer array of token ids, got {tokens.dtype} {tokens.shape}")
    else:
        if dtype not in TOKEN_DTYPES:
            raise ValueError(f"token dtype must be one of {', '.join(TOKEN_DTYPES)}, got {dtype!r}")
        if file.stat().st_size % np.dtype(dtype).itemsize:
            raise ValueError(f"{file}: its size is not a multiple of {np.dtype(dtype).itemsize} bytes ({dtype} ids)")
        tokens = np.memmap(file, dtype=dtype, mode="r")
    if len(tokens) == 0:
        raise ValueError(f"{file}: holds no tokens")
    largest = int(tokens.max())
    if vocab_size is not None and largest >= vocab_size:
        raise ValueError(f"{file}: holds token id {largest}, not below vocab_size={vocab_size}")
    if int(tokens.min()) < 0:
        raise ValueError(f"{file}: holds negative token ids")
    return tokens, vocab_size if vocab_size is not None else largest + 1


def _existing(path: str | os.PathLike[str], what: str) -> Path:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{what} {str(file)!r} does not exist")
    return file
