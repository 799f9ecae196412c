"""Calibration input sets: SampleSet batching, .npz and image-folder loading and their errors."""

import numpy as np
import pytest
from PIL import Image

from tvm_intq.calibration import SampleSet, load_image_folder, load_npz
from tvm_intq.errors import IntqError


# ---------------------------------------------------------------------------------------------
# SampleSet
# ---------------------------------------------------------------------------------------------
def test_batches_pad_last_batch_with_last_sample_and_are_reiterable():
    a = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)
    b = np.arange(5, dtype=np.int64)
    s = SampleSet({"a": a, "b": b})
    assert s.names == ["a", "b"] and s.num_samples == len(s) == 5
    for _ in range(2):
        got = list(s.batches(2))
        assert [v for _, v in got] == [2, 2, 1]
        feeds, valid = got[-1]
        assert feeds["a"].shape == (2, 2) and feeds["b"].shape == (2,)
        np.testing.assert_array_equal(feeds["a"], [a[4], a[4]])
        np.testing.assert_array_equal(feeds["b"], [4, 4])
        np.testing.assert_array_equal(np.concatenate([f["a"][:v] for f, v in got]), a)


def test_batch_larger_than_sample_count():
    s = SampleSet({"x": np.array([[1.0], [2.0]])})
    ((feeds, valid),) = list(s.batches(8))
    assert valid == 2 and feeds["x"].ravel().tolist() == [1, 2, 2, 2, 2, 2, 2, 2]


def test_sampleset_rejects_mismatched_counts_and_bad_batch_size():
    with pytest.raises(IntqError, match=r"'a' has 3, 'b' has 2"):
        SampleSet({"a": np.zeros((3, 1)), "b": np.zeros((2, 1))})
    with pytest.raises(IntqError, match="batch size"):
        SampleSet({"a": np.zeros((3, 1))}).batches(0)


def test_head():
    s = SampleSet({"a": np.arange(10)}, {"labels": np.arange(10)})
    assert s.head(3).arrays["a"].tolist() == [0, 1, 2] and s.head(30).num_samples == 10


# ---------------------------------------------------------------------------------------------
# load_npz
# ---------------------------------------------------------------------------------------------
SHAPES = {"image": (1, 3, 4, 4), "mask": (1, 4)}


def save(tmp_path, **arrays):
    path = tmp_path / "calib.npz"
    np.savez(path, **arrays)
    return path


def good_arrays(n=6):
    rng = np.random.default_rng(0)
    return {
        "image": rng.standard_normal((n, 3, 4, 4)).astype(np.float32),
        "mask": np.ones((n, 4), np.float64),
    }


def test_load_npz_reads_inputs_and_keeps_extras(tmp_path):
    arrays = good_arrays()
    path = save(tmp_path, labels=np.arange(6), **arrays)
    s = load_npz(path, SHAPES, {"mask": "float32"})
    assert s.num_samples == 6 and s.names == ["image", "mask"]
    np.testing.assert_array_equal(s.arrays["image"], arrays["image"])
    assert s.arrays["mask"].dtype == np.float32
    assert s.arrays["image"].dtype == np.float32
    assert s.extras["labels"].tolist() == list(range(6))


def test_load_npz_accepts_batch_axis_when_batch_is_one(tmp_path):
    arrays = good_arrays()
    arrays["image"] = arrays["image"][:, None]  # (n, 1, 3, 4, 4)
    s = load_npz(save(tmp_path, **arrays), SHAPES)
    assert s.arrays["image"].shape == (6, 3, 4, 4)


def test_load_npz_missing_file(tmp_path):
    with pytest.raises(IntqError, match=r"nope\.npz: calibration data file not found"):
        load_npz(tmp_path / "nope.npz", SHAPES)


def test_load_npz_not_an_npz(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_text("this is not a zip archive")
    with pytest.raises(IntqError, match=r"bad\.npz: cannot read as an \.npz archive"):
        load_npz(bad, SHAPES)
    npy = tmp_path / "single.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(IntqError, match=r"single\.npy: is a single \.npy array"):
        load_npz(npy, SHAPES)


def test_load_npz_missing_input_lists_file_keys(tmp_path):
    arrays = good_arrays()
    del arrays["mask"]
    with pytest.raises(IntqError, match=r"model input 'mask' is missing \(the file has 'image'\)"):
        load_npz(save(tmp_path, **arrays), SHAPES)


def test_load_npz_wrong_sample_shape(tmp_path):
    arrays = good_arrays()
    arrays["image"] = arrays["image"][:, :, :3]
    with pytest.raises(
        IntqError,
        match=r"input 'image' has shape \(6, 3, 3, 4\), expected "
        r"\(num_samples, 3, 4, 4\)",
    ):
        load_npz(save(tmp_path, **arrays), SHAPES)


def test_load_npz_zero_samples(tmp_path):
    arrays = good_arrays(n=0)
    with pytest.raises(IntqError, match=r"input 'image' has no samples"):
        load_npz(save(tmp_path, **arrays), SHAPES)


@pytest.mark.parametrize("bad,word", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
def test_load_npz_non_finite_names_input_and_sample(tmp_path, bad, word):
    arrays = good_arrays()
    arrays["mask"][4, 2] = bad
    arrays["mask"][5, 0] = bad
    with pytest.raises(IntqError, match=rf"input 'mask' has {word} in sample 4"):
        load_npz(save(tmp_path, **arrays), SHAPES)


def test_load_npz_different_sample_counts(tmp_path):
    arrays = good_arrays()
    arrays["mask"] = arrays["mask"][:4]
    with pytest.raises(
        IntqError,
        match=r"different numbers of samples: 'image' has 6, "
        r"'mask' has 4",
    ):
        load_npz(save(tmp_path, **arrays), SHAPES)


# ---------------------------------------------------------------------------------------------
# load_image_folder
# ---------------------------------------------------------------------------------------------
# A 2x3 RGB image: pixel (row r, col c) = (10r + c, 100 + c, 200 - r).
PIX = np.array([[[10 * r + c, 100 + c, 200 - r] for c in range(3)] for r in range(2)], np.uint8)
MEAN, STD = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)


def write_images(folder):
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(PIX, "RGB").save(folder / "b.png")
    Image.fromarray(255 - PIX, "RGB").save(folder / "sub" / "a.PNG")
    (folder / "notes.txt").write_text("ignored")
    return [PIX, 255 - PIX]  # sorted order: "b.png" < "sub/a.PNG"


def expected(pix, order="RGB"):
    px = pix.astype(np.float64)
    if order == "BGR":
        px = px[..., ::-1]
    return ((px / 255.0 - np.array(MEAN)) / np.array(STD)).astype(np.float32)  # HWC


def test_image_folder_nchw_rgb(tmp_path):
    pix = write_images(tmp_path / "imgs")
    s = load_image_folder(tmp_path / "imgs", "data", (1, 3, 2, 3), mean=MEAN, std=STD)
    assert s.names == ["data"] and s.extras["files"] == ["b.png", "sub/a.PNG"]
    x = s.arrays["data"]
    assert x.shape == (2, 3, 2, 3) and x.dtype == np.float32
    for k in range(2):
        np.testing.assert_allclose(x[k], expected(pix[k]).transpose(2, 0, 1), rtol=1e-6)
    # One number by hand: sample 0, channel G, row 1, col 2: (102/255 - 0.2) / 0.25.
    assert x[0, 1, 1, 2] == pytest.approx((102 / 255 - 0.2) / 0.25, rel=1e-6)


def test_image_folder_nhwc_bgr(tmp_path):
    pix = write_images(tmp_path / "imgs")
    s = load_image_folder(
        tmp_path / "imgs",
        "data",
        (1, 2, 3, 3),
        mean=MEAN,
        std=STD,
        layout="NHWC",
        channel_order="BGR",
    )
    x = s.arrays["data"]
    assert x.shape == (2, 2, 3, 3)
    np.testing.assert_allclose(x[0], expected(pix[0], "BGR"), rtol=1e-6)
    # channel 0 is blue now: row 1, col 0 has B = 199, normalised with MEAN[0], STD[0].
    assert x[0, 1, 0, 0] == pytest.approx((199 / 255 - 0.1) / 0.5, rel=1e-6)


def test_image_folder_grayscale_scale_and_resize(tmp_path):
    folder = tmp_path / "gray"
    folder.mkdir()
    Image.fromarray(np.full((8, 6), 64, np.uint8), "L").save(folder / "g.bmp")
    Image.fromarray(np.full((3, 5, 3), 200, np.uint8), "RGB").save(folder / "c.jpg", quality=100)
    s = load_image_folder(folder, "x", (1, 1, 4, 4), mean=(0.5,), std=(0.5,), scale=1.0)
    x = s.arrays["x"]
    assert x.shape == (2, 1, 4, 4) and s.extras["files"] == ["c.jpg", "g.bmp"]
    np.testing.assert_allclose(x[1], (64 - 0.5) / 0.5)  # a flat image stays flat when resized
    assert np.all(np.abs(x[0] - (200 - 0.5) / 0.5) <= 2 / 0.5)  # jpeg: within 2 grey levels


def test_image_folder_resize_then_centre_crop(tmp_path):
    folder = tmp_path / "crop"
    folder.mkdir()
    pix = np.zeros((4, 8), np.uint8)
    pix[:, 2:6] = 255  # the centre 4x4 is white, the sides black
    Image.fromarray(pix, "L").save(folder / "a.png")
    x = load_image_folder(folder, "x", (1, 1, 4, 4), mean=0.0, std=1.0, resize=4).arrays["x"]
    np.testing.assert_allclose(x, 1.0)  # shorter side is already 4: plain centre crop
    x = load_image_folder(folder, "x", (1, 1, 2, 2), mean=0.0, std=1.0, resize=(4, 8)).arrays["x"]
    np.testing.assert_allclose(x, 1.0)


def test_image_folder_missing(tmp_path):
    with pytest.raises(IntqError, match=r"nowhere: image folder not found"):
        load_image_folder(tmp_path / "nowhere", "x", (1, 3, 2, 2), mean=0.0, std=1.0)


def test_image_folder_empty(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(IntqError, match=r"empty: no images found"):
        load_image_folder(tmp_path / "empty", "x", (1, 3, 2, 2), mean=0.0, std=1.0)


def test_image_folder_unreadable_image_named(tmp_path):
    folder = tmp_path / "imgs"
    write_images(folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(IntqError, match=r"broken\.jpg: cannot read image"):
        load_image_folder(folder, "x", (1, 3, 2, 3), mean=MEAN, std=STD)


@pytest.mark.parametrize(
    "kwargs,shape,match",
    [
        (dict(layout="NCWH"), (1, 3, 2, 2), "layout must be NCHW or NHWC"),
        (dict(channel_order="RGBA"), (1, 3, 2, 2), "channel order must be RGB or BGR"),
        (dict(), (1, 4, 2, 2), r"input 'x' has 4 channels"),
        (dict(), (3, 2, 2), r"input 'x' has shape \(3, 2, 2\)"),
        (dict(mean=(0.1, 0.2)), (1, 3, 2, 2), "mean must have 1 or 3 values"),
        (dict(std=(1.0, 0.0, 1.0)), (1, 3, 2, 2), "std must not be 0"),
        (dict(resize=1), (1, 3, 2, 2), "resize 1 is smaller"),
    ],
)
def test_image_folder_bad_options(tmp_path, kwargs, shape, match):
    write_images(tmp_path / "imgs")
    args = dict(mean=0.0, std=1.0) | kwargs
    with pytest.raises(IntqError, match=match):
        load_image_folder(tmp_path / "imgs", "x", shape, **args)
