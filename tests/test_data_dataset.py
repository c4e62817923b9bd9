"""ObjectiveDataset: same stream for any read order / worker count, resume, collate."""

import numpy as np
import pytest
import torch

from ptobj.data_pipeline.collate import collate
from ptobj.data_pipeline.dataset import ObjectiveDataset, StreamBatches
from ptobj.data_pipeline.indexed import SplitWriter, TokenData
from ptobj.data_pipeline.samplers import PackedContextSampler, SegmentPairSampler, SegmentSampler
from ptobj.objectives import streams
from ptobj.objectives.sample import SpecialTokens, Transform, row, stack
from ptobj.objectives.streams import site


def write_random_docs(prefix, n_docs=30, seed=0):
    rng = np.random.default_rng(seed)
    w = SplitWriter(prefix, vocab_size=1000)
    for _ in range(n_docs):
        lengths = rng.integers(1, 12, size=int(rng.integers(1, 6)))
        toks = rng.integers(16, 1000, size=int(lengths.sum())).astype(np.int32)
        w.add_document(toks, (toks % 2).astype(np.uint8), lengths)
    w.finalize()
    return TokenData.open(prefix)


class NoisyMask(Transform):
    """A stand-in transform that draws from its rows' streams: masks random positions, adds a label."""

    reads, writes = ("tokens",), ("tokens", "labels", "loss_mask", "flip")

    def apply(self, batch, streams):
        toks = batch["tokens"].copy()
        B, W = toks.shape
        u = streams.uniform(site("test.noisy_mask"), W + 1)
        hit = u[:, :W] < 0.3
        labels = np.where(hit, toks, 0).astype(np.int32)
        toks[hit] = SpecialTokens().mask
        return {"tokens": toks, "labels": labels, "loss_mask": hit.astype(np.float32),
                "flip": (u[:, W] < 0.5).astype(np.int32)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_random_docs(str(tmp_path_factory.mktemp("ds") / "train"))


def stream(ds, positions, batch=5):
    """The samples at ``positions``, read in micro-batches of ``batch``."""
    out = []
    for i in range(0, len(positions), batch):
        b = ds.read(positions[i:i + batch])
        out += [row(b, k) for k in range(len(positions[i:i + batch]))]
    return out


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(np.asarray(x[k]), np.asarray(y[k]))


def test_samples_do_not_depend_on_read_order_or_batch(data):
    ds = ObjectiveDataset(PackedContextSampler(data, 8, seed=1), NoisyMask(), seed=7)
    positions = list(range(3 * len(ds)))  # three epochs
    forward = stream(ds, positions)
    fresh = ObjectiveDataset(PackedContextSampler(data, 8, seed=1), NoisyMask(), seed=7)
    backward = stream(fresh, positions[::-1], batch=7)[::-1]
    assert_same(forward, backward)
    assert_same(forward[:9], [ds[p] for p in positions[:9]])            # one at a time
    # epochs differ, and the transform seed matters
    assert not np.array_equal(forward[0]["tokens"], forward[len(ds)]["tokens"])
    other = ObjectiveDataset(PackedContextSampler(data, 8, seed=1), NoisyMask(), seed=8)
    assert any(not np.array_equal(other[p]["loss_mask"], forward[p]["loss_mask"]) for p in range(10))


def test_transform_rows_are_keyed_by_seed_epoch_index(data):
    sampler = SegmentSampler(data, 10, seed=3)
    ds = ObjectiveDataset(sampler, NoisyMask(), seed=11)
    epoch, index = ds.locate(len(ds) + 4)
    expected = NoisyMask()(sampler.sample(int(epoch[0]), int(index[0])), 11, epoch=int(epoch[0]),
                           index=int(index[0]))
    assert_same([ds[len(ds) + 4]], [expected])


class Record(Transform):
    """Returns the first draws of each row's stream."""

    reads, writes = ("tokens",), ("u",)

    def apply(self, batch, streams):
        return {"u": streams.uniform(site("test.record"), 8)}


def test_sample_zero_does_not_draw_the_epoch_shuffles_numbers(data):
    """The transform of sample 0 once drew from the very stream that shuffled its epoch
    (``default_rng([seed, epoch, 0])`` both): its masking replayed the shuffle. Every
    consumer has its own key now, so the numbers differ."""
    for seed in (0, 5):
        sampler = PackedContextSampler(data, 8, seed=seed)
        ds = ObjectiveDataset(sampler, Record(), seed=seed)
        for epoch in range(3):
            got = ds.read([epoch * len(ds)])["u"][0]
            shuffle = streams.generator("sampler.order", seed, epoch).random(8)
            assert not np.isclose(got[:, None], shuffle[None, :]).any(), (seed, epoch)
            # and the sampler really shuffles with that generator
            n = len(sampler._doc_len)
            assert np.array_equal(sampler._order(epoch)[0], streams.generator("sampler.order", seed, epoch).permutation(n))


def test_resume_from_saved_position_continues_the_same_stream(data):
    make = lambda: ObjectiveDataset(SegmentPairSampler(data, 16, seed=2), NoisyMask(), seed=5)
    ds = make()
    batch = 4
    full = [collate(ds.read(range(i * batch, (i + 1) * batch))) for i in range(10)]
    head = list(ds.loader(batch, num_workers=0, num_batches=6))
    state = ds.position_state(6 * batch)
    assert state["position"] == 24 and state["epoch"] * len(ds) + state["consumed_samples"] == 24
    resumed = make()
    tail = list(resumed.loader(batch, start=resumed.position_of(state), num_batches=4))
    for a, b in zip(full, head + tail):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_position_of_rejects_other_data(data):
    ds = ObjectiveDataset(PackedContextSampler(data, 8), None, seed=0)
    with pytest.raises(ValueError, match="samples_per_epoch"):
        ds.position_of({"epoch": 0, "consumed_samples": 3, "samples_per_epoch": len(ds) + 1})
    with pytest.raises(ValueError, match="seed"):
        ds.position_of({"epoch": 0, "consumed_samples": 3, "seed": 1})
    with pytest.raises(KeyError, match="consumed_samples"):
        ds.position_of({"epoch": 0})


def test_rank_slices_partition_the_global_stream():
    ranks = [list(StreamBatches(10, 2, rank=r, world_size=3, num_batches=5)) for r in range(3)]
    flat = sorted(p for r in ranks for b in r for p in b)
    assert flat == list(range(10, 40))
    assert ranks[1][0] == [12, 13] and ranks[0][1] == [16, 17]


@pytest.mark.slow
def test_dataloader_workers_0_and_2_give_the_same_batches(data):
    ds = ObjectiveDataset(SegmentSampler(data, 12, seed=4), NoisyMask(), seed=9)
    zero = list(ds.loader(3, start=5, num_workers=0, num_batches=10))
    two = list(ds.loader(3, start=5, num_workers=2, num_batches=10))
    assert len(zero) == len(two) == 10
    for a, b in zip(zero, two):
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_collate_converts_a_batch():
    samples = [
        {"tokens": np.array([5, 6, 7], np.int32), "loss_mask": np.ones(3, np.float32),
         "word_start": np.ones(3, bool), "sop_label": np.asarray(1, np.int32)},
        {"tokens": np.array([8, 9], np.int32), "loss_mask": np.zeros(2, np.float32),
         "word_start": np.zeros(2, bool), "sop_label": np.asarray(0, np.int32)},
    ]
    b = collate(stack(samples))
    assert b["sop_label"].tolist() == [1, 0] and b["sop_label"].dtype == torch.int32
    assert b["tokens"].tolist() == [[5, 6, 7], [8, 9, 0]] and b["length"].tolist() == [3, 2]
    assert b["word_start"].dtype == torch.bool and b["loss_mask"].dtype == torch.float32
    grid = {"tokens": np.arange(6, dtype=np.int32).reshape(2, 3)[:, ::-1]}   # not contiguous
    assert collate(grid)["tokens"].tolist() == [[2, 1, 0], [5, 4, 3]]
    with pytest.raises(TypeError, match="stack"):
        collate(samples)


def test_prepared_corpus_feeds_fim_end_to_end(tmp_path):
    """Prepared stdlib-like code -> packed contexts -> the FIM objective -> a batch."""
    from ptobj.data_pipeline.build import prepare_corpus
    from ptobj.data_pipeline.config import CorpusConfig, TokenizerConfig
    from ptobj.objectives.registry import build

    code = "def f(a, b):\n    return a + b\n\n\nclass Point:\n    x = 1\n    y = 2\n"
    src = tmp_path / "c.txt"
    src.write_text(code * 30)
    p = prepare_corpus(CorpusConfig(source=str(src), sentences="code", valid_fraction=0.0),
                       TokenizerConfig(vocab_size=300), tmp_path / "out")
    S = 64
    fim = build("fim", {"seq_length": S, "fim_rate": 1.0}, special=p.tokenizer.special,
                vocab_size=p.tokenizer.vocab_size, tokenizer=p.tokenizer)
    ds = ObjectiveDataset(PackedContextSampler(p.train, S, seed=0), fim, seed=0)
    batch = next(iter(ds.loader(4, num_batches=1)))
    assert batch["tokens"].shape == (4, S) and batch["labels"].shape == (4, S)
    special = p.tokenizer.special
    assert (batch["tokens"] == special.fim_prefix).any() and batch["tokens"].max() < p.tokenizer.vocab_size
