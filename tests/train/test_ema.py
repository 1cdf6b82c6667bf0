"""EMA: the stated update rule, swapping in and out, and state carried in the state dict."""

import pytest
import torch

from molequi.train.ema import ExponentialMovingAverage


def test_update_rule_swap_and_state_dict():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = ExponentialMovingAverage(model, decay=0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    for t in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
        d = min(0.9, (1 + t) / (10 + t))
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters())]
    live = [p.detach().clone() for p in model.parameters()]
    with ema.swapped_into(model):
        for p, e in zip(model.parameters(), expected):
            assert torch.allclose(p, e, atol=1e-6)
    for p, q in zip(model.parameters(), live):
        assert torch.equal(p, q)
    state = ema.averaged_state_dict(model)
    assert torch.allclose(state["weight"], expected[0], atol=1e-6)
    other = ExponentialMovingAverage(torch.nn.Linear(3, 2), decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert int(other.num_updates) == 5 and torch.equal(other.shadow_0, ema.shadow_0)
    with pytest.raises(ValueError):
        ExponentialMovingAverage(model, decay=1.0)
