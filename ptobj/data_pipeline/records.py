"""Records (conversations, ranked responses) from Hugging Face ``datasets`` -> rows a transform reads.

Fine-tuning objectives (SFT, reward models; see :mod:`ptobj.objectives.sft`,
:mod:`ptobj.objectives.reward`) read whole records rather than a token stream:

* ``records.source``: a local ``.jsonl`` / ``.json`` / ``.parquet`` file, a
  Hugging Face hub dataset name (needs internet), or ``embedded:NAME`` for the
  small sets shipped in ``ptobj/data_pipeline/records_data/`` (``sft_tiny``,
  ``rm_tiny``) that run on CPU with no download;
* a *conversation* record has ``messages`` (a list of ``{role, content}``) or
  ``prompt`` + ``response`` columns (-> ``[user: prompt, assistant: response]``);
* a *ranked* record has ``prompt`` (text, or a list of messages) and either
  ``responses`` (2 to 9 texts, best first) or ``chosen`` + ``rejected`` (K = 2).

The column names are settings. A record is held out when the hash of its
content falls under ``valid_fraction`` (as corpus documents are,
:func:`ptobj.data_pipeline.corpus.is_valid_document`), so the split does not depend
on the order of the file.

:class:`RecordSampler` holds the records as the transform encodes them
(``transform.encode_record``) and serves rows of ``length`` ids: whole records
packed one after the other (``packs_records``: SFT) or one record per row (a
reward model's prompt), the rest padded. Packing happens once, in an order
drawn from the seed; each epoch reads the rows in its own order. A record
longer than a row is cut to the row (packed) or refused, naming it (one per row:
a cut would lose the responses' ends).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ptobj.data_pipeline.corpus import CorpusError, is_valid_document
from ptobj.objectives import streams
from ptobj.extras import require
from ptobj.objectives.sample import SpecialTokens

EMBEDDED_DIR = Path(__file__).parent / "records_data"
_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class RecordsConfig:
    source: str = ""
    split: str = "train"        # hub datasets only
    subset: str = ""            # hub datasets only
    valid_fraction: float = 0.1
    max_records: int = 0        # 0 = all
    messages_field: str = "messages"
    prompt_field: str = "prompt"
    response_field: str = "response"
    responses_field: str = "responses"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"

    def __post_init__(self):
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"records.valid_fraction must lie in [0, 1), got {self.valid_fraction!r}")
        if self.max_records < 0:
            raise ValueError(f"records.max_records must be >= 0, got {self.max_records!r}")


def _builder(cfg: RecordsConfig) -> tuple[str, dict, str]:
    """(datasets builder, its keyword arguments, a label naming the source)."""
    if not cfg.source:
        raise CorpusError("data.records.source: empty; name a .jsonl/.json/.parquet file, a hub dataset or "
                          f"embedded:NAME ({', '.join(embedded_names())})")
    if cfg.source.startswith("embedded:"):
        name = cfg.source.removeprefix("embedded:")
        path = EMBEDDED_DIR / f"{name}.jsonl"
        if not path.is_file():
            raise CorpusError(f"data.records.source: no embedded record set {name!r}; known: {embedded_names()}")
    else:
        path = Path(cfg.source).expanduser()
    suffix = path.suffix.lower()
    if path.exists() or suffix in _FILE_BUILDERS or cfg.source.startswith(("/", ".", "~", "embedded:")):
        if not path.is_file():
            raise CorpusError(f"records file {path} does not exist (or is not a file)")
        if suffix not in _FILE_BUILDERS:
            raise CorpusError(f"records file {path}: unsupported suffix {suffix!r}; use {sorted(_FILE_BUILDERS)}")
        return _FILE_BUILDERS[suffix], {"data_files": str(path.resolve()), "split": "train"}, str(path)
    kwargs = {"split": cfg.split, **({"name": cfg.subset} if cfg.subset else {})}
    return cfg.source, kwargs, cfg.source


def embedded_names() -> list[str]:
    return sorted(p.stem for p in EMBEDDED_DIR.glob("*.jsonl"))


def load_records(cfg: RecordsConfig, cache_dir: str | None = None) -> tuple[list[dict], str]:
    """The raw records (dicts) of ``cfg.source`` and a label naming it."""
    require("data", "datasets", by=__name__)
    import datasets

    builder, kwargs, label = _builder(cfg)
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(builder, cache_dir=cache_dir, **kwargs)
    except Exception as exc:  # datasets raises many types; name the input either way
        raise CorpusError(f"cannot read records {label}: {type(exc).__name__}: {exc}") from exc
    rows = ds.to_list()
    if cfg.max_records:
        rows = rows[: cfg.max_records]
    if not rows:
        raise CorpusError(f"records {label}: no records")
    return rows, label


def _text(row: dict, field: str, where: str) -> str:
    value = row.get(field)
    if not isinstance(value, str):
        raise CorpusError(f"{where}.{field}: expected text, got {type(value).__name__}")
    return value


def conversation(row: dict, cfg: RecordsConfig, where: str) -> list[dict]:
    """A record as a list of messages (``messages``, or ``prompt`` + ``response``)."""
    if row.get(cfg.messages_field) is not None:
        messages = row[cfg.messages_field]
        if not isinstance(messages, list):
            raise CorpusError(f"{where}.{cfg.messages_field}: expected a list of messages, got "
                              f"{type(messages).__name__}")
        return [{"role": m.get("role"), "content": m.get("content")} if isinstance(m, dict) else m
                for m in messages]
    if row.get(cfg.prompt_field) is not None or row.get(cfg.response_field) is not None:
        return [{"role": "user", "content": _text(row, cfg.prompt_field, where)},
                {"role": "assistant", "content": _text(row, cfg.response_field, where)}]
    raise CorpusError(f"{where}: a conversation record needs {cfg.messages_field!r} or {cfg.prompt_field!r} + "
                      f"{cfg.response_field!r}; it has {sorted(k for k, v in row.items() if v is not None)}")


def ranked(row: dict, cfg: RecordsConfig, where: str) -> tuple[list[dict], list[str]]:
    """A record as (prompt messages, responses best first)."""
    prompt = row.get(cfg.prompt_field)
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    elif not isinstance(prompt, list) or not prompt:
        raise CorpusError(f"{where}.{cfg.prompt_field}: expected text or a list of messages, got {prompt!r}")
    if row.get(cfg.responses_field) is not None:
        responses = row[cfg.responses_field]
        if not isinstance(responses, list):
            raise CorpusError(f"{where}.{cfg.responses_field}: expected a list of texts (best first), got "
                              f"{type(responses).__name__}")
    elif row.get(cfg.chosen_field) is not None:
        responses = [_text(row, cfg.chosen_field, where), _text(row, cfg.rejected_field, where)]
    else:
        raise CorpusError(f"{where}: a ranked record needs {cfg.responses_field!r} (best first) or "
                          f"{cfg.chosen_field!r} + {cfg.rejected_field!r}")
    return prompt, responses


READERS: dict[str, Callable] = {"conversation": conversation, "ranked": ranked}


def split_records(rows: Sequence[dict], valid_fraction: float) -> tuple[list[int], list[int]]:
    """(train, held-out) record indices: held out when the hash of the record's content falls
    under ``valid_fraction``."""
    train, valid = [], []
    for i, row in enumerate(rows):
        text = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
        (valid if is_valid_document(text, valid_fraction) else train).append(i)
    return train, valid


def encode_records(rows: Sequence[dict], indices: Sequence[int], transform, tokenizer, cfg: RecordsConfig,
                   label: str) -> list[dict]:
    """The records ``indices`` as ``transform.encode_record`` encodes them (errors name the record)."""
    kind = getattr(transform, "record_kind", None)
    if kind not in READERS:
        raise ValueError(f"{type(transform).__name__} reads no records (record_kind {kind!r}; known: {sorted(READERS)})")
    read = READERS[kind]
    out = []
    for i in indices:
        where = f"records {label}: record {i}"
        try:
            out.append(transform.encode_record(read(rows[i], cfg, where), tokenizer.encode, where))
        except ValueError as exc:
            raise CorpusError(str(exc)) from None
    return out


class RecordSampler:
    """Rows of ``length`` ids from encoded records (see the module doc): ``read(epoch, index)``
    -> ``{field: [B, length]}``, the fields of the encoded records (``tokens`` padded with
    ``special.pad``, the others with ``fill[field]``, default 0)."""

    def __init__(self, encoded: Sequence[dict], length: int, *, pack: bool, seed: int = 0, shuffle: bool = True,
                 special: SpecialTokens | None = None, fill: dict | None = None, label: str = "records",
                 record_ids: Sequence[int] | None = None):
        if not encoded:
            raise CorpusError(f"{label}: no records to sample")
        self.length, self.seed, self.shuffle = int(length), int(seed), shuffle
        special = special or SpecialTokens()
        self.fields = list(encoded[0])
        self.fill = {f: (special.pad if f == "tokens" else int((fill or {}).get(f, 0))) for f in self.fields}
        self.truncated = 0
        records = []
        for i, r in enumerate(encoded):
            n = len(r["tokens"])
            if n > self.length:
                if not pack:
                    rid = i if record_ids is None else record_ids[i]
                    raise CorpusError(f"{label}: record {rid} needs {n} ids, a row holds {self.length} "
                                      "(raise data.seq_length or shorten the record)")
                self.truncated += 1
                r = {f: np.asarray(v)[: self.length] for f, v in r.items()}
            records.append(r)
        self.records = records
        order = streams.generator("sampler.pick", self.seed).permutation(len(records)) if shuffle \
            else np.arange(len(records))
        self.rows: list[list[int]] = []
        fill_level = self.length
        for i in order.tolist():
            n = len(records[i]["tokens"])
            if not pack or fill_level + n > self.length:
                self.rows.append([])
                fill_level = 0
            self.rows[-1].append(i)
            fill_level += n

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, epoch, index, fields=None) -> dict[str, np.ndarray]:
        epoch, index = np.asarray(epoch, np.int64).reshape(-1), np.asarray(index, np.int64).reshape(-1)
        if epoch.shape != index.shape:
            epoch, index = np.broadcast_arrays(epoch, index)
        if index.size and (index.min() < 0 or index.max() >= len(self.rows) or epoch.min() < 0):
            raise IndexError(f"RecordSampler: index out of range; {len(self.rows)} rows per epoch")
        out = {f: np.full((index.size, self.length), self.fill[f], np.int32) for f in self.fields}
        orders: dict[int, np.ndarray] = {}
        for b, (e, i) in enumerate(zip(epoch.tolist(), index.tolist())):
            if e not in orders:
                orders[e] = streams.generator("sampler.order", self.seed, e).permutation(len(self.rows)) \
                    if self.shuffle else np.arange(len(self.rows))
            pos = 0
            for r in self.rows[int(orders[e][i])]:
                rec = self.records[r]
                n = len(rec["tokens"])
                for f in self.fields:
                    out[f][b, pos : pos + n] = rec[f]
                pos += n
        return out

    def sample(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        return {f: v[0] for f, v in self.read([epoch], [index]).items()}
