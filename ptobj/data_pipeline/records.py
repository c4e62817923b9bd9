"""Records (conversations, ranked responses) from Hugging Face ``datasets`` -> rows a transform reads.

Fine-tuning objectives (SFT, reward models; see :mod:`ptobj.objectives.sft`,
:mod:`ptobj.objectives.reward`) read whole records rather than a token stream:

* ``records.source``: a local ``.jsonl`` / ``.json`` / ``.parquet`` file, a
  Hugging Face hub dataset name (needs internet; without it, or with
  ``HF_HUB_OFFLINE=1`` and no cached copy, the error names the dataset and how to
  point at a local copy), or ``embedded:NAME`` for the small sets shipped in
  ``ptobj/data_pipeline/records_data/`` (``sft_tiny``, ``rm_tiny``, the
  instruction miniature ``flan_tiny/...``) that run on CPU with no download;
* or ``records.mixture``: several datasets phrased through instruction templates
  and mixed (:mod:`ptobj.data_pipeline.mixture`, :mod:`ptobj.data_pipeline.instructions`);
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
a cut would lose the responses' ends). A subclass may make each record anew for
every epoch (:meth:`RecordSampler.record`: an instruction mixture draws a template
per epoch), packing by an upper bound of each record's length.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlparse

import numpy as np

from ptobj.data_pipeline.corpus import CorpusError, is_valid_document
from ptobj.data_pipeline.mixture import MixtureConfig
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
    # instead of source: instruction datasets mixed (ptobj.data_pipeline.mixture); valid_fraction
    # holds out that fraction of each training dataset's records
    mixture: MixtureConfig | None = None

    def __post_init__(self):
        if self.mixture is not None and self.source:
            raise ValueError(f"records: give source ({self.source!r}) or mixture, not both")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"records.valid_fraction must lie in [0, 1), got {self.valid_fraction!r}")
        if self.max_records < 0:
            raise ValueError(f"records.max_records must be >= 0, got {self.max_records!r}")


def embedded_path(source: str, where: str = "data.records.source") -> Path:
    """The file of ``embedded:NAME`` (``records_data/NAME.jsonl``; NAME may hold a folder)."""
    name = source.removeprefix("embedded:")
    path = (EMBEDDED_DIR / f"{name}.jsonl").resolve()
    if not path.is_relative_to(EMBEDDED_DIR.resolve()) or not path.is_file():
        raise CorpusError(f"{where}: no embedded record set {name!r}; known: {embedded_names()}")
    return path


def _builder(cfg: RecordsConfig, where: str = "data.records.source") -> tuple[str, dict, str]:
    """(datasets builder, its keyword arguments, a label naming the source)."""
    if not cfg.source:
        raise CorpusError(f"{where}: empty; name a .jsonl/.json/.parquet file, a hub dataset or "
                          f"embedded:NAME ({', '.join(embedded_names())})")
    if cfg.source.startswith("embedded:"):
        path = embedded_path(cfg.source, where)
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
    return sorted(p.relative_to(EMBEDDED_DIR).with_suffix("").as_posix() for p in EMBEDDED_DIR.rglob("*.jsonl"))


_TRUE = ("1", "true", "yes", "on")


def hub_offline() -> bool:
    """Hugging Face's own offline switches (``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE``) are on."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached from here, or None when a connection opens (or goes
    through a proxy, which is not probed). One TCP connection, nothing sent."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"no connection to {host}:{port}: {exc.strerror or exc}"
    return None


def hub_hint(cfg: RecordsConfig, where: str) -> str:
    """How to use a hub dataset without the hub: a local copy named by ``where``."""
    args = ", ".join([repr(cfg.source), *([repr(cfg.subset)] if cfg.subset else []), f"split={cfg.split!r}"])
    stem = cfg.source.rsplit("/", 1)[-1] + (f"_{cfg.subset}" if cfg.subset else "") + f"_{cfg.split}"
    return (f"download it where the hub is reachable (python -c \"import datasets; datasets.load_dataset({args})"
            f".to_json('{stem}.jsonl')\") and set {where} to that file (.jsonl/.json/.parquet), or set "
            "HF_HUB_OFFLINE=1 to read a copy the datasets cache already holds (under data.cache_dir/records)")


def load_records(cfg: RecordsConfig, cache_dir: str | None = None,
                 where: str = "data.records.source") -> tuple[list[dict], str]:
    """The raw records (dicts) of ``cfg.source`` and a label naming it. A hub dataset fails at
    once when the hub cannot be reached, naming it and ``where`` (the field to point at a local copy)."""
    require("data", "datasets", by=__name__)
    builder, kwargs, label = _builder(cfg, where)
    hub = builder == cfg.source
    if hub and not hub_offline():
        why = hub_unreachable()
        if why is not None:
            raise CorpusError(f"{where}: {label!r} is a Hugging Face hub dataset and the hub cannot be reached "
                              f"({why}); nothing was read. To run without the hub, {hub_hint(cfg, where)}")
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(builder, cache_dir=cache_dir, **kwargs)
    except Exception as exc:  # datasets raises many types; name the input either way
        hint = f". To run without the hub, {hub_hint(cfg, where)}" if hub else ""
        raise CorpusError(f"cannot read records {label} ({where}): {type(exc).__name__}: {exc}{hint}") from exc
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
        self.records = list(encoded)
        self._setup([len(r["tokens"]) for r in self.records], list(encoded[0]), length, pack=pack, seed=seed,
                    shuffle=shuffle, special=special, fill=fill, label=label, record_ids=record_ids)

    def _setup(self, lengths: Sequence[int], fields: list[str], length: int, *, pack: bool, seed: int,
               shuffle: bool, special: SpecialTokens | None, fill: dict | None, label: str,
               record_ids: Sequence[int] | None) -> None:
        """Pack records of (at most) ``lengths`` ids into rows, once, in an order drawn from the seed."""
        self.length, self.seed, self.shuffle = int(length), int(seed), shuffle
        special = special or SpecialTokens()
        self.fields = list(fields)
        self.fill = {f: (special.pad if f == "tokens" else int((fill or {}).get(f, 0))) for f in self.fields}
        self.truncated = 0
        sizes = []
        for i, n in enumerate(lengths):
            if n > self.length:
                if not pack:
                    rid = i if record_ids is None else record_ids[i]
                    raise CorpusError(f"{label}: record {rid} needs {n} ids, a row holds {self.length} "
                                      "(raise data.seq_length or shorten the record)")
                self.truncated += 1
            sizes.append(min(int(n), self.length))
        order = streams.generator("sampler.pick", self.seed).permutation(len(sizes)) if shuffle \
            else np.arange(len(sizes))
        self.rows: list[list[int]] = []
        fill_level = self.length
        for i in order.tolist():
            n = sizes[i]
            if not pack or fill_level + n > self.length:
                self.rows.append([])
                fill_level = 0
            self.rows[-1].append(i)
            fill_level += n

    def record(self, r: int, epoch: int) -> dict:
        """Record ``r`` as epoch ``epoch`` reads it (here: the same in every epoch)."""
        return self.records[r]

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
                rec = self.record(r, e)
                n = min(len(rec["tokens"]), self.length - pos)
                for f in self.fields:
                    out[f][b, pos : pos + n] = np.asarray(rec[f])[:n]
                pos += n
        return out

    def sample(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        return {f: v[0] for f, v in self.read([epoch], [index]).items()}
