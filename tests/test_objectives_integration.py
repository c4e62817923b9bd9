"""Objectives inside users' pipelines: numpy-only import, HF ``datasets.map``, torch DataLoader.

The pattern both pipelines use: sample ``index`` of ``epoch`` is keyed by
``(seed, epoch, index)`` (``t(sample, seed, epoch=, index=)``, or a batch with
``RowStreams.for_rows(seed, epoch, indices)``), so what a sample becomes does not
depend on the order, the batch, the process or the number of workers that build it.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from ptobj.objectives.compose import MixByWeight
from ptobj.objectives.macbert import MacBERT, MacBERTConfig
from ptobj.objectives.sample import SpecialTokens
from ptobj.objectives.sentence_pairs import SOP, SOPConfig
from ptobj.objectives.similar_words import SimilarWords
from ptobj.objectives.streams import RowStreams

SP = SpecialTokens()
V = 400
SEED = 1234
S = 48


def raw_corpus(n_docs=24, seed=0):
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        n = int(rng.integers(1, 60))
        ss = rng.random(n) < 0.15
        ss[0] = True
        docs.append({"tokens": rng.integers(16, V, n).astype(np.int32), "word_start": (rng.random(n) < 0.7) | ss,
                     "sentence_start": ss})
    return docs


def make_transform():
    table = SimilarWords.from_neighbours({(w,): [(w + 1,), (w + 2,)] for w in range(16, V - 2)})
    mac = MacBERT(MacBERTConfig(seq_length=S), special=SP, vocab_size=V, similar=table)
    sop = SOP(SOPConfig(seq_length=S, masking="macbert", ngram_probs=(0.4, 0.3, 0.2, 0.1)), special=SP,
              vocab_size=V, similar=table)
    return MixByWeight([(0.5, mac), (0.5, sop)], fill={"sop_label": ("scalar", -1)}, tag_field="objective_id")


def build(transform, doc, epoch, index):
    return transform(doc, SEED, epoch=epoch, index=index)


# ------------------------------------------------------------------ numpy alone
BLOCKED = ["torch", "megatron", "datasets", "transformers", "sentencepiece", "triton", "jieba", "ptobj.data_pipeline"]

IMPORT_SCRIPT = r"""
import importlib, json, pkgutil, sys, dataclasses
for name in %(blocked)r:
    sys.modules[name] = None          # any import of it now raises ImportError
import numpy as np
from ptobj import objectives
from ptobj.objectives import registry
from ptobj.objectives.sample import SpecialTokens
mods = sorted(m.name for m in pkgutil.iter_modules(objectives.__path__))
for m in mods:
    importlib.import_module("ptobj.objectives." + m)
special = SpecialTokens()
rng = np.random.default_rng(0)
n = 40
seg = {"tokens": rng.integers(16, 300, n).astype(np.int32), "word_start": rng.random(n) < 0.7,
       "sentence_start": rng.random(n) < 0.2,
       "random_tokens": rng.integers(16, 300, 30).astype(np.int32), "random_word_start": np.ones(30, bool)}
built, called = [], []
for name in registry.names():
    cls = registry.config_class(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    cfg = {"seq_length": 32} if "seq_length" in fields else {}
    if "split_level" in fields:
        cfg["split_level"] = "token"   # character-level FIM needs a tokenizer
    t = registry.build(name, cfg, vocab_size=300)   # default reserved ids + the sentinels it declares
    built.append(name)
    sample = dict(seg)
    sampler = registry.task(name).sampler_for(registry.make_config(name, {}, defaults={"seq_length": 32}))
    if sampler.startswith("packed"):
        sample = {"tokens": rng.integers(16, 300, 33).astype(np.int32)}
    if sampler.startswith("records"):   # a record as the transform encodes it, padded to a context
        encode = lambda text: [16 + ord(ch) for ch in text]
        record = {"conversation": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                  "ranked": ([{"role": "user", "content": "hi"}], ["yo", "no"])}[t.record_kind]
        fill = getattr(t, "record_fill", {})
        sample = {f: np.pad(v, (0, 33 - len(v)), constant_values=0 if f == "tokens" else fill.get(f, 0))
                  for f, v in t.encode_record(record, encode).items()}
    if all(f in sample for f in getattr(t, "reads", ())):
        out = t(sample, 1)
        assert out["tokens"].shape == (32,), (name, out["tokens"].shape)
        called.append(name)
bad = [m for m in %(blocked)r if sys.modules.get(m) is not None]
print(json.dumps({"modules": mods, "names": registry.names(), "built": built, "called": called, "bad": bad}))
"""


def test_every_objective_imports_and_builds_with_numpy_alone():
    code = IMPORT_SCRIPT % {"blocked": BLOCKED}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    rep = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"macbert", "similar_words", "sentence_pairs", "compose", "registry", "masking"} <= set(rep["modules"])
    assert len(rep["names"]) >= 8 and rep["built"] == rep["names"] and rep["called"] == rep["names"]
    assert rep["bad"] == []


# ------------------------------------------------------------------ Hugging Face datasets.map
def test_datasets_map_is_deterministic_per_index():
    import datasets
    docs = raw_corpus()
    ds = datasets.Dataset.from_dict({k: [d[k].tolist() for d in docs] for k in ("tokens", "word_start", "sentence_start")})
    t = make_transform()
    epoch = 3

    def fn(example, idx):
        sample = {"tokens": np.asarray(example["tokens"], np.int32),
                  "word_start": np.asarray(example["word_start"], bool),
                  "sentence_start": np.asarray(example["sentence_start"], bool)}
        out = build(t, sample, epoch, idx)
        return {k: v.tolist() for k, v in out.items()}

    mapped = ds.map(fn, with_indices=True, remove_columns=ds.column_names, load_from_cache_file=False)
    again = ds.map(fn, with_indices=True, remove_columns=ds.column_names, load_from_cache_file=False)
    for i in range(len(ds)):
        direct = build(t, docs[i], epoch, i)
        for k, v in direct.items():
            assert np.array_equal(np.asarray(mapped[i][k]), v), (i, k)
            assert np.array_equal(np.asarray(again[i][k]), v), (i, k)
    assert set(mapped.column_names) == {"tokens", "labels", "loss_mask", "position_ids", "segment_ids", "kv_start",
                                        "kv_end", "sop_label", "objective_id"}
    assert len({row["objective_id"] for row in mapped}) == 2


# ------------------------------------------------------------------ torch DataLoader
class PretrainDataset:
    """Map-style dataset: raw document ``index`` -> transformed sample of ``epoch``."""

    def __init__(self, docs, transform):
        self.docs, self.transform, self.epoch = docs, transform, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.docs)

    def __getitem__(self, index):
        return build(self.transform, self.docs[index], self.epoch, index)


def _epoch(num_workers, epoch):
    import torch
    ds = PretrainDataset(raw_corpus(), make_transform())
    ds.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=num_workers, shuffle=False)
    return [{k: v.numpy() for k, v in batch.items()} for batch in loader]


@pytest.mark.slow
def test_dataloader_determinism_independent_of_worker_count():
    one = _epoch(0, epoch=1)
    two = _epoch(2, epoch=1)
    assert len(one) == len(two) == 5
    for a, b in zip(one, two):
        assert a.keys() == b.keys()
        for k in a:
            assert np.array_equal(a[k], b[k]), k
    assert one[0]["tokens"].shape == (5, S) and one[0]["sop_label"].shape == (5,)
    other = _epoch(0, epoch=2)      # a new epoch draws anew
    assert any(not np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(one, other))


class BatchPretrainDataset(PretrainDataset):
    """The vectorised form: the loader hands over a list of indices (one batch); each
    row is keyed by its own index, so the rows are those of the per-sample form
    whatever the batch composition or worker count."""

    def __getitem__(self, indices):
        samples = [self.docs[i] for i in indices]
        return self.transform.batch(samples, RowStreams.for_rows(SEED, self.epoch, indices))


@pytest.mark.slow
def test_batch_form_dataloader_determinism_independent_of_worker_count():
    import torch
    from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

    table = SimilarWords.from_neighbours({(w,): [(w + 1,)] for w in range(16, V - 1)})
    sop = SOP(SOPConfig(seq_length=S, masking="macbert", ngram_probs=(0.4, 0.3, 0.2, 0.1)), special=SP,
              vocab_size=V, similar=table)
    ds = BatchPretrainDataset(raw_corpus(), sop)

    def run(workers):
        sampler = BatchSampler(SequentialSampler(range(len(ds))), batch_size=6, drop_last=False)
        loader = DataLoader(ds, sampler=sampler, batch_size=None, num_workers=workers)
        return [{k: torch.as_tensor(v).numpy() for k, v in b.items()} for b in loader]

    a, b = run(0), run(2)
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        for k in x:
            assert np.array_equal(x[k], y[k]), k
    assert a[0]["tokens"].shape == (6, S) and a[0]["sop_label"].shape == (6,)
    for i in (0, 7, 23):                                  # row i of its batch is sample i alone
        one = build(sop, ds.docs[i], 0, i)
        assert all(np.array_equal(a[i // 6][k][i % 6], one[k]) for k in one)
