"""The objectives inside Hugging Face training (``ptobj.hf``), with the real libraries on CPU.

* The id map: a tokenizer's special ids land on our reserved slots (an id named twice reads
  in as EOT), every other id is regular, so random replacements are its non-special ids.
* Word starts from ``word_ids()``: WordPiece's are its non-``##`` pieces, SentencePiece's
  (Unigram, Metaspace) its ``▁`` pieces.
* Every collator's batch is the objective's transform, called directly on each sample with
  its key, mapped to the tokenizer's ids (labels -100 outside the loss, the intervals as the
  mask); keyed by an ``index`` feature or by a counter of samples seen, whatever the batching.
* FIM's documents read back to their exact text; BERT honours UniLM's 4-D mask; T5 and MASS
  feed ``T5ForConditionalGeneration`` (source + eos, target + eos) and one Llama (prefix-LM mask).
* ``transformers.Trainer`` trains a tiny ``BertForPreTraining`` (SpanBERT's span law + SOP
  labels as ``next_sentence_label``), an ``AlbertForPreTraining`` (SOP) and a
  ``LlamaForCausalLM`` (FIM, tokens added and embeddings resized) for 40 steps each on an
  embedded corpus with a tokenizer trained here: the loss falls, and the batches the
  Trainer trained on are the transforms' output.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

import datasets  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from ptobj.data_pipeline.config import CorpusConfig  # noqa: E402
from ptobj.data_pipeline.corpus import open_corpus  # noqa: E402
from ptobj.hf import (  # noqa: E402
    EpochCallback, FIMCollator, HFTokens, MacBERTCollator, MLMCollator, NSPCollator, PrecomputedCollator,
    Seq2SeqCollator, SOPCollator, SpanBERTCollator, UniLMCollator, add_fim_tokens, add_sentinel_tokens, preprocess,
    resize_embeddings,
)
from ptobj.objectives import registry  # noqa: E402
from ptobj.objectives.fim import original_order  # noqa: E402
from ptobj.objectives.masking import geometric_length_probs  # noqa: E402

SEED = 1234


# ------------------------------------------------------------------------------------------ fixtures


def _docs(source: str, max_bytes: int) -> list[str]:
    return [d for d in open_corpus(CorpusConfig(source=source, max_bytes=max_bytes)).documents() if d.strip()]


@pytest.fixture(scope="module")
def prose():
    """Docstrings of the standard library, one per document (those of several sentences)."""
    docs = [p.strip() for d in _docs("stdlib-prose", 300_000) for p in d.split("\n\n")]
    return [d for d in docs if len(d) > 200]


@pytest.fixture(scope="module")
def code():
    return _docs("stdlib-defs", 200_000)


# tokenizers' WordPiece and Unigram trainers break ties in hash order (the same corpus gives other ids,
# or other scores, run to run); its BPE trainer with the whole alphabet given does not. So the WordPiece
# vocabulary is a BPE's (each piece and its "##" continuation) and the Unigram's scores are counts.


def _bpe_pieces(docs, normalizer, pre_tokenizer, size: int) -> list[str]:
    tok = Tokenizer(models.BPE())
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    alphabet = sorted(set(normalizer.normalize_str("".join(docs)) if normalizer else "".join(docs)))
    tok.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=size, initial_alphabet=alphabet,
                                                      show_progress=False))
    return [p for p, _ in sorted(tok.get_vocab().items(), key=lambda x: x[1])]


def wordpiece(docs) -> PreTrainedTokenizerFast:
    """BERT's kind: lower-cased WordPiece, punctuation split off."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    norm = normalizers.BertNormalizer(lowercase=True)
    pieces = _bpe_pieces(docs, norm, pre_tokenizers.BertPreTokenizer(), 750)
    vocab = {t: i for i, t in enumerate(specials + pieces + ["##" + p for p in pieces])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = norm
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def unigram(docs) -> PreTrainedTokenizerFast:
    """ALBERT's kind: a SentencePiece Unigram over Metaspace words (each piece scored by the log of
    its count in the text); bos is [CLS], eos is [SEP]."""
    specials = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
    pieces = _bpe_pieces(docs, None, pre_tokenizers.Metaspace(), 1500)
    text = "\u2581" + "\u2581".join(d.replace(" ", "\u2581") for d in docs)
    scores = [float(np.log(text.count(p) + 1) - np.log(len(text))) for p in pieces]
    tok = Tokenizer(models.Unigram([(t, -1e9) for t in specials] + list(zip(pieces, scores)), unk_id=1))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", bos_token="[CLS]", eos_token="[SEP]")


def bytelevel(docs) -> PreTrainedTokenizerFast:
    """GPT-2's kind: byte-level BPE (lossless), pad = eos, a <s> of no named role."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=1200, special_tokens=["<|endoftext|>", "<s>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                      show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   bos_token="<s>")


@pytest.fixture(scope="module")
def bert_tok(prose):
    return wordpiece(prose)


@pytest.fixture(scope="module")
def albert_tok(prose):
    return unigram(prose)


@pytest.fixture(scope="module")
def code_tok(code):
    hf = bytelevel(code)
    assert add_fim_tokens(hf) == 4 and add_fim_tokens(hf) == 0
    return hf


@pytest.fixture(scope="module")
def prose_data(prose, bert_tok):
    tokens = HFTokens(bert_tok)
    data = preprocess.add_index(preprocess.tokenize(datasets.Dataset.from_dict({"text": prose}), tokens,
                                                    sentences="prose"))
    return tokens, data


@pytest.fixture(scope="module")
def code_contexts(code, code_tok):
    tokens = HFTokens(code_tok)
    docs = preprocess.tokenize(datasets.Dataset.from_dict({"text": code}), tokens)
    return tokens, preprocess.add_index(preprocess.pack_contexts(docs, tokens, 129))


# ------------------------------------------------------------------------------------------ the id map


@pytest.mark.parametrize("make", [wordpiece, unigram, bytelevel])
def test_special_ids_take_the_reserved_slots_and_the_rest_is_regular(make, prose):
    hf = make(prose[:200])
    add_fim_tokens(hf)
    t = HFTokens(hf)
    sp = t.special
    for field, attr in (("unk", "unk_token"), ("mask", "mask_token"), ("cls", "cls_token"), ("sep", "sep_token")):
        if getattr(hf, attr) is not None:
            assert t.to_hf[getattr(sp, field)] == getattr(hf, attr + "_id"), field
    assert t.to_hf[sp.eot] == hf.eos_token_id if hf.eos_token is not None else t.to_hf[sp.eot] == -1
    assert t.to_ours[hf.eos_token_id] == sp.eot if hf.eos_token is not None else True  # eos reads in as EOT
    for name, field in (("<fim_prefix>", "fim_prefix"), ("<fim_middle>", "fim_middle"),
                        ("<fim_suffix>", "fim_suffix"), ("<fim_pad>", "fim_pad")):
        assert hf.convert_ids_to_tokens(int(t.to_hf[getattr(sp, field)])) == name
    specials = set(hf.all_special_ids) | {i for i, a in hf.added_tokens_decoder.items() if a.special}
    regular = t.to_hf[sp.first_regular:t.vocab_size]
    assert sorted(regular.tolist()) == sorted(set(range(len(hf))) - specials)     # random replacements: these
    assert (t.to_ours[list(specials)] < sp.first_regular).all()
    assert np.array_equal(t.to_ours[regular], np.arange(sp.first_regular, t.vocab_size))
    text = "Return the value of x.  It is 3 [MASK]!"
    ours = t.encode(text)
    assert min(ours) >= sp.first_regular                          # a literal [MASK] in text is text
    assert np.array_equal(t.hf(ours), hf(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def test_an_id_named_twice_reads_in_as_eot_and_other_specials_take_spare_slots(prose):
    hf = bytelevel(prose[:200])                                    # pad == eos; <s> is bos, no named slot
    t = HFTokens(hf)
    eos = hf.eos_token_id
    assert t.to_ours[eos] == t.special.eot and t.to_hf[t.special.pad] == eos
    assert t.to_ours[hf.bos_token_id] == 14 and t.special.first_regular == 16
    hf.add_tokens([f"<ctl_{i}>" for i in range(4)], special_tokens=True)
    t = HFTokens(hf)                                               # 5 unnamed specials: 14, 15, 16, 17, 18
    assert t.special.first_regular == 19
    assert sorted(t.to_ours[[hf.convert_tokens_to_ids(f"<ctl_{i}>") for i in range(4)]].tolist()) == [15, 16, 17, 18]
    with pytest.raises(ValueError, match=r"MLMCollator: the tokenizer has no cls_token, sep_token, mask_token; add it"):
        MLMCollator(t, seq_length=32)


def test_sentinels_follow_the_vocabulary_and_fim_tokens_are_added_with_a_resize(code):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = bytelevel(code[:100])
    n = len(hf)
    with pytest.raises(ValueError, match=r"no <fim_prefix>, <fim_middle>, <fim_suffix>, <fim_pad>; add it: "
                                         r"ptobj.hf.add_fim_tokens"):
        FIMCollator(hf, seq_length=32)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=n, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    assert add_fim_tokens(hf) == 4 and add_sentinel_tokens(hf, 3) == 3
    assert resize_embeddings(model, hf) == n + 7 == model.get_output_embeddings().weight.shape[0]
    assert resize_embeddings(model, hf) == n + 7                   # already holds them: unchanged
    t = HFTokens(hf)
    assert t.num_sentinels == 3 and t.special.sentinel_base == t.vocab_size
    assert hf.convert_ids_to_tokens(t.hf(t.special.sentinels()).tolist()) == ["<extra_id_0>", "<extra_id_1>",
                                                                               "<extra_id_2>"]
    with pytest.raises(ValueError, match=r"needs \d+ sentinels, the tokenizer has 3 <extra_id_i> tokens; add them: "
                                         r"ptobj.hf.add_sentinel_tokens\(tokenizer, \d+\)"):
        Seq2SeqCollator(t, objective="t5", seq_length=128)


def test_word_starts_come_from_word_ids(bert_tok, albert_tok, prose):
    for hf, starts in ((bert_tok, lambda p: not p.startswith("##")), (albert_tok, lambda p: p.startswith("\u2581"))):
        enc = HFTokens(hf).tokenize(prose[:20])
        pieces = [hf.convert_ids_to_tokens(ids) for ids in enc["input_ids"]]
        assert sum(map(len, pieces)) > 2000
        for p, ws in zip(pieces, enc["word_start"]):
            assert ws == [int(starts(x)) for x in p]


def test_sentence_starts_sit_on_the_first_token_of_each_sentence(bert_tok):
    t = HFTokens(bert_tok)
    text = "First sentence here. Second one follows! And a third? Yes."
    out = preprocess.encode_texts(t, [text], sentences="prose")
    offsets = t.tokenize([text], offsets=True)["offset_mapping"][0]
    starts = [text[a:a + 3] for (a, _), s in zip(offsets, out["sentence_start"][0]) if s]
    assert starts == ["Fir", "Sec", "And", "Yes"]
    with pytest.raises(ValueError, match="do not concatenate"):
        preprocess.encode_texts(t, [text], sentences=lambda s: ["x"])


# ------------------------------------------------------------------------------------------ batches


def expected(collator, features, epoch=0):
    """Each feature through the objective's transform, built anew and called on the sample
    alone with its key (seed, epoch, index): our ids and fields."""
    t = collator.tokens
    transform = registry.build(collator.objective, collator.config, special=t.special, vocab_size=t.vocab_size,
                               tokenizer=t, **({"similar": collator.transform.similar}
                                               if collator.objective == "macbert" else {}))
    rows = []
    for x in features:
        sample = {}
        for f in transform.reads:
            name = {"tokens": "input_ids", "random_tokens": "random_input_ids"}.get(f, f)
            v = np.asarray(x[name])
            sample[f] = t.to_ours[v] if f.endswith("tokens") else v.astype(bool)
        rows.append(transform(sample, collator.keys.seed, epoch=epoch, index=int(x["index"])))
    return rows


def seen(ks, ke, i, S):
    return (np.arange(S) >= ks[i]) & (np.arange(S) < ke[i])


def assert_encoder_batch(batch, rows, tokens, label=None):
    B, w = batch["input_ids"].shape
    assert B == len(rows)
    for b, out in enumerate(rows):
        lm = out["loss_mask"] > 0
        assert (out["tokens"][w:] == tokens.special.pad).all() and not lm[w:].any()   # trimmed: only padding
        assert np.array_equal(batch["input_ids"][b].numpy(), tokens.to_hf[out["tokens"][:w]])
        want = np.where(lm, tokens.to_hf[out["labels"]], -100)[:w]
        assert np.array_equal(batch["labels"][b].numpy(), want)
        assert np.array_equal(batch["token_type_ids"][b].numpy(), out["segment_ids"][:w])
        mask = batch["attention_mask"][b].numpy()
        for i in range(w):
            want_i = seen(out["kv_start"], out["kv_end"], i, w)
            got = mask[0, i] == 0 if mask.ndim == 3 else mask.astype(bool)
            assert np.array_equal(got, want_i), (b, i)
        if label:
            ours, theirs = label
            assert int(batch[theirs][b]) == (int(out[ours]) if out[ours] >= 0 else -100)
    assert (batch["labels"] != -100).any()


def collator_cases(prose_data):
    tokens, data = prose_data
    law = tuple(geometric_length_probs(0.2, 10).tolist())
    return [
        (MLMCollator(tokens, seq_length=64, seed=SEED), None),
        (MLMCollator(tokens, seq_length=64, seed=SEED, whole_word=True, pad_to_multiple_of=8), None),
        (SpanBERTCollator(tokens, seq_length=96, seed=SEED), None),
        (MacBERTCollator(tokens, seq_length=64, seed=SEED), None),
        (SOPCollator(tokens, seq_length=96, seed=SEED, ngram_probs=law, label_name="next_sentence_label"),
         ("sop_label", "next_sentence_label")),
        (SOPCollator(tokens, seq_length=64, seed=SEED), ("sop_label", "sentence_order_label")),
        (UniLMCollator(tokens, seq_length=64, seed=SEED), None),
    ]


def test_encoder_batches_are_the_transforms_output_in_hf_ids(prose_data):
    tokens, data = prose_data
    features = [data[i] for i in (5, 0, 17, 3, 40, 8)]
    for collator, label in collator_cases(prose_data):
        batch = collator(features)
        assert_encoder_batch(batch, expected(collator, features), tokens, label)
        again = collator(features[3:] + features[:3])              # a row is its own, in any batch
        for k in batch:
            assert torch.equal(again[k], torch.cat([batch[k][3:], batch[k][:3]])), (type(collator).__name__, k)
    nsp_data = preprocess.add_random_segments(data, seed=SEED)
    feats = [nsp_data[i] for i in range(8)]
    nsp = NSPCollator(tokens, seq_length=64, seed=SEED)
    batch = nsp(feats)
    assert_encoder_batch(batch, expected(nsp, feats), tokens, ("nsp_label", "next_sentence_label"))
    assert {0, 1} <= set(batch["next_sentence_label"].tolist())
    assert preprocess.add_random_segments(data, seed=SEED)[:8]["random_input_ids"] == \
        [f["random_input_ids"] for f in feats]
    assert sum(f["random_input_ids"] != f["input_ids"] for f in feats) == 8
    sb = SpanBERTCollator(tokens, seq_length=96, seed=SEED, keep_sbo=True, token_type_ids=False)(features)
    assert (sb["sbo_offset"] > 0).sum() == (sb["labels"] != -100).sum() and "token_type_ids" not in sb


def test_rows_keyed_by_a_counter_equal_rows_keyed_by_their_position(prose_data):
    tokens, data = prose_data
    keyed = MLMCollator(tokens, seq_length=48, seed=SEED, whole_word=True)
    counted = MLMCollator(tokens, seq_length=48, seed=SEED, whole_word=True, index_field=None)
    plain = [{k: v for k, v in data[i].items() if k != "index"} for i in range(12)]
    indexed = [dict(x, index=i) for i, x in enumerate(plain)]
    for epoch in (0, 3):
        keyed.set_epoch(epoch)
        counted.set_epoch(epoch)
        by_counter = [counted(plain[:5]), counted(plain[5:7]), counted(plain[7:])]
        by_index = keyed(indexed)
        rows = torch.cat([torch.nn.functional.pad(b["labels"], (0, 48 - b["labels"].shape[1]), value=-100)
                          for b in by_counter])
        assert torch.equal(rows, torch.nn.functional.pad(by_index["labels"], (0, 48 - by_index["labels"].shape[1]),
                                                         value=-100))
    assert not torch.equal(keyed(indexed[:4])["labels"], MLMCollator(tokens, seq_length=48, seed=SEED + 1,
                                                                     whole_word=True)(indexed[:4])["labels"])
    keyed.set_epoch(0)
    first = keyed(indexed[:4])["input_ids"]
    keyed.set_epoch(1)
    assert not torch.equal(first, keyed(indexed[:4])["input_ids"])           # a new epoch masks anew
    with pytest.raises(ValueError, match="2 of 4 features have it"):
        keyed(indexed[:2] + plain[2:4])


def test_a_counter_keyed_collator_is_refused_in_dataloader_workers(prose_data):
    tokens, data = prose_data
    plain = [{"input_ids": data[i]["input_ids"]} for i in range(4)]
    loader = torch.utils.data.DataLoader(plain, batch_size=2, num_workers=1,
                                         collate_fn=MLMCollator(tokens, seq_length=32, index_field=None),
                                         multiprocessing_context="fork")
    with pytest.raises(RuntimeError, match="which each DataLoader worker would copy"):
        next(iter(loader))


def test_a_missing_feature_is_named(prose_data):
    tokens, data = prose_data
    c = MLMCollator(tokens, seq_length=32, whole_word=True)
    with pytest.raises(KeyError, match=r"feature 0 lacks 'word_start'.*remove_unused_columns=False"):
        c([{"input_ids": data[0]["input_ids"], "index": 0}])
    with pytest.raises(ValueError, match=r"feature 0: 'word_start' has 3 values, its ids \d+"):
        c([{"input_ids": data[0]["input_ids"], "word_start": [1, 0, 1], "index": 0}])
    n = len(tokens.tokenizer)
    with pytest.raises(ValueError, match=rf"feature 'input_ids': ids must lie in \[0, {n}\)"):
        c([{"input_ids": [5, n], "word_start": [1, 1], "index": 0}])
    with pytest.raises(ValueError, match=r"feature 0: 'input_ids' must hold integer ids, got dtype float64"):
        c([{"input_ids": [5.5, 7.0], "word_start": [1, 1], "index": 0}])
    with pytest.raises(ValueError, match=r"feature 'index' must hold indices >= 0, got -1"):
        c([{"input_ids": [5, 7], "word_start": [1, 1], "index": -1}])


def test_precomputed_rows_equal_the_collator(prose_data):
    tokens, data = prose_data
    for c in (SOPCollator(tokens, seq_length=64, seed=SEED), UniLMCollator(tokens, seq_length=64, seed=SEED)):
        pre = preprocess.apply_objective(data.select(range(6)), c, batch_size=4)
        got = PrecomputedCollator()([pre[i] for i in range(6)])
        want = c([data[i] for i in range(6)])
        w = want["input_ids"].shape[1]
        assert (got["input_ids"][:, w:] == tokens.named["pad"]).all()
        for k in want:
            g = got[k][:, :, :w, :w] if k == "attention_mask" and got[k].ndim == 4 else \
                got[k][:, :w] if got[k].ndim == 2 else got[k]
            assert torch.equal(g, want[k]), (type(c).__name__, k)


def test_bert_honours_unilm_intervals(prose_data):
    from transformers import BertConfig, BertForMaskedLM

    from ptobj.hf.masks import interval_mask

    hf_vocab = 64

    S = 10
    ks = np.zeros((1, S), np.int32)
    ke = np.arange(1, S + 1, dtype=np.int32)[None, :]                 # left-to-right: row i sees [0, i]
    ids = torch.randint(5, hf_vocab, (1, S))
    other = ids.clone()
    other[0, 6:] = (ids[0, 6:] + 1) % hf_vocab
    for dtype, attention in ((torch.float32, "eager"), (torch.float32, "sdpa"), (torch.bool, "sdpa")):
        torch.manual_seed(0)
        model = BertForMaskedLM(BertConfig(vocab_size=hf_vocab, hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, intermediate_size=64, type_vocab_size=6,
                                           attn_implementation=attention)).eval()
        mask = interval_mask(ks, ke, dtype)
        a = model(input_ids=ids, attention_mask=mask).logits
        b = model(input_ids=other, attention_mask=mask).logits
        assert torch.allclose(a[0, :6], b[0, :6], atol=1e-5)            # rows before 6 never see 6..9
        assert not torch.allclose(a[0, 6:], b[0, 6:], atol=1e-3)
    tokens, data = prose_data
    collator = UniLMCollator(tokens, seq_length=64, seed=SEED, mask_dtype=torch.bool)
    batch = collator([data[i] for i in range(16)])
    assert set(batch["token_type_ids"].unique().tolist()) >= {0, 2, 4, 5}   # several modes' LM ids
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokens.tokenizer), hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=64,
                                       type_vocab_size=collator.num_token_types))
    loss = model(**batch).loss
    assert torch.isfinite(loss) and 5 < loss.item() < 9


def test_fim_batches_are_the_transform_and_documents_read_back_exactly(code_contexts, code_tok, code):
    tokens, contexts = code_contexts
    collator = FIMCollator(tokens, seq_length=128, seed=SEED, fim_rate=0.9)
    features = [contexts[i] for i in range(48)]
    batch = collator(features)
    rows = expected(collator, features)
    sp = tokens.special
    fimmed = whole = 0
    corpus = set(code)
    for b, (x, out) in enumerate(zip(features, rows)):
        ctx = np.concatenate([out["tokens"], out["labels"][-1:]])
        assert np.array_equal(batch["input_ids"][b].numpy(), tokens.to_hf[ctx])
        assert batch["labels"][b, 0] == -100
        assert np.array_equal(batch["labels"][b, 1:].numpy(),
                              np.where(out["loss_mask"] > 0, tokens.to_hf[out["labels"]], -100))
        assert np.array_equal(batch["position_ids"][b, :-1].numpy(), out["position_ids"])
        mask = batch["attention_mask"][b, 0].numpy() == 0
        for i in range(128):
            assert np.array_equal(mask[i], seen(out["kv_start"], out["kv_end"], i, 129))
        # every document but the last (it may be cut) reads back to the text it came from
        original = tokens.to_ours[np.asarray(x["input_ids"])]
        new_docs = np.split(ctx, np.flatnonzero(ctx == sp.eot) + 1)[:-1]
        old_docs = np.split(original, np.flatnonzero(original == sp.eot) + 1)[: len(new_docs)]
        for new, old in zip(new_docs, old_docs):
            fimmed += int(new[0] in (sp.fim_prefix, sp.fim_suffix))
            back = original_order(new[:-1], sp)
            assert np.array_equal(back, old[:-1]) or tokens.decode(back) == tokens.decode(old[:-1])
            text = code_tok.decode(tokens.hf(back).tolist(), clean_up_tokenization_spaces=False)
            whole += text in corpus                                 # a document the context holds whole
            assert text == code_tok.decode(tokens.hf(old[:-1]).tolist(), clean_up_tokenization_spaces=False)
    assert fimmed >= 20 and whole >= 10


def test_plain_causal_attention_goes_as_a_2d_mask(code_contexts):
    from ptobj.hf import CausalLMCollator

    tokens, contexts = code_contexts
    features = [contexts[i] for i in range(6)]
    for collator in (FIMCollator(tokens, seq_length=128, seed=SEED, fim_rate=1.0, document_masking=False),
                     CausalLMCollator(tokens, seq_length=128, seed=SEED, document_masking=False)):
        batch = collator(features)
        assert batch["attention_mask"].shape == (6, 129) and bool((batch["attention_mask"] == 1).all())
        for b, out in enumerate(expected(collator, features)):
            assert np.array_equal(out["kv_end"], np.arange(1, 129)) and not out["kv_start"].any()
            assert np.array_equal(batch["input_ids"][b].numpy(),
                                  tokens.to_hf[np.concatenate([out["tokens"], out["labels"][-1:]])])
            assert np.array_equal(batch["position_ids"][b].numpy(), np.arange(129))
    plain = CausalLMCollator(tokens, seq_length=128, document_masking=False)(features)
    assert torch.equal(plain["input_ids"], torch.tensor([f["input_ids"] for f in features]))
    assert torch.equal(plain["labels"][:, 1:], plain["input_ids"][:, 1:])
    assert bool((plain["labels"][:, 0] == -100).all())


def assert_seq2seq_batch(batch, rows, tokens):
    """The encoder gets the source and eos, the labels are the target and its EOT as eos."""
    eos = tokens.tokenizer.eos_token_id
    for b, out in enumerate(rows):
        lm = out["loss_mask"] > 0
        ns = int(np.argmax(lm))
        src = batch["input_ids"][b][batch["attention_mask"][b] > 0].numpy()
        assert np.array_equal(src, np.append(tokens.to_hf[out["tokens"][:ns]], eos))
        tgt = batch["labels"][b][batch["labels"][b] >= 0].numpy()
        assert np.array_equal(tgt, tokens.to_hf[out["labels"][lm]]) and tgt[-1] == eos


def test_t5_and_mass_train_as_encoder_decoder_and_as_one_decoder(code_contexts, code_tok):
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    _, contexts = code_contexts
    code_tok = copy.deepcopy(code_tok)
    add_sentinel_tokens(code_tok, 30)
    tokens = HFTokens(code_tok)
    features = [contexts[i] for i in range(4)]
    enc_dec = Seq2SeqCollator(tokens, objective="t5", seq_length=128, seed=SEED)
    batch = enc_dec(features)
    assert_seq2seq_batch(batch, expected(enc_dec, features), tokens)
    assert code_tok.convert_ids_to_tokens(batch["labels"][:, 0].tolist()) == ["<extra_id_0>"] * 4
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=len(code_tok), d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                             num_heads=2, decoder_start_token_id=code_tok.pad_token_id,
                                             pad_token_id=code_tok.pad_token_id))
    loss = t5(**batch).loss
    loss.backward()
    assert torch.isfinite(loss) and 5 < loss.item() < 9
    pre = preprocess.apply_objective(contexts.select(range(4)), enc_dec, batch_size=3)
    stacked = PrecomputedCollator()([pre[i] for i in range(4)])
    for k, v in batch.items():                                       # precomputed rows: full width, same values
        assert torch.equal(stacked[k][:, : v.shape[1]], v), k
        assert bool((stacked[k][:, v.shape[1]:] == (-100 if k == "labels" else
                                                      0 if k == "attention_mask" else code_tok.pad_token_id)).all())
    code_tok.add_special_tokens({"sep_token": "<sep>", "mask_token": "<mask>"})
    mass = Seq2SeqCollator(HFTokens(code_tok), objective="mass", seq_length=128, seed=SEED)
    batch = mass(features)
    assert_seq2seq_batch(batch, expected(mass, features), mass.tokens)
    assert (batch["input_ids"] == code_tok.mask_token_id).sum() > 80      # the fragments, 80% [MASK]
    one = Seq2SeqCollator(HFTokens(code_tok), objective="t5", layout="decoder", seq_length=128, seed=SEED)
    batch = one(features)
    assert batch["attention_mask"].shape[1:] == (1, batch["input_ids"].shape[1], batch["input_ids"].shape[1])
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(code_tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         attn_implementation="eager"))
    loss = llama(**batch).loss
    assert torch.isfinite(loss) and 5 < loss.item() < 9


# ------------------------------------------------------------------------------------------ Trainer


class Recording:
    """The Trainer's collator, keeping the first batches of each epoch: (epoch, features, batch)."""

    def __init__(self, collator, keep: int = 2):
        self.collator, self.keep, self.seen = collator, keep, []

    def __call__(self, features):
        out = self.collator(features)
        epoch = self.collator.keys.epoch
        if sum(e == epoch for e, _, _ in self.seen) < self.keep:
            self.seen.append((epoch, [dict(x) for x in features], {k: v.clone() for k, v in out.items()}))
        return out


def train(model, collator, data, tmp_path, *, steps: int = 40, lr: float = 1e-3, batch_size: int = 8):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=batch_size,
                             learning_rate=lr, warmup_steps=2, logging_steps=5, report_to=[], use_cpu=True,
                             dataloader_num_workers=0, remove_unused_columns=False, save_strategy="no",
                             disable_tqdm=True, seed=SEED)
    recording = Recording(collator)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=recording,
                      callbacks=[EpochCallback(collator)])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                   # tiny models: a second thread only contends on a shared machine
    try:
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return losses, recording.seen, trainer.state.epoch


def test_trainer_bert_for_pretraining_spanbert_masking_with_sop(prose_data, tmp_path):
    """SpanBERT's span choice (its Geometric(0.2) law clipped at 10 words, as SOP's ``ngram_probs``)
    with SOP; BertForPreTraining's two-way head takes the SOP label as ``next_sentence_label``."""
    from transformers import BertConfig, BertForPreTraining

    tokens, data = prose_data
    law = tuple(geometric_length_probs(0.2, 10).tolist())
    collator = SOPCollator(tokens, seq_length=128, seed=SEED, ngram_probs=law, label_name="next_sentence_label")
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(vocab_size=len(tokens.tokenizer), hidden_size=64, num_hidden_layers=2,
                                          num_attention_heads=2, intermediate_size=128, max_position_embeddings=128))
    losses, seen_batches, epochs = train(model, collator, data.select(range(240)), tmp_path)
    print(f"\nBertForPreTraining (SpanBERT span law + SOP): first loss {losses[0]:.4f}, last loss {losses[-1]:.4f}, "
          f"{epochs:.2f} epochs")
    assert losses[-1] < losses[0] - 0.5, losses
    assert epochs > 1 and [e for e, _, _ in seen_batches] == [0, 0, 1, 1]   # the callback keyed epoch 1 anew
    for epoch, features, batch in seen_batches:
        assert_encoder_batch(batch, expected(collator, features, epoch), tokens, ("sop_label", "next_sentence_label"))


def test_trainer_albert_for_pretraining_sop(prose, albert_tok, tmp_path):
    from transformers import AlbertConfig, AlbertForPreTraining

    tokens = HFTokens(albert_tok)
    data = preprocess.add_index(preprocess.tokenize(datasets.Dataset.from_dict({"text": prose}), tokens,
                                                    sentences="prose"))
    collator = SOPCollator(tokens, seq_length=128, seed=SEED)
    torch.manual_seed(0)
    model = AlbertForPreTraining(AlbertConfig(vocab_size=len(albert_tok), embedding_size=32, hidden_size=64,
                                              num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                              max_position_embeddings=128))
    losses, seen_batches, _ = train(model, collator, data, tmp_path, lr=3e-3)
    print(f"\nAlbertForPreTraining (SOP): first loss {losses[0]:.4f}, last loss {losses[-1]:.4f}")
    assert losses[-1] < losses[0] - 0.5, losses
    for _, features, batch in seen_batches:
        assert_encoder_batch(batch, expected(collator, features), tokens, ("sop_label", "sentence_order_label"))


def test_trainer_llama_fim(code, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = bytelevel(code)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(hf), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=256))
    assert add_fim_tokens(hf) == 4 and resize_embeddings(model, hf) == len(hf)
    tokens = HFTokens(hf)
    docs = preprocess.tokenize(datasets.Dataset.from_dict({"text": code}), tokens)
    contexts = preprocess.add_index(preprocess.pack_contexts(docs, tokens, 129))
    collator = FIMCollator(tokens, seq_length=128, seed=SEED)
    losses, seen_batches, _ = train(model, collator, contexts, tmp_path, lr=2e-3)
    print(f"\nLlamaForCausalLM (FIM): first loss {losses[0]:.4f}, last loss {losses[-1]:.4f}")
    assert losses[-1] < losses[0] - 0.5, losses
    for _, features, batch in seen_batches:
        for b, out in enumerate(expected(collator, features)):
            ctx = np.concatenate([out["tokens"], out["labels"][-1:]])
            assert np.array_equal(batch["input_ids"][b].numpy(), tokens.to_hf[ctx])
            assert np.array_equal(batch["labels"][b, 1:].numpy(),
                                  np.where(out["loss_mask"] > 0, tokens.to_hf[out["labels"]], -100))
