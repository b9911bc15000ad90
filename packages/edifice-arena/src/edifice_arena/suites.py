"""Preset arenas: ``default`` (MQAR sized for two CPU cores) and ``zoology`` (the Zoology MQAR sweep, reduced).

``default`` -- what ``edifice arena`` runs with no arguments: MQAR at ``T = 32`` with 4 key-value pairs and a
vocabulary of 64; five entries of about 100,000 parameters and two layers; 600 steps of batch 32 at learning rate
3e-3. It finishes in under three minutes on two CPU cores, and the entries separate: Gated DeltaNet near 100%, the
transformer and Mamba-2 on the 1-in-4 plateau of answering some value from the context, the LSTM and minGRU near
chance (``docs/arena.md`` has the table over three seeds).

``zoology`` -- Figure 2 of Arora et al. (2023): MQAR accuracy against model width for sequence lengths and key-value
pairs ``(64, 4), (128, 8), (256, 16), (512, 64)``, widths 64 to 512, two layers, vocabulary 8,192, AdamW with weight
decay 0.1 and a cosine schedule, the best of four learning rates ``logspace(-4, -2, 4)``, 64 epochs of 100,000
examples. Reduced here to fit about ten minutes of one GPU:

* ``(T, pairs)`` in ``(64, 4), (128, 8), (256, 16)`` -- ``(512, 64)`` is left out;
* widths 64, 128 and 256 -- 512 is left out;
* 1,000 steps of batch 128 (a fresh batch every step: 128,000 examples) instead of 64 epochs over 100,000 examples
  (about 12,500 steps of batch 512 at ``T = 64``);
* one learning rate, 1e-3 (the paper keeps the best of four), and one seed;
* entries: Zoology's attention (``attention``, one head as in the paper), its gated convolutions ``h3`` and
  ``hyena``, and ``mamba_ssd`` and ``gated_delta_net`` (plus ``rwkv`` when installed); ``--arch`` chooses others.
"""

from __future__ import annotations

from edifice.errors import ConfigError
from edifice_arena.arena import ArenaConfig, default_archs

__all__ = ["SUITES", "ZOOLOGY_ARCHS", "suite"]

DEFAULT_PARAMS = 100_000
DEFAULT_STEPS = 600
DEFAULT_BATCH = 32

#: Entries of the zoology suite: the paper's attention and gated convolutions, and two newer recurrent mixers.
ZOOLOGY_ARCHS = ("attention", "h3", "hyena", "mamba_ssd", "gated_delta_net")
ZOOLOGY_GRID = ((64, 4), (128, 8), (256, 16))
ZOOLOGY_WIDTHS = (64, 128, 256)
ZOOLOGY_STEPS = 1000
ZOOLOGY_BATCH = 128
ZOOLOGY_LR = 1e-3

#: Per-entry fields of the small default arena. Mamba-2's and RWKV-7's 64-wide heads would leave one head at d_model
#: 64: both get heads of 16 (Mamba-2 with a 16-state SSM). RWKV-7's widths then step by 16, and neither 48 (85k
#: parameters) nor 64 (138k) lands within 10% of 100k with its 4x FFN: a 128-wide FFN (2x at d_model 64) does.
_DEFAULT_OVERRIDES = {
    "mamba_ssd": {"head_dim": 16, "d_state": 16},
    # Chunks of 4 rather than 64 cut the CPU cost of its per-channel-decay scores 3x at T = 32 (the same function).
    "rwkv": {"head_dim": 16, "d_ff": 128, "chunk_size": 4},
}

#: The suites by name.
SUITES = ("default", "zoology")


def suite(name: str, *, device: str = "cpu") -> list[ArenaConfig]:
    """The arenas of suite ``name`` on ``device`` (one for ``default``, one per grid point for ``zoology``)."""
    if name == "default":
        archs = default_archs()
        return [
            ArenaConfig(
                archs=archs,
                task="mqar",
                task_options={"seq_len": 32, "num_kv_pairs": 4, "vocab": 64},
                params=DEFAULT_PARAMS,
                overrides={k: v for k, v in _DEFAULT_OVERRIDES.items() if k in archs},
                steps=DEFAULT_STEPS,
                batch_size=DEFAULT_BATCH,
                lr=3e-3,
                device=device,
                jobs=0,  # one entry per core: two processes of one thread beat one of two threads on these models
            )
        ]
    if name == "zoology":
        installed = set(default_archs())
        zoology_archs = ZOOLOGY_ARCHS + tuple(name for name in ("rwkv",) if name in installed)
        return [
            ArenaConfig(
                archs=zoology_archs,
                task="mqar",
                task_options={"seq_len": seq_len, "num_kv_pairs": pairs, "vocab": 8192},
                params=None,
                d_model=width,
                overrides={"attention": {"n_heads": 1}},
                steps=ZOOLOGY_STEPS,
                batch_size=ZOOLOGY_BATCH,
                lr=ZOOLOGY_LR,
                warmup_steps=ZOOLOGY_STEPS // 10,
                device=device,
                eval_batches=8,
                eval_batch_size=128,
            )
            for seq_len, pairs in ZOOLOGY_GRID
            for width in ZOOLOGY_WIDTHS
        ]
    raise ConfigError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)}")
