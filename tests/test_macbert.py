"""MacBERT: literal examples, properties (hypothesis), shares on large draws, bad input."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptobj.objectives import intervals
from ptobj.objectives.macbert import KEEP, RANDOM_WORD, SIMILAR, MacBERT, MacBERTConfig, load_similar_words
from ptobj.objectives.sample import SpecialTokens
from ptobj.objectives.streams import RowStreams
from ptobj.objectives.similar_words import (
    MAX_WORD_TOKENS,
    SimilarWords,
    chinese_word_starts,
    from_corpus,
    from_embedding_file,
    from_synonym_file,
)

SP = SpecialTokens()
V = 1000


def segment(rng, n, word_frac=0.7, low=16, high=V):
    ws = rng.random(n) < word_frac
    if n:
        ws[0] = True
    return {"tokens": rng.integers(low, high, n).astype(np.int32), "word_start": ws}


def words_of(tokens, ws):
    starts = np.flatnonzero(ws)
    return [tuple(tokens[a:b].tolist()) for a, b in zip(starts, list(starts[1:]) + [len(tokens)])]


def make(table=None, **cfg):
    return MacBERT(MacBERTConfig(**cfg), special=SP, vocab_size=V, similar=table)


# ------------------------------------------------------------------ literal examples
def test_literal_every_word_replaced_by_its_only_neighbour():
    # words: (20) (30 31) (40) ; each has exactly one same-length neighbour
    table = SimilarWords.from_neighbours({(20,): [(21,)], (30, 31): [(32, 33)], (40,): [(41,)]})
    t = make(table, seq_length=8, mask_rate=1.0, ngram_probs=(1.0,), replace_probs=(1.0, 0.0, 0.0))
    s = {"tokens": np.array([20, 30, 31, 40], np.int32), "word_start": np.array([1, 1, 0, 1], bool)}
    out = t(s, 0)
    assert out["tokens"].tolist() == [3, 21, 32, 33, 41, 4, 0, 0]
    assert out["labels"].tolist() == [0, 20, 30, 31, 40, 0, 0, 0]
    assert out["loss_mask"].tolist() == [0, 1, 1, 1, 1, 0, 0, 0]
    assert out["kv_end"].tolist() == [6] * 8 and out["kv_start"].tolist() == [0] * 8
    assert out["segment_ids"].tolist() == [0] * 8 and out["position_ids"].tolist() == list(range(8))


def test_literal_keep_leaves_tokens_but_sets_labels():
    t = make(seq_length=6, mask_rate=1.0, ngram_probs=(1.0,), replace_probs=(0.0, 0.0, 1.0))
    s = {"tokens": np.array([50, 51, 52], np.int32), "word_start": np.array([1, 0, 1], bool)}
    out = t(s, 1)
    assert out["tokens"].tolist() == [3, 50, 51, 52, 4, 0]
    assert out["labels"].tolist() == [0, 50, 51, 52, 0, 0]


def test_mismatched_length_candidates_are_dropped_and_fall_back_to_random_word_of_same_length():
    # (30,31) only has a 1-token "neighbour" -> dropped; the random pool of 2-token words is {(30,31),(60,61)}
    table = SimilarWords.from_neighbours({(30, 31): [(99,)], (20,): [(21,)]}, extra_words=[(60, 61)])
    assert table.neighbours((30, 31)) == []
    t = make(table, seq_length=6, mask_rate=1.0, ngram_probs=(1.0,), replace_probs=(1.0, 0.0, 0.0))
    s = {"tokens": np.array([30, 31], np.int32), "word_start": np.array([1, 0], bool)}
    seen = set()
    for seed in range(30):
        out = t(s, seed)
        seen.add(tuple(out["tokens"][1:3].tolist()))
        assert out["tokens"][3] == SP.sep and out["labels"][1:3].tolist() == [30, 31]
    assert seen == {(30, 31), (60, 61)}


def test_no_table_means_random_tokens_in_regular_range():
    t = make(seq_length=40, mask_rate=1.0, ngram_probs=(1.0,), replace_probs=(1.0, 0.0, 0.0))
    s = segment(np.random.default_rng(3), 30, low=900, high=910)  # originals in [900, 910): substitutes differ
    out = t(s, 3)
    body = out["tokens"][1:31]
    assert out["loss_mask"][1:31].all()
    assert body.min() >= SP.first_regular and body.max() < V
    assert (body != s["tokens"]).mean() > 0.8  # a random id equals the original ~1/1000 of the time


# ------------------------------------------------------------------ properties
def _table_for(rng, n_words=200):
    words = {}
    for _ in range(n_words):
        L = int(rng.integers(1, 4))
        words[tuple(rng.integers(16, V, L).tolist())] = None
    ws = list(words)
    nb = {}
    for w in ws:
        picks = [ws[j] for j in rng.permutation(len(ws))[:8]]
        nb[w] = [x for x in picks if len(x) == len(w)]
    return SimilarWords.from_neighbours(nb)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(0, 70), seed=st.integers(0, 2**32 - 1), S=st.integers(3, 80),
       word_frac=st.floats(0.2, 1.0))
def test_properties(n, seed, S, word_frac):
    rng = np.random.default_rng(seed ^ 0x5EED)
    table = _table_for(rng, 60)
    # build the input from table words half the time, so similar words are found
    toks, wss = [], []
    for w in [tuple(table.words[i, : table.lengths[i]].tolist()) for i in rng.integers(0, len(table), n)]:
        toks += list(w)
        wss += [True] + [False] * (len(w) - 1)
    s = segment(rng, n, word_frac) if seed % 2 else {"tokens": np.array(toks[:n], np.int32),
                                                     "word_start": np.array(wss[:n], bool)}
    n = len(s["tokens"])
    t = make(table, seq_length=S)
    a = t(s, seed)
    b = t(s, seed)
    for k in a:  # a pure function of (sample, seed)
        assert np.array_equal(a[k], b[k]), k
        assert a[k].shape == (S,) and a[k].dtype == (np.float32 if k == "loss_mask" else np.int32)
    m = min(n, S - 2)
    tok, lab, lm = a["tokens"], a["labels"], a["loss_mask"].astype(bool)
    orig = s["tokens"][:m]
    # layout and specials: only [CLS] at 0, [SEP] at m+1, PAD after
    assert tok[0] == SP.cls and tok[m + 1] == SP.sep and (tok[m + 2:] == SP.pad).all()
    assert (tok[1:m + 1] >= SP.first_regular).all() and (tok[1:m + 1] < V).all()
    # untouched positions are copies, targets label the original token
    assert np.array_equal(tok[1:m + 1][~lm[1:m + 1]], orig[~lm[1:m + 1]])
    assert np.array_equal(lab[lm], orig[lm[1:m + 1]]) and (lab[~lm] == SP.pad).all()
    assert not lm[0] and not lm[m + 1:].any()
    # whole words: a chosen word is chosen entirely
    wid = np.cumsum(np.r_[True, s["word_start"][1:m]]) - 1 if m else np.zeros(0, int)
    for w in np.unique(wid):
        part = lm[1:m + 1][wid == w]
        assert part.all() or not part.any()
    # row intervals equal the dense reference "every row sees the m+2 real tokens"
    dense_ref = np.broadcast_to(np.arange(S) < m + 2, (S, S))
    assert np.array_equal(intervals.dense(a["kv_start"], a["kv_end"]), dense_ref)


def test_substitutes_are_table_neighbours_of_the_same_length():
    rng = np.random.default_rng(7)
    table = _table_for(rng, 300)
    words = [tuple(table.words[i, : table.lengths[i]].tolist()) for i in range(len(table))]
    t = make(table, seq_length=512, replace_probs=(1.0, 0.0, 0.0))
    checked = 0
    for seed in range(20):
        r = np.random.default_rng(seed)
        ws_ = [words[i] for i in r.integers(0, len(words), 150)]
        toks = np.array([x for w in ws_ for x in w], np.int32)[:510]
        flags = np.array([j == 0 for w in ws_ for j in range(len(w))], bool)[:510]
        out = t({"tokens": toks, "word_start": flags}, seed)
        lm = out["loss_mask"][1:511].astype(bool)
        new = out["tokens"][1:511]
        starts = np.flatnonzero(flags)
        for a, b in zip(starts, list(starts[1:]) + [len(toks)]):
            if lm[a]:
                w, sub = tuple(toks[a:b].tolist()), tuple(new[a:b].tolist())
                nb = table.neighbours(w)
                if nb:
                    assert sub in nb, (w, sub, nb)
                    checked += 1
    assert checked > 100


# ------------------------------------------------------------------ shares on large draws
def _big_draw(t, rows=1500, n=500, seed=11):
    rng = np.random.default_rng(seed)
    ws = rng.random((rows, n)) < 0.6
    ws[:, 0] = True
    tokens = rng.integers(16, V, (rows, n)).astype(np.int32)
    keys = RowStreams.for_rows(seed, 0, np.arange(rows))
    spans = t.choose(keys, ws, lengths=np.full(rows, n))
    pos, _ = spans.positions()
    action = t.substitute(keys, tokens, pos, ws.reshape(-1)[pos])
    chosen = np.zeros(rows * n, bool)
    chosen[pos] = True
    return ws, chosen.reshape(rows, n), {"spans": spans, "action": action}


def test_budget_ngram_and_replacement_shares():
    table = _table_for(np.random.default_rng(5), 50)
    t = make(table)
    ws, chosen, info = _big_draw(t)
    n_words = ws.sum()
    chosen_words = (chosen & ws).sum()
    assert abs(chosen_words / n_words - 0.15) < 0.003          # 15% of the words
    # n-gram lengths (in words) per span
    span = info["spans"].span_id()
    rows, _ = np.nonzero((span >= 0) & ws)
    key = rows.astype(np.int64) * 10_000 + span[(span >= 0) & ws]
    _, words_per_span = np.unique(key, return_counts=True)
    shares = np.bincount(words_per_span, minlength=5)[1:5] / len(words_per_span)
    p = np.array([0.4, 0.3, 0.2, 0.1])
    sd = np.sqrt(p * (1 - p) / len(words_per_span))
    assert len(words_per_span) > 30_000
    assert np.all(np.abs(shares - [0.4, 0.3, 0.2, 0.1]) < 5 * sd + 0.002), shares
    # 80/10/10 per chosen word
    act = info["action"]
    got = np.array([(act == SIMILAR).mean(), (act == RANDOM_WORD).mean(), (act == KEEP).mean()])
    sd = np.sqrt(np.array([0.8 * 0.2, 0.09, 0.09]) / len(act))
    assert np.all(np.abs(got - [0.8, 0.1, 0.1]) < 5 * sd), got


# ------------------------------------------------------------------ bad input / config
@pytest.mark.parametrize("field,value", [("seq_length", 2), ("seq_length", "512"), ("mask_rate", 1.5), ("ngram_probs", ()),
                                         ("ngram_probs", (0.5, -1.0)), ("replace_probs", (0.5, 0.5, 0.5)),
                                         ("similar_format", "xml"), ("neighbours", 0)])
def test_config_out_of_range_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        MacBERTConfig(**{field: value})


def test_empty_and_one_token_segments():
    t = make(seq_length=6)
    out = t({"tokens": np.zeros(0, np.int32), "word_start": np.zeros(0, bool)}, 0)
    assert out["tokens"].tolist() == [3, 4, 0, 0, 0, 0] and out["loss_mask"].sum() == 0
    out = make(seq_length=6, mask_rate=1.0)({"tokens": np.array([77], np.int32), "word_start": np.array([True])}, 0)
    assert out["labels"].tolist() == [0, 77, 0, 0, 0, 0]


def test_bad_fields():
    t = make(seq_length=8)
    with pytest.raises(KeyError, match="word_start"):
        t({"tokens": np.array([20, 21], np.int32)}, 0)
    with pytest.raises(ValueError, match="word_start"):
        t({"tokens": np.array([20, 21], np.int32), "word_start": np.array([True])}, 0)
    with pytest.raises(ValueError, match="no file"):
        make(similar_words="/nonexistent/table.npz")


# ------------------------------------------------------------------ similar-word sources
class CharTok:
    """Every character is one token (id = 16 + codepoint)."""

    def encode(self, text):
        return [16 + ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i - 16) for i in ids if i >= 16)


def test_table_save_load_and_lookup(tmp_path):
    table = SimilarWords.from_neighbours({(20, 21): [(22, 23), (24,)], (30,): [(31,), (32,)]})
    table.save(tmp_path / "t.npz")
    back = load_similar_words(str(tmp_path / "t.npz"))
    assert back.neighbours((20, 21)) == [(22, 23)] and sorted(back.neighbours((30,))) == [(31,), (32,)]
    assert back.neighbours((21, 20)) == [] and back.neighbours(tuple(range(16, 16 + MAX_WORD_TOKENS + 1))) == []
    with pytest.raises(ValueError, match="not a SimilarWords"):
        (tmp_path / "bad.npz").write_bytes(b"nope")
        SimilarWords.load(tmp_path / "bad.npz")


def test_synonym_and_embedding_files(tmp_path):
    tok = CharTok()
    (tmp_path / "syn.txt").write_text("# comment\nab cd ef g\nxy zw\n", encoding="utf-8")
    table = from_synonym_file(tmp_path / "syn.txt", tok)
    enc = lambda w: tuple(tok.encode(w))  # noqa: E731
    assert sorted(table.neighbours(enc("ab"))) == sorted([enc("cd"), enc("ef")])  # "g" has another length
    assert table.neighbours(enc("xy")) == [enc("zw")]
    (tmp_path / "e.vec").write_text("4 2\nab 1 0\ncd 0.9 0.1\nef -1 0\ngh 0 1\n", encoding="utf-8")
    emb = from_embedding_file(tmp_path / "e.vec", tok, k=1)
    assert emb.neighbours(enc("ab")) == [enc("cd")] and emb.neighbours(enc("ef")) == [enc("gh")]
    t = MacBERT(MacBERTConfig(similar_words=str(tmp_path / "syn.txt")), special=SP, vocab_size=6000, tokenizer=tok)
    assert len(t.similar) == 5
    with pytest.raises(ValueError, match="tokenizer"):
        MacBERT(MacBERTConfig(similar_words=str(tmp_path / "syn.txt")), special=SP, vocab_size=6000)


def test_from_corpus_finds_interchangeable_words():
    # two clusters of interchangeable words in fixed contexts: (x) A_i (y), (u) B_i (v)
    rng = np.random.default_rng(0)
    A, B = [(100 + i,) for i in range(5)], [(200 + i,) for i in range(5)]
    segs = []
    for _ in range(300):
        words = []
        for _ in range(20):
            if rng.random() < 0.5:
                words += [(50,), A[rng.integers(5)], (51,)]
            else:
                words += [(60,), B[rng.integers(5)], (61,)]
        toks = np.array([t for w in words for t in w], np.int32)
        segs.append({"tokens": toks, "word_start": np.ones(len(toks), bool)})
    table = from_corpus(segs, dim=8, k=3, min_similarity=0.0)
    for w in A:
        assert set(table.neighbours(w)) <= set(A) and len(table.neighbours(w)) == 3
    for w in B:
        assert set(table.neighbours(w)) <= set(B)


def test_chinese_word_starts():
    tok = CharTok()
    text = "我爱北京天安门"
    flags = chinese_word_starts(text, tok.encode(text), tok)
    assert flags.tolist() == [True, True, True, False, True, False, False]
    # custom segmenter + multi-character pieces
    class Pieces:
        vocab = ["北京", "天", "安门", "我爱"]

        def encode(self, text):
            return [16 + self.vocab.index(p) for p in ["我爱", "北京", "天", "安门"]]

        def decode(self, ids):
            return "".join(self.vocab[i - 16] for i in ids)

    p = Pieces()
    flags = chinese_word_starts(text, p.encode(text), p, cut=lambda s: ["我", "爱", "北京", "天安门"])
    assert flags.tolist() == [True, True, True, False]


def test_reserved_ids_in_input_are_copied_never_targets_but_unk_can_be():
    t = make(seq_length=12, mask_rate=1.0, ngram_probs=(1.0,), replace_probs=(1.0, 0.0, 0.0))
    s = {"tokens": np.array([20, SP.eot, 21, SP.unk, 22, SP.mask], np.int32), "word_start": np.ones(6, bool)}
    for seed in range(10):
        out = t(s, seed)
        assert out["tokens"][2] == SP.eot and out["tokens"][6] == SP.mask
        assert out["loss_mask"][[2, 6]].sum() == 0
        assert out["loss_mask"][[1, 3, 4, 5]].all()          # unk is an ordinary word here


def test_word_after_a_reserved_id_is_its_own_word():
    # 31 continues a word in the raw flags, but the reserved id before it cuts that word
    table = SimilarWords.from_neighbours({(20,): [(21,)], (31,): [(32,)]})
    t = make(table, seq_length=8, mask_rate=1.0, ngram_probs=(1.0,), replace_probs=(1.0, 0.0, 0.0))
    s = {"tokens": np.array([20, SP.eot, 31], np.int32), "word_start": np.array([1, 0, 0], bool)}
    out = t(s, 0)
    assert out["tokens"].tolist()[:5] == [3, 21, SP.eot, 32, 4]
