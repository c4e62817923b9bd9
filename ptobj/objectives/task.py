"""A Task: what the rest of the system needs to know about an objective, declared beside it.

Like a seqio Task, each objective module declares, next to its transform and
config, one :class:`Task` (or several) in a module-level ``TASKS`` tuple::

    TASKS = (Task("spanbert", SpanBERT, SpanBERTConfig, model="encoder", sampler="segment",
                  input_length=lambda c: c.seq_length - 2,
                  losses={"lm": "token", "sbo": "span_boundary"}),)

:mod:`ptobj.objectives.registry` finds these declarations; recipes, model building,
losses, collate, mixes and evaluation derive everything from them, so nothing
outside this package lists objectives by name. Declared values that depend on
the objective's config are callables of that config.

Loss heads
----------
A loss is a name (the key of its weight and of its metrics, e.g. ``sop``)
and a *head kind*, the model head that computes it. The kinds and the sample
fields each reads are part of the sample contract and live here;
``ptobj.models.heads`` implements them:

=================  ==================================================  =========================
head kind          reads (``{loss}`` = the loss name)                  a target counts where
=================  ==================================================  =========================
``token``          ``labels``, ``loss_mask``                           ``loss_mask`` > 0
``span_boundary``  ``labels``, ``{loss}_left``, ``{loss}_right``,      ``{loss}_offset`` > 0
                   ``{loss}_offset`` (int32 per token; -1 / -1 / 0
                   where no target)
``sequence``       ``{loss}_label`` (int32 scalar; -1 = no target),     ``{loss}_label`` >= 0
                   classified from the first position ([CLS])
``scalar``         ``{loss}_rank`` (int32 per token; -1 where no        a row holds two ranks
                   score is read): a scalar (a reward) read where the
                   rank is >= 0; the loss compares every pair of
                   positions of one row whose ranks differ (0 = best)
=================  ==================================================  =========================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

MODEL_KINDS = ("decoder", "encoder")
# packed: documents joined by EOT, cut into contexts; packed_documents: the same, after the
# objective rewrote each document on its own (its transform's ``documents(batch, streams)``, keyed
# by (seed, epoch, document)); segment: a span of one document (+ word and sentence starts);
# segment_pair: a segment plus a segment of another document (NSP's negatives)
# records_packed: whole records (conversations) the transform encodes (its ``encode_record``), several
# per context; records: one encoded record per row (a prompt with its ranked responses)
SAMPLERS = ("packed", "packed_documents", "segment", "segment_pair", "records_packed", "records")
# what each sampler's samples can feed: a segment pair is a segment (of >= 2 sentences) plus extras
SERVES = {"packed": ("packed",), "packed_documents": ("packed_documents",), "segment": ("segment",),
          "segment_pair": ("segment", "segment_pair"), "records_packed": ("records_packed",),
          "records": ("records",)}


@dataclass(frozen=True)
class ExtraField:
    """A sample field beyond the contract: ``per_token`` int32 [S] or an int32 scalar; ``neutral``
    is the value no loss reads (a mix writes it where its chosen member did not)."""

    name: str
    per_token: bool
    neutral: int


HEAD_KINDS: dict[str, tuple[tuple[str, bool, int], ...]] = {
    # kind -> (field name pattern, per_token, neutral value) of the extra fields it reads
    "token": (),
    "span_boundary": (("{loss}_left", True, -1), ("{loss}_right", True, -1), ("{loss}_offset", True, 0)),
    "sequence": (("{loss}_label", False, -1),),
    "scalar": (("{loss}_rank", True, -1),),
}


def head_fields(loss: str, kind: str) -> tuple[ExtraField, ...]:
    """The extra fields a loss of head kind ``kind`` reads."""
    if kind not in HEAD_KINDS:
        raise ValueError(f"loss {loss!r}: unknown head kind {kind!r}; known: {sorted(HEAD_KINDS)}")
    return tuple(ExtraField(p.format(loss=loss), per_token, neutral) for p, per_token, neutral in HEAD_KINDS[kind])


def _resolve(value, config):
    return value(config) if callable(value) else value


@dataclass(frozen=True)
class Evaluation:
    """An evaluation beyond held-out losses that fits what an objective trains (e.g. a
    FIM-trained decoder fills in the middle). ``kind`` names the implementation (the
    recipes provide one per kind, ``ptobj.recipes.evaluation.declared``); ``params`` are its settings
    that follow from the objective's config (e.g. the prompt layouts it was trained on)."""

    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """One objective's declaration. ``transform(config, special=, vocab_size=, tokenizer=)`` builds
    it; the other fields say what it needs around it (constants, or callables of its config)."""

    name: str
    transform: type
    config: type
    model: str                                   # "decoder" | "encoder"
    sampler: str | Callable[[Any], str]          # one of SAMPLERS (or a callable of the config)
    # tokens per raw sample the sampler cuts (packed: the context, seq_length + 1 ids;
    # encoders: the body between [CLS] / [SEP] markers the transform adds)
    input_length: Callable[[Any], int]
    losses: Mapping[str, str] | Callable[[Any], Mapping[str, str]] = field(
        default_factory=lambda: {"lm": "token"})  # loss name -> head kind
    # segment_ids values an encoder objective writes (0..n-1): the encoder's segment embeddings
    segment_types: int = 1
    # held-out suites: config -> {suite: (objective name, its config)}; None = the training objective
    evals: Callable[[Any], Mapping[str, tuple[str, Any]]] | None = None
    # SpecialTokens fields the transform emits (the tokenizer must reserve them)
    special: tuple[str, ...] = ()
    # how many span sentinels (SpecialTokens.sentinels) the transform numbers its spans with
    sentinels: int | Callable[[Any], int] = 0
    # the transform re-tokenises text (pass the corpus tokenizer)
    needs_tokenizer: bool = False
    # evaluations that fit the trained model beyond held-out losses: config -> {name: Evaluation}
    # (FIM: infilling of held-out code); the recipes run them at the end of training
    evaluations: Callable[[Any], Mapping[str, Evaluation]] | None = None

    def __post_init__(self):
        if self.model not in MODEL_KINDS:
            raise ValueError(f"Task {self.name!r}: model must be one of {MODEL_KINDS}, got {self.model!r}")
        if not callable(self.sampler) and self.sampler not in SAMPLERS:
            raise ValueError(f"Task {self.name!r}: sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if not callable(self.input_length):
            raise TypeError(f"Task {self.name!r}: input_length must be a callable of the config")
        if not callable(self.losses):
            for loss, kind in self.losses.items():
                head_fields(loss, kind)

    def sampler_for(self, config) -> str:
        sampler = _resolve(self.sampler, config)
        if sampler not in SAMPLERS:
            raise ValueError(f"Task {self.name!r}: sampler must be one of {SAMPLERS}, got {sampler!r}")
        return sampler

    def evaluations_for(self, config) -> dict[str, Evaluation]:
        out = dict(self.evaluations(config)) if self.evaluations is not None else {}
        for name, ev in out.items():
            if not isinstance(ev, Evaluation):
                raise TypeError(f"Task {self.name!r}: evaluation {name!r} must be an ptobj.objectives.task.Evaluation, "
                                f"got {type(ev).__name__}")
        return out

    def sentinels_for(self, config) -> int:
        return int(_resolve(self.sentinels, config))

    def losses_for(self, config) -> dict[str, str]:
        out = dict(_resolve(self.losses, config))
        for loss, kind in out.items():
            head_fields(loss, kind)
        return out

    def fields_for(self, config) -> tuple[ExtraField, ...]:
        return tuple(f for loss, kind in self.losses_for(config).items() for f in head_fields(loss, kind))
