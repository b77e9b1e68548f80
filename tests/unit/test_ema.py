"""ModelEma: the update rule against a hand computation, buffers copied, state round trip."""

from __future__ import annotations

import pytest
import torch

from unetdist.train.ema import ModelEma


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))


def test_update_is_the_warmed_up_exponential_average():
    net = _net()
    ema = ModelEma(net, decay=0.9)
    ref = {k: v.clone().double() for k, v in net.state_dict().items()}
    for t in range(30):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net.train()(torch.randn(2, 1, 8, 8))  # moves the BatchNorm running stats
        d = min(0.9, (1 + t) / (10 + t))
        for name, p in net.named_parameters():
            ref[name] = d * ref[name] + (1 - d) * p.detach().double()
        ema.update(net)
    got = ema.state_dict()
    for name, _ in net.named_parameters():
        torch.testing.assert_close(got[name].double(), ref[name], rtol=1e-5, atol=1e-6)
    for name, buf in net.named_buffers():  # copied, not averaged
        assert torch.equal(got[name], buf)
    assert ema.updates == 30 and ema.current_decay() == pytest.approx(31 / 40)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_save_and_load_round_trip_bitwise(tmp_path):
    net = _net()
    ema = ModelEma(net, decay=0.99)
    for _ in range(3):
        with torch.no_grad():
            net[0].weight.mul_(1.1)
        ema.update(net)
    ema.save(tmp_path)
    other = ModelEma(_net(), decay=0.99)
    assert other.load(tmp_path) and other.updates == 3
    for k, v in ema.state_dict().items():
        assert torch.equal(v, other.state_dict()[k])
    assert not ModelEma(_net(), 0.99).load(tmp_path / "nothing")


def test_ema_decay_is_validated_by_name():
    from unetdist.config import load_config
    from unetdist.errors import ConfigError

    with pytest.raises(ConfigError, match="train.ema_decay"):
        load_config(None, ["train.ema_decay=1.0"])
