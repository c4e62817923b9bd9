"""ObjectiveDataset: same stream for any read order / worker count, resume, collate."""

import numpy as np
import pytest
import torch

from data_pipeline.collate import collate
from data_pipeline.dataset import ObjectiveDataset, StreamPositions
from data_pipeline.indexed import SplitWriter, TokenData
from data_pipeline.samplers import PackedContextSampler, SegmentPairSampler, SegmentSampler
from objectives.sample import SpecialTokens


def write_random_docs(prefix, n_docs=30, seed=0):
    rng = np.random.default_rng(seed)
    w = SplitWriter(prefix, vocab_size=1000)
    for _ in range(n_docs):
        lengths = rng.integers(1, 12, size=int(rng.integers(1, 6)))
        toks = rng.integers(16, 1000, size=int(lengths.sum())).astype(np.int32)
        w.add_document(toks, (toks % 2).astype(np.uint8), lengths)
    w.finalize()
    return TokenData.open(prefix)


class NoisyMask:
    """A stand-in transform that uses its rng: masks random positions, adds a scalar label."""

    reads, writes = ("tokens",), ("tokens", "labels", "loss_mask", "flip")

    def __call__(self, sample, rng):
        toks = sample["tokens"].copy()
        hit = rng.random(toks.shape) < 0.3
        labels = np.where(hit, toks, 0).astype(np.int32)
        toks[hit] = SpecialTokens().mask
        return {"tokens": toks, "labels": labels, "loss_mask": hit.astype(np.float32),
                "flip": np.asarray(rng.integers(2), dtype=np.int32)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_random_docs(str(tmp_path_factory.mktemp("ds") / "train"))


def stream(ds, positions):
    return [ds[p] for p in positions]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(np.asarray(x[k]), np.asarray(y[k]))


def test_samples_do_not_depend_on_read_order(data):
    ds = ObjectiveDataset(PackedContextSampler(data, 8, seed=1), NoisyMask(), seed=7)
    positions = list(range(3 * len(ds)))  # three epochs
    forward = stream(ds, positions)
    fresh = ObjectiveDataset(PackedContextSampler(data, 8, seed=1), NoisyMask(), seed=7)
    backward = stream(fresh, positions[::-1])[::-1]
    assert_same(forward, backward)
    # epochs differ, and the transform seed matters
    assert not np.array_equal(forward[0]["tokens"], forward[len(ds)]["tokens"])
    other = ObjectiveDataset(PackedContextSampler(data, 8, seed=1), NoisyMask(), seed=8)
    assert any(not np.array_equal(other[p]["loss_mask"], forward[p]["loss_mask"]) for p in range(10))


def test_transform_rng_is_seed_epoch_index(data):
    sampler = SegmentSampler(data, 10, seed=3)
    ds = ObjectiveDataset(sampler, NoisyMask(), seed=11)
    epoch, index = ds.locate(len(ds) + 4)
    expected = NoisyMask()(sampler.sample(epoch, index), np.random.default_rng([11, epoch, index]))
    assert_same([ds[len(ds) + 4]], [expected])


def test_resume_from_saved_position_continues_the_same_stream(data):
    make = lambda: ObjectiveDataset(SegmentPairSampler(data, 16, seed=2), NoisyMask(), seed=5)
    ds = make()
    batch = 4
    full = [collate(b) for b in _batches(ds, 10, batch)]
    ds = make()
    head = []
    loader = iter(ds.loader(batch, num_workers=0))
    for _ in range(6):
        head.append(next(loader))
        ds.advance(batch)
    state = ds.state_dict()
    assert state["position"] == 24 and state["epoch"] * len(ds) + state["consumed_samples"] == 24
    resumed = make()
    resumed.load_state_dict(state)
    tail = [b for b, _ in zip(resumed.loader(batch, num_workers=0), range(4))]
    for a, b in zip(full, head + tail):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k


def _batches(ds, n, batch):
    pos = iter(StreamPositions(0))
    for _ in range(n):
        yield [ds[next(pos)] for _ in range(batch)]


def test_load_state_dict_rejects_other_data(data):
    ds = ObjectiveDataset(PackedContextSampler(data, 8), None, seed=0)
    with pytest.raises(ValueError, match="samples_per_epoch"):
        ds.load_state_dict({"epoch": 0, "consumed_samples": 3, "samples_per_epoch": len(ds) + 1})
    with pytest.raises(KeyError, match="consumed_samples"):
        ds.load_state_dict({"epoch": 0})


def test_rank_slices_partition_the_global_stream():
    ranks = [list(zip(StreamPositions(10, rank=r, world_size=3), range(5))) for r in range(3)]
    flat = sorted(p for r in ranks for p, _ in r)
    assert flat == list(range(10, 25))


@pytest.mark.slow
def test_dataloader_workers_0_and_2_give_the_same_batches(data):
    ds = ObjectiveDataset(SegmentSampler(data, 12, seed=4), NoisyMask(), seed=9)
    ds.position = 5
    zero = list(ds.loader(3, num_workers=0, num_samples=30))
    two = list(ds.loader(3, num_workers=2, num_samples=30))
    assert len(zero) == len(two) == 10
    for a, b in zip(zero, two):
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_collate_stacks_and_pads():
    special = SpecialTokens()
    samples = [
        {"tokens": np.array([5, 6, 7], np.int32), "loss_mask": np.ones(3, np.float32),
         "kv_start": np.zeros(3, np.int32), "kv_end": np.array([1, 2, 3], np.int32),
         "word_start": np.ones(3, bool), "sop_label": np.asarray(1, np.int32)},
        {"tokens": np.array([8], np.int32), "loss_mask": np.ones(1, np.float32),
         "kv_start": np.zeros(1, np.int32), "kv_end": np.array([1], np.int32),
         "word_start": np.ones(1, bool), "sop_label": np.asarray(0, np.int32)},
    ]
    b = collate(samples)
    assert b["sop_label"].tolist() == [1, 0] and b["sop_label"].dtype == torch.int32
    assert b["tokens"].tolist() == [[5, 6, 7], [8, special.pad, special.pad]]
    assert b["loss_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    # padded rows get an empty interval: they attend to nothing
    assert (b["kv_end"][1, 1:] <= b["kv_start"][1, 1:]).all()
    assert b["word_start"].dtype == torch.bool and b["word_start"][1].tolist() == [True, False, False]
    assert collate(samples, pad_to_multiple=4)["tokens"].shape == (2, 4)
    with pytest.raises(KeyError, match="fields"):
        collate([samples[0], {"tokens": np.zeros(3, np.int32)}])


def test_prepared_corpus_feeds_fim_end_to_end(tmp_path):
    """Prepared stdlib-like code -> packed contexts -> the FIM objective -> a batch."""
    from data_pipeline.build import prepare_corpus
    from data_pipeline.config import CorpusConfig, TokenizerConfig
    from objectives.registry import build

    code = "def f(a, b):\n    return a + b\n\n\nclass Point:\n    x = 1\n    y = 2\n"
    src = tmp_path / "c.txt"
    src.write_text(code * 30)
    p = prepare_corpus(CorpusConfig(source=str(src), sentences="code", valid_fraction=0.0),
                       TokenizerConfig(vocab_size=300), tmp_path / "out")
    S = 64
    fim = build("fim", {"seq_length": S, "fim_rate": 1.0}, special=p.tokenizer.special,
                vocab_size=p.tokenizer.vocab_size, tokenizer=p.tokenizer)
    ds = ObjectiveDataset(PackedContextSampler(p.train, S, seed=0), fim, seed=0)
    batch = next(iter(ds.loader(4)))
    assert batch["tokens"].shape == (4, S) and batch["labels"].shape == (4, S)
    special = p.tokenizer.special
    assert (batch["tokens"] == special.fim_prefix).any() and batch["tokens"].max() < p.tokenizer.vocab_size
