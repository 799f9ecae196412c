"""Text images rendered at run time, with the ground truth known because we drew it.

Everything is a pure function of its seed (numpy ``default_rng`` and PIL's ImageDraw with the
DejaVu TrueType fonts of Debian's ``fonts-dejavu-core``), so the calibration set (seed 0) and
the evaluation set (seed 1) are separate and the same on every machine.

- :func:`render_lines`: one text line per image (for rec and cls), words of the Zen of Python
  mixed with numbers, dates and prices, dark on a light, noisy background.
- :func:`render_pages`: 320x320 pages with a few such lines each and their boxes (for det);
  a third of the backgrounds are real photographs from scikit-image (``astronaut``,
  ``coffee``, ``chelsea``, ``rocket``), faded so the text stays legible.
- :func:`scanned_pages`: scikit-image's real text images (``page``: a scanned book page,
  ``text``: text photographed on a wall), used as extra det calibration inputs (no labels).
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import io
import string
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")  # Debian fonts-dejavu-core (Makefile)
FONTS = [
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
]
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket"]
PAGE = 320  # det's fixed input size (eval/ocr_models.py)
LINE_ASPECT = 6.0  # rec reads 48x320 (6.7:1); wider lines would be squeezed by its resize


@functools.cache
def _words() -> tuple[str, ...]:
    # The Zen of Python ships with every Python (rot13-encoded in ``this.s``): real English
    # text without a download. Importing ``this`` prints it, hence the redirect.
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    text = codecs.decode(this.s, "rot13")
    words = {w.strip(string.punctuation + "*") for w in text.split()}
    return tuple(sorted(w for w in words if w.isascii() and w))


@functools.cache
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    path = FONT_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: install Debian's fonts-dejavu-core (make system-deps)")
    return ImageFont.truetype(str(path), size)


def _phrase(rng: np.random.Generator) -> str:
    """One to four words, sometimes a number, a date or a price."""
    words = _words()
    kind = rng.random()
    if kind < 0.15:
        return f"{rng.integers(1, 29):02d}.{rng.integers(1, 13):02d}.{rng.integers(1990, 2030)}"
    if kind < 0.3:
        return f"${rng.integers(0, 1000)}.{rng.integers(0, 100):02d}"
    out = [str(words[i]) for i in rng.integers(0, len(words), rng.integers(1, 5))]
    if rng.random() < 0.2:
        out.insert(int(rng.integers(0, len(out) + 1)), str(rng.integers(0, 10000)))
    if rng.random() < 0.3:
        out[0] = out[0].capitalize()
    return " ".join(out)


def _fit(rng, font, max_width: float) -> str:
    """A phrase whose rendered width is at most ``max_width`` (shortened word by word)."""
    words = _phrase(rng).split(" ")
    while len(words) > 1 and font.getlength(" ".join(words)) > max_width:
        words.pop()
    return " ".join(words)


def _background(rng, size: tuple[int, int], photo: bool) -> Image.Image:
    """A light background: a plain tint with noise, or a faded crop of a real photograph."""
    w, h = size
    if photo:
        from skimage import data

        img = getattr(data, PHOTOS[int(rng.integers(len(PHOTOS)))])()
        img = img if img.ndim == 3 else np.stack([img] * 3, -1)
        y = int(rng.integers(0, max(1, img.shape[0] - h)))
        x = int(rng.integers(0, max(1, img.shape[1] - w)))
        crop = np.asarray(Image.fromarray(img[y : y + h, x : x + w, :3]).resize((w, h)), np.float32)
        base = 0.35 * crop + 0.65 * 235.0
    else:
        base = np.ones((h, w, 3), np.float32) * rng.uniform(190, 255, 3)
    base += rng.normal(0, rng.uniform(0, 8), (h, w, 1))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def _ink(rng) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 90, 3))


def _text_box(text: str, font, xy) -> np.ndarray:
    """The ink's bounding box of ``text`` drawn at ``xy``, as a quadrilateral ``[4, 2]``
    (clockwise from top-left, rapidocr's order)."""
    x0, y0, x1, y1 = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox(xy, text, font=font)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)


def render_lines(n: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """``n`` text-line images (HxWx3 uint8, each its own size) and their texts."""
    rng = np.random.default_rng(seed)
    images, texts = [], []
    for _ in range(n):
        font = _font(FONTS[int(rng.integers(len(FONTS)))], int(rng.integers(20, 41)))
        pad = rng.integers(2, 10, 4)  # left, top, right, bottom
        height = font.size + int(pad[1] + pad[3]) + font.size // 3
        text = _fit(rng, font, LINE_ASPECT * height - pad[0] - pad[2])
        box = _text_box(text, font, (int(pad[0]), int(pad[1])))
        size = (int(box[1, 0] + pad[2]), int(box[2, 1] + pad[3]))
        img = _background(rng, size, photo=rng.random() < 0.2)
        ImageDraw.Draw(img).text((int(pad[0]), int(pad[1])), text, font=font, fill=_ink(rng))
        if rng.random() < 0.3:
            img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))
        images.append(np.asarray(img))
        texts.append(text)
    return images, texts


def render_pages(n: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n`` pages (PAGExPAGEx3 uint8) and, per page, its text boxes ``[k, 4, 2]``: the ink
    bounding box of each line (det's boxes are axis-aligned here, the lines are not rotated)."""
    rng = np.random.default_rng(seed)
    pages, boxes = [], []
    for _ in range(n):
        img = _background(rng, (PAGE, PAGE), photo=rng.random() < 0.33)
        draw = ImageDraw.Draw(img)
        page_boxes = []
        y = int(rng.integers(4, 24))
        while True:
            font = _font(FONTS[int(rng.integers(len(FONTS)))], int(rng.integers(14, 31)))
            if y + font.size * 1.3 > PAGE - 4:
                break
            x = int(rng.integers(4, PAGE // 3))
            text = _fit(rng, font, PAGE - 4 - x)
            box = _text_box(text, font, (x, y))
            if box[1, 0] <= PAGE - 4:
                draw.text((x, y), text, font=font, fill=_ink(rng))
                page_boxes.append(box)
            y = int(box[2, 1]) + int(rng.integers(font.size // 2, 2 * font.size))
        pages.append(np.asarray(img))
        boxes.append(np.asarray(page_boxes, np.float32).reshape(-1, 4, 2))
    return pages, boxes


def rotate180(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[::-1, ::-1])


def scanned_pages() -> list[np.ndarray]:
    """scikit-image's two real text images as PAGExPAGEx3 uint8 (resized, gray to RGB)."""
    from skimage import data

    out = []
    for img in (data.page(), data.text()):
        img = np.asarray(Image.fromarray(img).resize((PAGE, PAGE), Image.BILINEAR))
        out.append(np.stack([img] * 3, -1))
    return out
