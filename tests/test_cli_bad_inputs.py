"""Bad inputs to ``ptobj train``, generated: each ends in one line naming the field or file and
exit status 2; never a traceback, never a run folder or prepared dataset left behind.

Seeded and bounded: every leaf of the config tree gets values of the wrong type, negative and
out-of-range numbers (a sample of them, ``CASES`` in all), plus missing, unreadable (a folder
where a file belongs), empty and binary files, unknown keys and objective settings that
contradict the objective's declaration. Runs in-process through ``ptobj.recipes.train.main``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import random
import types
import typing
from pathlib import Path

import pytest

from conftest import TINY_CORPUS, TINY_TOKENIZER
from ptobj.recipes.engine.train_config import TrainConfig
from ptobj.recipes.train import main

CASES = 240          # generated field cases (the file, key and objective cases come on top)
RECIPE = "gpt_fim_tiny"


def leaves(cls, prefix=""):
    """(dotted key, type) of every leaf field of a config dataclass tree."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, key = hints[f.name], prefix + f.name
        if dataclasses.is_dataclass(tp):
            yield from leaves(tp, key + ".")
        else:
            yield key, tp


def bare(tp):
    """``X | None`` -> X."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def bad_values(tp) -> list[str]:
    """Values no field of type ``tp`` may take (as given on the command line)."""
    tp = bare(tp)
    origin = typing.get_origin(tp)
    if tp is int:
        return ["abc", "1.5", "[1, 2]", "{a: 1}", "true", "-1", "-7", str(2**64), "1e30", "inf"]
    if tp is float:
        return ["abc", "[0.1]", "{a: 1}", "nan", "-inf", "inf", "1e400", "-1", "-0.5"]
    if tp is bool:
        return ["maybe", "2", "[true]", "{a: 1}"]
    if origin is typing.Literal:
        return ["nonsense", "[1]"]
    if origin in (dict, typing.Mapping) or tp is dict:
        return ["5", "[1, 2]", "abc"]
    if origin in (list, tuple):
        return ["5", "{a: 1}"]
    return []                                   # str and Any: every string is a string


def field_cases(rng: random.Random) -> list[tuple[list[str], list[str]]]:
    every = [([f"{key}={v}"], [key.rsplit(".", 1)[-1]]) for key, tp in leaves(TrainConfig) for v in bad_values(tp)]
    assert len(every) > CASES
    return rng.sample(every, CASES)


def file_cases(tmp: Path) -> list[tuple[list[str], list[str]]]:
    (tmp / "folder").mkdir()
    (tmp / "empty.jsonl").write_text("")
    (tmp / "blank.jsonl").write_text("\n\n   \n")
    (tmp / "blank_text.jsonl").write_text('{"text": ""}\n{"text": "   "}\n')
    (tmp / "not_json.jsonl").write_text("this is not json\n{also not\n")
    (tmp / "no_column.jsonl").write_text('{"body": "def f():\\n    return 1\\n"}\n' * 20)
    (tmp / "binary.jsonl").write_bytes(bytes(random.Random(1).randrange(256) for _ in range(4096)))
    (tmp / "binary.txt").write_bytes(b"\xff\xfe\x00" * 2000)
    (tmp / "garbage.parquet").write_bytes(b"PAR1" + b"\x00" * 64)
    (tmp / "tok.model").write_bytes(b"not a sentencepiece model")
    src, tok, init = "data.corpus.source", "data.tokenizer.model_path", "init_from"
    out = [([f"{src}={tmp / name}"], [name]) for name in
           ("missing.jsonl", "empty.jsonl", "blank.jsonl", "blank_text.jsonl", "not_json.jsonl", "no_column.jsonl",
            "binary.jsonl", "binary.txt", "garbage.parquet")]
    out += [([f"{src}={tmp / 'folder'}"], ["folder"]),
            ([f"{tok}={tmp / 'missing' / 'tok.model'}"], ["tok.model"]),
            ([f"{tok}={tmp / 'folder'}"], ["folder"]),
            ([f"{tok}={tmp / 'tok.model'}"], ["tok.model"]),
            ([f"{init}={tmp / 'no_run'}"], ["no_run"]),
            ([f"{init}={tmp / 'folder'}"], ["folder"]),
            ([f"{src}=nosuch-embedded-name"], ["nosuch-embedded-name"])]
    return out


def key_and_objective_cases(rng: random.Random) -> list[tuple[list[str], list[str]]]:
    keys = [key for key, _ in leaves(TrainConfig)]
    unknown = []
    for _ in range(20):
        parent = rng.choice(keys).rsplit(".", 1)[0] if rng.random() < 0.8 else ""
        name = rng.choice(["lrr", "stepz", "foo", "hidden", "x_y", "seq_len"])
        key = f"{parent}.{name}" if parent and "." in rng.choice(keys) else name
        unknown.append(([f"{key}=1"], [name]))
    objective = [
        (["model.kind=encoder"], ["model.kind"]),
        (["model.heads={sop: sequence}"], ["model.heads"]),
        (["objective.loss_weights.sbo=1"], ["sbo"]),
        (["objective.loss_weights.lm=-1"], ["lm"]),
        (["objective.name=no_such_objective"], ["no_such_objective"]),
        (["objective.config.fim_rate=2"], ["fim_rate"]),
        (["objective.config.no_such_field=1"], ["no_such_field"]),
        (["objective.config.spm_rate=abc"], ["spm_rate"]),
        (["objective.name=mlm"], ["objective"]),                    # another objective, the recipe's settings
        (["eval.suites.x={name: mlm}"], ["eval.suites.x"]),
        (["objective.tag_field=tag"], ["tag_field"]),
        (["init_step=3"], ["init_step"]),
    ]
    return unknown + objective


@pytest.fixture(scope="module")
def base(tiny_corpus):
    corpus, tokenizer, cache = tiny_corpus
    return [f"data.corpus.{k}={v}" for k, v in dataclasses.asdict(corpus).items() if v is not None
            and k in TINY_CORPUS] + [f"data.tokenizer.{k}={v}" for k, v in TINY_TOKENIZER.items()] + [
        f"data.cache_dir={cache}", "data.seq_length=64", "schedule.train_steps=2", "schedule.warmup_steps=1",
        "schedule.micro_batch_size=4", "logging.progress_bar=false", "logging.tensorboard=false",
        "eval.batches=1", "eval.infill.enabled=false"]


def run_main(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def test_the_base_run_is_accepted(base, tmp_path):
    """The cases below fail by their one bad override, not by the base."""
    code, err = run_main([RECIPE, *base, f"logging.run_dir={tmp_path / 'run'}", "schedule.train_steps=1"])
    assert code == 0, err
    assert (tmp_path / "run" / "final_metrics.json").is_file()


def test_bad_inputs_end_in_one_line_naming_the_field_or_file(base, tmp_path):
    rng = random.Random(20261207)
    files = tmp_path / "files"
    files.mkdir()
    cases = field_cases(rng) + file_cases(files) + key_and_objective_cases(rng)
    problems = []
    for i, (overrides, names) in enumerate(cases):
        run_dir, cache = tmp_path / f"run{i}", tmp_path / f"cache{i}"
        own_cache = any(o.startswith(("data.corpus.source=", "data.tokenizer.model_path=")) for o in overrides)
        argv = [RECIPE, *base, f"logging.run_dir={run_dir}", *([f"data.cache_dir={cache}"] if own_cache else []),
                *overrides]
        code, err = run_main(argv)
        lines = [line for line in err.splitlines() if line.strip()]
        last = lines[-1] if lines else ""
        why = []
        if code != 2:
            why.append(f"exit {code}")
        if "Traceback" in err:
            why.append("a traceback")
        if not last.startswith(("config error: ", "corpus error: ", "checkpoint error: ")):
            why.append("no error line")
        if not any(n in last for n in names):
            why.append(f"the line names none of {names}")
        if run_dir.exists():
            why.append("a run folder was written")
        partial = [p.name for p in cache.iterdir() if p.name != ".hf-cache" and not (p / "manifest.json").is_file()] \
            if own_cache and cache.exists() else []      # .hf-cache: the datasets library's own download cache
        if partial:
            why.append(f"a half-written dataset: {partial}")
        if why:
            problems.append(f"{overrides}: {', '.join(why)}: {last[:300] or err[-600:]}")
    assert len(cases) > 250
    assert not problems, f"{len(problems)} of {len(cases)} bad inputs:\n" + "\n".join(problems)
