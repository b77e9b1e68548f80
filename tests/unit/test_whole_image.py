"""eval.tile=0 (whole image padded to the network's multiple), TTA views and tiles batched
together, the inference policy, and the forward counts behind evaluate's estimate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.eval_helpers import tiny_config, tiny_model
from unetdist.config import EvalConfig
from unetdist.errors import ConfigError
from unetdist.eval.ensemble import Ensemble
from unetdist.eval.inference import inference_policy, sliding_window_predict
from unetdist.eval.windows import forward_count, network_multiple, window_plan


def _count_forwards(model):
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    return seen


def test_whole_image_equals_the_model_on_the_replicate_padded_image():
    """An independent reference: pad by hand to 2**depth, one forward, crop, sigmoid."""
    cfg = tiny_config()  # UNet depth 3 -> multiple 8
    model = tiny_model(cfg)
    x = torch.randn(1, 1, 45, 61)
    got = sliding_window_predict(model, x, EvalConfig(tile=0))
    padded = F.pad(x, (0, 64 - 61, 0, 48 - 45), mode="replicate")
    with torch.no_grad():
        ref = torch.sigmoid(model(padded))[..., :45, :61]
    assert got.shape == (1, 1, 45, 61)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_flip_tta_of_a_whole_image_is_one_forward_and_equals_the_mean_of_the_views():
    cfg = tiny_config()
    model = tiny_model(cfg)
    seen = _count_forwards(model)
    x = torch.randn(1, 1, 40, 56)
    got = sliding_window_predict(model, x, EvalConfig(tile=0, tta="flip", batch_size=8))
    assert seen == [(4, 1, 40, 56)]  # 4 views, one forward
    plain = EvalConfig(tile=0)
    manual = sum(sliding_window_predict(model, x.flip(d), plain).flip(d) if d else
                 sliding_window_predict(model, x, plain) for d in ((), (-1,), (-2,), (-2, -1)))
    torch.testing.assert_close(got, manual / 4, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("tta", ["flip", "dihedral"])
def test_tiles_of_all_views_batched_together_match_one_view_at_a_time(tta):
    """Batch composition must not change results (eval mode): batch 1 == batch 7 == counted."""
    cfg = tiny_config()
    model = tiny_model(cfg)
    seen = _count_forwards(model)
    x = torch.randn(1, 1, 70, 90)
    one = sliding_window_predict(model, x, EvalConfig(tile=48, overlap=0.25, batch_size=1,
                                                      tta=tta))
    seen.clear()
    ecfg = EvalConfig(tile=48, overlap=0.25, batch_size=7, tta=tta)
    many = sliding_window_predict(model, x, ecfg)
    torch.testing.assert_close(one, many, atol=1e-5, rtol=1e-4)
    tiles, views, forwards = forward_count(70, 90, ecfg, model)
    assert (tiles, views) == (6, 4 if tta == "flip" else 8)
    assert len(seen) == forwards == -(-tiles * views // 7)


def test_network_multiple_of_each_model_kind():
    cfg = tiny_config()
    unet = tiny_model(cfg)
    assert network_multiple(unet) == 8  # depth 3
    deep = tiny_model(tiny_config("model.depth=4"))
    assert network_multiple(Ensemble([unet, deep])) == 16
    assert network_multiple(torch.nn.Conv2d(1, 1, 1)) == 1


def test_window_plan_whole_image_pads_to_the_multiple():
    p = window_plan(584, 565, 0, 0.5, 16)
    assert p.padded == p.window == (592, 576) and p.starts == [(0, 0)]
    tiled = window_plan(584, 565, 256, 0.5, 16)
    assert tiled.window == (256, 256) and len(tiled.starts) == 16


def test_policy_decides_autocast_and_memory_format_once():
    cfg = tiny_config()
    model = tiny_model(cfg).to(memory_format=torch.channels_last)
    policy = inference_policy(model, precision="bf16")
    assert policy.memory_format == torch.channels_last and policy.device.type == "cpu"
    with policy.autocast():
        assert torch.is_autocast_enabled("cpu")
    plain = inference_policy(model)
    with plain.autocast():
        assert not torch.is_autocast_enabled("cpu")
    x = torch.randn(1, 1, 48, 48)
    got = sliding_window_predict(model, x, EvalConfig(tile=0), policy=policy)
    ref = sliding_window_predict(model, x, EvalConfig(tile=0), policy=plain)
    assert got.dtype == torch.float32 and float((got - ref).abs().max()) < 0.05


def test_tile_zero_is_a_valid_setting_and_small_tiles_are_not():
    from unetdist.config import load_config

    assert load_config(None, ["eval.tile=0"]).eval.tile == 0
    with pytest.raises(ConfigError, match="eval.tile"):
        load_config(None, ["eval.tile=8"])
