"""Our MLM collator against transformers' own, as JSON lines (one thread).

    python bench/hf_collators.py [--batch 32] [--seq-length 128] [--repeats 7] [--batches 100]

Both collate the same texts (the docstrings of a standard-library module per text,
``stdlib-prose``, most longer than a row: rows are full, as in pretraining) tokenised
once by the same fast tokenizer (a BERT-style WordPiece trained here with ``tokenizers``):

* token masking: ``ptobj.hf.MLMCollator`` vs ``DataCollatorForLanguageModeling(mlm=True)``;
* whole-word masking: ``MLMCollator(whole_word=True)`` vs ``DataCollatorForLanguageModeling(
  whole_word_mask=True)`` (transformers 5; ``DataCollatorForWholeWordMask`` before it),
  whose features carry ``offset_mapping``.

Features are what ``datasets`` hands a collator: lists of ints (ours: ``input_ids``,
``word_start``, ``index``; transformers': ``input_ids`` with [CLS]/[SEP], ``attention_mask``,
``special_tokens_mask`` and for whole words ``offset_mapping``), each text cut to
``seq-length`` tokens with its [CLS]/[SEP]; transformers' whole-word features come padded
to ``seq-length`` (``tokenizer.pad`` cannot pad ``offset_mapping``). A pass collates ``--batches`` batches of
``--batch`` features; tokens/s counts the tokens the batches hold (attention mask 1) over
the pass's seconds; each configuration runs ``--repeats`` passes, and the median is
reported (min and max beside it). One thread: OMP/MKL/torch set to 1 before torch loads.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast  # noqa: E402

from ptobj.data_pipeline.config import CorpusConfig  # noqa: E402
from ptobj.data_pipeline.corpus import open_corpus  # noqa: E402
from ptobj.hf import HFTokens, MLMCollator  # noqa: E402

torch.set_num_threads(1)


def emit(**row):
    print(json.dumps(row), flush=True)


def tokenizer(texts, vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                 sep_token="[SEP]", mask_token="[MASK]")
    # transformers' collators read encodings with the [CLS] ... [SEP] template; ours add it themselves
    hf.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", hf.cls_token_id), ("[SEP]", hf.sep_token_id)])
    return hf


def hf_whole_word_collator(hf):
    """transformers 5's whole-word switch, or the class it replaced."""
    try:
        return DataCollatorForLanguageModeling(hf, mlm=True, whole_word_mask=True, mlm_probability=0.15)
    except TypeError:
        from transformers import DataCollatorForWholeWordMask
        return DataCollatorForWholeWordMask(hf, mlm_probability=0.15)


def timed(collate, batches) -> tuple[float, int]:
    t = time.perf_counter()
    tokens = 0
    for b in batches:
        out = collate(b)
        m = out["attention_mask"]
        tokens += int(m.sum()) if m.ndim == 2 else 0
    return time.perf_counter() - t, tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-length", type=int, default=128)
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--max-bytes", type=int, default=400_000)
    args = ap.parse_args()

    docs = [d for d in open_corpus(CorpusConfig(source="stdlib-prose", max_bytes=args.max_bytes)).documents()
            if d.strip()]
    hf = tokenizer(docs, args.vocab_size)
    tokens = HFTokens(hf)
    S, B = args.seq_length, args.batch
    n = B * args.batches
    texts = (docs * (n // len(docs) + 1))[:n]
    ours_enc = tokens.tokenize(texts)
    ours = [{"input_ids": ids[: S - 2], "word_start": ws[: S - 2], "index": i}
            for i, (ids, ws) in enumerate(zip(ours_enc["input_ids"], ours_enc["word_start"]))]
    enc = hf(texts, truncation=True, max_length=S, return_special_tokens_mask=True)
    theirs = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
               "special_tokens_mask": enc["special_tokens_mask"][i]} for i in range(n)]
    # transformers' whole-word path reads offset_mapping, which tokenizer.pad cannot pad: its features
    # come padded to seq-length (padding="max_length"), as its own examples tokenise them
    full = hf(texts, truncation=True, max_length=S, padding="max_length", return_special_tokens_mask=True,
              return_offsets_mapping=True)
    theirs_ww = [{k: full[k][i] for k in ("input_ids", "attention_mask", "special_tokens_mask", "offset_mapping")}
                 for i in range(n)]
    assert [len(x["input_ids"]) for x in theirs] == [len(x["input_ids"]) + 2 for x in ours]  # same rows, same tokens

    def batches(features):
        return [features[i: i + B] for i in range(0, n, B)]

    common = dict(batch=B, seq_length=S, batches=args.batches, repeats=args.repeats, threads=torch.get_num_threads(),
                  vocab=len(hf), corpus="stdlib-prose", transformers=transformers.__version__,
                  torch=torch.__version__, python=platform.python_version(), cpu_count=os.cpu_count())
    cases = [
        ("mlm_token", "ptobj.hf.MLMCollator", MLMCollator(tokens, seq_length=S, seed=0), ours),
        ("mlm_token", "transformers.DataCollatorForLanguageModeling",
         DataCollatorForLanguageModeling(hf, mlm=True, mlm_probability=0.15, seed=0), theirs),
        ("mlm_whole_word", "ptobj.hf.MLMCollator(whole_word=True)",
         MLMCollator(tokens, seq_length=S, seed=0, whole_word=True), ours),
        ("mlm_whole_word", "transformers.DataCollatorForLanguageModeling(whole_word_mask=True)",
         hf_whole_word_collator(hf), theirs_ww),
    ]
    for task, name, collate, features in cases:
        bs = batches(features)
        timed(collate, bs[:2])                                         # warm up
        runs = [timed(collate, bs) for _ in range(args.repeats)]
        rates = [tok / dt for dt, tok in runs]
        emit(bench="hf_collator", task=task, collator=name, tokens=runs[0][1],
             seconds_median=round(statistics.median(dt for dt, _ in runs), 4),
             tokens_per_s=round(statistics.median(rates)), tokens_per_s_min=round(min(rates)),
             tokens_per_s_max=round(max(rates)), **common)


if __name__ == "__main__":
    main()
