"""The "did you mean" helpers of error messages."""

from __future__ import annotations

from edifice._text import close_matches, did_you_mean


def test_a_match_but_for_case_comes_first() -> None:
    # A case-sensitive ratio ranks 'zamba' and 'samba' (4 of 5 letters equal) above 'mamba' for 'Mamba'.
    assert close_matches("Mamba", ["samba", "zamba", "mamba3", "mamba"])[:2] == ["mamba", "mamba3"]
    assert close_matches("LSTM", ["lstm", "slstm", "gru"], n=1) == ["lstm"]


def test_close_matches_ignore_case_and_keep_every_spelling() -> None:
    assert close_matches("gatedDeltaNet", ["gated_deltanet", "retnet"]) == ["gated_deltanet"]
    assert close_matches("RWKV", ["rwkv", "RWKV"]) == ["rwkv", "RWKV"]
    assert close_matches("zzz", ["mamba"]) == []
    assert did_you_mean("Mamba", ["mamba"]) == " Did you mean 'mamba'?"
    assert did_you_mean("zzz", ["mamba"]) == ""
