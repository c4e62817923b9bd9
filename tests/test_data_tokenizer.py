"""SentencePieceTokenizer: reserved ids, round trips, word starts, vocabulary sizes."""

import pickle

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ptobj.data_pipeline.tokenizer import SentencePieceTokenizer
from ptobj.objectives.sample import SpecialTokens

TEXT = [
    "The quick brown fox jumps over the lazy dog. A second sentence follows here!\n",
    "def add(a, b):\n    return a + b\n\n\nclass Point:\n    x = 1\n",
    "Numbers 12345 and symbols [] {} <> stay encodable. Ünïcödé too: 漢字.\n",
] * 8
LITERALS = ["<PRE>", "<MID>", "<SUF>", "[MASK]", "[CLS]", "[SEP]", "<|endoftext|>", "<pad>", "<unk>", "<s>", "</s>"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "sp.model"
    return SentencePieceTokenizer.train(TEXT, vocab_size=320, model_path=path)


def test_pieces_start_after_reserved_ids(tok):
    special = SpecialTokens()
    ids = np.array(tok.encode("".join(TEXT)))
    assert ids.min() >= special.first_regular
    assert ids.max() < tok.vocab_size
    assert tok.vocab_size == special.first_regular + tok._sp.get_piece_size()


@pytest.mark.parametrize("literal", LITERALS)
def test_literal_special_strings_never_encode_to_reserved_ids(tok, literal):
    ids = tok.encode(f"x {literal} y{literal}")
    assert min(ids) >= SpecialTokens().first_regular
    assert literal in tok.decode(ids)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=30), st.sampled_from(LITERALS)), max_size=6).map("".join))
def test_any_text_round_trips_without_reserved_ids(tok, text):
    ids = tok.encode(text)
    assert all(i >= SpecialTokens().first_regular for i in ids)
    assert tok.decode(ids) == text


def test_decode_drops_reserved_ids(tok):
    special = SpecialTokens()
    ids = tok.encode("hello world")
    mixed = [special.cls] + ids[:2] + [special.fim_middle, special.mask] + ids[2:] + [special.eot]
    assert tok.decode(mixed) == "hello world"


def test_encode_batch_matches_encode(tok):
    texts = ["a b c", "", "def f():\n  pass"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    flat, lengths = tok.encode_flat(texts)
    assert flat.dtype == np.int32 and lengths.tolist() == [len(tok.encode(t)) for t in texts]
    assert flat.tolist() == [i for t in texts for i in tok.encode(t)]


def test_padded_vocab_size(tok):
    for m in (1, 8, 128, 3):
        p = tok.padded_vocab_size(m)
        assert p % m == 0 and tok.vocab_size <= p < tok.vocab_size + m
    with pytest.raises(ValueError, match="multiple"):
        tok.padded_vocab_size(0)


@pytest.mark.parametrize("text", ["the fox\nran", "a second sentence.  the dog", "def f(x):\n    return x"])
def test_word_start_flags_exactly_the_pieces_where_words_begin(tok, text):
    import re

    ids = tok.encode(text)
    pieces = [tok.id_to_piece(i) for i in ids]
    assert "".join(pieces).replace("\u2581", " ") == text  # no byte pieces in these examples
    ws = tok.word_start(ids)
    bounds = np.cumsum([0] + [len(p) for p in pieces])
    owner = np.searchsorted(bounds, np.arange(len(text)), side="right") - 1  # piece of each char
    word_first = {int(owner[m.start()]) for m in re.finditer(r"\S+", text)}
    assert set(np.flatnonzero(ws).tolist()) == word_first, list(zip(pieces, ws))


def test_word_start_after_reserved_and_first(tok):
    special = SpecialTokens()
    body = tok.encode("xyz")
    ids = [special.cls] + body + [special.sep] + body
    ws = tok.word_start(ids)
    assert ws[0] and ws[1] and ws[len(body) + 1] and ws[len(body) + 2]
    assert tok.word_start([]).shape == (0,)


def test_save_load_and_pickle_give_same_encoding(tok, tmp_path):
    tok.save(tmp_path / "copy.model")
    again = SentencePieceTokenizer.load(tmp_path / "copy.model")
    text = "The fox [MASK] <PRE> 123"
    assert again.encode(text) == tok.encode(text)
    assert pickle.loads(pickle.dumps(tok)).encode(text) == tok.encode(text)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model"):
        SentencePieceTokenizer.load(tmp_path / "nope.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.model"):
        SentencePieceTokenizer.load(bad)


def test_literal_word_boundary_mark_survives(tok):
    # sentencepiece's own whitespace mark typed in raw text must come back as itself, not a space
    text = "a\u2581b \u2581\u2581"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.encode_batch([text, "plain"]) == [ids, tok.encode("plain")]
    flat, lengths = tok.encode_flat([text])
    assert flat.tolist() == ids and lengths.tolist() == [len(ids)]


def test_fewer_pieces_than_asked_are_said_or_an_error(capsys):
    tok = SentencePieceTokenizer.train(TEXT, vocab_size=2000)  # TEXT holds a few hundred pieces
    got = tok.num_pieces
    assert 320 <= got < 2000 and tok.vocab_size == got + SpecialTokens().first_regular
    assert f"asked for 2000 pieces, the training text gave {got}" in capsys.readouterr().err
    with pytest.raises(ValueError, match=f"vocab_size=2000 with exact_vocab_size: the training text gives at most {got} pieces"):
        SentencePieceTokenizer.train(TEXT, vocab_size=2000, exact_vocab_size=True)
    exact = SentencePieceTokenizer.train(TEXT, vocab_size=320, exact_vocab_size=True)
    assert exact.num_pieces == 320 and "asked for" not in capsys.readouterr().err
