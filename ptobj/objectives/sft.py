"""Supervised fine-tuning (SFT) on conversations: the loss on the assistant's tokens only.

A record is a conversation, a list of messages ``{"role", "content"}`` with roles
``system``, ``user`` and ``assistant`` (a (prompt, response) record is the
conversation ``[user: prompt, assistant: response]``; see
:mod:`ptobj.data_pipeline.records`). :func:`render` writes it with the chat template

    <|role|> content <|end|>    for every message, then EOT closing the conversation

The control tokens are reserved ids (``SpecialTokens.chat_system / chat_user /
chat_assistant / chat_end``) that only :func:`render` emits: the content goes
through the tokenizer, which never yields a reserved id, so a record holding the
literal text ``"<|user|>"`` encodes to ordinary pieces. The Hugging Face export
carries the same template (``ptobj.models.hf_tokenizer.CHAT_TEMPLATE``).

The loss counts where the *label* is a response token: an assistant message's
content and the ``<|end|>`` closing it (so the model learns to stop); the
prompt, the role markers and the EOT are context only.

Packing: the sampler (:class:`ptobj.data_pipeline.records.RecordSampler`) joins whole
rendered conversations (each closed by its EOT) into contexts of ``seq_length +
1`` ids with a per-token ``response`` field (1 on response tokens). :class:`SFT`
gives them the causal-LM fields of :func:`ptobj.objectives.causal_lm.pack_fields`, so
attention and positions restart at each conversation (the row intervals of
packed documents) and padding is its own segment, never in the loss; it keeps
the loss where the label is a response token. No randomness.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from ptobj.objectives.causal_lm import check_contexts, pack_fields
from ptobj.objectives.sample import CONTRACT_FIELDS, Batch, ConfiguredTransform, SpecialTokens
from ptobj.objectives.streams import RowStreams
from ptobj.objectives.task import Task

ROLES = ("system", "user", "assistant")
CHAT_SPECIAL = ("eot", "pad", "chat_system", "chat_user", "chat_assistant", "chat_end")

Encode = Callable[[str], Sequence[int]]


def role_id(role: str, special: SpecialTokens, where: str = "message") -> int:
    if role not in ROLES:
        raise ValueError(f"{where}.role: {role!r} is not one of {ROLES}")
    return int(getattr(special, f"chat_{role}"))


def render(messages: Sequence[Mapping[str, str]], encode: Encode, special: SpecialTokens,
           where: str = "record") -> tuple[np.ndarray, np.ndarray]:
    """A conversation -> (ids int32 [n], response bool [n]) under the chat template; ``response``
    marks the assistant's content and the ``<|end|>`` closing each assistant message."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        raise ValueError(f"{where}: a conversation is a non-empty list of {{role, content}} messages, "
                         f"got {messages!r}")
    ids: list[int] = []
    response: list[bool] = []
    for i, m in enumerate(messages):
        at = f"{where}.messages[{i}]"
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ValueError(f"{at}: a message is a mapping with 'role' and 'content', got {m!r}")
        if not isinstance(m["content"], str):
            raise ValueError(f"{at}.content: expected text, got {type(m['content']).__name__}")
        marker = role_id(m["role"], special, at)
        body = [int(t) for t in encode(m["content"])]
        if any(t < special.first_regular for t in body):
            raise ValueError(f"{at}.content: the tokenizer produced a reserved id (< {special.first_regular}); "
                             "reserved ids come from the chat template only")
        is_response = m["role"] == "assistant"
        ids += [marker, *body, special.chat_end]
        response += [False] + [is_response] * (len(body) + 1)
    ids.append(special.eot)
    response.append(False)
    return np.asarray(ids, np.int32), np.asarray(response, bool)


@dataclass(frozen=True)
class SFTConfig:
    seq_length: int

    def __post_init__(self):
        if not isinstance(self.seq_length, (int, np.integer)) or isinstance(self.seq_length, bool) \
                or self.seq_length < 1:
            raise ValueError(f"SFTConfig.seq_length must be an int >= 1, got {self.seq_length!r}")


class SFT(ConfiguredTransform):
    """Packed conversations (``tokens`` [B, S+1], ``response`` [B, S+1]) -> the contract fields,
    the loss on response labels only."""

    config_type = SFTConfig
    reads = ("tokens", "response")
    writes = CONTRACT_FIELDS
    # what the record sampler hands encode_record: a conversation (ptobj.data_pipeline.records)
    record_kind = "conversation"
    # several conversations per context
    packs_records = True

    def encode_record(self, messages, encode: Encode, where: str = "record") -> dict[str, np.ndarray]:
        """One conversation as the sampler packs it: ``tokens`` and ``response`` (int32)."""
        ids, response = render(messages, encode, self.special, where)
        return {"tokens": ids, "response": response.astype(np.int32)}

    def apply(self, batch: Batch, streams: RowStreams) -> Batch:
        ctx = check_contexts(batch, self.config.seq_length + 1, self.vocab_size, "SFT")
        response = np.asarray(batch["response"])
        if response.shape != ctx.shape:
            raise ValueError(f"SFT: field 'response' has shape {response.shape}, 'tokens' {ctx.shape}")
        out = pack_fields(ctx, self.special)
        out["loss_mask"] *= response[:, 1:] > 0
        return out


TASKS = (
    Task("sft", SFT, SFTConfig, model="decoder", sampler="records_packed", input_length=lambda c: c.seq_length + 1,
         special=CHAT_SPECIAL),
)
