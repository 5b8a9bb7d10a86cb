"""The activations papers compare with SIREN (issue 17): FINER, Gauss, WIRE as options of the
sine-style network: their initialisation statistics, WIRE's complex arithmetic, training in fp32
and bf16-mixed on the default photo. (Export and fresh-process loading: tests/test_field.py.)"""

from __future__ import annotations

import math

import pytest
import torch

import nir
from nir.errors import NirError
from nir.fields import Siren


def _layer_outputs(net: Siren, x: torch.Tensor) -> list[torch.Tensor]:
    outs, h = [], x
    with torch.no_grad():
        for layer in net.body:
            h = layer(h)
            outs.append(h)
    return outs


@pytest.mark.parametrize("first_bias_scale", [None, 20.0])
def test_finer_keeps_sirens_activation_statistics(first_bias_scale):
    """FINER (Liu et al. 2024) keeps SIREN's initialisation, so each layer's output stays
    arcsine-like on [-1, 1] (variance 1/2) at every depth, whatever the first layer's bias range."""
    torch.manual_seed(0)
    net = Siren(2, 1, hidden_dim=512, num_layers=5, activation="finer", first_bias_scale=first_bias_scale)
    if first_bias_scale is not None:
        bias = net.body[0].linear.bias
        assert bias.abs().max() <= first_bias_scale and bias.abs().max() > 0.9 * first_bias_scale
    for h in _layer_outputs(net, torch.rand(4096, 2) * 2 - 1):
        assert abs(h.mean().item()) < 0.07 and abs(h.var().item() - 0.5) < 0.03


def test_gauss_activations_neither_saturate_nor_collapse():
    """exp(-(s z)^2) lies in (0, 1]; with s = 10 and PyTorch's initialisation the spread settles
    after the first layers instead of drifting to all-0 or all-1 with depth."""
    torch.manual_seed(0)
    net = Siren(2, 1, hidden_dim=256, num_layers=5, activation="gauss", scale=10.0)
    outs = _layer_outputs(net, torch.rand(4096, 2) * 2 - 1)
    stds = [h.std().item() for h in outs]
    assert all(float(h.min()) >= 0 and float(h.max()) <= 1 for h in outs)
    assert all(0.2 < s < 0.45 for s in stds), stds
    assert max(stds[1:]) - min(stds[1:]) < 0.05, stds  # depth-stable


def test_wire_envelope_bound_and_spread():
    """|exp(i w0 z - |s z|^2)| = exp(-w0 Im z - s^2 |z|^2) <= exp(w0^2 / (4 s^2)) for any z."""
    torch.manual_seed(0)
    w0, s = 20.0, 10.0
    net = Siren(2, 1, hidden_dim=256, num_layers=5, activation="wire", w0=w0, w0_first=w0, scale=s)
    bound = math.exp(w0**2 / (4 * s**2))
    for h in _layer_outputs(net, torch.rand(4096, 2) * 2 - 1):
        re, im = h.chunk(2, dim=-1)
        assert float(torch.sqrt(re**2 + im**2).max()) <= bound * (1 + 1e-5)
        assert 0.15 < h.std().item() < 0.6


def test_wire_real_arithmetic_equals_the_complex_network():
    """nir's WIRE (real and imaginary halves, two real Linear per complex weight) against the same
    weights in torch's complex dtype: exp(1j w0 z - |s z|^2), the field the real part."""
    torch.manual_seed(0)
    w0, s = 20.0, 10.0
    net = Siren(2, 3, hidden_dim=16, num_layers=2, activation="wire", w0=w0, w0_first=w0, scale=s)
    x = torch.rand(50, 2, dtype=torch.float64) * 2 - 1
    net = net.double()
    first = net.body[0].linear
    z = x @ first.weight.T + first.bias
    h = torch.exp(1j * w0 * z - (s * z).abs() ** 2)
    for layer in net.body[1:]:
        w = torch.complex(layer.linear.weight, layer.linear_im.weight)
        b = torch.complex(layer.linear.bias, layer.linear_im.bias)
        z = h @ w.T + b
        h = torch.exp(1j * w0 * z - (s * z).abs() ** 2)
    out = (h @ torch.complex(net.head.weight, net.head_im.weight).T).real + net.head.bias
    torch.testing.assert_close(net(x), out)


def test_unknown_activation_is_one_line():
    with pytest.raises(NirError, match="model.activation must be one of sine, finer, gauss, wire"):
        Siren(2, 1, activation="relu")


@pytest.mark.parametrize("model", ["finer", "gauss", "wire"])
@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_activation_trains_on_the_default_photo(model, precision, tmp_path):
    field, m = nir.fit(
        "image",
        [f"model={model}", "model.hidden_dim=32", "model.num_layers=1", "batch_size=4096", "log.images=false"],
        run_dir=tmp_path / "run",
        steps=40,
        precision=precision,
        trainer__val_check_interval=40,
        trainer__enable_progress_bar=False,
    )
    assert m["status"] == "ok" and m["nonfinite_steps"] == 0
    assert m["psnr"] > 14.0, m["psnr"]  # the photo's mean alone gives ~11 dB
    assert field.network.activation == model


def test_activation_formulas_by_hand():
    from nir.fields.siren import activate

    z = torch.tensor([0.5, -0.5, 0.1], dtype=torch.float64)
    torch.testing.assert_close(activate("finer", z, 30.0, 10.0), torch.sin(30.0 * (z.abs() + 1) * z))
    assert float(activate("finer", z, 30.0, 10.0)[0]) == pytest.approx(math.sin(22.5))
    assert float(activate("gauss", z, 30.0, 10.0)[2]) == pytest.approx(math.exp(-1.0))
    re, im = activate("wire", z, 20.0, 10.0).chunk(2)  # a real z: exp(-s^2 z^2) (cos w0 z + i sin w0 z)
    assert float(re[2]) == pytest.approx(math.exp(-1.0) * math.cos(2.0)) and float(im[2]) == pytest.approx(
        math.exp(-1.0) * math.sin(2.0)
    )
