"""The UNet decoder on timm encoders: shapes, local-only pretrained weights, clear errors."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from unetdist.config import ModelConfig
from unetdist.errors import ConfigError, UserError
from unetdist.models.registry import apply_runtime_options, build_model


def timm_cfg(encoder: str = "resnet18", in_channels: int = 3, **kw) -> ModelConfig:
    return ModelConfig(name="timm_unet", encoder=encoder, in_channels=in_channels, **kw)


def seeded(cfg: ModelConfig, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(cfg)


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if timm tries any remote weight source."""
    import timm.models._builder as builder

    def refuse(*a, **k):
        raise AssertionError("timm tried to download weights")

    for fn in ("load_state_dict_from_url", "load_state_dict_from_hf", "download_cached_file",
               "load_custom_from_hf"):
        monkeypatch.setattr(builder, fn, refuse, raising=False)


def source_weights(encoder: str, path, fmt: str) -> nn.Module:
    """A full timm classifier with random (non-trivial) weights, saved to PATH."""
    torch.manual_seed(123)
    src = timm.create_model(encoder, pretrained=False)
    with torch.no_grad():  # BatchNorm inits to 1/0; perturb so every tensor is distinctive
        for p in src.parameters():
            p.add_(0.01 * torch.randn_like(p))
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    if fmt == "safetensors":
        save_file(sd, str(path))
    else:
        torch.save(sd, str(path))
    return src


@pytest.mark.parametrize("encoder", ["resnet18", "efficientnet_b0"])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_output_at_full_resolution(encoder, in_channels, no_network):
    model = seeded(timm_cfg(encoder, in_channels, num_classes=2))
    first = next(m for m in model.encoder.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == in_channels
    assert model.stride == 32
    for size in [(64, 80), (70, 93)]:  # neither a multiple of the stride
        with torch.no_grad():
            y = model(torch.randn(2, in_channels, *size))
        assert y.shape == (2, 2, *size)


def test_encoder_starting_at_quarter_resolution():
    # convnext's finest feature is at 1/4: the decoder adds blocks without skips
    model = seeded(timm_cfg("convnext_atto", 1))
    assert model.extra_reductions == [2, 1]
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 80)).shape == (1, 1, 64, 80)


def test_fewer_encoder_levels():
    model = seeded(timm_cfg("resnet18", 1, encoder_levels=3))
    assert model.encoder.feature_info.reduction() == [2, 4, 8]
    assert model.stride == 8
    with torch.no_grad():
        assert model(torch.randn(1, 1, 36, 44)).shape == (1, 1, 36, 44)


def test_decoder_width_sets_channels():
    model = seeded(timm_cfg("resnet18", 1, decoder_width=4))
    assert model.head.conv.in_channels == 4
    # one block per skip (1/16 .. 1/2) then one to full size: 4 * reduction channels
    assert [b.conv.double_conv[3].out_channels for b in model.decoder] == [64, 32, 16, 8, 4]


@pytest.mark.slow  # resnet18 forward and backward, 8 steps: seconds of CPU
def test_a_few_steps_lower_the_loss():
    model = seeded(timm_cfg("resnet18", 1, decoder_width=4))
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(4, 1, 32, 32)
    y[:, :, ::6, :] = 1.0
    x = y + 0.3 * torch.randn(4, 1, 32, 32, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("encoder,fmt", [
    ("resnet18", "safetensors"),
    pytest.param("resnet18", "pth", marks=pytest.mark.slow),  # the same path, another format
    pytest.param("efficientnet_b0", "safetensors", marks=pytest.mark.slow),
])
def test_pretrained_weights_from_a_local_file(encoder, fmt, tmp_path, no_network):
    path = tmp_path / f"weights.{fmt}"
    src = source_weights(encoder, path, fmt)
    rgb = build_model(timm_cfg(encoder, 3, pretrained_path=str(path)))
    gray = build_model(timm_cfg(encoder, 1, pretrained_path=str(path)))
    src_sd = src.state_dict()
    enc_sd = rgb.encoder.state_dict()
    shared = [k for k in enc_sd if k in src_sd]
    assert len(shared) > 0.9 * len(enc_sd)  # resnet/efficientnet features keep timm's names
    for k in shared:
        assert torch.equal(enc_sd[k], src_sd[k]), k
    # a 1-channel encoder gets the RGB filters summed (timm's adapt_input_conv)
    stem = "conv1.weight" if encoder == "resnet18" else "conv_stem.weight"
    torch.testing.assert_close(gray.encoder.state_dict()[stem],
                               src_sd[stem].sum(dim=1, keepdim=True))


def test_missing_pretrained_file_names_the_path(tmp_path, no_network):
    path = tmp_path / "no" / "such.safetensors"
    with pytest.raises(UserError, match=f"model.pretrained_path.*not found: {path}"):
        build_model(timm_cfg(pretrained_path=str(path)))
    # rebuilding a trained model (weights loaded next) does not need the file
    model = build_model(timm_cfg(pretrained_path=str(path)), pretrained=False)
    assert model.stride == 32


def test_weights_of_another_architecture_are_refused(tmp_path, no_network):
    path = tmp_path / "r18.safetensors"
    source_weights("resnet18", path, "safetensors")
    # shapes clash: timm's load_state_dict error, named with our file
    with pytest.raises(UserError, match="cannot load .*r18.safetensors.*efficientnet_b0"):
        build_model(timm_cfg("efficientnet_b0", pretrained_path=str(path)))
    # no key in common: timm would load nothing and keep a random encoder
    other = tmp_path / "unet.safetensors"
    save_file({"inc.double_conv.0.weight": torch.randn(8, 3, 3, 3)}, str(other))
    with pytest.raises(UserError, match="no usable weights .*only 0%"):
        build_model(timm_cfg("resnet18", pretrained_path=str(other)))


def test_unknown_encoder_suggests_names():
    with pytest.raises(ConfigError, match="model.encoder .*'resnet19'.*resnet18"):
        build_model(timm_cfg("resnet19"))


def test_too_many_levels_is_a_config_error():
    with pytest.raises(ConfigError, match="model.encoder.*resnet18"):
        build_model(timm_cfg("resnet18", encoder_levels=7))


def test_sync_bn_keeps_timm_fused_norm_act(monkeypatch):
    from timm.layers import BatchNormAct2d, SyncBatchNormAct

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model = seeded(timm_cfg("efficientnet_b0", 1))
    acts = [type(m.act) for m in model.modules() if isinstance(m, BatchNormAct2d)]
    model = apply_runtime_options(model, timm_cfg("efficientnet_b0", 1, sync_bn=True),
                                  distributed=True)
    synced = [m for m in model.modules() if isinstance(m, SyncBatchNormAct)]
    assert [type(m.act) for m in synced] == acts  # the activation survived the conversion
    kinds = {type(m) for m in model.modules()}
    assert nn.BatchNorm2d not in kinds and BatchNormAct2d not in kinds
