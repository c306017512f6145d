"""Identity attributes of the synthetic pedestrians: the attribute space and sampling without replacement."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# RGB of every colour name used for clothes, bags and shoes.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 35),
    "blue": (35, 70, 200),
    "green": (35, 150, 60),
    "yellow": (235, 205, 40),
    "black": (28, 28, 30),
    "white": (238, 238, 235),
    "grey": (128, 128, 128),
    "orange": (240, 125, 25),
    "purple": (125, 45, 160),
    "pink": (240, 140, 180),
    "brown": (110, 68, 35),
    "khaki": (195, 175, 125),
}
# Hair colours are rendered with their own shades.
HAIR_RGB: dict[str, tuple[int, int, int]] = {
    "black": (22, 20, 20),
    "brown": (95, 60, 30),
    "blond": (225, 195, 115),
    "grey": (170, 170, 168),
}

GENDERS: tuple[str, ...] = ("man", "woman")
UPPER_COLOURS: tuple[str, ...] = (
    "red", "blue", "green", "yellow", "black", "white", "grey", "orange", "purple", "pink",
)  # fmt: skip
STRIPES: tuple[bool, ...] = (False, True)
LOWER_COLOURS: tuple[str, ...] = (
    "black",
    "blue",
    "grey",
    "white",
    "brown",
    "khaki",
    "red",
    "green",
)
LOWER_TYPES: tuple[str, ...] = ("trousers", "shorts", "skirt")
# (kind, colour): short/long hair (length follows gender) of a colour, or a hat of a colour.
HEADWEAR: tuple[tuple[str, str], ...] = (
    ("hair", "black"), ("hair", "brown"), ("hair", "blond"), ("hair", "grey"),
    ("hat", "red"), ("hat", "blue"), ("hat", "white"), ("hat", "black"),
)  # fmt: skip
# (kind, colour); the bag's side changes per image, so it is not an identity attribute (flip-safe).
BAGS: tuple[tuple[str, str], ...] = (
    ("none", ""),
    ("backpack", "black"), ("backpack", "red"), ("backpack", "blue"),
    ("handbag", "black"), ("handbag", "brown"), ("handbag", "white"),
)  # fmt: skip
SHOE_COLOURS: tuple[str, ...] = ("black", "white", "brown", "red")

# Order of the mixed-radix decoding of an attribute-space index.
ATTRIBUTE_AXES: tuple[tuple[str, tuple], ...] = (
    ("gender", GENDERS),
    ("upper_colour", UPPER_COLOURS),
    ("striped", STRIPES),
    ("lower_colour", LOWER_COLOURS),
    ("lower_type", LOWER_TYPES),
    ("headwear", HEADWEAR),
    ("bag", BAGS),
    ("shoe_colour", SHOE_COLOURS),
)
ATTRIBUTE_SPACE_SIZE: int = math.prod(len(options) for _, options in ATTRIBUTE_AXES)


@dataclass(frozen=True)
class PersonAttributes:
    """The visual attributes that define one synthetic identity (all of them are captioned).

    Attributes:
        gender: "man" or "woman" (women have long hair and slightly narrower shoulders).
        upper_colour: colour of the top (:data:`UPPER_COLOURS`).
        striped: whether the top has horizontal stripes (contrasting colour).
        lower_colour: colour of the trousers / shorts / skirt (:data:`LOWER_COLOURS`).
        lower_type: "trousers", "shorts" or "skirt".
        headwear: ("hair", hair colour) or ("hat", hat colour).
        bag: ("none", "") or ("backpack" | "handbag", colour).
        shoe_colour: colour of the shoes (:data:`SHOE_COLOURS`).
    """

    gender: str
    upper_colour: str
    striped: bool
    lower_colour: str
    lower_type: str
    headwear: tuple[str, str]
    bag: tuple[str, str]
    shoe_colour: str

    @classmethod
    def from_index(cls, index: int) -> PersonAttributes:
        """Decode an index in ``[0, ATTRIBUTE_SPACE_SIZE)`` into an attribute combination."""
        if not 0 <= index < ATTRIBUTE_SPACE_SIZE:
            raise ValueError(f"attribute index {index} outside [0, {ATTRIBUTE_SPACE_SIZE})")
        values = {}
        for name, options in reversed(ATTRIBUTE_AXES):
            index, digit = divmod(index, len(options))
            values[name] = options[digit]
        return cls(**values)


def sample_identity_attributes(num_ids: int, rng: np.random.Generator) -> list[PersonAttributes]:
    """Draw ``num_ids`` distinct attribute combinations uniformly without replacement.

    Args:
        num_ids: number of identities, at most :data:`ATTRIBUTE_SPACE_SIZE`.
        rng: numpy Generator (the draw is deterministic given its state).
    Returns:
        a list of ``num_ids`` pairwise-different :class:`PersonAttributes`.
    """
    if num_ids < 1:
        raise ValueError(f"num_ids must be >= 1, got {num_ids}")
    if num_ids > ATTRIBUTE_SPACE_SIZE:
        raise ValueError(
            f"num_ids={num_ids} exceeds the {ATTRIBUTE_SPACE_SIZE} distinct attribute combinations"
        )
    indices = rng.choice(ATTRIBUTE_SPACE_SIZE, size=num_ids, replace=False)
    return [PersonAttributes.from_index(int(i)) for i in indices]
