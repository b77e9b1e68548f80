"""The classic UNet, the registry, runtime options and safetensors weights."""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unetdist.config import ModelConfig, RunConfig
from unetdist.errors import ConfigError, UserError
from unetdist.models.layers import count_parameters
from unetdist.models.registry import MODELS, apply_runtime_options, build_model
from unetdist.models.unet import UNet
from unetdist.models.weights import (
    clean_state_dict,
    load_weights,
    read_state_dict,
    save_weights,
)

# ---------------------------------------------------------------- the tutorial's code, verbatim
# (milesial/Pytorch-UNet unet_parts.py + unet_model.py): an independent reference for ours


class RefDoubleConv(nn.Module):
    def __init__(self, in_channels, out_channels, mid_channels=None):
        super().__init__()
        if not mid_channels:
            mid_channels = out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True))

    def forward(self, x):
        return self.double_conv(x)


class RefDown(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), RefDoubleConv(in_channels,
                                                                         out_channels))

    def forward(self, x):
        return self.maxpool_conv(x)


class RefUp(nn.Module):
    def __init__(self, in_channels, out_channels, bilinear=True):
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode='bilinear', align_corners=True)
            self.conv = RefDoubleConv(in_channels, out_channels, in_channels // 2)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = RefDoubleConv(in_channels, out_channels)

    def forward(self, x1, x2):
        x1 = self.up(x1)
        diffY = x2.size()[2] - x1.size()[2]
        diffX = x2.size()[3] - x1.size()[3]
        x1 = F.pad(x1, [diffX // 2, diffX - diffX // 2, diffY // 2, diffY - diffY // 2])
        x = torch.cat([x2, x1], dim=1)
        return self.conv(x)


class RefOutConv(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x):
        return self.conv(x)


class RefUNet(nn.Module):
    def __init__(self, n_channels, n_classes, bilinear=False):
        super().__init__()
        self.inc = RefDoubleConv(n_channels, 64)
        self.down1 = RefDown(64, 128)
        self.down2 = RefDown(128, 256)
        self.down3 = RefDown(256, 512)
        factor = 2 if bilinear else 1
        self.down4 = RefDown(512, 1024 // factor)
        self.up1 = RefUp(1024, 512 // factor, bilinear)
        self.up2 = RefUp(512, 256 // factor, bilinear)
        self.up3 = RefUp(256, 128 // factor, bilinear)
        self.up4 = RefUp(128, 64, bilinear)
        self.outc = RefOutConv(64, n_classes)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.outc(x)


# ---------------------------------------------------------------- helpers


def small_cfg(**kw) -> ModelConfig:
    base = {"name": "unet", "in_channels": 1, "width": 8, "depth": 3}
    base.update(kw)
    return ModelConfig(**base)


def seeded(cfg: ModelConfig, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(cfg)


# ---------------------------------------------------------------- the seed's network


def test_seed_unet_has_the_tutorials_parameter_count():
    assert count_parameters(UNet(1, 1, bilinear=True)) == 17_261_825
    # the registry's defaults are the seed's network
    cfg = RunConfig().model
    cfg.in_channels = 1
    assert count_parameters(build_model(cfg)) == 17_261_825


@pytest.mark.parametrize("bilinear", [True, False])
def test_seed_unet_equals_the_tutorial_code(bilinear):
    torch.manual_seed(1)
    ref = RefUNet(1, 1, bilinear=bilinear).eval()
    ours = UNet(1, 1, bilinear=bilinear).eval()
    assert count_parameters(ours) == count_parameters(ref)
    ours.load_state_dict(ref.state_dict(), strict=True)  # same keys and shapes
    x = torch.randn(1, 1, 37, 45)  # odd sizes exercise the pad-to-skip path
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))


@pytest.mark.slow  # the full-width seed UNet on a whole 584x565 image
def test_seed_unet_keeps_drive_size():
    model = UNet(1, 1, bilinear=True).eval()
    with torch.inference_mode():
        y = model(torch.randn(1, 1, 584, 565))
    assert y.shape == (1, 1, 584, 565)


@pytest.mark.parametrize("size,bilinear", [((584, 565), True), ((584, 565), False),
                                           ((96, 96), True), ((64, 80), False),
                                           ((33, 47), True)])
def test_output_has_input_size(size, bilinear):
    model = seeded(small_cfg(bilinear=bilinear, in_channels=3, num_classes=2, depth=4, width=4))
    with torch.no_grad():
        y = model(torch.randn(1, 3, *size))
    assert y.shape == (1, 2, *size)


def test_width_depth_norm_dropout_options():
    plain = seeded(small_cfg(width=2, depth=5, norm="group"))
    assert plain.inc.double_conv[0].out_channels == 2
    assert plain.down5.maxpool_conv[1].double_conv[3].out_channels == 2 * 2 ** 5 // 2
    assert not hasattr(plain, "down6")
    kinds = {type(m) for m in plain.modules()}
    assert nn.GroupNorm in kinds and nn.BatchNorm2d not in kinds
    inst = seeded(small_cfg(norm="instance", width=4))
    assert nn.InstanceNorm2d in {type(m) for m in inst.modules()}
    assert inst(torch.randn(2, 1, 40, 40)).shape == (2, 1, 40, 40)
    drop = seeded(small_cfg(dropout=0.5, width=4))
    assert isinstance(drop.drop, nn.Dropout2d) and drop.drop.p == 0.5
    x = torch.randn(2, 1, 24, 24)
    drop.train()
    assert not torch.equal(drop(x), drop(x))  # dropout active
    drop.eval()
    assert torch.equal(drop(x), drop(x))
    # dropout adds no weights: the state dict matches the dropout-free model's
    assert drop.state_dict().keys() == seeded(small_cfg(width=4)).state_dict().keys()


def test_too_small_input_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 8x8"):
        seeded(small_cfg())(torch.randn(1, 1, 4, 16))


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def synthetic_batch(channels: int = 1, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright thin lines on noise: a target the network can learn in a few steps."""
    g = torch.Generator().manual_seed(0)
    x = 0.3 * torch.randn(4, channels, size, size, generator=g)
    y = torch.zeros(4, 1, size, size)
    y[:, :, ::6, :] = 1.0
    return x + y, y


def test_a_few_steps_lower_the_loss():
    model = seeded(small_cfg(width=4, depth=2))
    losses = _train(model, *synthetic_batch(size=24), steps=8)
    assert losses[-1] < 0.85 * losses[0], losses


def test_unet_starts_from_a_seed_checkpoint(tmp_path):
    # the tutorial saves model.state_dict() plus `mask_values` with torch.save
    torch.manual_seed(3)
    ref = RefUNet(3, 2, bilinear=False).eval()
    sd = ref.state_dict()
    sd["mask_values"] = [0, 1]
    path = tmp_path / "checkpoint_epoch5.pth"
    torch.save(sd, path)
    cfg = ModelConfig(name="unet", in_channels=3, num_classes=2, bilinear=False,
                      pretrained_path=str(path))
    ours = build_model(cfg).eval()
    x = torch.randn(1, 3, 32, 40)
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))
    with pytest.raises(UserError, match="checkpoint_epoch5.pth does not fit this model"):
        build_model(small_cfg(pretrained_path=str(path)))
    with pytest.raises(UserError, match="model.pretrained_path: weights file not found"):
        build_model(small_cfg(pretrained_path=str(tmp_path / "nope.pth")))


def test_read_state_dict_formats(tmp_path):
    w = {"module.a": torch.ones(2), "b": torch.zeros(1)}
    torch.save({"state_dict": w, "epoch": 3}, tmp_path / "ckpt.pt")
    assert list(read_state_dict(tmp_path / "ckpt.pt")) == ["a", "b"]
    save_weights(w, tmp_path / "w.safetensors")
    assert list(read_state_dict(tmp_path / "w.safetensors")) == ["a", "b"]

    # an arbitrary pickled object is refused, never constructed
    torch.save({"args": argparse.Namespace(lr=1)}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="weights_only=True"):
        read_state_dict(tmp_path / "evil.pt")


# ---------------------------------------------------------------- registry


def test_registry_names_match_config_choices():
    assert set(MODELS) == {"unet", "timm_unet", "smp"}


def test_unknown_model_name_lists_known_ones():
    with pytest.raises(ConfigError, match="model.name.*unet\\|timm_unet\\|smp.*'segformer'"):
        build_model(ModelConfig(name="segformer", in_channels=1))


def test_missing_in_channels_is_a_config_error():
    with pytest.raises(ConfigError, match="model.in_channels"):
        build_model(ModelConfig(name="unet"))


# ---------------------------------------------------------------- runtime options


def test_channels_last_keeps_outputs():
    cfg = small_cfg()
    plain = seeded(cfg).eval()
    cl = apply_runtime_options(seeded(cfg).eval(), small_cfg(channels_last=True),
                               distributed=False)
    conv = cl.inc.double_conv[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 1, 48, 40)
    with torch.no_grad():
        torch.testing.assert_close(cl(x), plain(x), rtol=1e-4, atol=1e-5)


def test_sync_bn_without_cuda_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="model.sync_bn"):
        apply_runtime_options(seeded(small_cfg()), small_cfg(sync_bn=True), distributed=True)


def test_sync_bn_converts_under_ddp(monkeypatch):
    # conversion itself needs no GPU; only running SyncBatchNorm does
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model = apply_runtime_options(seeded(small_cfg()), small_cfg(sync_bn=True),
                                  distributed=True)
    kinds = {type(m) for m in model.modules()}
    assert nn.SyncBatchNorm in kinds and nn.BatchNorm2d not in kinds
    single = apply_runtime_options(seeded(small_cfg()), small_cfg(sync_bn=True),
                                   distributed=False)
    assert nn.SyncBatchNorm not in {type(m) for m in single.modules()}


@pytest.mark.slow  # torch.compile: seconds of CPU
def test_compile_wraps_the_model():
    # torch.compile is lazy: nothing is compiled until the first forward (about 30 s on
    # this CPU), so this checks the wrapper without paying for inductor
    model = apply_runtime_options(seeded(small_cfg()), small_cfg(compile=True),
                                  distributed=False)
    assert type(model).__name__ == "OptimizedModule"
    assert all(k.startswith("_orig_mod.") for k in model.state_dict())


# ---------------------------------------------------------------- weights


def test_safetensors_round_trip_gives_identical_outputs(tmp_path):
    cfg = small_cfg(norm="batch")
    model = seeded(cfg, 0)
    _train(model, *synthetic_batch(), steps=2)  # non-trivial BatchNorm running stats
    model.eval()
    meta = {"format": "unetdist-1", "step": "2"}
    path = save_weights(model, tmp_path / "best" / "model.safetensors", meta)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.safetensors"]
    sd, got_meta = load_weights(path)
    assert got_meta == meta
    fresh = seeded(cfg, 1)
    fresh.load_state_dict(sd, strict=True)
    fresh.eval()
    x = torch.randn(2, 1, 45, 51)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


@pytest.mark.slow  # torch.compile: seconds of CPU
def test_compiled_and_channels_last_model_saves_clean_keys(tmp_path):
    cfg = small_cfg(channels_last=True, compile=True)
    model = apply_runtime_options(seeded(cfg), cfg, distributed=False)
    path = save_weights(model, tmp_path / "m.safetensors", {"format": "unetdist-1"})
    sd, _ = load_weights(path)
    plain = seeded(small_cfg(), 5)
    assert set(sd) == set(plain.state_dict())
    plain.load_state_dict(sd, strict=True)
    orig = model._orig_mod.eval()
    plain.eval()
    x = torch.randn(1, 1, 32, 40)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), orig(x), rtol=1e-4, atol=1e-5)


def test_clean_state_dict_strips_wrapper_prefixes():
    t = torch.zeros(1)
    sd = {"module._orig_mod.inc.w": t, "_orig_mod.module.outc.b": t,
          "module.encoder._orig_mod.conv.w": t, "module_x.w": t}
    assert list(clean_state_dict(sd)) == ["inc.w", "outc.b", "encoder.conv.w", "module_x.w"]
    with pytest.raises(ValueError, match="both map to 'a.w'"):
        clean_state_dict({"module.a.w": t, "a.w": t})


def test_weights_errors(tmp_path):
    with pytest.raises(UserError, match="weights file not found: .*nope.safetensors"):
        load_weights(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(UserError, match="bad.safetensors"):
        load_weights(bad)
    with pytest.raises(TypeError, match="str to str"):
        save_weights({"w": torch.zeros(1)}, tmp_path / "x.safetensors", {"step": 3})
    assert not (tmp_path / "x.safetensors").exists()


def test_shared_tensors_are_saved_apart(tmp_path):
    w = torch.arange(6.0)
    path = save_weights({"a": w, "b": w, "c": w[:3]}, tmp_path / "s.safetensors")
    sd, meta = load_weights(path)
    assert meta == {}
    assert torch.equal(sd["a"], w) and torch.equal(sd["b"], w) and torch.equal(sd["c"], w[:3])
