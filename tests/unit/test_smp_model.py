"""model.name=smp: smp architectures and tu- encoders build, pad any size, load encoder weights
only from a local file, and train a few steps."""

from __future__ import annotations

import pytest
import torch

from tests.util import require


def _have_smp() -> bool:
    try:
        import segmentation_models_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(autouse=True)
def _smp_installed():
    require(_have_smp(), "segmentation_models_pytorch (optional extra `smp`) is not installed")


def _cfg(*extra):
    from unetdist.config import load_config

    return load_config(None, ["model.name=smp", "data.channels=gray", *extra])


@pytest.mark.parametrize("arch,encoder", [("Unet", "resnet18"), ("FPN", "tu-resnet18"),
                                          ("UnetPlusPlus", "tu-efficientnet_b0")])
def test_smp_models_build_and_keep_any_input_size(arch, encoder):
    from unetdist.models.registry import build_model

    model = build_model(_cfg(f"model.arch={arch}", f"model.encoder={encoder}").model).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 50, 70))  # neither is a multiple of the stride 32
    assert out.shape == (1, 1, 50, 70)


@pytest.mark.slow  # builds resnet18 twice and copies its weights
def test_encoder_weights_load_from_a_local_timm_file_only(tmp_path):
    import timm
    from safetensors.torch import save_file

    from unetdist.errors import UserError
    from unetdist.models.registry import build_model

    torch.manual_seed(3)
    src = timm.create_model("resnet18", pretrained=False, in_chans=1)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, tmp_path / "r18.safetensors")
    cfg = _cfg("model.encoder=tu-resnet18", f"model.pretrained_path={tmp_path / 'r18.safetensors'}")
    model = build_model(cfg.model)
    got = model.net.encoder.model.state_dict()
    assert torch.equal(got["conv1.weight"], src.state_dict()["conv1.weight"])
    assert torch.equal(got["layer4.1.bn2.running_var"], src.state_dict()["layer4.1.bn2.running_var"])
    save_file({"x": torch.zeros(3)}, tmp_path / "junk.safetensors")
    with pytest.raises(UserError, match="matches only 0"):
        build_model(_cfg("model.encoder=tu-resnet18",
                         f"model.pretrained_path={tmp_path / 'junk.safetensors'}").model)
    with pytest.raises(UserError, match="not found"):
        build_model(_cfg(f"model.pretrained_path={tmp_path / 'none.safetensors'}").model)


def test_bad_arch_and_encoder_are_named():
    from unetdist.errors import ConfigError
    from unetdist.models.registry import build_model

    with pytest.raises(ConfigError, match="model.arch"):
        _cfg("model.arch=NotANet")
    with pytest.raises(ConfigError, match="model.encoder"):
        build_model(_cfg("model.encoder=no_such_encoder").model)


@pytest.mark.slow  # resnet18 forward and backward, 8 steps: seconds of CPU
def test_an_smp_model_trains_a_few_steps_and_its_loss_falls():
    from unetdist.models.registry import build_model
    from unetdist.train.losses import build_loss

    cfg = _cfg("model.arch=Unet", "model.encoder=resnet18")
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    loss_fn = build_loss(cfg.loss)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.randn(2, 1, 48, 48)
    y = (x > 0.5).float()
    fov = torch.ones_like(y)
    losses = []
    for _ in range(8):
        loss = loss_fn(model(x), y, fov)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
