"""The single-stack seq2seq layout: source and target in one decoder row.

Objectives that map a source to a target (T5 span corruption, MASS) train a
decoder on ``source [SEP] target [EOT]``: source rows, and the [SEP] that
closes the source, attend bidirectionally over the source (a prefix LM); target
rows attend causally to the source and the target before them. Labels are the
next token; the loss covers the target and its closing EOT (predicted from
[SEP] onwards), never the source. Past the end, PAD rows see nothing and carry
no loss. ``segment_ids`` are 0 for the source part and 1 for the target part.

UniLM's seq2seq mode is the encoder form of the same mask
(:func:`ptobj.objectives.intervals.prefix_lm`).
"""

from __future__ import annotations

import numpy as np

from ptobj.objectives.sample import Batch, SpecialTokens


def single_stack(source: np.ndarray, source_len: np.ndarray, target: np.ndarray, target_len: np.ndarray,
                 seq_length: int, special: SpecialTokens) -> Batch:
    """[B, S] contract fields from per-row ``source`` [B, Ws] / ``target`` [B, Wt] id grids and
    their lengths. A row whose ``source_len + target_len + 2`` exceeds ``seq_length + 1`` is an
    error: the objective must size its input to fit."""
    B = source.shape[0]
    S = int(seq_length)
    ns = np.asarray(source_len, np.int64)
    nt = np.asarray(target_len, np.int64)
    total = ns + nt + 2                                   # source [SEP] target [EOT]
    if B and int(total.max()) > S + 1:
        b = int(np.argmax(total))
        raise ValueError(f"seq2seq row {b}: source {ns[b]} + target {nt[b]} + 2 markers exceed "
                         f"seq_length + 1 = {S + 1}")
    x = np.full((B, S + 1), special.pad, np.int32)
    col = np.arange(S + 1)[None, :]
    ws, wt = source.shape[1], target.shape[1]
    src_cols = col[:, :ws] < ns[:, None]
    x[:, :ws][src_cols] = source[src_cols]
    rows = np.arange(B)
    x[rows, ns] = special.sep
    # target token j of row b sits at ns[b] + 1 + j
    tgt_rows, tgt_j = np.nonzero(np.arange(wt)[None, :] < nt[:, None])
    x[tgt_rows, ns[tgt_rows] + 1 + tgt_j] = target[tgt_rows, tgt_j]
    x[rows, ns + 1 + nt] = special.eot
    pos = np.arange(S, dtype=np.int32)[None, :]
    real = pos < (total - 1)[:, None]                      # rows that hold a token with a next token
    in_target = pos >= ns[:, None]                         # [SEP] onwards predicts the target
    kv_end = np.where(pos <= ns[:, None], (ns + 1)[:, None], pos + 1)
    return {
        "tokens": x[:, :S],
        "labels": x[:, 1:],
        "loss_mask": (real & in_target).astype(np.float32),
        "position_ids": np.broadcast_to(pos, (B, S)).copy(),
        "segment_ids": (real & (pos > ns[:, None])).astype(np.int32),
        "kv_start": np.zeros((B, S), np.int32),
        "kv_end": np.where(real, kv_end, 0).astype(np.int32),
    }
