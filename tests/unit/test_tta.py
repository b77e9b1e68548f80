"""TTA views: inverses are exact on a non-square image, the modes have the right views, and
the sliding window's TTA of an orientation-equivariant model equals no TTA."""

from __future__ import annotations

import pytest
import torch

from unetdist.config import EvalConfig, load_config
from unetdist.eval.inference import sliding_window_predict
from unetdist.eval.tta import tta_mode, views


@pytest.mark.parametrize("mode,n", [("none", 1), ("flip", 4), ("dihedral", 8)])
def test_views_are_distinct_and_each_inverse_restores_a_non_square_image(mode, n):
    x = torch.arange(2 * 5 * 7, dtype=torch.float32).reshape(1, 2, 5, 7)  # no symmetry at all
    vs = views(mode)
    assert len(vs) == n
    seen = set()
    for v in vs:
        y = v.forward(x)
        assert y.shape[-2:] in ((5, 7), (7, 5))
        assert torch.equal(v.inverse(y), x)
        seen.add((tuple(y.shape), tuple(y.flatten().tolist())))
    assert len(seen) == n  # 8 different images for dihedral: all symmetries of the square


def test_dihedral_views_match_numpy_rotations_and_flips():
    import numpy as np

    x = torch.randn(1, 1, 3, 4)
    a = x[0, 0].numpy()
    expected = [np.rot90(a, k) for k in range(4)] + [np.rot90(a[:, ::-1], k) for k in range(4)]
    got = [v.forward(x)[0, 0].numpy() for v in views("dihedral")]
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(e, g)


def test_sliding_window_tta_of_a_pointwise_model_equals_no_tta_on_a_non_square_image():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 1, 1).eval()  # 1x1 conv: commutes with flips and rotations
    image = torch.randn(1, 1, 40, 72)
    base = EvalConfig(tile=32, overlap=0.25, batch_size=4)
    plain = sliding_window_predict(model, image, base)
    for mode in ("flip", "dihedral"):
        cfg = EvalConfig(tile=32, overlap=0.25, batch_size=4, tta=mode)
        out = sliding_window_predict(model, image, cfg)
        assert out.shape == (1, 1, 40, 72)
        torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-6)


def test_old_boolean_configs_mean_flip_and_bad_modes_are_named():
    from unetdist.errors import ConfigError

    assert tta_mode(True) == "flip" and tta_mode("false") == "none"
    assert load_config(None, ["eval.tta=true"]).eval.tta == "flip"
    assert load_config(None, ["eval.tta=false"]).eval.tta == "none"
    assert load_config(None, ["eval.tta=dihedral"]).eval.tta == "dihedral"
    with pytest.raises(ConfigError, match="eval.tta"):
        load_config(None, ["eval.tta=rot45"])
