"""EMA weights: the reference update rule, float32 shadows, swapping in and out."""

import torch

from sedd_megatron.models.sedd.ema import attach_ema, find_ema


def test_update_follows_the_reference_rule():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    ema = attach_ema(model, decay=0.9999)
    shadow = [p.detach().clone() for p in model.parameters()]
    for step in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(step)
        decay = min(0.9999, (1 + step) / (10 + step))
        for s, p in zip(shadow, model.parameters(), strict=True):
            s.sub_((1 - decay) * (s - p.detach()))
    for name, s in zip(ema.param_names, shadow, strict=True):
        torch.testing.assert_close(getattr(ema, name.replace(".", "__")), s)


def test_shadow_stays_float32_when_the_model_is_cast_to_bf16():
    model = torch.nn.Linear(4, 3)
    ema = attach_ema(model, decay=0.99)
    model.bfloat16()
    assert model.weight.dtype == torch.bfloat16
    assert all(b.dtype == torch.float32 for b in ema.buffers())
    assert "ema.weight" in model.state_dict()


def test_swapped_in_restores_the_raw_weights():
    model = torch.nn.Linear(4, 3)
    ema = attach_ema(model, decay=0.5)
    raw = model.weight.detach().clone()
    with torch.no_grad():
        ema.weight.fill_(7.0)
    with ema.swapped_in():
        assert torch.all(model.weight == 7.0)
    assert torch.equal(model.weight, raw)
    wrapper = torch.nn.Module()
    wrapper.module = model
    assert find_ema(wrapper) is ema
