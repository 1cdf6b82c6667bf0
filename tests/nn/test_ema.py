"""EMA: the stated update rule (with and without warm-up), swapping in and out, state in the state dict."""

import pytest
import torch

from molequi.nn.ema import ExponentialMovingAverage


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


def test_without_warmup_is_the_plain_average():
    """warmup=False (distillation): shadow_t = sum_k (1 - d) d^(t-1-k) p_k + d^t p_init, summed by hand."""
    torch.manual_seed(1)
    model = torch.nn.Linear(2, 2).double()
    d = 0.75
    ema = ExponentialMovingAverage(model, decay=d, warmup=False)
    init = model.weight.detach().clone()
    history = []
    for _ in range(4):
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))
        history.append(model.weight.detach().clone())
        ema.update(model)
    t = len(history)
    expected = d**t * init + sum((1 - d) * d ** (t - 1 - k) * p for k, p in enumerate(history))
    assert torch.allclose(ema.averaged_state_dict(model)["weight"], expected, atol=1e-12, rtol=0)
