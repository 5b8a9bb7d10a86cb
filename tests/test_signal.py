import numpy as np
import pytest
import torch

from nir.data.readers import read_image, sample_image_path
from nir.data.signal import Grid
from nir.errors import NirError


def test_grid_coords_are_cell_centres_row_major():
    g = Grid((2, 4), [(-1, 1), (0, 8)])
    c = g.coords(torch.arange(8))
    ys, xs = np.meshgrid([-0.5, 0.5], [1, 3, 5, 7], indexing="ij")
    np.testing.assert_allclose(c.numpy(), np.stack([ys.ravel(), xs.ravel()], -1), atol=1e-6)


@pytest.mark.parametrize("shape", [(7,), (5, 6), (3, 4, 5)])
def test_grid_coords_any_dimension(shape):
    bounds = [(-1.0, 1.0)] * len(shape)
    g = Grid(shape, bounds)
    idx = torch.randint(0, int(np.prod(shape)), (50,))
    multi = np.unravel_index(idx.numpy(), shape)
    expect = np.stack([-1 + (m + 0.5) * 2 / n for m, n in zip(multi, shape)], -1)
    np.testing.assert_allclose(g.coords(idx).numpy(), expect, atol=1e-6)


def test_bundled_sample_is_read_from_disk():
    s = read_image()
    assert sample_image_path("chelsea").is_file()
    assert s.shape == (300, 451) and s.channels == 3
    assert s.values.dtype == torch.float32
    assert s.values.min() >= -1.0 and s.values.max() <= 1.0 and s.meta["value_range"] == [-1.0, 1.0]
    assert s.bounds == ((-1.0, 1.0), (-1.0, 1.0))


def test_gray_sample_and_value_range():
    s = read_image(sample="camera", value_range=(-1, 1))
    assert s.channels == 1
    assert s.values.min() >= -1 and s.values.max() <= 1 and s.values.min() < -0.9


@pytest.mark.parametrize("ext", [".png", ".tiff"])
def test_16bit_image_scaled_by_dtype_max(tmp_path, ext):
    import imageio.v3 as iio

    img = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    p = tmp_path / f"a{ext}"
    iio.imwrite(p, img, extension=ext)
    s = read_image(str(p), value_range=(0, 1))
    np.testing.assert_allclose(s.values[..., 0].numpy(), img / 65535.0, rtol=1e-6)
    assert s.meta["bit_depth"] == 16


def test_rgba_alpha_dropped_and_jpeg(tmp_path):
    import imageio.v3 as iio

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 17
    p = tmp_path / "a.png"
    iio.imwrite(p, rgba, extension=".png")
    s = read_image(str(p), value_range=(0, 1))
    assert s.channels == 3 and float(s.values[..., 0].min()) == 1.0
    j = tmp_path / "a.jpg"
    iio.imwrite(j, rgba[..., :3], extension=".jpg")
    assert read_image(str(j)).channels == 3


def test_custom_bounds():
    s = read_image(sample="camera", bounds=[[0, 3], [0, 4]])
    assert s.bounds == ((0.0, 3.0), (0.0, 4.0))


def _write(p, data):
    p.write_bytes(data)
    return p


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda d: d / "missing.png", "does not exist"),
        (lambda d: d, "is a directory"),
        (lambda d: _write(d / "x.gif", b"GIF89a"), "unsupported extension"),
        (lambda d: _write(d / "bad.png", b"\x89PNG\r\n\x1a\nnot really"), "cannot be decoded as a PNG image"),
    ],
)
def test_bad_image_paths(tmp_path, make, match):
    with pytest.raises(NirError, match=match):
        read_image(str(make(tmp_path)))


def test_unknown_sample():
    with pytest.raises(NirError, match="not a bundled photo"):
        read_image(sample="no_such_photo")


def test_readers_are_one_table_keyed_by_suffix():
    from nir.run.config import reader_option, readers

    assert reader_option("photo.PNG") == reader_option("scan.tif") == "image"
    assert reader_option("field.npy") == reader_option("fields.npz") == "array"
    assert readers() == {**dict.fromkeys([".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"], "image"),
                         **dict.fromkeys([".npy", ".npz", ".nc", ".nc4", ".h5", ".hdf5", ".zarr"], "array")}  # fmt: skip
    with pytest.raises(NirError, match=r"no reader for '\.gif'; nir reads .*\.png.*"):
        reader_option("movie.gif")


def test_image_is_a_capability_of_the_signal_and_the_field(tmp_path):
    import imageio.v3 as iio

    from nir.data.readers import read_array, read_image

    iio.imwrite(tmp_path / "a.png", np.zeros((4, 5, 3), np.uint8), extension=".png")
    np.save(tmp_path / "a.npy", np.zeros((4, 5), np.float32))
    assert read_image(str(tmp_path / "a.png")).is_image and not read_array(str(tmp_path / "a.npy")).is_image
