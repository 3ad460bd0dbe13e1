"""Every fused op returns, and its backward produces, tensors of their own, not views.

Megatron frees a pipeline stage's output in place once it is sent and refuses views ("counter-
productive to free a view of another tensor"); ``assert_viewless_tensor`` (full recomputation
with distributed saved activations) checks the same. A fused op that returned a reshaped view
of its flat [rows, H] buffer stopped every pipeline-parallel run at its first micro-batch
(tests/training/test_gpu_paths.py runs the pipelines themselves).
"""

import pytest
import torch

from sedd_megatron.kernels import bias_gelu, gated_residual, layer_norm_modulate

S, B, H = 6, 2, 32  # Megatron's [sequence, batch, hidden]


def _leaf(*shape):
    return torch.randn(*shape, dtype=torch.float32).requires_grad_()


def _cases():
    x, w, shift, scale = _leaf(S, B, H), _leaf(H), _leaf(B, H), _leaf(B, H)
    yield "layer_norm_modulate", (x, w, shift, scale), lambda: layer_norm_modulate(
        x, w, shift, scale
    )
    yield "layer_norm_modulate_rms", (x, w, shift, scale), lambda: layer_norm_modulate(
        x, w, shift, scale, rms=True
    )
    branch, bias, gate, residual = _leaf(S, B, H), _leaf(H), _leaf(B, H), _leaf(S, B, H)
    yield "gated_residual", (branch, bias, gate, residual), lambda: gated_residual(
        branch, bias, gate, residual, p=0.1, training=True
    )
    y, b = _leaf(S, B, 4 * H), _leaf(4 * H)
    yield "bias_gelu", (y, b), lambda: bias_gelu(y, b)


@pytest.mark.parametrize(
    "name", ["layer_norm_modulate", "layer_norm_modulate_rms", "gated_residual", "bias_gelu"]
)
def test_outputs_and_gradients_are_not_views(triton_interpreter, name):
    from megatron.core.pipeline_parallel.schedules import custom_backward, deallocate_output_tensor

    inputs, op = next((i, f) for n, i, f in _cases() if n == name)
    out = op()
    dout = torch.ones_like(out)
    deallocate_output_tensor(out, deallocate_pipeline_outputs=True)  # refuses views
    custom_backward(out, dout)  # Megatron's backward of a freed output
    for t in inputs:
        assert t.grad is not None and t.grad._base is None, f"{name}: grad of {tuple(t.shape)}"
