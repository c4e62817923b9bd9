"""Held-out splits sized by count, named hub corpora read through a local stand-in of the same
schema, the offline error, and rank 0 preparing while the other ranks wait on its marker."""

from __future__ import annotations

import json
import random
import time

import numpy as np
import pytest

from ptobj.data_pipeline import corpus as corpus_mod
from ptobj.data_pipeline.build import MANIFEST, cache_key, prepare_corpus
from ptobj.data_pipeline.config import CorpusConfig, TokenizerConfig
from ptobj.data_pipeline.corpus import CorpusError, HubSource, document_hash, open_corpus
from test_data_prepare import make_documents, write_jsonl

TOK = TokenizerConfig(vocab_size=320)


def held_out_texts(prepared, tok) -> set[str]:
    data = prepared.valid
    return {tok.decode(np.asarray(data.document_tokens(i))) for i in range(data.num_documents)} if data else set()


def test_valid_documents_holds_out_exactly_that_many_with_the_smallest_hashes_in_any_order(tmp_path):
    docs = make_documents(60, seed=3)
    shuffled = random.Random(0).sample(docs, len(docs))
    got = []
    for name, order in (("a", docs), ("b", shuffled)):
        src = write_jsonl(tmp_path / f"{name}.jsonl", order)
        p = prepare_corpus(CorpusConfig(str(src), valid_documents=9), TOK, tmp_path / f"out_{name}")
        assert p.manifest["held_out"]["rule"] == "documents"
        assert p.manifest["held_out"]["documents"] == p.manifest["splits"]["valid"]["documents"] == 9
        assert p.manifest["splits"]["train"]["documents"] == 51
        got.append(held_out_texts(p, p.tokenizer))
    expect = set(sorted(docs, key=document_hash)[:9])
    assert got[0] == got[1] == expect


def test_a_split_below_its_floor_names_the_numbers(tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", make_documents(30))
    with pytest.raises(CorpusError, match=r"held-out split has \d+ document\(s\) \(valid_fraction=0.001 of 30 "
                                          r"documents\), below corpus.min_valid_documents=5"):
        prepare_corpus(CorpusConfig(str(src), valid_fraction=0.001, min_valid_documents=5), TOK, tmp_path / "o")
    assert not [p for p in (tmp_path / "o").iterdir() if p.name != ".hf-cache"]
    with pytest.raises(CorpusError, match="valid_documents=30: corpus .* has only 30 usable"):
        prepare_corpus(CorpusConfig(str(src), valid_documents=30), TOK, tmp_path / "o")
    none = prepare_corpus(CorpusConfig(str(src), valid_fraction=0.0), TOK, tmp_path / "o")   # nothing, on purpose
    assert none.valid is None and none.manifest["held_out"]["rule"] == "none"


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """Local folders of parquet files with the hub datasets' columns, in place of the hub."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    def folder(name, column, texts, files=2):
        path = tmp_path / name
        path.mkdir()
        for i in range(files):
            part = texts[i::files]
            pq.write_table(pa.table({column: part, "license": ["mit"] * len(part)}), path / f"{i:04d}.parquet")
        return path

    code = [f"def f{i}(x):\n    return x + {i}\n" for i in range(40)]
    wiki = [f"Article {i}. The river flows north into the sea." for i in range(40)]
    books = [f"Chapter {i}. She opened the door and looked out." for i in range(40)]
    named = dict(corpus_mod.NAMED_CORPORA)
    named["github-code-mit"] = ("stand-in", (HubSource(str(folder("code", "code", code)), text_field="code"),))
    named["bert-english"] = ("stand-in", (HubSource(str(folder("wiki", "text", wiki)), weight=0.5),
                                          HubSource(str(folder("books", "text", books)), weight=0.5)))
    monkeypatch.setattr(corpus_mod, "NAMED_CORPORA", named)
    monkeypatch.setattr(corpus_mod, "_hub_unreachable", lambda: None)
    return code, wiki, books


def test_a_named_corpus_streams_through_the_hub_path(stand_in, tmp_path):
    code, wiki, books = stand_in
    docs = list(open_corpus(CorpusConfig("github-code-mit")).documents())
    assert sorted(docs) == sorted(code)
    mixed = list(open_corpus(CorpusConfig("bert-english")).documents())
    assert set(mixed) <= set(wiki) | set(books) and set(mixed) & set(wiki) and set(mixed) & set(books)
    assert mixed == list(open_corpus(CorpusConfig("bert-english")).documents())        # a fixed order
    p = prepare_corpus(CorpusConfig("github-code-mit", valid_documents=4, sentences="code"), TOK, tmp_path / "out")
    assert p.manifest["splits"]["valid"]["documents"] == 4 and p.manifest["splits"]["train"]["documents"] == 36


def test_a_local_folder_reads_like_the_hub_copy_it_is(stand_in, tmp_path):
    code, _, _ = stand_in
    folder = tmp_path / "code"
    assert sorted(open_corpus(CorpusConfig(str(folder), text_field="code")).documents()) == sorted(code)
    with pytest.raises(CorpusError, match="no text field 'text'.*'code'"):
        list(open_corpus(CorpusConfig(str(folder))).documents())
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="holds no .* files"):
        open_corpus(CorpusConfig(str(tmp_path / "empty")))


def test_offline_a_hub_corpus_fails_at_once_naming_it_and_the_way_out(monkeypatch):
    monkeypatch.setattr(corpus_mod, "_hub_unreachable", lambda: "huggingface.co is unreachable (test)")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    for source, names in (("github-code-mit", ["codeparrot/github-code-clean", "'code'"]),
                          ("bert-english", ["wikimedia/wikipedia", "rojagtap/bookcorpus"]),
                          ("allenai/c4", ["allenai/c4"])):
        t0 = time.perf_counter()
        with pytest.raises(CorpusError) as info:
            open_corpus(CorpusConfig(source))
        assert time.perf_counter() - t0 < 1.0
        msg = str(info.value)
        assert f"corpus {source}" in msg and "data.corpus.source=DIR" in msg and "huggingface-cli download" in msg
        assert all(n in msg for n in names), msg


def test_ranks_other_than_0_wait_for_its_marker_or_its_failure(tmp_path):
    from ptobj.recipes.engine.data import prepare
    from ptobj.recipes.engine.distributed import DistInfo
    from ptobj.recipes.engine.train_config import load_train_config

    src = write_jsonl(tmp_path / "c.jsonl", make_documents(30))
    cfg = load_train_config("causal_lm_tiny", [f"data.corpus.source={src}", "data.corpus.valid_fraction=0.3",
                                               "data.tokenizer.vocab_size=320", f"data.cache_dir={tmp_path / 'cache'}",
                                               "data.prepare_wait_minutes=0.02"])
    other = DistInfo(rank=1, world_size=2, local_rank=1, device=None, backend="gloo")
    with pytest.raises(CorpusError, match="waited 0.02 min for rank 0 .* filesystem every node sees"):
        prepare(cfg, other, progress=False)
    key = cache_key(open_corpus(cfg.data.corpus), cfg.data.corpus, cfg.data.tokenizer)
    (tmp_path / "cache").mkdir(exist_ok=True)
    (tmp_path / "cache" / f".failed-{key}").write_text("CorpusError: the corpus is on fire")
    with pytest.raises(CorpusError, match="rank 0 could not prepare the corpus: CorpusError: the corpus is on fire"):
        prepare(cfg, other, progress=False)
    main = DistInfo(rank=0, world_size=2, local_rank=0, device=None, backend="gloo")
    made = prepare(cfg, main, progress=False)                        # rank 0 clears the marker and prepares
    assert not (tmp_path / "cache" / f".failed-{key}").exists() and (made.path / MANIFEST).is_file()
    assert prepare(cfg, other, progress=False).path == made.path     # and the others open what it made
    assert json.loads((made.path / MANIFEST).read_text())["held_out"]["rule"] == "fraction"
