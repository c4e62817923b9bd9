"""Document-level FIM: documents rewritten one by one, then packed (ptobj.data_pipeline.packed_documents)."""

from __future__ import annotations

import numpy as np
import pytest

from ptobj.data_pipeline.indexed import SplitWriter, TokenData
from ptobj.data_pipeline.packed_documents import PackedDocumentSampler
from ptobj.objectives import registry
from ptobj.objectives.fim import FIM, FIMConfig, original_order
from ptobj.objectives.sample import SpecialTokens
from ptobj.objectives.streams import RowStreams

SP = SpecialTokens()
V = 300


@pytest.fixture()
def data(tmp_path):
    rng = np.random.default_rng(0)
    w = SplitWriter(tmp_path / "train", V)
    docs = []
    for n in rng.integers(3, 40, 25):
        doc = rng.integers(SP.first_regular, V, n).astype(np.int32)
        docs.append(doc)
        w.add_document(doc, np.ones(n, bool), np.array([n]))
    w.finalize()
    return TokenData.open(tmp_path / "train"), docs


def fim(rate=1.0):
    return FIM(FIMConfig(seq_length=16, scope="document", fim_rate=rate, split_level="token"), special=SP,
               vocab_size=V)


def test_documents_stage_is_keyed_per_row():
    t = fim()
    docs = {"tokens": np.array([[20, 21, 22, 23, 0], [30, 31, 32, 33, 34]], np.int32), "length": np.array([4, 5])}
    keys = RowStreams.for_rows(5, 1, [7, 9], purpose="document")
    both = t.documents(docs, keys)
    alone = t.documents({"tokens": docs["tokens"][1:], "length": docs["length"][1:]}, keys.take([1]))
    assert both["tokens"][1, : both["length"][1]].tolist() == alone["tokens"][0, : alone["length"][0]].tolist()
    for b in range(2):
        out = both["tokens"][b, : both["length"][b]]
        assert out.size == docs["length"][b] + 3                       # three sentinels, token split
        assert original_order(out, SP).tolist() == docs["tokens"][b, : docs["length"][b]].tolist()


def test_contexts_pack_the_rewritten_documents_of_each_epoch(data):
    token_data, docs = data
    t = fim()
    s = PackedDocumentSampler(token_data, 16, t.documents, seed=3, special=SP)
    assert len(s) == (sum(d.size + 1 for d in docs) - 1) // 16
    for epoch in (0, 1):
        stream = np.concatenate([s.sample(epoch, i)["tokens"][:-1] for i in range(len(s))])
        # cut on EOT: every whole document in it is some corpus document, FIM'd (undone: the original)
        pieces = np.split(stream, np.flatnonzero(stream == SP.eot) + 1)
        whole = [p[:-1] for p in pieces[:-1]]
        originals = {tuple(d.tolist()) for d in docs}
        assert len(whole) >= len(docs) - 3
        for p in whole:
            assert {SP.fim_prefix, SP.fim_middle, SP.fim_suffix} <= set(p.tolist())
            assert tuple(original_order(p, SP).tolist()) in originals
        # consecutive contexts share one token, as packed contexts do
        assert s.sample(epoch, 0)["tokens"][-1] == s.sample(epoch, 1)["tokens"][0]
    again = PackedDocumentSampler(token_data, 16, fim().documents, seed=3, special=SP)
    assert all(np.array_equal(s.sample(1, i)["tokens"], again.sample(1, i)["tokens"]) for i in (5, 0, 3))
    other = PackedDocumentSampler(token_data, 16, fim().documents, seed=4, special=SP)
    assert not all(np.array_equal(s.sample(0, i)["tokens"], other.sample(0, i)["tokens"]) for i in range(4))


def test_a_rate_zero_stage_gives_the_plain_packed_stream(data):
    from ptobj.data_pipeline.samplers import PackedContextSampler

    token_data, _ = data
    s = PackedDocumentSampler(token_data, 16, fim(0.0).documents, seed=3, special=SP, shuffle=False)
    plain = PackedContextSampler(token_data, 16, seed=3, shuffle=False, special=SP)
    assert len(s) == len(plain)
    assert all(np.array_equal(s.sample(0, i)["tokens"], plain.sample(0, i)["tokens"]) for i in range(len(s)))


def test_the_task_declares_document_scope_through_its_sampler():
    spec = registry.parse({"name": "fim", "config": {"scope": "document"}}, defaults={"seq_length": 32})
    plan = registry.plan(spec)
    assert plan.sampler == "packed_documents" and plan.input_length == 33
    assert registry.plan(registry.parse(plan.evals["fim"])).sampler == "packed"  # held-out FIM is context-level
    assert plan.evaluations["infill"].kind == "infilling"
    mix = {"mix": [{"weight": 1, "name": "fim", "config": {"scope": "document"}},
                   {"weight": 1, "name": "fim", "config": {"scope": "document", "spm_rate": 1.0}}]}
    with pytest.raises(ValueError, match="document-level stage"):
        registry.plan(registry.parse(mix, defaults={"seq_length": 32}))


def test_document_scope_call_emits_fields_without_rewriting():
    t = FIM(FIMConfig(seq_length=7, scope="document", fim_rate=1.0, split_level="token"), special=SP, vocab_size=V)
    ctx = np.array([SP.fim_prefix, 20, SP.fim_suffix, 21, SP.fim_middle, 22, SP.eot, 30], np.int32)
    out = t({"tokens": ctx}, 0)
    assert out["tokens"].tolist() == ctx[:-1].tolist() and out["labels"].tolist() == ctx[1:].tolist()
    assert out["segment_ids"].tolist() == [0] * 7


def test_batched_reads_are_the_contexts_one_by_one(data):
    s = PackedDocumentSampler(data[0], 16, fim(0.5).documents, seed=3, special=SP)
    epoch, index = np.array([1, 0, 1, 0]), np.array([2, 0, 0, len(s) - 1])
    batch = s.read(epoch, index)["tokens"]
    for b in range(4):
        assert np.array_equal(batch[b], s.sample(int(epoch[b]), int(index[b]))["tokens"])
