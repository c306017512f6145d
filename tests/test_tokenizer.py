"""Tests for the CLIP BPE caption tokenizer (fastreid_ext.text.tokenizer)."""

import pickle
from concurrent.futures import ThreadPoolExecutor

import open_clip
import pytest
import torch

from fastreid_ext.text.tokenizer import EOT_ID, MASK_ID, SOT_ID, VOCAB_SIZE, ClipTokenizer

CAPTION = "A woman wearing a Red jacket and black pants."
CAPTION_IDS = [49406, 320, 2308, 3309, 320, 736, 6164, 537, 1449, 5003, 269, 49407]
CAPTIONS = [
    CAPTION,
    "The man has short black hair, a white T-shirt with blue letters and grey shorts.",
    "She carries a pink bag over her left shoulder; her shoes are white sneakers!",
    "",
    "  multiple   spaces\tand\nnewlines  ",
]


@pytest.fixture(scope="module")
def tok():
    return ClipTokenizer()


def test_constants():
    assert (SOT_ID, EOT_ID, MASK_ID, VOCAB_SIZE) == (49406, 49407, 49405, 49408)


def test_exact_ids_of_reference_caption(tok):
    ids = tok.encode(CAPTION)
    assert ids.dtype == torch.long and ids.shape == (77,)
    assert ids.tolist() == CAPTION_IDS + [0] * (77 - len(CAPTION_IDS))
    assert int(ids.argmax()) == len(CAPTION_IDS) - 1


def test_matches_open_clip_for_ordinary_captions(tok):
    assert torch.equal(tok(CAPTIONS), open_clip.tokenize(CAPTIONS, context_length=77))


def test_call_batches_and_single_string(tok):
    batch = tok(CAPTIONS)
    assert batch.shape == (len(CAPTIONS), 77) and batch.dtype == torch.long
    for row, text in zip(batch, CAPTIONS):
        assert torch.equal(row, tok.encode(text))
    assert torch.equal(tok(CAPTION), tok.encode(CAPTION).unsqueeze(0))
    assert tok([]).shape == (0, 77)


def test_long_caption_truncated_with_eot_last(tok):
    text = " ".join(f"word{i} red jacket" for i in range(40))
    full = ClipTokenizer(context_length=400).encode(text)
    n_full = int(full.argmax()) + 1
    assert n_full > 77
    ids = tok.encode(text)
    assert ids.shape == (77,)
    assert int(ids[-1]) == EOT_ID and int(ids.argmax()) == 76
    assert (ids == EOT_ID).sum() == 1
    assert torch.equal(ids[:76], full[:76])


def test_exactly_fitting_caption_is_not_altered():
    tok8 = ClipTokenizer(context_length=8)
    ids = tok8.encode("a b c d e f")  # SOT + 6 tokens + EOT = 8
    assert ids.tolist() == [SOT_ID, 320, 321, 322, 323, 324, 325, EOT_ID]
    ids = tok8.encode("a b c d e f g")  # one too many: 'g' is dropped and EOT forced last
    assert ids.tolist() == [SOT_ID, 320, 321, 322, 323, 324, 325, EOT_ID]


def test_empty_and_whitespace_caption(tok):
    expected = [SOT_ID, EOT_ID] + [0] * 75
    assert tok.encode("").tolist() == expected
    assert tok.encode(" \t\n ").tolist() == expected


def test_cleaning_lowercase_whitespace_html_and_mojibake(tok):
    assert torch.equal(tok.encode("A  WOMAN\twearing"), tok.encode("a woman wearing"))
    assert torch.equal(tok.encode("black &amp; white"), tok.encode("black & white"))
    assert torch.equal(tok.encode("cafÃ© bag"), tok.encode("café bag"))  # ftfy repairs mojibake


def test_non_ascii_roundtrip(tok):
    ids = tok.encode("café naïve 行人")
    assert int(ids[0]) == SOT_ID and int(ids.argmax()) == int((ids != 0).nonzero().max())
    assert ((ids > 0) & (ids < MASK_ID)).sum() >= 3
    assert tok.decode(ids) == "café naïve 行人"
    assert tok.decode(tok.encode(CAPTION)) == "a woman wearing a red jacket and black pants ."


def test_special_strings_and_mask_word_are_plain_text(tok):
    # CLIP would turn the literal text into an EOT id and 'jekyll' into id 49405 (IRRA's mask).
    ids = tok.encode("a man <end_of_text> <start_of_text> called jekyll")
    assert (ids == EOT_ID).sum() == 1 and (ids == SOT_ID).sum() == 1
    assert not (ids == MASK_ID).any()
    assert int(ids.argmax()) == int((ids != 0).nonzero().max())
    assert tok.decode(ids) == "a man < end _ of _ text > < start _ of _ text > called jekyll"


def test_decode_shows_mask_and_stops_at_eot(tok):
    ids = tok.encode(CAPTION)
    ids[2] = MASK_ID
    assert tok.decode(ids) == "a <|mask|> wearing a red jacket and black pants ."
    assert tok.decode([320, 2308]) == "a woman"
    with pytest.raises(ValueError, match="vocabulary"):
        tok.decode([320, VOCAB_SIZE])


def test_bad_arguments():
    with pytest.raises(ValueError, match="context_length"):
        ClipTokenizer(context_length=1)
    with pytest.raises(TypeError, match="context_length"):
        ClipTokenizer(context_length=77.0)
    with pytest.raises(TypeError, match="caption must be a str"):
        ClipTokenizer()([CAPTION, None])


def test_pickle_is_small_and_equivalent(tok):
    blob = pickle.dumps(ClipTokenizer(context_length=32))
    assert len(blob) < 1000  # the BPE tables are not pickled
    clone = pickle.loads(blob)
    assert clone.context_length == 32
    assert torch.equal(clone(CAPTIONS), ClipTokenizer(context_length=32)(CAPTIONS))


def test_thread_safe(tok):
    texts = [f"{c} number {i}" for i in range(30) for c in CAPTIONS]
    serial = [tok.encode(t) for t in texts]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(tok.encode, texts))
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel))
