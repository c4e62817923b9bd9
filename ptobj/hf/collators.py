"""The objectives as ``transformers`` data collators: ``collator(features) -> dict of tensors``.

Each collator builds the registered objective (:mod:`ptobj.objectives.registry`) in the
tokenizer's id space (:class:`ptobj.hf.tokens.HFTokens`), and per batch: reads the
features it needs (``input_ids`` and ``word_start``, plus ``sentence_start`` for SOP/NSP,
``random_input_ids``/``random_word_start`` for NSP; :mod:`ptobj.hf.preprocess` makes
them), maps the ids in, runs the transform's ``batch`` with each row's stream
(:mod:`ptobj.hf.keys`: by the ``index`` feature, else a counter of samples seen plus the
epoch), and maps the output back to what Hugging Face models take: ``labels`` -100
outside the loss, ``token_type_ids``, sequence labels under the model's names, and the
row-interval attention as a 2-D mask where one says the same, else 4-D
(:mod:`ptobj.hf.masks`). No masking is implemented here: what a collator emits is the
transform's output, id for id.

With ``transformers.Trainer`` set ``TrainingArguments(remove_unused_columns=False)``:
the Trainer otherwise drops the feature columns the model's ``forward`` does not name
(``word_start``, ``index``) before the collator sees them.

Layouts:

* encoder (MLM, SpanBERT, MacBERT, SOP, NSP, UniLM): ``[CLS] ... [SEP]`` rows cut to the
  batch's longest (``pad_to_multiple_of`` rounds up), ``input_ids``, ``token_type_ids``,
  ``attention_mask``, ``labels`` (+ ``sentence_order_label`` / ``next_sentence_label``).
* decoder (FIM, causal LM, T5/MASS in one stack): our rows hold S inputs and S next-token
  labels; HF causal LMs shift labels themselves, so a row is the S + 1 ids (the inputs and
  the last label) with ``labels[j]`` = the id at j where position j - 1 is in our loss, -100
  elsewhere (no target is lost), plus ``position_ids`` (restarting per document).
* encoder-decoder (T5/MASS for ``T5ForConditionalGeneration``, ``BartForConditionalGeneration``):
  the source (its [SEP] replaced by the tokenizer's eos) as ``input_ids``, the target with
  its closing EOT as the tokenizer's eos as ``labels``; the model shifts labels into
  ``decoder_input_ids``.
"""

from __future__ import annotations

from ptobj.extras import require

require("hf", "torch", "transformers", by=__name__)

import numpy as np
import torch

from ptobj.hf.keys import SampleKeys
from ptobj.hf.masks import interval_mask, padding_mask
from ptobj.hf.tokens import HFTokens
from ptobj.objectives import registry
from ptobj.objectives.streams import RowStreams

# our raw field -> the feature holding it (ids are HF ids there); other fields keep their name
FEATURE = {"tokens": "input_ids", "random_tokens": "random_input_ids"}
ID_FIELDS = ("tokens", "random_tokens")
_NO_LABEL = -100


def _round_up(n: int, multiple: int | None) -> int:
    return n if not multiple else -(-n // multiple) * multiple


def _grid(rows: list[np.ndarray], dtype) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded [B, W] grid of 1-D rows and their lengths (int64 [B])."""
    n = np.fromiter((r.shape[0] for r in rows), np.int64, len(rows))
    grid = np.zeros((len(rows), int(n.max(initial=0))), dtype)
    if grid.size:
        grid[np.arange(grid.shape[1])[None, :] < n[:, None]] = np.concatenate(rows).astype(dtype, copy=False)
    return grid, n


class ObjectiveCollator:
    """A registered objective as a data collator (see the module doc). Subclasses name the
    objective; ``config`` holds its config fields (``registry.make_config`` checks them by name).

    ``seed``: the objectives' seed (rows key as :mod:`ptobj.hf.keys` says, by ``index_field``);
    ``pad_to_multiple_of``: rounds the encoder layout's trimmed width up; ``mask_dtype``: a
    4-D mask's dtype (a float dtype: additive, eager or SDPA attention, the model's dtype;
    ``torch.bool``: SDPA or flex); ``token_type_ids=False`` leaves them out (models without
    segment embeddings, e.g. DistilBERT)."""

    objective = ""
    layout = "encoder"
    needs: tuple[str, ...] = ()                # reserved tokens the tokenizer must have
    label_names: dict[str, str] = {}           # our sequence-label field -> the model's argument

    def __init__(self, tokenizer, *, seq_length: int | None = None, seed: int = 0, index_field: str | None = "index",
                 pad_to_multiple_of: int | None = None, mask_dtype=torch.float32, token_type_ids: bool = True,
                 similar=None, **config):
        who = type(self).__name__
        self.tokens = tokenizer if isinstance(tokenizer, HFTokens) else HFTokens(tokenizer)
        if seq_length is not None:
            config["seq_length"] = seq_length
        self.config = registry.make_config(self.objective, config, where=who)
        task = registry.task(self.objective)
        self.tokens.require(self.required(), who)
        sentinels = task.sentinels_for(self.config)
        if sentinels > self.tokens.num_sentinels:
            raise ValueError(f"{who}: {self.objective} at seq_length {self.config.seq_length} needs {sentinels} "
                             f"sentinels, the tokenizer has {self.tokens.num_sentinels} <extra_id_i> tokens; "
                             f"add them: ptobj.hf.add_sentinel_tokens(tokenizer, {sentinels}), then "
                             "ptobj.hf.resize_embeddings(model, tokenizer)")
        extra = {"similar": similar} if similar is not None else {}
        self.transform = registry.build(self.objective, self.config, special=self.tokens.special,
                                        vocab_size=self.tokens.vocab_size, tokenizer=self.tokens, **extra)
        if pad_to_multiple_of is not None and (not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1):
            raise ValueError(f"{who}: pad_to_multiple_of must be an int >= 1, got {pad_to_multiple_of!r}")
        if not (mask_dtype == torch.bool or getattr(mask_dtype, "is_floating_point", False)):
            raise ValueError(f"{who}: mask_dtype must be torch.bool or a float dtype, got {mask_dtype!r}")
        self.pad_to_multiple_of, self.mask_dtype = pad_to_multiple_of, mask_dtype
        self.token_type_ids = bool(token_type_ids)
        self.keys = SampleKeys(seed, index_field)
        self.mask = self.mask_kind()

    # -- what a subclass may change --------------------------------------------------------
    def required(self) -> tuple[str, ...]:
        return self.needs

    def mask_kind(self) -> str:
        """How attention reaches the model: "padding" (2-D, bidirectional), "causal" (2-D, the
        model's causal mask) or "intervals" (4-D)."""
        return "padding"

    # -- keys ------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """The epoch rows are keyed with (restarts the sample counter); see :class:`ptobj.hf.keys.EpochCallback`."""
        self.keys.set_epoch(epoch)

    # -- features -> our output -> HF fields ---------------------------------------------
    def raw(self, features) -> dict[str, np.ndarray]:
        """The features as the transform's raw batch, in our ids (per-token groups right-padded)."""
        who = type(self).__name__
        if not features:
            raise ValueError(f"{who}: no features to collate")
        batch: dict[str, np.ndarray] = {}
        lengths: dict[str, np.ndarray] = {}
        for f in self.transform.reads:
            name = FEATURE.get(f, f)
            rows = []
            for i, x in enumerate(features):
                if name not in x:
                    raise KeyError(f"{who}: feature {i} lacks {name!r} (it has {sorted(x)}); make it with "
                                   "ptobj.hf.preprocess, and with transformers.Trainer set "
                                   "TrainingArguments(remove_unused_columns=False)")
                v = np.asarray(x[name])
                if v.ndim != 1:
                    raise ValueError(f"{who}: feature {i}: {name!r} must be 1-D, got shape {v.shape}")
                if f in ID_FIELDS and v.size and v.dtype.kind not in "iu":
                    raise ValueError(f"{who}: feature {i}: {name!r} must hold integer ids, got dtype {v.dtype}")
                rows.append(v)
            group = f[: -len("tokens")] if f.endswith("tokens") else ("random_" if f.startswith("random_") else "")
            if f in ID_FIELDS:
                grid, n = _grid(rows, np.int64)
                batch[f] = self.tokens.ours(grid, name)
            else:
                grid, n = _grid(rows, bool)
                batch[f] = grid
            if group in lengths and not np.array_equal(lengths[group], n):
                b = int(np.flatnonzero(lengths[group] != n)[0])
                raise ValueError(f"{who}: feature {b}: {name!r} has {n[b]} values, its ids {lengths[group][b]}")
            lengths.setdefault(group, n)
        for group, n in lengths.items():
            batch[group + "length"] = n
        return batch

    def apply(self, features, streams: RowStreams) -> dict[str, np.ndarray]:
        """The transform's output (our ids) for these features with these row streams."""
        return self.transform.batch(self.raw(features), streams)

    def to_hf(self, out: dict[str, np.ndarray], *, trim: bool = True) -> dict[str, np.ndarray]:
        """Our output -> the model's fields (numpy). A 4-D mask stays as its intervals
        ``kv_start``/``kv_end`` here (:meth:`__call__` builds it)."""
        return getattr(self, "_" + self.layout)(out, trim)

    def __call__(self, features) -> dict[str, torch.Tensor]:
        # the streams first: a counter-keyed batch must take its keys even if it is refused
        streams = self.keys.streams(features)
        return self.tensors(self.to_hf(self.apply(features, streams)))

    def tensors(self, fields: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out = {k: torch.as_tensor(v) for k, v in fields.items() if k not in ("kv_start", "kv_end")}
        if "kv_start" in fields:
            out["attention_mask"] = interval_mask(fields["kv_start"], fields["kv_end"], self.mask_dtype)
        return out

    # -- layouts ---------------------------------------------------------------------------
    def _attention(self, r: dict, ks: np.ndarray, ke: np.ndarray, *, causal: bool) -> None:
        if self.mask == "intervals":
            r["kv_start"], r["kv_end"] = ks.astype(np.int32), ke.astype(np.int32)
            return
        m = padding_mask(ks, ke, causal=causal)
        if m is None:
            raise ValueError(f"{type(self).__name__}: the objective's attention is not what a 2-D "
                             f"{self.mask!r} mask says; this collator needs mask 'intervals'")
        r["attention_mask"] = m

    def _labels(self, labels: np.ndarray, loss: np.ndarray) -> np.ndarray:
        out = np.full(labels.shape, _NO_LABEL, np.int64)
        sel = loss > 0
        out[sel] = self.tokens.hf(labels[sel], "labels")
        return out

    def _encoder(self, out, trim: bool) -> dict[str, np.ndarray]:
        ks, ke = out["kv_start"], out["kv_end"]
        S = out["tokens"].shape[1]
        w = min(S, _round_up(int(ke.max(initial=1)), self.pad_to_multiple_of)) if trim else S
        r = {"input_ids": self.tokens.hf(out["tokens"][:, :w]),
             "labels": self._labels(out["labels"][:, :w], out["loss_mask"][:, :w])}
        if self.token_type_ids:
            r["token_type_ids"] = out["segment_ids"][:, :w].astype(np.int64)
        self._attention(r, ks[:, :w], ke[:, :w], causal=False)
        for ours, theirs in self.label_names.items():
            v = np.asarray(out[ours]).astype(np.int64)
            r[theirs] = np.where(v >= 0, v, _NO_LABEL)
        return r

    def _decoder(self, out, trim: bool) -> dict[str, np.ndarray]:
        tok, lab, lm = out["tokens"], out["labels"], out["loss_mask"]
        B, S = tok.shape
        sp = self.tokens.special
        ctx = np.concatenate([tok, lab[:, -1:]], axis=1)                     # the S + 1 ids of each row
        labels = np.full((B, S + 1), _NO_LABEL, np.int64)
        labels[:, 1:] = self._labels(lab, lm)
        pos = out["position_ids"]
        real = (ctx != sp.pad) & (ctx != sp.fim_pad)
        w = S + 1
        if trim and not real[:, -1].all():
            w = int(np.max(np.where(real.any(axis=1), S + 1 - np.argmax(real[:, ::-1], axis=1), 1)))
        r = {"input_ids": self.tokens.hf(ctx[:, :w]), "labels": labels[:, :w],
             "position_ids": np.concatenate([pos, pos[:, -1:] + 1], axis=1)[:, :w].astype(np.int64)}
        # the extra last position sees itself (its output predicts nothing, no query sees it)
        ks = np.concatenate([out["kv_start"], np.full((B, 1), S, np.int32)], axis=1)[:, :w]
        ke = np.concatenate([out["kv_end"], np.full((B, 1), S + 1, np.int32)], axis=1)[:, :w]
        if self.mask == "intervals":
            self._attention(r, ks, ke, causal=True)
        else:
            self._attention({}, out["kv_start"], out["kv_end"], causal=True)   # checks the intervals are causal
            r["attention_mask"] = real[:, :w].astype(np.int64)
        return r

    def _encoder_decoder(self, out, trim: bool) -> dict[str, np.ndarray]:
        tok, lab, lm = out["tokens"], out["labels"], out["loss_mask"] > 0
        B = tok.shape[0]
        eos, pad = self.tokens.named["eot"], self.tokens.named["pad"]
        ns = np.argmax(lm, axis=1)                                            # [SEP]: the first target's position
        nt = lm.sum(axis=1)
        S = tok.shape[1]
        src = np.full((B, int(ns.max(initial=0)) + 1 if trim else S + 1), pad, np.int64)
        k = min(src.shape[1], S)                                              # the source lies before ns < k
        real = np.arange(k)[None, :] < ns[:, None]
        src[:, :k][real] = self.tokens.hf(tok[:, :k][real])
        src[np.arange(B), ns] = eos
        tgt = np.full((B, int(nt.max(initial=0)) if trim else S), _NO_LABEL, np.int64)
        tgt[np.arange(tgt.shape[1])[None, :] < nt[:, None]] = self.tokens.hf(lab[lm], "labels")
        return {"input_ids": src, "attention_mask": (np.arange(src.shape[1])[None, :] <= ns[:, None]).astype(np.int64),
                "labels": tgt}


# ------------------------------------------------------------------------------------------ encoders

_ENCODER = ("cls", "sep", "pad", "mask")


class MLMCollator(ObjectiveCollator):
    """BERT's masked LM (``whole_word=True``: whole words of ``word_ids()``), 80/10/10, for
    ``*ForMaskedLM``. Config: :class:`ptobj.objectives.mlm.MLMConfig`."""

    objective = "mlm"
    needs = _ENCODER


class SpanBERTCollator(ObjectiveCollator):
    """SpanBERT's masking: geometric spans of whole words, 80/10/10 per span, for ``*ForMaskedLM``.

    The span boundary objective (SBO) has no Hugging Face head: the ``sbo_*`` fields the
    transform writes are dropped (``keep_sbo=True`` passes them on as ``sbo_left``,
    ``sbo_right``, ``sbo_offset`` for a head of one's own), so a Hugging Face model trains
    SpanBERT's masking with the MLM loss alone. Config: :class:`ptobj.objectives.spanbert.SpanBERTConfig`."""

    objective = "spanbert"
    needs = _ENCODER

    def __init__(self, tokenizer, *, keep_sbo: bool = False, **kw):
        super().__init__(tokenizer, **kw)
        self.keep_sbo = bool(keep_sbo)

    def _encoder(self, out, trim):
        r = super()._encoder(out, trim)
        if self.keep_sbo:
            w = r["input_ids"].shape[1]
            for f in ("sbo_left", "sbo_right", "sbo_offset"):
                r[f] = out[f][:, :w].astype(np.int64)
        return r


class MacBERTCollator(ObjectiveCollator):
    """MacBERT's MLM as correction (similar words, no [MASK]), for ``*ForMaskedLM``. ``similar``:
    a :class:`ptobj.objectives.similar_words.SimilarWords` in our ids (``similar_words`` /
    ``similar_format`` in the config read a file through the tokenizer instead); without
    one every chosen word gets a random word. Config: :class:`ptobj.objectives.macbert.MacBERTConfig`."""

    objective = "macbert"
    needs = ("cls", "sep", "pad")


class _PairCollator(ObjectiveCollator):
    def __init__(self, tokenizer, *, label_name: str | None = None, **kw):
        super().__init__(tokenizer, **kw)
        if label_name is not None:
            (ours,) = self.label_names
            self.label_names = {ours: str(label_name)}

    def required(self):
        return ("cls", "sep", "pad") + (("mask",) if self.config.masking == "mlm" else ())


class SOPCollator(_PairCollator):
    """ALBERT's sentence-order prediction with MLM (``masking``: "mlm" whole-word n-grams
    80/10/10, "macbert", "none"): ``[CLS] A [SEP] B [SEP]``, ``token_type_ids`` 0/1 and
    ``sentence_order_label`` (1 = swapped) for ``AlbertForPreTraining``; ``label_name=
    "next_sentence_label"`` feeds the same labels to ``BertForPreTraining``'s two-way head.
    Reads ``sentence_start``. Config: :class:`ptobj.objectives.sentence_pairs.SOPConfig`."""

    objective = "sop"
    label_names = {"sop_label": "sentence_order_label"}


class NSPCollator(_PairCollator):
    """BERT's next-sentence prediction with MLM, ``next_sentence_label`` (1 = B is random) for
    ``BertForPreTraining``. Reads ``sentence_start`` and another document's
    ``random_input_ids``/``random_word_start`` (:func:`ptobj.hf.preprocess.add_random_segments`).
    Config: :class:`ptobj.objectives.sentence_pairs.NSPConfig`."""

    objective = "nsp"
    label_names = {"nsp_label": "next_sentence_label"}


class UniLMCollator(ObjectiveCollator):
    """UniLM's four modes (bidirectional, left-to-right, right-to-left, seq2seq) for
    ``BertForMaskedLM``: the modes' row intervals as a 4-D attention mask, which BERT takes
    as it is, and the LM ids as ``token_type_ids`` (0..5: the model needs
    ``type_vocab_size >= 6``). Config: :class:`ptobj.objectives.unilm.UniLMConfig`."""

    objective = "unilm"
    needs = _ENCODER
    num_token_types = 6

    def mask_kind(self):
        return "intervals"


# ------------------------------------------------------------------------------------------ decoders


class FIMCollator(ObjectiveCollator):
    """Fill-in-the-middle on packed contexts of ``seq_length + 1`` ids (documents joined by the
    tokenizer's eos: :func:`ptobj.hf.preprocess.pack_contexts`), for causal LMs (Llama, GPT-2).
    The tokenizer needs ``<fim_prefix>``, ``<fim_middle>``, ``<fim_suffix>``, ``<fim_pad>``
    (:func:`ptobj.hf.tokens.add_fim_tokens`) and must be lossless (``decode(encode(t)) == t``:
    byte-level BPE is; FIM re-encodes the text around its cuts). With ``document_masking``
    (the default) each document attends within itself and positions restart: a 4-D mask and
    ``position_ids``; ``document_masking=False`` gives the plain causal mask (2-D).
    Config: :class:`ptobj.objectives.fim.FIMConfig`."""

    objective = "fim"
    layout = "decoder"
    needs = ("eot", "fim_prefix", "fim_middle", "fim_suffix", "fim_pad")

    def mask_kind(self):
        return "intervals" if self.config.document_masking else "causal"


class CausalLMCollator(FIMCollator):
    """The causal LM baseline on the same packed contexts (FIM's layout, no FIM).
    Config: :class:`ptobj.objectives.causal_lm.CausalLMConfig`."""

    objective = "causal_lm"
    needs = ("eot",)


class Seq2SeqCollator(ObjectiveCollator):
    """T5 span corruption (``objective="t5"``, on packed contexts like FIM's) or MASS
    (``"mass"``, on segments) for ``layout="encoder_decoder"`` models (``T5ForConditionalGeneration``,
    ``BartForConditionalGeneration``: the source, ending in eos, to the encoder; the target to
    ``labels``), or ``layout="decoder"`` (one causal LM, the prefix-LM 4-D mask: source
    bidirectional, target causal). T5 needs ``<extra_id_i>`` sentinels
    (:func:`ptobj.hf.tokens.add_sentinel_tokens`), MASS a mask token.
    Config: :class:`ptobj.objectives.t5.T5Config`, :class:`ptobj.objectives.mass.MASSConfig`."""

    def __init__(self, tokenizer, *, objective: str = "t5", layout: str = "encoder_decoder", **kw):
        if objective not in ("t5", "mass"):
            raise ValueError(f"Seq2SeqCollator: objective must be 't5' or 'mass', got {objective!r}")
        if layout not in ("encoder_decoder", "decoder"):
            raise ValueError(f"Seq2SeqCollator: layout must be 'encoder_decoder' or 'decoder', got {layout!r}")
        self.objective, self.layout = objective, layout
        super().__init__(tokenizer, **kw)

    def required(self):
        return ("eot", "pad") + (("mask",) if self.objective == "mass" else ()) + \
            (("sep",) if self.layout == "decoder" else ())

    def mask_kind(self):
        return "intervals" if self.layout == "decoder" else "padding"


class PrecomputedCollator:
    """Stacks rows that :func:`ptobj.hf.preprocess.apply_objective` wrote (equal widths) into
    tensors; a row's ``kv_start``/``kv_end`` become the 4-D attention mask."""

    def __init__(self, mask_dtype=torch.float32):
        self.mask_dtype = mask_dtype

    def __call__(self, features) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("PrecomputedCollator: no features to collate")
        fields = {k: np.stack([np.asarray(x[k]) for x in features]) for k in features[0] if k != "index"}
        out = {k: torch.as_tensor(v) for k, v in fields.items() if k not in ("kv_start", "kv_end")}
        if "kv_start" in fields:
            out["attention_mask"] = interval_mask(fields["kv_start"], fields["kv_end"], self.mask_dtype)
        return out
