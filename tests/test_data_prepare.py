"""Corpus -> tokenizer -> megatron .bin/.idx: round trip, splits, cache, CLI, bad input."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from ptobj.data_pipeline import build as build_mod
from ptobj.data_pipeline.build import prepare_corpus
from ptobj.data_pipeline.config import CorpusConfig, TokenizerConfig, load_prepare_config
from ptobj.data_pipeline.corpus import CorpusError, is_valid_document, open_corpus
from ptobj.data_pipeline.indexed import IndexedDataError, TokenData
from ptobj.data_pipeline.prepare import main as prepare_main
from ptobj.data_pipeline.sentences import split_code, split_prose

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def make_documents(n=40, seed=0):
    rng = np.random.default_rng(seed)
    docs = []
    for d in range(n):
        sentences = []
        for _ in range(int(rng.integers(1, 6))):
            words = rng.choice(WORDS, size=int(rng.integers(2, 9)))
            sentences.append(" ".join(words).capitalize() + rng.choice([".", "!", "?"]))
        docs.append(f"Doc {d}. " + " ".join(sentences))
    return docs


def write_jsonl(path, docs, field="text"):
    with open(path, "w") as fh:
        for d in docs:
            fh.write(json.dumps({field: d, "id": 1}) + "\n")
    return path


TOK = TokenizerConfig(vocab_size=320)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    docs = make_documents()
    src = write_jsonl(root / "corpus.jsonl", docs)
    cfg = CorpusConfig(source=str(src), valid_fraction=0.2)
    return prepare_corpus(cfg, TOK, root / "out"), docs, cfg, root


def test_round_trip_through_megatron_indexed_dataset(prepared):
    p, docs, cfg, _ = prepared
    train_docs = [d for d in docs if not is_valid_document(d, cfg.valid_fraction)]
    valid_docs = [d for d in docs if is_valid_document(d, cfg.valid_fraction)]
    assert train_docs and valid_docs
    for split, expected_docs in (("train", train_docs), ("valid", valid_docs)):
        ds = IndexedDataset(str(p.path / split))  # megatron-core's own reader
        assert len(ds.document_indices) - 1 == len(expected_docs)
        for d, text in enumerate(expected_docs):
            sentences = split_prose(text)
            first, last = ds.document_indices[d], ds.document_indices[d + 1]
            assert last - first == len(sentences)
            for k, sentence in enumerate(sentences):
                np.testing.assert_array_equal(ds[int(first + k)], p.tokenizer.encode(sentence))
            doc_ids = np.concatenate([ds[int(i)] for i in range(first, last)])
            assert p.tokenizer.decode(doc_ids) == text
        ws = IndexedDataset(str(p.path / f"{split}_word_start"))
        np.testing.assert_array_equal(ws.sequence_lengths, ds.sequence_lengths)


def test_word_start_dataset_matches_tokenizer(prepared):
    p, *_ = prepared
    data = p.train
    for d in range(data.num_documents):
        ids = data.document_tokens(d)
        a, b = data.document_offsets[d], data.document_offsets[d + 1]
        np.testing.assert_array_equal(data.word_start[a:b], p.tokenizer.word_start(ids))
    assert data.tokens.dtype == np.uint16 and data.tokens.min() >= 16


def test_manifest_counts(prepared):
    p, docs, *_ = prepared
    m = p.manifest
    assert m["splits"]["train"]["documents"] + m["splits"]["valid"]["documents"] == len(docs)
    assert m["splits"]["train"]["tokens"] == p.train.num_tokens
    assert m["splits"]["train"]["sentences"] == p.train.num_sentences
    assert m["skipped_documents"] == 0 and m["vocab_size"] == p.tokenizer.vocab_size


def test_open_prepared_reads_a_directory_alone(prepared, tmp_path):
    from ptobj.data_pipeline import open_prepared

    p, *_ = prepared
    again = open_prepared(p.path)
    assert again.manifest == p.manifest and again.tokenizer.vocab_size == p.tokenizer.vocab_size
    np.testing.assert_array_equal(again.train.tokens, p.train.tokens)
    assert again.valid.num_documents == p.valid.num_documents
    with pytest.raises(FileNotFoundError, match=r"not a prepared corpus \(no manifest\.json\)"):
        open_prepared(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"manifest\.json: damaged"):
        open_prepared(tmp_path)


def test_cache_reused_then_rebuilt_on_change(prepared):
    p, docs, cfg, root = prepared
    idx = p.path / "train.idx"
    mtime = idx.stat().st_mtime_ns
    again = prepare_corpus(cfg, TOK, root / "out")
    assert again.reused and again.path == p.path and idx.stat().st_mtime_ns == mtime
    other = prepare_corpus(cfg, TokenizerConfig(vocab_size=330), root / "out")
    assert not other.reused and other.path != p.path
    # a changed corpus file changes the key as well
    changed = write_jsonl(root / "corpus2.jsonl", docs)
    cfg2 = CorpusConfig(source=str(changed), valid_fraction=0.2)
    first = prepare_corpus(cfg2, TOK, root / "out")
    write_jsonl(changed, docs[:-1] + ["A different last document."])
    os.utime(changed, ns=(mtime + 10**9, mtime + 10**9))
    second = prepare_corpus(cfg2, TOK, root / "out")
    assert not second.reused and second.path != first.path
    assert second.train.num_tokens + (second.valid.num_tokens if second.valid else 0) != first.train.num_tokens + first.valid.num_tokens


def test_code_mode_keeps_exact_text_and_blocks(tmp_path):
    code = ["import os\nx = 1\n\n\ndef f(a):\n    return a  # <PRE> [MASK]\n\nclass A:\n\tpass\n"] * 6
    src = write_jsonl(tmp_path / "code.jsonl", code)
    p = prepare_corpus(CorpusConfig(source=str(src), sentences="code", valid_fraction=0.0), TOK, tmp_path / "out")
    data = p.train
    assert p.valid is None and data.num_documents == 6
    for d in range(data.num_documents):
        assert p.tokenizer.decode(data.document_tokens(d)) == code[0]
        s0, s1 = data.document_sentences[d], data.document_sentences[d + 1]
        assert s1 - s0 == len(split_code(code[0])) == 3
    assert data.tokens.min() >= 16


def test_empty_documents_are_skipped_and_counted(tmp_path):
    docs = make_documents(10) + ["", "   \n ", ""]
    src = write_jsonl(tmp_path / "c.jsonl", docs)
    p = prepare_corpus(CorpusConfig(source=str(src), valid_fraction=0.0), TOK, tmp_path / "out")
    assert p.manifest["skipped_documents"] == 3 and p.train.num_documents == 10


def _no_partial_output(out: Path):
    leftovers = [x.name for x in out.iterdir() if x.name != ".hf-cache"] if out.exists() else []
    assert leftovers == [], leftovers


@pytest.mark.parametrize("case", ["missing", "not_json", "corrupt_parquet", "bad_suffix"])
def test_unreadable_corpus_files_fail_naming_the_file(tmp_path, case):
    path = {"missing": tmp_path / "nope.jsonl", "not_json": tmp_path / "bad.jsonl",
            "corrupt_parquet": tmp_path / "bad.parquet", "bad_suffix": tmp_path / "data.csvx"}[case]
    if case == "not_json":
        path.write_text("{this is not json\n")
    elif case == "corrupt_parquet":
        path.write_bytes(b"PAR1 garbage garbage")
    elif case == "bad_suffix":
        path.write_text("x")
    with pytest.raises(CorpusError, match=path.name):
        prepare_corpus(CorpusConfig(source=str(path)), TOK, tmp_path / "out")
    _no_partial_output(tmp_path / "out")


def test_missing_text_field_names_the_field_and_file(tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", make_documents(3), field="body")
    with pytest.raises(CorpusError, match=r"c\.jsonl.*'content'.*body"):
        prepare_corpus(CorpusConfig(source=str(src), text_field="content"), TOK, tmp_path / "out")
    _no_partial_output(tmp_path / "out")


@pytest.mark.parametrize("docs, reason", [([], r"c\.jsonl is empty: 0 bytes, no records"),
                                          (["", "  "], r"c\.jsonl is empty: no non-blank training document")])
def test_empty_corpus_fails_naming_the_file_and_reason(tmp_path, docs, reason):
    src = write_jsonl(tmp_path / "c.jsonl", docs)
    with pytest.raises(CorpusError, match=reason):
        prepare_corpus(CorpusConfig(source=str(src), valid_fraction=0.0), TOK, tmp_path / "out")
    _no_partial_output(tmp_path / "out")


@pytest.mark.parametrize("name, content, reason", [
    ("c.jsonl", "\n \n", r"c\.jsonl is empty: 3 bytes of whitespace"),
    ("c.json", "[]", r"c\.json is empty: it holds no records")])
def test_corpus_files_without_records_fail_naming_the_file_and_reason(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(CorpusError, match=reason):
        prepare_corpus(CorpusConfig(source=str(path), valid_fraction=0.0), TOK, tmp_path / "out")


def test_crash_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "c.jsonl", make_documents(20))
    calls = {"n": 0}
    original = build_mod.SplitWriter.add_document

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk on fire")
        return original(self, *a, **k)

    monkeypatch.setattr(build_mod.SplitWriter, "add_document", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        prepare_corpus(CorpusConfig(source=str(src), valid_fraction=0.0), TOK, tmp_path / "out",
                       chunk_documents=2)
    _no_partial_output(tmp_path / "out")


def test_missing_or_corrupt_bin_idx_named(prepared, tmp_path):
    p, *_ = prepared
    import shutil

    for name in ("train.bin", "train.idx", "train_word_start.bin", "train_word_start.idx"):
        shutil.copy(p.path / name, tmp_path / name)
    assert TokenData.open(tmp_path / "train").num_tokens == p.train.num_tokens
    bin_ = tmp_path / "train.bin"
    data = bin_.read_bytes()
    bin_.write_bytes(data[:-2])
    with pytest.raises(IndexedDataError, match="train.bin"):
        TokenData.open(tmp_path / "train")
    bin_.write_bytes(data)
    idx = tmp_path / "train_word_start.idx"
    idx.write_bytes(b"garbage" + idx.read_bytes()[7:])
    with pytest.raises(IndexedDataError, match="train_word_start.idx"):
        TokenData.open(tmp_path / "train")
    idx.unlink()
    with pytest.raises(IndexedDataError, match="train_word_start.idx.*missing"):
        TokenData.open(tmp_path / "train")


def test_damaged_cache_is_rebuilt(tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", make_documents(8))
    cfg = CorpusConfig(source=str(src), valid_fraction=0.0)
    first = prepare_corpus(cfg, TOK, tmp_path / "out")
    (first.path / "train.bin").write_bytes(b"")
    again = prepare_corpus(cfg, TOK, tmp_path / "out")
    assert not again.reused and again.train.num_tokens == first.manifest["splits"]["train"]["tokens"]


def test_unknown_yaml_keys_are_errors_naming_the_key(tmp_path):
    cfg = tmp_path / "prep.yaml"
    cfg.write_text("corpus:\n  source: stdlib-code\n  text_feild: x\nout: o\n")
    with pytest.raises(ValueError, match="corpus.text_feild"):
        load_prepare_config(cfg)
    cfg.write_text("corpus: {source: stdlib-code}\nworkerz: 2\n")
    with pytest.raises(ValueError, match="workerz"):
        load_prepare_config(cfg)
    cfg.write_text("corpus: {source: stdlib-code, valid_fraction: 1.5}\n")
    with pytest.raises(ValueError, match="valid_fraction"):
        load_prepare_config(cfg)


def test_cli_flags_and_config_print_what_was_written(tmp_path, capsys):
    src = write_jsonl(tmp_path / "c.jsonl", make_documents(12))
    rc = prepare_main(["--corpus", str(src), "--vocab-size", "320", "--out", str(tmp_path / "out"),
                       "--valid-fraction", "0", "--no-progress"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and not out["reused_cache"]
    assert {"train.bin", "train.idx", "train_word_start.bin", "tokenizer.model"} <= set(out["files"])
    assert out["splits"]["train"]["documents"] == 12 and out["splits"]["train"]["tokens"] > 0
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"corpus: {{source: {src}, valid_fraction: 0.0}}\ntokenizer: {{vocab_size: 320}}\n"
                   f"out: {tmp_path / 'out'}\nprogress: false\n")
    assert prepare_main(["--config", str(cfg)]) == 0
    assert json.loads(capsys.readouterr().out)["reused_cache"] is True
    cfg.write_text("corpus: {sorce: x}\n")
    assert prepare_main(["--config", str(cfg)]) == 2
    assert "corpus.sorce" in capsys.readouterr().err


def test_vocabulary_shortfall_is_logged_recorded_and_can_be_an_error(tmp_path, capsys):
    src = write_jsonl(tmp_path / "c.jsonl", make_documents(12))
    cfg = CorpusConfig(source=str(src), valid_fraction=0.0)
    p = prepare_corpus(cfg, TokenizerConfig(vocab_size=3000), tmp_path / "out")
    got = p.tokenizer.num_pieces
    assert got < 3000 and p.manifest["tokenizer_pieces"] == {"asked": 3000, "got": got}
    assert json.loads((p.path / "manifest.json").read_text())["tokenizer_pieces"] == {"asked": 3000, "got": got}
    assert f"asked for 3000 pieces, the training text gave {got}" in capsys.readouterr().err
    again = prepare_corpus(cfg, TokenizerConfig(vocab_size=3000), tmp_path / "out")  # reused: said again
    assert again.reused and f"asked for 3000 pieces, the training text gave {got}" in capsys.readouterr().err
    exact = TokenizerConfig(vocab_size=3000, exact_vocab_size=True)
    with pytest.raises(ValueError, match=f"{again.path} has {got} pieces"):
        prepare_corpus(cfg, exact, tmp_path / "out")
    with pytest.raises(ValueError, match=f"at most {got} pieces"):
        prepare_corpus(cfg, exact, tmp_path / "fresh")
    assert [f.name for f in (tmp_path / "fresh").iterdir() if f.name != ".hf-cache"] == []  # nothing half-written
    rc = prepare_main(["--corpus", str(src), "--vocab-size", "3000", "--exact-vocab-size", "--out",
                       str(tmp_path / "cli"), "--valid-fraction", "0", "--no-progress"])
    assert rc == 1 and f"at most {got} pieces" in capsys.readouterr().err
    full = prepare_corpus(cfg, TokenizerConfig(vocab_size=got, exact_vocab_size=True), tmp_path / "out")
    assert full.manifest["tokenizer_pieces"] == {"asked": got, "got": got} and "asked for" not in capsys.readouterr().err


def test_embedded_stdlib_corpora_are_deterministic():
    code = list(open_corpus(CorpusConfig(source="stdlib-code", max_bytes=15_000)).documents())
    assert code and sum(map(len, code)) <= 15_000
    assert code == list(open_corpus(CorpusConfig(source="stdlib-code", max_bytes=15_000)).documents())
    prose = [d for d in open_corpus(CorpusConfig(source="stdlib-prose", max_bytes=15_000)).documents() if d]
    assert prose and all("def " not in d[:4] for d in prose)
    assert sum(len(split_prose(d)) for d in prose) > len(prose)  # several sentences per document


@pytest.mark.slow
def test_two_workers_write_identical_files(tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", make_documents(60))
    cfg = CorpusConfig(source=str(src), valid_fraction=0.1)
    one = prepare_corpus(cfg, TOK, tmp_path / "w1", workers=1, chunk_documents=7)
    two = prepare_corpus(cfg, TOK, tmp_path / "w2", workers=2, chunk_documents=7)
    for name in ("train.bin", "train.idx", "train_word_start.bin", "valid.bin", "valid.idx"):
        assert (one.path / name).read_bytes() == (two.path / name).read_bytes(), name


def test_shipped_example_configs_load():
    from ptobj import data_pipeline

    root = Path(data_pipeline.__file__).parent / "configs"
    names = sorted(p.name for p in root.glob("*.yaml"))
    assert names == ["stdlib_code.yaml", "stdlib_prose.yaml"]
    for name in names:
        cfg = load_prepare_config(root / name)
        assert cfg.corpus.source.startswith("stdlib-") and cfg.tokenizer.vocab_size >= 300


def test_force_rebuilds_in_place(tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", make_documents(6))
    cfg = CorpusConfig(source=str(src), valid_fraction=0.0)
    first = prepare_corpus(cfg, TOK, tmp_path / "out")
    again = prepare_corpus(cfg, TOK, tmp_path / "out", force=True)
    assert again.path == first.path and not again.reused
    assert (again.path / "train.bin").read_bytes() == (first.path / "train.bin").read_bytes()
    _names = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != ".hf-cache")
    assert _names == [first.path.name]
