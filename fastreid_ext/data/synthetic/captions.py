"""Captions for synthetic pedestrians: every attribute described, with varied wording, synonyms and order."""

from __future__ import annotations

import re

import numpy as np

from .attributes import PersonAttributes

# Words used for each attribute value; tests check captions against these lists.
COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "grey": ("grey", "gray"),
    "khaki": ("khaki", "beige"),
    "purple": ("purple", "violet"),
    "blond": ("blond", "blonde", "fair"),
}
UPPER_NOUNS: tuple[str, ...] = ("shirt", "t-shirt", "top", "jacket", "sweater")
LOWER_NOUNS: dict[str, tuple[str, ...]] = {
    "trousers": ("trousers", "pants", "jeans"),
    "shorts": ("shorts",),
    "skirt": ("skirt",),
}
SHOE_NOUNS: tuple[str, ...] = ("shoes", "sneakers", "boots")
HAT_NOUNS: tuple[str, ...] = ("hat", "cap")
BAG_NOUNS: dict[str, tuple[str, ...]] = {
    "backpack": ("backpack", "rucksack"),
    "handbag": ("handbag", "shoulder bag", "bag"),
}
HAIR_LENGTH: dict[str, str] = {"man": "short", "woman": "long"}
SUBJECTS: dict[str, tuple[str, ...]] = {
    "man": ("a man", "the man", "this man", "a young man", "the guy", "a male pedestrian"),
    "woman": (
        "a woman",
        "the woman",
        "this woman",
        "a young woman",
        "the lady",
        "a female pedestrian",
    ),
}
_NEUTRAL_SUBJECTS = ("this person", "the person", "the pedestrian")
_PRONOUNS = {"man": ("he", "his"), "woman": ("she", "her")}
_WEAR_PARTICIPLE = ("wearing", "in", "dressed in")
_WEAR_VERB = ("is wearing", "wears", "has on", "is dressed in")


def colour_words(colour: str) -> tuple[str, ...]:
    """All words a caption may use for a colour name."""
    return COLOUR_WORDS.get(colour, (colour,))


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _upper_phrase(attrs: PersonAttributes, rng: np.random.Generator) -> str:
    colour, noun = _pick(rng, colour_words(attrs.upper_colour)), _pick(rng, UPPER_NOUNS)
    if not attrs.striped:
        return _article(f"{colour} {noun}")
    style = int(rng.integers(3))
    if style == 0:
        return _article(f"{colour} striped {noun}")
    if style == 1:
        return _article(f"{colour} {noun} with horizontal stripes")
    return _article(f"{colour} {noun} with stripes")


def _lower_phrase(attrs: PersonAttributes, rng: np.random.Generator) -> str:
    colour = _pick(rng, colour_words(attrs.lower_colour))
    noun = _pick(rng, LOWER_NOUNS[attrs.lower_type])
    if attrs.lower_type == "skirt":
        return _article(f"{colour} {noun}")
    return f"a pair of {colour} {noun}" if rng.random() < 0.3 else f"{colour} {noun}"


def _shoe_phrase(attrs: PersonAttributes, rng: np.random.Generator) -> str:
    colour, noun = _pick(rng, colour_words(attrs.shoe_colour)), _pick(rng, SHOE_NOUNS)
    return f"a pair of {colour} {noun}" if rng.random() < 0.3 else f"{colour} {noun}"


def _head_phrase(attrs: PersonAttributes, rng: np.random.Generator) -> str:
    kind, colour = attrs.headwear
    if kind == "hat":
        return _article(f"{_pick(rng, colour_words(colour))} {_pick(rng, HAT_NOUNS)}")
    return f"{HAIR_LENGTH[attrs.gender]} {_pick(rng, colour_words(colour))} hair"


def _bag_sentence(attrs: PersonAttributes, rng: np.random.Generator, pronoun: str) -> str:
    kind, colour = attrs.bag
    if kind == "none":
        return _pick(
            rng,
            (f"{pronoun} is not carrying a bag", f"{pronoun} has no bag", "there is no bag", ""),
        )
    bag = _article(f"{_pick(rng, colour_words(colour))} {_pick(rng, BAG_NOUNS[kind])}")
    where = " on the back" if kind == "backpack" and rng.random() < 0.5 else ""
    verb = _pick(rng, ("is carrying", "carries", "has"))
    return f"{pronoun} {verb} {bag}{where}"


def _sentence(text: str) -> str:
    text = text.strip()
    return text[0].upper() + text[1:] + "." if text else ""


def describe_person(attrs: PersonAttributes, rng: np.random.Generator) -> str:
    """Write one caption that states every attribute of ``attrs``.

    Args:
        attrs: the identity's attributes.
        rng: numpy Generator choosing the template, synonyms and the order of the items.
    Returns:
        a caption of one to three sentences, e.g. "A man wearing a red shirt, blue jeans and
        black shoes. He has short brown hair. He is carrying a black backpack."
    """
    pronoun, possessive = _PRONOUNS[attrs.gender]
    subject = _pick(rng, SUBJECTS[attrs.gender] if rng.random() < 0.8 else _NEUTRAL_SUBJECTS)
    clothes = [_upper_phrase(attrs, rng), _lower_phrase(attrs, rng), _shoe_phrase(attrs, rng)]
    head = _head_phrase(attrs, rng)
    hat = attrs.headwear[0] == "hat"
    if hat:
        clothes.append(head)
    clothes = [clothes[i] for i in rng.permutation(len(clothes))]
    bag = _bag_sentence(attrs, rng, pronoun)
    template = int(rng.integers(4))
    if template == 0:
        parts = [f"{subject} {_pick(rng, _WEAR_PARTICIPLE)} {_join(clothes)}"]
        if not hat:
            parts.append(f"{pronoun} has {head}")
        parts.append(bag)
    elif template == 1:
        parts = [f"{subject} {_pick(rng, _WEAR_VERB)} {_join(clothes)}", bag]
        if not hat:
            length = HAIR_LENGTH[attrs.gender]
            colour = _pick(rng, colour_words(attrs.headwear[1]))
            parts.insert(int(rng.integers(1, 3)), f"{possessive} {length} hair is {colour}")
    elif template == 2:
        lead = f"{subject} with {head}" if not hat else subject
        parts = [f"{lead} {_pick(rng, _WEAR_VERB)} {_join(clothes)}", bag]
    else:
        parts = [f"{_pick(rng, _WEAR_PARTICIPLE)} {_join(clothes)}, {subject} walks along", bag]
        if not hat:
            parts.insert(1, f"{pronoun} has {head}")
    return " ".join(_sentence(p) for p in parts if p)


def caption_tokens(caption: str) -> list[str]:
    """CUHK-PEDES ``processed_tokens`` style: lower-case, punctuation stripped, split on spaces."""
    return re.sub(r"[^\w\s'-]", " ", caption.lower()).split()
