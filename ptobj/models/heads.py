"""Objective heads and their per-loss sums.

A model has one head per loss, by kind (the sample fields each kind reads are
part of the sample contract, ``ptobj.objectives.task.HEAD_KINDS``):

* ``token``: LM logits through the tied embedding; ``labels`` weighted by ``loss_mask``
  (encoders first apply BERT's :class:`TokenHead` transform and add its output bias);
* ``span_boundary``: SpanBERT's SBO, reading ``{loss}_left/_right/_offset``;
* ``sequence``: a 2-way classifier on the first position, reading ``{loss}_label`` (-1 = none);
* ``scalar``: a linear score (a reward) at the positions where ``{loss}_rank`` >= 0, trained on
  every pair of them in one row whose ranks differ (:func:`ranking_sums`).

Every head returns ``{"loss_sum", "count", "correct"}`` as 0-dim float32
tensors (``loss_sum`` carries the gradient); the recipe weights and
normalises, and reduces over data parallel ranks. All values are identical on
every tensor-parallel rank. :func:`target_count` counts a batch's targets the
way the head does, before the forward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel


def span_fields(loss: str) -> tuple[str, str, str]:
    return f"{loss}_left", f"{loss}_right", f"{loss}_offset"


def _target_field(loss: str, kind: str) -> str:
    return {"token": "loss_mask", "span_boundary": f"{loss}_offset", "sequence": f"{loss}_label",
            "scalar": f"{loss}_rank"}[kind]


def unclaimed_targets(heads: dict[str, str], batch) -> list[str]:
    """Fields of ``batch`` that look like a span-boundary / sequence head's targets
    (``*_offset``, ``*_label``) but belong to no head in ``heads``."""
    claimed = {_target_field(loss, kind) for loss, kind in heads.items()}
    return sorted(f for f in batch if f.endswith(("_offset", "_label")) and f not in claimed)


def head_present(loss: str, kind: str, batch) -> bool:
    """Whether ``batch`` carries the targets of this head."""
    return _target_field(loss, kind) in batch


def target_count(loss: str, kind: str, batch) -> torch.Tensor:
    """How many targets of this head ``batch`` holds (the count its sums divide by)."""
    t = batch[_target_field(loss, kind)]
    if kind == "token":
        return t.float().sum()
    if kind == "span_boundary":
        return (t > 0).sum().float()
    if kind == "scalar":
        return ranked_rows(t).sum().float()
    return (t >= 0).sum().float()


def ranked_rows(rank: torch.Tensor) -> torch.Tensor:
    """Rows of ``rank`` [b, s] (-1 = no score) holding at least one pair of different ranks."""
    valid = rank >= 0
    high = torch.where(valid, rank, torch.full_like(rank, -1)).amax(dim=-1)
    low = torch.where(valid, rank, torch.full_like(rank, torch.iinfo(rank.dtype).max)).amin(dim=-1)
    return valid.any(dim=-1) & (high > low)


def ranking_sums(scores: torch.Tensor, rows: torch.Tensor, ranks: torch.Tensor) -> dict[str, torch.Tensor]:
    """InstructGPT's reward-model loss as sums. ``scores`` [n] are read at n positions, ``rows``
    [n] their batch row (one prompt), ``ranks`` [n] their rank in it (0 = best). Every pair
    (i, j) of one row with rank_i < rank_j adds ``-log sigmoid(r_i - r_j)``, weighted by 1 /
    (the row's number of pairs, K-choose-2): each prompt counts as one element. ``count`` =
    prompts with a pair; ``correct`` / ``acc_count`` = pairs ordered right / pairs."""
    scores = scores.float()
    pair = (rows[:, None] == rows[None, :]) & (ranks[:, None] < ranks[None, :])
    i, j = torch.nonzero(pair, as_tuple=True)
    diff = scores[i] - scores[j]
    per_row = torch.zeros(int(rows.max()) + 1 if rows.numel() else 0, device=scores.device)
    per_row.index_add_(0, rows[i], torch.ones_like(diff))
    weight = 1.0 / per_row[rows[i]]
    return {"loss_sum": (-F.logsigmoid(diff) * weight).sum(), "count": (per_row > 0).sum().float(),
            "correct": (diff.detach() > 0).sum().float(), "acc_count": torch.tensor(float(diff.numel()), device=scores.device)}


def vocab_parallel_sums(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                        tp_group) -> dict[str, torch.Tensor]:
    """Cross-entropy sums over vocabulary-parallel logits [..., V / tp] (this rank's
    slice), integer targets [...] and per-position weights [...]."""
    weight = weight.float()
    target = target.long().contiguous()
    with torch.no_grad():  # accuracy first: megatron's cross-entropy may edit logits in place
        correct = _vocab_parallel_correct(logits.detach(), target, tp_group)
    losses = tensor_parallel.vocab_parallel_cross_entropy(logits.float(), target)
    return {"loss_sum": (losses * weight).sum(), "count": weight.sum(),
            "correct": (correct.float() * weight).sum()}


def _vocab_parallel_correct(logits: torch.Tensor, target: torch.Tensor, tp_group) -> torch.Tensor:
    """Whether the target's logit is the maximum over the whole (sharded) vocabulary."""
    v_local = logits.shape[-1]
    tp_size = 1 if tp_group is None else torch.distributed.get_world_size(tp_group)
    rank = 0 if tp_size == 1 else torch.distributed.get_rank(tp_group)
    first = rank * v_local
    local = target - first
    mine = (local >= 0) & (local < v_local)
    target_logit = logits.gather(-1, local.clamp(0, v_local - 1)[..., None])[..., 0].float() * mine
    best = logits.max(dim=-1).values.float()
    if tp_size > 1:
        torch.distributed.all_reduce(best, op=torch.distributed.ReduceOp.MAX, group=tp_group)
        torch.distributed.all_reduce(target_logit, group=tp_group)
    return target_logit >= best


def classification_sums(logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sums for a replicated classifier: logits [b, c], target [b]. A target of -1
    means "no pair target here" (a mixed batch, or a segment too short to split)."""
    target = target.long()
    valid = target >= 0
    loss = F.cross_entropy(logits.float(), target, reduction="sum", ignore_index=-1)
    correct = ((logits.detach().argmax(-1) == target) & valid).float().sum()
    return {"loss_sum": loss, "count": valid.float().sum(), "correct": correct}


def _init_linear(linear: torch.nn.Linear, std: float) -> None:
    torch.nn.init.normal_(linear.weight, std=std)
    if linear.bias is not None:
        torch.nn.init.zeros_(linear.bias)


class TokenHead(torch.nn.Module):
    """BERT's MLM head before the tied projection: dense + GeLU + LayerNorm, hidden -> E
    (E = the embedding width: ALBERT's factorised size, or hidden); plus the output
    bias, one per vocabulary id, split over tensor-parallel ranks like the vocabulary."""

    def __init__(self, hidden: int, embed: int, vocab_per_rank: int, std: float, eps: float, dtype: torch.dtype):
        super().__init__()
        self.dense = torch.nn.Linear(hidden, embed, dtype=dtype)
        self.norm = torch.nn.LayerNorm(embed, eps=eps, dtype=dtype)
        self.bias = torch.nn.Parameter(torch.zeros(vocab_per_rank, dtype=dtype))
        tensor_parallel.set_tensor_model_parallel_attributes(self.bias, True, 0, 1)
        _init_linear(self.dense, std)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., hidden] -> [..., E], ready for the tied projection (then add ``bias``)."""
        return self.norm(F.gelu(self.dense(hidden)))


class SpanBoundaryHead(torch.nn.Module):
    """SpanBERT's span boundary objective: y_i = f([x_{s-1}; x_{e+1}; p_{i-s+1}]),
    f a 2-layer GeLU + LayerNorm MLP; y_i (width ``out``, the embedding width) goes
    through the tied vocab projection. The offset table has its own embeddings for
    offsets 1..max_offset."""

    def __init__(self, hidden: int, max_offset: int, std: float, eps: float, dtype: torch.dtype,
                 out: int | None = None):
        super().__init__()
        out = out or hidden
        self.max_offset = max_offset
        self.offset_embeddings = torch.nn.Embedding(max_offset + 1, hidden, dtype=dtype)
        torch.nn.init.normal_(self.offset_embeddings.weight, std=std)
        self.fc1 = torch.nn.Linear(3 * hidden, hidden, dtype=dtype)
        self.norm1 = torch.nn.LayerNorm(hidden, eps=eps, dtype=dtype)
        self.fc2 = torch.nn.Linear(hidden, out, dtype=dtype)
        self.norm2 = torch.nn.LayerNorm(out, eps=eps, dtype=dtype)
        _init_linear(self.fc1, std)
        _init_linear(self.fc2, std)

    def forward(self, hidden_bsh: torch.Tensor, rows: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
                offset: torch.Tensor) -> torch.Tensor:
        """hidden_bsh [b, s, h]; rows/left/right/offset [n] for the n targets -> [n, h].
        Offsets above max_offset share the last table entry."""
        x = torch.cat([hidden_bsh[rows, left], hidden_bsh[rows, right],
                       self.offset_embeddings(offset.clamp(1, self.max_offset))], dim=-1)
        x = self.norm1(F.gelu(self.fc1(x)))
        return self.norm2(F.gelu(self.fc2(x)))


class ScalarHead(torch.nn.Module):
    """A score per position: one linear map of the final hidden state, no bias (Hugging Face's
    ``*ForSequenceClassification.score`` with ``num_labels=1``)."""

    def __init__(self, hidden: int, std: float, dtype: torch.dtype):
        super().__init__()
        self.score = torch.nn.Linear(hidden, 1, bias=False, dtype=dtype)
        _init_linear(self.score, std)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.score(hidden)[..., 0]


class SentenceHead(torch.nn.Module):
    """BERT-style pooler (dense + tanh on the first token, [CLS]) and a 2-way classifier."""

    def __init__(self, hidden: int, std: float, dtype: torch.dtype):
        super().__init__()
        self.pooler = torch.nn.Linear(hidden, hidden, dtype=dtype)
        self.classifier = torch.nn.Linear(hidden, 2, dtype=dtype)
        _init_linear(self.pooler, std)
        _init_linear(self.classifier, std)

    def forward(self, first_token: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.tanh(self.pooler(first_token)))
