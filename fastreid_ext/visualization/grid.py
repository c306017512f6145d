"""One retrieval result as an image: the query (caption text or image) and its top-k gallery.

Layout (all sizes in pixels; ``H, W = cell_size``; ``k = len(gallery)``)::

    +---------------------------------------------------------------+
    | title (wrapped, optional)                                     |
    | query caption (wrapped; text queries only)                    |
    | [query]  ||  [#1] [#2] ... [#k]     <- cells of H x W images   |
    |  query   ||  #1 0.812  #2 0.790     <- rank and score          |
    |          ||  pid 3     pid 7        <- optional label          |
    +---------------------------------------------------------------+

Every image is padded to ``W x H`` keeping its aspect ratio (``PIL.ImageOps.pad``) and framed by
a ``BORDER``-pixel border (``PIL.ImageOps.expand``): green for a correct gallery item, red for a
wrong one, grey when ``correct`` is not given, blue for the query image. Text is drawn with
``PIL.ImageDraw``; only the placement is computed here (:func:`grid_size` gives the canvas size).
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple, Union

from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

__all__ = [
    "BORDER",
    "GAP",
    "QUERY_GAP",
    "COLORS",
    "ImageLike",
    "draw_retrieval_grid",
    "grid_size",
    "load_image",
    "text_font",
]

#: Border width around every image.
BORDER = 3
#: Margin around the grid and between cells.
GAP = 6
#: Extra space between the query image and the first gallery cell (a separator line is drawn).
QUERY_GAP = 12
#: Colours (RGB) of the canvas, the text and the borders.
COLORS = {
    "background": (255, 255, 255),
    "text": (0, 0, 0),
    "correct": (0, 160, 0),
    "wrong": (220, 0, 0),
    "unknown": (160, 160, 160),
    "query": (0, 90, 200),
    "separator": (200, 200, 200),
}
_FONT_SIZE = 11
_LINE_SPACING = 2

ImageLike = Union[str, "os.PathLike[str]", Image.Image]


def text_font(size: int = _FONT_SIZE) -> ImageFont.ImageFont:
    """Pillow's built-in font (FreeType Aileron when available, else the bitmap font)."""
    return ImageFont.load_default(size=size)


def line_height(font: ImageFont.ImageFont) -> int:
    """Pixel height of one text line including the spacing below it."""
    return int(font.getbbox("Ag|")[3]) + _LINE_SPACING


def load_image(item: ImageLike, what: str = "image") -> Image.Image:
    """An RGB copy of ``item`` (a file path or a PIL image).

    Raises:
        FileNotFoundError: the path does not exist (the message names ``what`` and the path).
        ValueError: the file is not an image PIL can read.
    """
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    path = os.fspath(item)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{what} is not a readable image: {path} ({e})") from e


def _fit(text: str, font: ImageFont.ImageFont, width: int) -> str:
    """``text`` cut (with '...') to at most ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def wrap_text(text: str, font: ImageFont.ImageFont, width: int) -> List[str]:
    """Greedy word wrap of ``text`` into lines of at most ``width`` pixels (a word longer than
    a line is split across lines). An empty text gives no line."""
    lines: List[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if font.getlength(candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while font.getlength(word) > width and len(word) > 1:
            cut = len(word) - 1
            while cut > 1 and font.getlength(word[:cut]) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    return lines


def _framed(img: Image.Image, cell_size: Tuple[int, int], color: Tuple[int, int, int]):
    h, w = cell_size
    padded = ImageOps.pad(img, (w, h), color=COLORS["background"])
    return ImageOps.expand(padded, border=BORDER, fill=color)


def _check_cell_size(cell_size: Sequence[int]) -> Tuple[int, int]:
    if len(cell_size) != 2 or any(int(v) != v or v < 8 for v in cell_size):
        raise ValueError(f"cell_size must be (height, width) integers >= 8, got {cell_size}")
    return int(cell_size[0]), int(cell_size[1])


def grid_size(
    k: int,
    cell_size: Tuple[int, int] = (128, 64),
    query_is_image: bool = False,
    header_lines: int = 0,
    label_lines: int = 0,
    font: Optional[ImageFont.ImageFont] = None,
) -> Tuple[int, int]:
    """``(width, height)`` of a grid of ``k`` gallery cells.

    width  = GAP + k * (W + 2 * BORDER + GAP) [+ W + 2 * BORDER + QUERY_GAP for an image query]
    height = GAP + header_lines * L + H + 2 * BORDER + (1 + label_lines) * L + GAP, where
    ``L`` is the font's :func:`line_height` and ``header_lines`` the wrapped title and caption
    lines (plus one spacer line under them when there are any).
    """
    h, w = _check_cell_size(cell_size)
    lh = line_height(font or text_font())
    cell_w = w + 2 * BORDER
    width = GAP + k * (cell_w + GAP) + (cell_w + QUERY_GAP if query_is_image else 0)
    header = header_lines * lh + (lh // 2 if header_lines else 0)
    height = GAP + header + h + 2 * BORDER + (1 + label_lines) * lh + GAP
    return width, height


def draw_retrieval_grid(
    query: ImageLike,
    gallery: Sequence[ImageLike],
    scores: Sequence[float],
    correct: Optional[Sequence[bool]] = None,
    title: Optional[str] = None,
    labels: Optional[Sequence[str]] = None,
    cell_size: Tuple[int, int] = (128, 64),
) -> Image.Image:
    """Draw one query and its ranked gallery as an RGB image.

    Args:
        query: a ``str`` is the query's caption text (wrapped above the gallery row); a path
            (``pathlib.Path`` / ``os.PathLike``) or a PIL image is the query image, drawn left of
            the gallery with a blue border.
        gallery: the top-k gallery images, best first: file paths (``str`` or ``PathLike``) or
            PIL images.
        scores: ``[k]`` similarity of each gallery item (printed as ``#rank score``).
        correct: ``[k]`` whether each gallery item matches the query (green / red border);
            ``None`` draws grey borders.
        title: optional first line(s), e.g. ``"query 12  pid 3  AP 41.2%"``.
        labels: ``[k]`` optional extra text under each cell (e.g. ``"pid 7"``).
        cell_size: ``(H, W)`` of each image cell, borders excluded.

    Returns:
        the grid; its size is :func:`grid_size` of the same arguments.

    Raises:
        FileNotFoundError: a query or gallery path does not exist (named in the message).
        ValueError: empty gallery, or ``scores`` / ``correct`` / ``labels`` of another length.
    """
    h, w = _check_cell_size(cell_size)
    k = len(gallery)
    if k == 0:
        raise ValueError("draw_retrieval_grid: the gallery is empty")
    for name, seq in (("scores", scores), ("correct", correct), ("labels", labels)):
        if seq is not None and len(seq) != k:
            raise ValueError(f"draw_retrieval_grid: {name} has {len(seq)} items, gallery has {k}")
    query_is_image = not isinstance(query, str)
    query_img = load_image(query, "query image") if query_is_image else None
    cells = [load_image(g, f"gallery image #{i + 1}") for i, g in enumerate(gallery)]

    font = text_font()
    lh = line_height(font)
    width, _ = grid_size(k, (h, w), query_is_image)
    text_width = width - 2 * GAP
    header = wrap_text(title, font, text_width) if title else []
    if not query_is_image:
        header += wrap_text(query, font, text_width)
    width, height = grid_size(
        k, (h, w), query_is_image, len(header), 1 if labels is not None else 0, font
    )
    canvas = Image.new("RGB", (width, height), COLORS["background"])
    draw = ImageDraw.Draw(canvas)
    y = GAP
    for line in header:
        draw.text((GAP, y), line, fill=COLORS["text"], font=font)
        y += lh
    if header:
        y += lh // 2
    cell_w, cell_h = w + 2 * BORDER, h + 2 * BORDER
    x = GAP
    if query_img is not None:
        canvas.paste(_framed(query_img, (h, w), COLORS["query"]), (x, y))
        draw.text((x, y + cell_h + 1), "query", fill=COLORS["text"], font=font)
        x += cell_w + QUERY_GAP
        sep_x = x - QUERY_GAP // 2
        draw.line([(sep_x, y), (sep_x, height - GAP)], fill=COLORS["separator"], width=2)
    for i, img in enumerate(cells):
        if correct is None:
            color = COLORS["unknown"]
        else:
            color = COLORS["correct"] if bool(correct[i]) else COLORS["wrong"]
        canvas.paste(_framed(img, (h, w), color), (x, y))
        lines = [f"#{i + 1}: {float(scores[i]):.3f}"]
        if labels is not None:
            lines.append(str(labels[i]))
        for j, line in enumerate(lines):
            draw.text(
                (x, y + cell_h + 1 + j * lh),
                _fit(line, font, cell_w),
                fill=COLORS["text"],
                font=font,
            )
        x += cell_w + GAP
    return canvas
