import math

import pytest
import torch

from nir.errors import NirError
from nir.fields import FourierMLP, Siren


@pytest.mark.parametrize("cls", [Siren, FourierMLP])
@pytest.mark.parametrize("in_dim,out_dim", [(1, 1), (2, 3), (3, 2)])
def test_shapes(cls, in_dim, out_dim):
    net = cls(in_dim, out_dim, hidden_dim=16, num_layers=2)
    y = net(torch.rand(7, in_dim) * 2 - 1)
    assert y.shape == (7, out_dim) and y.dtype == torch.float32


def test_siren_layer_count_follows_hidden_layers_convention():
    net = Siren(2, 1, hidden_dim=8, num_layers=3)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 + 2


def test_siren_init_bounds():
    w0 = 30.0
    net = Siren(2, 1, hidden_dim=64, num_layers=2, w0=w0)
    first = net.body[0].linear.weight
    assert first.abs().max() <= 1 / 2 and first.abs().max() > 0.45  # U(-1/n, 1/n), n = 2
    hidden = net.body[1].linear.weight
    bound = math.sqrt(6 / 64) / w0
    assert hidden.abs().max() <= bound and hidden.abs().max() > 0.95 * bound


def test_siren_activation_statistics_match_paper():
    """Sitzmann et al. 2020, Sec. 3.2: with this init, w0 * W x ~ N(0, 1) at every hidden layer
    and each sine output follows the arcsine distribution on [-1, 1] (mean 0, variance 1/2,
    P(|y| > 0.9) = 1 - 2 asin(0.9) / pi = 0.287), independent of depth."""
    torch.manual_seed(0)
    net = Siren(2, 1, hidden_dim=512, num_layers=5)
    x = torch.rand(4096, 2) * 2 - 1
    h = net.body[0](x)
    expected_tail = 1 - 2 * math.asin(0.9) / math.pi
    with torch.no_grad():
        for layer in net.body[1:]:
            pre = layer.w0 * (h @ layer.linear.weight.T)  # weight part of the argument
            assert abs(pre.std().item() - 1.0) < 0.08
            h = layer(h)
            assert abs(h.mean().item()) < 0.06
            assert abs(h.var().item() - 0.5) < 0.03
            tail = (h.abs() > 0.9).float().mean().item()
            assert abs(tail - expected_tail) < 0.03


def test_siren_sine_stays_fp32_under_autocast():
    net = Siren(2, 1, hidden_dim=16, num_layers=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net.body[0](torch.rand(5, 2)).dtype == torch.float32
        assert net.body[1](torch.rand(5, 16)).dtype == torch.float32


def test_siren_first_layer_fp32_is_exact_under_autocast():
    net = Siren(2, 1, hidden_dim=16, num_layers=0)
    x = torch.rand(100, 2) * 2 - 1
    ref = net.body[0](x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net.body[0](x)
    torch.testing.assert_close(out, ref)


def test_fourier_buffer_in_state_dict_and_restored():
    a = FourierMLP(2, 3, hidden_dim=16, num_layers=1, num_features=8, sigma=5.0, seed=1)
    assert "encoding.B" in a.state_dict()  # the Fourier encoding is its own module (old files: "B", mapped on load)
    assert a.B.shape == (8, 2)
    b = FourierMLP(2, 3, hidden_dim=16, num_layers=1, num_features=8, sigma=5.0, seed=2)
    assert not torch.equal(a.B, b.B)
    b.load_state_dict(a.state_dict())
    x = torch.rand(9, 2)
    torch.testing.assert_close(a(x), b(x))


def test_fourier_gaussian_scale():
    net = FourierMLP(2, 1, num_features=4096, sigma=7.0)
    assert abs(net.B.std().item() - 7.0) < 0.3


def test_fourier_positional_frequencies_log_linear_per_axis():
    net = FourierMLP(2, 1, num_features=8, sigma=16.0, encoding="positional")
    B = net.B
    assert B.shape == (8, 2)
    # rows 0..3 act on axis 0 only, 4..7 on axis 1 only, frequencies 16^(j/4)
    torch.testing.assert_close(B[:4, 0], torch.tensor([1.0, 2.0, 4.0, 8.0]))
    assert torch.all(B[:4, 1] == 0) and torch.all(B[4:, 0] == 0)
    enc = net.encode(torch.zeros(1, 2))
    assert enc.shape == (1, 16)
    torch.testing.assert_close(enc[0, :8], torch.ones(8))  # cos(0)


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"hidden_dim": 0}, "model.hidden_dim"),
        ({"hidden_dim": -3}, "model.hidden_dim"),
        ({"num_layers": -1}, "model.num_layers"),
        ({"w0": 0.0}, "model.w0"),
    ],
)
def test_siren_bad_sizes(kwargs, key):
    with pytest.raises(NirError, match=key):
        Siren(2, 1, **kwargs)


def test_fourier_bad_settings():
    with pytest.raises(NirError, match="model.encoding.sigma"):
        FourierMLP(2, 1, sigma=-1)
    with pytest.raises(NirError, match="model.encoding"):
        FourierMLP(2, 1, encoding="hash")


def test_no_mapping_encoding_is_the_coordinates():
    """model=relu: the Fourier-features paper's "no mapping" baseline feeds the coordinates."""
    from nir.fields import FourierMLP
    from nir.fields.encodings import FourierEncoding

    enc = FourierEncoding(2, mapping="none")
    x = torch.rand(5, 2) * 2 - 1
    assert enc.n_output_dims == 2 and torch.equal(enc(x), x)
    net = FourierMLP(2, 3, hidden_dim=16, num_layers=1, encoding="none")
    first = next(m for m in net.modules() if isinstance(m, torch.nn.Linear))
    assert first.in_features == 2 and net(x).shape == (5, 3)
