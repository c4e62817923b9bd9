"""Reward model (InstructGPT, Ouyang et al. 2022): a scalar read at the end of each response,
trained on all K-choose-2 comparisons of K ranked responses to one prompt.

A record is a prompt (a conversation, see :mod:`ptobj.objectives.sft`) and K = 2..9
responses ranked best first. One sample holds the whole prompt: each response is
rendered after the prompt with the chat template (``prompt`` + ``<|assistant|>
response <|end|>`` + EOT) and the K sequences are packed side by side in one row,
each its own document (attention and positions restart per sequence, the row
intervals of packed documents). So one row is one prompt, and its comparisons are
one element of the batch, as the paper weighs them ("each prompt's comparisons as
a single batch element").

The field ``rm_rank`` (int32 per token) holds response k's rank (0 = best) at the
position of the ``<|end|>`` closing it, where the scalar head reads the reward,
and -1 elsewhere. The head (``ptobj.models.heads.ranking_sums``) takes, per row, the
mean over its K-choose-2 pairs of ``-log sigmoid(r_better - r_worse)``: the loss
is the mean of that over prompts. ``<|end|>`` is where a Hugging Face
``LlamaForSequenceClassification`` reads a chat-templated sequence too (its last
non-pad token), so the exported model scores the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ptobj.objectives.causal_lm import check_contexts, pack_fields
from ptobj.objectives.sample import CONTRACT_FIELDS, Batch, ConfiguredTransform, SpecialTokens
from ptobj.objectives.sft import CHAT_SPECIAL, Encode, render
from ptobj.objectives.streams import RowStreams
from ptobj.objectives.task import Task

MIN_RESPONSES, MAX_RESPONSES = 2, 9
LOSS = "rm"
RANK_FIELD = f"{LOSS}_rank"


def render_ranked(prompt: Sequence[Mapping[str, str]], responses: Sequence[str], encode: Encode,
                  special: SpecialTokens, where: str = "record") -> tuple[np.ndarray, np.ndarray]:
    """A prompt and its responses (best first) -> (ids int32 [n], rank int32 [n]): the K
    sequences one after the other, ``rank`` = k at response k's closing ``<|end|>``, else -1."""
    if not isinstance(responses, Sequence) or isinstance(responses, str) \
            or not MIN_RESPONSES <= len(responses) <= MAX_RESPONSES:
        raise ValueError(f"{where}.responses: {MIN_RESPONSES} to {MAX_RESPONSES} ranked responses, got "
                         f"{len(responses) if isinstance(responses, Sequence) else responses!r}")
    ids, ranks = [], []
    for k, text in enumerate(responses):
        if not isinstance(text, str):
            raise ValueError(f"{where}.responses[{k}]: expected text, got {type(text).__name__}")
        seq, _ = render([*prompt, {"role": "assistant", "content": text}], encode, special, where)
        rank = np.full(seq.size, -1, np.int32)
        rank[-2] = k  # the <|end|> before the EOT
        ids.append(seq)
        ranks.append(rank)
    return np.concatenate(ids), np.concatenate(ranks)


@dataclass(frozen=True)
class RewardConfig:
    seq_length: int

    def __post_init__(self):
        if not isinstance(self.seq_length, (int, np.integer)) or isinstance(self.seq_length, bool) \
                or self.seq_length < 1:
            raise ValueError(f"RewardConfig.seq_length must be an int >= 1, got {self.seq_length!r}")


class RewardModel(ConfiguredTransform):
    """One prompt's ranked sequences per row (``tokens``, ``rank`` [B, S+1]) -> the contract
    fields (no token loss) and ``rm_rank`` [B, S]."""

    config_type = RewardConfig
    reads = ("tokens", "rank")
    writes = CONTRACT_FIELDS + (RANK_FIELD,)
    record_kind = "ranked"
    record_fill = {"rank": -1}  # padding scores nothing
    packs_records = False  # a row is one prompt: its comparisons are one batch element

    def encode_record(self, record, encode: Encode, where: str = "record") -> dict[str, np.ndarray]:
        prompt, responses = record
        ids, rank = render_ranked(prompt, responses, encode, self.special, where)
        return {"tokens": ids, "rank": rank}

    def apply(self, batch: Batch, streams: RowStreams) -> Batch:
        ctx = check_contexts(batch, self.config.seq_length + 1, self.vocab_size, "RewardModel")
        rank = np.asarray(batch["rank"])
        if rank.shape != ctx.shape:
            raise ValueError(f"RewardModel: field 'rank' has shape {rank.shape}, 'tokens' {ctx.shape}")
        out = pack_fields(ctx, self.special)
        out["loss_mask"] = np.zeros_like(out["loss_mask"])
        out[RANK_FIELD] = rank[:, :-1].astype(np.int32)
        return out


TASKS = (
    Task("reward", RewardModel, RewardConfig, model="decoder", sampler="records",
         input_length=lambda c: c.seq_length + 1, losses={LOSS: "scalar"}, special=CHAT_SPECIAL),
)
