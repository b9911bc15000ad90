"""Signature tests of ``lstm`` and ``gru``: weights of a plain ``torch.nn.LSTM``/``nn.GRU`` give its exact outputs.

The reference is PyTorch's own module (an independent implementation of Hochreiter & Schmidhuber's LSTM with a forget
gate and of Cho et al.'s GRU); a generic layer in place of the cell could not load its state dict nor match it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import edifice
from edifice.testing import signature
from edifice_recurrent.rnn import RNN, from_torch_rnn, map_torch_rnn_state_dict

TOL = {"atol": 1e-5, "rtol": 1e-5}
CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}

# Pay one-off imports at collection, not in the first timed test: assert_close's first call imports
# torch.distributed.tensor (~2 s), the registry loads every plugin once and the first RNN call sets up its kernels.
torch.testing.assert_close(torch.zeros(1), torch.zeros(1))
for _name in CELLS:
    edifice.build(_name, d_model=4)(x=torch.zeros(1, 2, 4))


def reference(cell: str, d_in: int = 5, hidden: int = 12, layers: int = 2, seed: int = 0) -> nn.LSTM | nn.GRU:
    torch.manual_seed(seed)
    return CELLS[cell](d_in, hidden, num_layers=layers, batch_first=True).eval()


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@signature("lstm")
def test_lstm_matches_torch_lstm() -> None:
    ref = reference("lstm")
    model = edifice.convert("torch.nn.LSTM", ref).eval()
    x = randn(3, 9, 5, seed=1)
    with torch.no_grad():
        want, (h_n, c_n) = ref(x)
        torch.testing.assert_close(model(x=x), want, **TOL)
        # Decoding: a 4-step prefill then single steps reproduce the outputs and end in nn.LSTM's (h_n, c_n).
        state = model.init_state(3)
        got = torch.cat(
            [model.step(x[:, :4], state)[0]] + [model.step(x[:, t : t + 1], state)[0] for t in range(4, 9)], 1
        )
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(torch.cat([s.h for s in state.layers]), h_n, **TOL)
    torch.testing.assert_close(torch.cat([s.c for s in state.layers]), c_n, **TOL)


@signature("gru")
def test_gru_matches_torch_gru() -> None:
    ref = reference("gru", d_in=7, hidden=10, layers=2, seed=2)
    model = edifice.convert("torch.nn.GRU", ref).eval()
    x = randn(2, 11, 7, seed=3)
    with torch.no_grad():
        want, h_n = ref(x)
        torch.testing.assert_close(model(x=x), want, **TOL)
        state = model.init_state(2)
        got = torch.cat([model.step(x[:, t : t + 1], state)[0] for t in range(11)], 1)
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(torch.cat([s.h for s in state.layers]), h_n, **TOL)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gradients_match_torch(cell: str) -> None:
    ref = reference(cell, seed=4).train()
    model = from_torch_rnn(ref).train()
    x = randn(2, 6, 5, seed=5)
    cotangent = randn(2, 6, 12, seed=6)
    (ref(x)[0] * cotangent).sum().backward()
    (model(x=x) * cotangent).sum().backward()
    mapped = map_torch_rnn_state_dict({k: p.grad for k, p in ref.named_parameters()})  # type: ignore[misc]
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, mapped[name], **TOL, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_padding_left_and_right_equals_each_sequence_alone(cell: str) -> None:
    ref = reference(cell, seed=7)
    model = from_torch_rnn(ref).eval()
    x = randn(3, 8, 5, seed=8)
    mask = torch.tensor(
        [[True] * 8, [True] * 5 + [False] * 3, [False] * 2 + [True] * 6]  # full, right-padded, left-padded
    )
    with torch.no_grad():
        got = model(x=x, attention_mask=mask)
        for b in range(3):
            alone, _ = ref(x[b : b + 1, mask[b]])
            torch.testing.assert_close(got[b, mask[b]], alone[0], **TOL)
            assert not got[b, ~mask[b]].any(), "pad positions output zeros"


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_step_with_padding_leaves_state_unchanged_on_pads(cell: str) -> None:
    ref = reference(cell, seed=9)
    model = from_torch_rnn(ref).eval()
    x = randn(2, 6, 5, seed=10)
    mask = torch.tensor([[False, False, True, True, True, True], [True] * 6])
    with torch.no_grad():
        state = model.init_state(2)
        got, _ = model.step(x, state, attention_mask=mask)
        want, _ = ref(x[:1, 2:])
    torch.testing.assert_close(got[0, 2:], want[0], **TOL)
    torch.testing.assert_close(state.layers[-1].h[0, 0], want[0, -1], **TOL)


def test_output_last_and_token_inputs() -> None:
    ref = reference("lstm", d_in=12, seed=11)
    model = from_torch_rnn(ref, output="last").eval()
    assert model.config.d_in is None  # input_size == hidden_size needs no d_in
    x = randn(2, 5, 12, seed=12)
    with torch.no_grad():
        torch.testing.assert_close(model(x=x), ref(x)[0][:, -1], **TOL)
    lm = edifice.build("gru", d_model=8, vocab_size=20)
    assert lm(input_ids=torch.randint(0, 20, (2, 4))).shape == (2, 4, 20)


def test_cell_type_is_fixed_and_bad_sources_fail() -> None:
    with pytest.raises(edifice.ConfigError, match="cell_type"):
        edifice.build("lstm", cell_type="gru")
    with pytest.raises(ValueError, match="bidirectional"):
        from_torch_rnn(nn.LSTM(4, 4, bidirectional=True))
    with pytest.raises(TypeError, match=r"torch\.nn\.LSTM or torch\.nn\.GRU"):
        from_torch_rnn(nn.Linear(4, 4))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unexpected key"):
        map_torch_rnn_state_dict({"weight": torch.zeros(1)})
    assert isinstance(edifice.build("gru", d_model=8), RNN)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_stepping_is_differentiable_like_forward(cell: str) -> None:
    # Truncated BPTT through step (a 3-position prefill, then single positions) gives forward's gradients.
    torch.manual_seed(13)
    model = edifice.build(cell, d_model=6, d_in=3)
    x = randn(2, 5, 3, seed=14)
    cotangent = randn(2, 5, 6, seed=15)
    want = torch.autograd.grad((model(x=x) * cotangent).sum(), list(model.parameters()))
    state = model.init_state(2)
    y = torch.cat([model.step(x[:, :3], state)[0], model.step(x[:, 3:4], state)[0], model.step(x[:, 4:], state)[0]], 1)
    got = torch.autograd.grad((y * cotangent).sum(), list(model.parameters()))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cpu_autocast_runs_in_fp32_where_onednn_has_no_bf16_rnn(cell: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # On AVX2-only CPUs oneDNN cannot build a bf16 LSTM; the layer then runs the fused call in fp32 (forward, prefill).
    import edifice_recurrent.rnn as rnn

    monkeypatch.setattr(rnn, "_onednn_rnn_supports", lambda dtype: False)
    torch.manual_seed(0)
    model = edifice.build(cell, d_model=16, n_layers=2).eval()
    x = torch.randn(2, 6, 16)
    with torch.no_grad():
        want = model(x=x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x=x)
            state = model.init_state(2)
            prefill, _ = model.step(x[:, :4].bfloat16(), state)
    torch.testing.assert_close(got.float(), want, atol=0.03, rtol=0.03)
    torch.testing.assert_close(prefill.float(), want[:, :4], atol=0.03, rtol=0.03)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_stack_is_one_torch_module_called_once_per_sequence(cell: str) -> None:
    # One multi-layer call (cuDNN's layer wavefront on a GPU) for a forward and for a prefill; on a CPU a decoding
    # step goes through the fused cells instead (cheaper per token there than a call of the module).
    model = edifice.build(cell, d_model=8, n_layers=3, d_in=4).eval()
    assert isinstance(model.rnn, CELLS[cell]) and model.rnn.num_layers == 3
    assert set(model.state_dict()) == {f"rnn.{key}" for key in model.rnn.state_dict()}
    calls = []
    model.rnn.register_forward_hook(lambda *_: calls.append(1))
    x = randn(2, 5, 4, seed=16)
    with torch.no_grad():
        model(x=x)
        model(x=x, attention_mask=torch.tensor([[True] * 5, [False] + [True] * 4]))
        state = model.init_state(2)
        model.step(x[:, :4], state)
        assert len(calls) == 3
        model.step(x[:, 4:], state)
    assert len(calls) == 3


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_training_dropout_between_layers_is_torch_rnn_dropout(cell: str) -> None:
    # Same seed, same dropout masks: the stack drops what nn.LSTM(dropout=p) drops, and nothing from its input.
    torch.manual_seed(17)
    ref = CELLS[cell](5, 12, num_layers=3, dropout=0.5, batch_first=True).train()
    model = from_torch_rnn(ref).train()
    x = randn(2, 7, 5, seed=18)
    torch.manual_seed(19)
    want = ref(x)[0]
    torch.manual_seed(19)
    torch.testing.assert_close(model(x=x), want, **TOL)


def test_gradient_checkpointing_keeps_gradients() -> None:
    model = edifice.build("lstm", d_model=6, n_layers=2, d_in=3)
    x = randn(2, 5, 3, seed=20)
    want = torch.autograd.grad(model(x=x).square().sum(), list(model.parameters()))
    model.set_grad_checkpointing()
    got = torch.autograd.grad(model(x=x).square().sum(), list(model.parameters()))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.gpu
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cuda_weights_stay_one_cudnn_buffer_through_save_and_load(cell: str, tmp_path: Path) -> None:
    # cuDNN warns and copies every weight at every call when they are not one flat buffer; building, moving and
    # loading (which assigns each tensor separately) must all leave them packed.
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = edifice.build(cell, d_model=32, n_layers=2, device="cuda").eval()
    edifice.save(model, tmp_path / "rnn.safetensors")
    loaded = edifice.load(tmp_path / "rnn.safetensors", device="cuda").eval()
    x = torch.randn(2, 6, 32, device="cuda")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("error")  # "RNN module weights are not part of single contiguous chunk of memory"
        torch.testing.assert_close(loaded(x=x), model(x=x), atol=0, rtol=0)
