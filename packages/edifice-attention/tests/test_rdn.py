"""Signature tests of ``rdn``, the Residual Delta Net: the fp64 token loop of ``test_rla`` with the delta rule on both
states (``S_t = α_t S_{t-1}(I - β_t k_t k_tᵀ) + β_t v_t k_tᵀ``, ``R_t = α_t R_{t-1}(I - γ_t k_t k_tᵀ) + γ_t r_t
k_tᵀ``); the chunked WY form and the token loop of :func:`edifice.ops.gated_delta_rule` agree inside the model."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

from edifice import ops
from edifice.testing import mutate_op, signature

_spec = importlib.util.spec_from_file_location("_test_rla", pathlib.Path(__file__).with_name("test_rla.py"))
assert _spec is not None and _spec.loader is not None
rla_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rla_tests)


@signature("rdn")
def test_rdn_matches_the_papers_recurrence_in_fp64() -> None:
    rla_tests.check_mixer("rdn")


def test_rdn_signature_fails_without_the_erase_term() -> None:
    with mutate_op("gated_delta_rule"), pytest.raises(AssertionError):
        rla_tests.check_mixer("rdn")


@pytest.mark.parametrize("length", [1, 63, 130])
def test_rdn_chunked_and_recurrent_forms_agree(length: int) -> None:
    """Chunked WY form (chunks of 8 and 5) against the op's token loop, from a non-zero state (no parallel form)."""
    rla_tests.forms_agree("rdn", "gated_delta_rule", {"recurrent": ops.gated_delta_rule.naive}, length)
