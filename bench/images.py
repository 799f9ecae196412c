"""Calibration and timing images with the objects the vision models look for, from
scikit-image's bundled photographs (no download): people, faces and a hand (``astronaut``: a
portrait with the hand up; ``camera``: the cameraman), and everyday scenes (``coffee``,
``chelsea`` the cat, ``rocket``).

    images((192, 192), 16, value_range=(0.0, 1.0))   -> float32 [16, 192, 192, 3] (NHWC, RGB)

Deterministic: crops at fixed fractions of each photograph, every other one mirrored, resized
with anti-aliasing. Used by bench/run.py (tvm-intq's calibration and the counted input) and
tools/make_mediapipe_tflite.py (ai-edge-quantizer's calibration), so both sides calibrate on
the same images.
"""

from __future__ import annotations

import numpy as np

#: scikit-image photographs, the ones with people first: ``skimage.data.<name>()``.
PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket")
#: Crops per photograph: (top, left, size) as fractions of the photograph's shorter side.
CROPS = ((0.0, 0.0, 1.0), (0.05, 0.15, 0.6), (0.2, 0.3, 0.7), (0.0, 0.35, 0.55))


def images(size: tuple[int, int], n: int, value_range=(0.0, 1.0)) -> np.ndarray:
    """``n`` RGB images of ``size`` (height, width), float32 NHWC scaled to ``value_range``."""
    from skimage import data
    from skimage.color import gray2rgb
    from skimage.transform import resize

    out = []
    k = 0
    while len(out) < n:
        photo = getattr(data, PHOTOS[k % len(PHOTOS)])()
        top, left, frac = CROPS[(k // len(PHOTOS)) % len(CROPS)]
        if photo.ndim == 2:
            photo = gray2rgb(photo)
        photo = photo[..., :3]
        side = min(photo.shape[:2])
        s, t, l0 = int(side * frac), int(side * top), int(side * left)
        crop = photo[t : t + s, l0 : l0 + s]
        if crop.shape[0] < 8 or crop.shape[1] < 8:
            crop = photo
        if k % 2:
            crop = crop[:, ::-1]
        img = resize(crop, size, anti_aliasing=True, preserve_range=True) / 255.0
        lo, hi = value_range
        out.append((lo + (hi - lo) * img).astype(np.float32))
        k += 1
    return np.stack(out)
