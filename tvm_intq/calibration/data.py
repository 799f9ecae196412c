"""Calibration and inference inputs: a :class:`SampleSet` from an ``.npz`` file or an image folder.

A :class:`SampleSet` holds, for every model input, one array whose axis 0 runs over samples.
:meth:`SampleSet.batches` cuts it into model-sized batches; the last, partial batch is padded
by repeating its last sample and says how many of its rows are real, so a model compiled for a
static batch size can run every sample. Everything here is numpy and PIL: no TVM.

Bad input is reported as :class:`~tvm_intq.errors.IntqError` naming the file, the folder, the
image or the model input.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from tvm_intq.errors import IntqError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class SampleSet:
    """Model inputs for a number of samples, batched on demand.

    Parameters
    ----------
    arrays
        ``{input name: array}``; axis 0 of every array runs over samples and all arrays have
        the same number of samples. One sample of input ``x`` is ``arrays[x][k]``.
    extras
        Anything else that came with the samples and is not a model input (``labels`` from an
        ``.npz``, ``files`` from an image folder). Kept as given for the caller.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], extras: Mapping | None = None):
        if not arrays:
            raise IntqError("sample set has no inputs")
        self._arrays = {}
        for name, a in arrays.items():
            a = np.asarray(a)
            if a.ndim == 0:
                raise IntqError(
                    f"input '{name}': a scalar is not a list of samples "
                    "(axis 0 must run over samples)"
                )
            self._arrays[name] = a
        counts = {name: a.shape[0] for name, a in self._arrays.items()}
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"'{n}' has {c}" for n, c in counts.items())
            raise IntqError(f"inputs have different numbers of samples: {listed}")
        self._num_samples = next(iter(counts.values()))
        self.extras = dict(extras or {})

    @property
    def names(self) -> list[str]:
        """Input names, in the order given."""
        return list(self._arrays)

    @property
    def num_samples(self) -> int:
        return self._num_samples

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """``{input name: array of all samples}`` (a new dict; the arrays are shared)."""
        return dict(self._arrays)

    def sample_shape(self, name: str) -> tuple[int, ...]:
        """Shape of one sample of input ``name`` (the array's shape without axis 0)."""
        return tuple(self._arrays[name].shape[1:])

    def __len__(self) -> int:
        return self._num_samples

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n}: {a.dtype}{list(a.shape[1:])}" for n, a in self._arrays.items())
        return f"SampleSet({self._num_samples} samples; {shapes})"

    def head(self, n: int) -> SampleSet:
        """The first ``n`` samples (all of them if there are fewer); extras are kept as they are."""
        if n < 1:
            raise IntqError(f"number of samples must be at least 1, got {n}")
        return SampleSet({k: a[:n] for k, a in self._arrays.items()}, self.extras)

    def after(self, n: int) -> SampleSet:
        """The samples after the first ``n`` (none left: an error); extras are kept as they are."""
        if n >= self._num_samples:
            raise IntqError(f"no samples after the first {n} of {self._num_samples}")
        return SampleSet({k: a[n:] for k, a in self._arrays.items()}, self.extras)

    def batches(self, batch_size: int) -> Iterator[tuple[dict[str, np.ndarray], int]]:
        """Yield ``(feeds, valid)`` for consecutive batches of ``batch_size`` samples.

        ``feeds[name]`` has shape ``(batch_size, *sample_shape)``. All batches are full except
        possibly the last, which is padded by repeating its last real sample; ``valid`` is the
        number of real rows (rows ``[:valid]``). Each call starts a new pass over the samples.
        """
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise IntqError(f"batch size must be a positive integer, got {batch_size!r}")
        return self._batches(int(batch_size))

    def _batches(self, batch_size: int):
        for start in range(0, self._num_samples, batch_size):
            stop = min(start + batch_size, self._num_samples)
            valid = stop - start
            feeds = {}
            for name, a in self._arrays.items():
                rows = a[start:stop]
                if valid < batch_size:
                    pad = np.repeat(rows[-1:], batch_size - valid, axis=0)
                    rows = np.concatenate([rows, pad], axis=0)
                feeds[name] = rows
            yield feeds, valid


# ---------------------------------------------------------------------------------------------
# .npz
# ---------------------------------------------------------------------------------------------
def load_npz(
    path, input_shapes: Mapping[str, Sequence[int]], input_dtypes: Mapping[str, str] | None = None
) -> SampleSet:
    """Load samples for the model inputs from an ``.npz`` archive.

    Parameters
    ----------
    path
        The ``.npz`` file (``np.savez`` / ``np.savez_compressed``).
    input_shapes
        The model's static input shapes, batch axis included: ``{name: (B, *sample_shape)}``.
        The array stored under ``name`` must have shape ``(num_samples, *sample_shape)``; when
        ``B == 1`` the shape ``(num_samples, 1, *sample_shape)`` is accepted too and the 1 is
        squeezed away.
    input_dtypes
        ``{name: dtype}``; inputs listed here are cast to that dtype, the others keep the
        dtype stored in the file.

    Returns
    -------
    SampleSet
        With every model input; the file's other arrays (e.g. ``labels``) are in ``.extras``.

    Raises
    ------
    IntqError
        The file is missing, unreadable or not an ``.npz`` archive; a model input is missing
        from it; a sample has the wrong shape; an input has no samples; the inputs' sample
        counts differ; a floating-point input holds NaN or Inf.
    """
    path = Path(path)
    input_dtypes = dict(input_dtypes or {})
    if not path.is_file():
        raise IntqError(f"{path}: calibration data file not found (or not a file)")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - numpy raises many types for a bad file
        raise IntqError(f"{path}: cannot read as an .npz archive ({_reason(e)})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise IntqError(
            f"{path}: is a single .npy array, not an .npz archive of named inputs "
            "(save with np.savez(path, <input name>=array, ...))"
        )
    with archive:
        keys = list(archive.files)
        stored = {}
        for key in keys:
            try:
                stored[key] = archive[key]
            except Exception as e:  # noqa: BLE001 - corrupt member, pickled object array, ...
                raise IntqError(f"{path}: cannot read array '{key}' ({_reason(e)})") from None

    arrays = {}
    for name, shape in input_shapes.items():
        if name not in stored:
            have = ", ".join(f"'{k}'" for k in keys) or "nothing"
            raise IntqError(f"{path}: model input '{name}' is missing (the file has {have})")
        arrays[name] = _check_input(
            path, name, stored[name], tuple(int(d) for d in shape), input_dtypes.get(name)
        )
    counts = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"'{n}' has {c}" for n, c in counts.items())
        raise IntqError(f"{path}: inputs have different numbers of samples: {listed}")
    extras = {k: v for k, v in stored.items() if k not in arrays}
    _check_labels(path, extras.get("labels"), next(iter(counts.values())))
    return SampleSet(arrays, extras)


def _check_labels(path: Path, labels, samples: int) -> None:
    """``labels`` (if the file holds them) must be one integer class per sample: a top-1
    measured on a misaligned or partial set of labels would be a wrong number."""
    if labels is None:
        return
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iubf":
        raise IntqError(f"{path}: 'labels' has dtype {labels.dtype}, not class numbers")
    if labels.ndim == 0 or labels.size != samples:
        raise IntqError(
            f"{path}: 'labels' has {labels.size if labels.ndim else 1} entries for {samples} "
            "samples: give one label per sample"
        )


def _check_input(
    path: Path, name: str, a: np.ndarray, shape: tuple[int, ...], dtype: str | None
) -> np.ndarray:
    sample_shape = shape[1:]
    if a.dtype.kind not in "biuf":
        raise IntqError(f"{path}: input '{name}' has dtype {a.dtype}, not numbers")
    if (
        shape
        and shape[0] == 1
        and a.ndim == len(shape) + 1
        and a.shape[1] == 1
        and tuple(a.shape[2:]) == sample_shape
    ):
        a = a[:, 0]  # stored as (num_samples, 1, *sample_shape)
    if a.ndim == 0 or tuple(a.shape[1:]) != sample_shape:
        expected = (
            f"(num_samples, {', '.join(map(str, sample_shape))})"
            if sample_shape
            else "(num_samples,)"
        )
        raise IntqError(
            f"{path}: input '{name}' has shape {tuple(a.shape)}, expected "
            f"{expected} for model input shape {shape}"
        )
    if a.shape[0] == 0:
        raise IntqError(f"{path}: input '{name}' has no samples")
    if dtype is not None:
        try:
            target = np.dtype(dtype)
        except TypeError:
            raise IntqError(f"input '{name}': unknown dtype '{dtype}'") from None
        a = a.astype(target, copy=False)
    if a.dtype.kind == "f":
        finite = np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
        if not finite.all():
            k = int(np.flatnonzero(~finite)[0])
            what = "NaN" if np.isnan(a[k]).any() else "Inf"
            raise IntqError(f"{path}: input '{name}' has {what} in sample {k}")
    return a


def _reason(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# ---------------------------------------------------------------------------------------------
# Image folder
# ---------------------------------------------------------------------------------------------
def load_image_folder(
    path,
    input_name: str,
    input_shape: Sequence[int],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    layout: str = "NCHW",
    channel_order: str = "RGB",
    scale: float = 255.0,
    resize: int | Sequence[int] | None = None,
) -> SampleSet:
    """Load every image under a folder as one sample of a single image input.

    Files ending in ``.png``, ``.jpg``, ``.jpeg`` or ``.bmp`` (any case) are found recursively
    and taken in sorted order of their path relative to ``path``. Each image is

    1. decoded with PIL and converted to 8-bit ``RGB`` (3 channels) or ``L`` (1 channel), as
       the channel count of ``input_shape`` says (an alpha channel is dropped);
    2. resized with bilinear filtering: without ``resize``, straight to the input's H x W;
       with ``resize=S`` (an int) its shorter side is scaled to ``S`` keeping the aspect ratio,
       with ``resize=(h, w)`` it is scaled to h x w, and then the centre H x W is cropped
       (the usual ``resize 256, crop 224`` of ImageNet models);
    3. reordered to ``channel_order`` (``"BGR"`` reverses the RGB channels);
    4. normalised per channel, ``x[c] = (pixel[c] / scale - mean[c]) / std[c]``, where
       ``pixel`` is 0..255 and ``mean``/``std`` are listed in the model's channel order
       (length C, or length 1 for all channels);
    5. laid out as ``layout``: ``"NCHW"`` (``input_shape = (B, C, H, W)``) or ``"NHWC"``
       (``input_shape = (B, H, W, C)``).

    The result is float32 with shape ``(num_images, *input_shape[1:])``; ``extras["files"]``
    lists the images' relative paths (POSIX style) in sample order, so labels can be derived
    from sub-folder names. All images are held in memory.

    Raises
    ------
    IntqError
        The folder does not exist or holds no images; an image cannot be decoded (the message
        names the file); the shape, layout, channel order, mean, std, scale or resize options
        are invalid.
    """
    from PIL import Image  # PIL only for this loader

    folder = Path(path)
    layout, channel_order = str(layout).upper(), str(channel_order).upper()
    if layout not in ("NCHW", "NHWC"):
        raise IntqError(f"image layout must be NCHW or NHWC, got '{layout}'")
    if channel_order not in ("RGB", "BGR"):
        raise IntqError(f"channel order must be RGB or BGR, got '{channel_order}'")
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 4:
        raise IntqError(
            f"input '{input_name}' has shape {shape}; an image input needs 4 axes ({layout})"
        )
    c, h, w = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
    if c not in (1, 3):
        raise IntqError(
            f"input '{input_name}' has {c} channels in layout {layout} (shape "
            f"{shape}); image inputs need 1 or 3"
        )
    mean_v = _per_channel("mean", mean, c)
    std_v = _per_channel("std", std, c)
    if np.any(std_v == 0):
        raise IntqError(f"std must not be 0, got {tuple(std)}")
    if not scale > 0:
        raise IntqError(f"pixel scale must be positive, got {scale}")
    resize_hw = _resize_size(resize, h, w)

    if not folder.is_dir():
        raise IntqError(f"{folder}: image folder not found")
    files = sorted(
        (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    if not files:
        raise IntqError(
            f"{folder}: no images found (looked for {', '.join(IMAGE_SUFFIXES)} files, recursively)"
        )

    mode = "RGB" if c == 3 else "L"
    out = np.empty((len(files), h, w, c), np.float32)
    for k, file in enumerate(files):
        try:
            with Image.open(file) as im:
                im.load()
                im = im.convert(mode)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise IntqError(f"{file}: cannot read image ({_reason(e)})") from None
        im = _resize(im, h, w, resize_hw)
        px = np.asarray(im, np.float64).reshape(h, w, c)
        if channel_order == "BGR":
            px = px[..., ::-1]
        out[k] = (px / scale - mean_v) / std_v
    if layout == "NCHW":
        out = np.ascontiguousarray(out.transpose(0, 3, 1, 2))
    rel = [f.relative_to(folder).as_posix() for f in files]
    return SampleSet({input_name: out}, {"files": rel})


def _per_channel(what: str, values, c: int) -> np.ndarray:
    v = np.atleast_1d(np.asarray(values, np.float64))
    if v.ndim != 1 or v.size not in (1, c):
        raise IntqError(
            f"{what} must have 1 or {c} values (one per channel), got {tuple(v.ravel())}"
        )
    return np.broadcast_to(v, (c,))


def _resize_size(resize, h: int, w: int):
    if resize is None:
        return None
    if isinstance(resize, (int, np.integer)):
        if resize < max(h, w):
            raise IntqError(
                f"resize {resize} is smaller than the input's {h}x{w}; the centre "
                f"crop needs the shorter side to be at least {max(h, w)}"
            )
        return int(resize)
    size = tuple(int(s) for s in resize)
    if len(size) != 2 or size[0] < h or size[1] < w:
        raise IntqError(
            f"resize must be an int or (height, width) at least the input's "
            f"{h}x{w}, got {tuple(resize)}"
        )
    return size


def _resize(im, h: int, w: int, resize_hw):
    from PIL import Image

    if resize_hw is None:
        return im if im.size == (w, h) else im.resize((w, h), Image.BILINEAR)
    if isinstance(resize_hw, int):  # shorter side to resize_hw, keep aspect ratio
        iw, ih = im.size
        if iw <= ih:
            rw, rh = resize_hw, round(ih * resize_hw / iw)
        else:
            rw, rh = round(iw * resize_hw / ih), resize_hw
    else:
        rh, rw = resize_hw
    if im.size != (rw, rh):
        im = im.resize((rw, rh), Image.BILINEAR)
    left, top = (rw - w) // 2, (rh - h) // 2
    return im.crop((left, top, left + w, top + h))
