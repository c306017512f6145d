"""Render a synthetic pedestrian (head, torso, arms, legs, shoes, bag) with per-image variation."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from .attributes import COLOUR_RGB, HAIR_RGB, PersonAttributes

_SUPERSAMPLE = 2  # draw at 2x and box-downsample: cheap anti-aliasing
_SKIN_TONES = ((232, 190, 160), (205, 160, 120), (160, 115, 80), (110, 75, 50))


def _muted_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A low-saturation background colour, so clothes stay the most salient colours."""
    grey = rng.uniform(70, 205)
    tint = rng.uniform(-22, 22, size=3)
    return tuple(int(v) for v in np.clip(grey + tint, 0, 255))


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: float) -> tuple:
    return tuple(int(v) for v in np.clip(np.asarray(rgb) + rng.uniform(-amount, amount, 3), 0, 255))


def _stripe_colour(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (235, 235, 235) if luminance < 140 else (25, 25, 25)


def _draw_background(draw: ImageDraw.ImageDraw, w: int, h: int, rng: np.random.Generator) -> None:
    draw.rectangle((0, 0, w, h), fill=_muted_colour(rng))
    for _ in range(int(rng.integers(0, 5))):  # walls, windows, distant objects
        x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.1, 0.7) * h
        x1, y1 = x0 + rng.uniform(0.1, 0.6) * w, y0 + rng.uniform(0.05, 0.4) * h
        draw.rectangle((x0, y0, x1, y1), fill=_muted_colour(rng))
    horizon = rng.uniform(0.55, 0.85) * h  # ground plane
    draw.rectangle((0, horizon, w, h), fill=_muted_colour(rng))
    if rng.random() < 0.5:  # paving lines
        for y in np.arange(horizon, h, rng.uniform(0.04, 0.1) * h):
            draw.line((0, y, w, y), fill=_muted_colour(rng), width=max(1, w // 60))


def render_person(
    attrs: PersonAttributes, rng: np.random.Generator, size: tuple[int, int] = (96, 48)
) -> Image.Image:
    """Draw one image of an identity.

    Args:
        attrs: the identity's attributes (colours, clothes, headwear, bag, shoes).
        rng: numpy Generator driving the per-image variation (position, scale, width, pose, bag
            side, background, lighting, noise); the same state gives the same image.
        size: output (H, W) in pixels.
    Returns:
        an RGB ``PIL.Image`` of size W x H.
    """
    out_h, out_w = size
    h, w = out_h * _SUPERSAMPLE, out_w * _SUPERSAMPLE
    img = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(img)
    _draw_background(draw, w, h, rng)

    # Figure placement: height, top, centre, width factor, walking pose.
    ph = h * rng.uniform(0.78, 0.95)
    top = rng.uniform(0.01 * h, max(0.011 * h, 0.99 * h - ph))
    cx = w * rng.uniform(0.4, 0.6)
    woman = attrs.gender == "woman"
    sw = min(ph * 0.13 * rng.uniform(0.9, 1.1) * (0.9 if woman else 1.0), 0.36 * w)
    stride = ph * rng.uniform(-0.05, 0.05)

    def y(frac: float) -> float:
        return top + frac * ph

    skin = _jitter(_SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))], rng, 10)
    upper = _jitter(COLOUR_RGB[attrs.upper_colour], rng, 12)
    lower = _jitter(COLOUR_RGB[attrs.lower_colour], rng, 12)
    shoes = _jitter(COLOUR_RGB[attrs.shoe_colour], rng, 10)
    head_kind, head_colour = attrs.headwear
    hair = _jitter(HAIR_RGB[head_colour] if head_kind == "hair" else HAIR_RGB["brown"], rng, 8)
    bag_kind, bag_colour = attrs.bag
    bag_side = 1 if rng.random() < 0.5 else -1
    bag = _jitter(COLOUR_RGB[bag_colour], rng, 10) if bag_kind != "none" else None
    head_r = ph * 0.055
    hip_w = sw * (0.85 if woman else 0.78)

    if woman:  # long hair falls behind the head to the shoulders
        draw.rectangle((cx - head_r * 1.15, y(0.04), cx + head_r * 1.15, y(0.25)), fill=hair)
    if bag_kind == "backpack":  # body of the backpack peeks out behind one shoulder
        bx = cx + bag_side * sw
        draw.rounded_rectangle(
            (
                min(bx, bx + bag_side * ph * 0.07),
                y(0.18),
                max(bx, bx + bag_side * ph * 0.07),
                y(0.44),
            ),
            radius=ph * 0.015,
            fill=bag,
        )

    # Legs (trousers / shorts / skirt), then shoes.
    leg_w = ph * 0.06
    for side in (-1, 1):
        hip_x = cx + side * hip_w * 0.5
        ankle_x = cx + side * ph * 0.045 + side * stride
        knee_frac = 0.68 if attrs.lower_type == "shorts" else 0.94
        leg = [(hip_x - leg_w / 2, y(0.5)), (hip_x + leg_w / 2, y(0.5))]
        leg += [(ankle_x + leg_w / 2, y(0.94)), (ankle_x - leg_w / 2, y(0.94))]
        draw.polygon(leg, fill=skin if attrs.lower_type == "skirt" else lower)
        if attrs.lower_type == "shorts":
            t = (0.94 - knee_frac) / 0.44
            kx = ankle_x + (hip_x - ankle_x) * t
            draw.polygon(
                [(kx - leg_w / 2, y(knee_frac)), (kx + leg_w / 2, y(knee_frac))] + leg[2:],
                fill=skin,
            )
        draw.ellipse(
            (ankle_x - leg_w * 0.75, y(0.925), ankle_x + leg_w * 0.85, y(0.99)), fill=shoes
        )
    if attrs.lower_type == "skirt":
        flare = hip_w * rng.uniform(0.65, 0.8)
        draw.polygon(
            [(cx - hip_w / 2, y(0.47)), (cx + hip_w / 2, y(0.47)), (cx + flare, y(0.72)),
             (cx - flare, y(0.72))],
            fill=lower,
        )  # fmt: skip

    # Torso with optional stripes, arms with hands.
    torso = [(cx - sw, y(0.17)), (cx + sw, y(0.17)), (cx + hip_w, y(0.51)), (cx - hip_w, y(0.51))]
    draw.polygon(torso, fill=upper)
    if attrs.striped:
        stripe = _stripe_colour(upper)
        for frac in np.linspace(0.23, 0.46, 4):
            half = sw + (hip_w - sw) * (frac - 0.17) / 0.34
            draw.rectangle((cx - half, y(frac), cx + half, y(frac + 0.022)), fill=stripe)
    arm_w = ph * 0.045
    for side in (-1, 1):
        sx = cx + side * (sw + arm_w * 0.45)
        hx = sx + side * ph * rng.uniform(0.0, 0.04) - stride * side * 0.4
        draw.polygon(
            [(sx - arm_w / 2, y(0.18)), (sx + arm_w / 2, y(0.18)), (hx + arm_w / 2, y(0.46)),
             (hx - arm_w / 2, y(0.46))],
            fill=upper,
        )  # fmt: skip
        draw.ellipse((hx - arm_w * 0.5, y(0.455), hx + arm_w * 0.5, y(0.5)), fill=skin)
    if bag_kind == "backpack":  # shoulder straps
        for side in (-1, 1):
            sx = cx + side * sw * 0.55
            draw.line((sx, y(0.17), sx, y(0.36)), fill=bag, width=max(1, int(ph * 0.018)))
    elif bag_kind == "handbag":  # strap across the body and the bag at the opposite hip
        strap_w = max(1, int(ph * 0.014))
        bx = cx + bag_side * (hip_w + ph * 0.02)
        draw.line((cx - bag_side * sw * 0.8, y(0.17), bx, y(0.45)), fill=bag, width=strap_w)
        draw.rounded_rectangle(
            (bx - ph * 0.045, y(0.43), bx + ph * 0.045, y(0.55)), radius=ph * 0.01, fill=bag
        )

    # Neck, head, short hair or hat.
    draw.rectangle((cx - head_r * 0.4, y(0.1), cx + head_r * 0.4, y(0.18)), fill=skin)
    draw.ellipse((cx - head_r, y(0.02), cx + head_r, y(0.14)), fill=skin)
    if head_kind == "hat":
        hat = _jitter(COLOUR_RGB[head_colour], rng, 10)
        draw.chord((cx - head_r * 1.05, y(0.005), cx + head_r * 1.05, y(0.11)), 180, 360, fill=hat)
        brim = head_r * (1.5 if rng.random() < 0.5 else 1.25)
        draw.rectangle((cx - brim, y(0.05), cx + brim, y(0.064)), fill=hat)
    else:
        draw.chord((cx - head_r * 1.05, y(0.01), cx + head_r * 1.05, y(0.1)), 180, 360, fill=hair)

    img = img.reduce(_SUPERSAMPLE)
    return _apply_lighting(img, rng)


def _apply_lighting(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness, colour cast, a linear illumination gradient and Gaussian sensor noise."""
    arr = np.asarray(img, dtype=np.float32)
    h, w = arr.shape[:2]
    gain = rng.uniform(0.75, 1.2) * rng.uniform(0.93, 1.07, size=3)
    gy, gx = rng.uniform(-0.12, 0.12, size=2)
    ramp = 1.0 + gy * np.linspace(-1, 1, h)[:, None] + gx * np.linspace(-1, 1, w)[None, :]
    arr = arr * gain[None, None, :] * ramp[:, :, None]
    arr += rng.normal(0.0, rng.uniform(2.0, 6.0), size=arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")


def encode_jpeg(img: Image.Image, quality: int = 90) -> bytes:
    """Encode an image as baseline JPEG with fixed settings (byte-identical for equal inputs)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=False, progressive=False)
    return buf.getvalue()
