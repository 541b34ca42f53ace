"""The whole model through the Triton kernels (under Triton's CPU interpreter) equals the PyTorch path.

The kernel tests check each op alone; this checks that the model hands them the layouts and dtypes they
expect (length-contiguous activations, the fused norm's saved sum, the state carry) end to end: logits
and every parameter's gradient, and a chunked call with the recurrent state carried.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"  # must precede the first Triton kernel definition

import torch

from mamba_dna.config import MambaConfig
from mamba_dna.model import MambaLMHeadModel


def _run(monkeypatch, backend: str, model: MambaLMHeadModel, x: torch.Tensor):
    monkeypatch.setenv("MAMBA_DNA_KERNELS", backend)
    model.zero_grad(set_to_none=True)
    logits = model(x)
    (logits.square().mean()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    with torch.no_grad():
        state = model.allocate_state(x.shape[0])
        chunked = torch.cat([model(x[:, :20], state), model(x[:, 20:], state)], dim=1)
    return logits.detach(), grads, chunked


def test_triton_path_equals_reference_path(monkeypatch):
    torch.manual_seed(0)
    model = MambaLMHeadModel(MambaConfig(d_model=16, n_layer=2))
    # Batch 2 (the layouts differ from batch 1 only in their batch strides), an odd length: a partial
    # chunk in every kernel. About a minute under the interpreter, so one case.
    x = torch.randint(5, 10, (2, 37))
    ref_logits, ref_grads, ref_chunked = _run(monkeypatch, "reference", model, x)
    tri_logits, tri_grads, tri_chunked = _run(monkeypatch, "triton", model, x)
    assert torch.allclose(tri_logits, ref_logits, atol=1e-5, rtol=1e-4)
    assert torch.allclose(tri_chunked, ref_logits, atol=1e-5, rtol=1e-4)
    assert torch.allclose(ref_chunked, ref_logits, atol=1e-5, rtol=1e-4)
    assert ref_grads.keys() == tri_grads.keys() and len(ref_grads) == len(list(model.parameters()))
    for name, g in ref_grads.items():
        err = ((tri_grads[name] - g).norm() / g.norm().clamp_min(1e-12)).item()
        assert err < 1e-4, (name, err)
