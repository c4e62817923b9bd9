"""Packaging: one import package, ``ptobj``; the base install is numpy alone and runs every
objective; extras bring the rest.

* Every third-party import in the packages is guarded by ``ptobj.extras.require``
  naming an extra that declares it (so a missing extra is named, never a bare
  ``ModuleNotFoundError``), read from the source, so a new import without its extra fails here.
* The wheel, built from the checkout's files and installed without extras into a fresh
  virtual environment outside the checkout, holds exactly numpy besides itself, runs every
  registered objective on a literal sample, and names the extra when a module needs one.
* The wheel carries every non-Python file of the package (recipe and data configs,
  launch scripts), installs one top-level name (``ptobj``) and the ``ptobj`` command.
* The wheel with ``[train]``, installed outside the checkout beside transformers and Hugging
  Face's own ``kernels`` package (the name that once collided with ours), trains two steps
  of ``gpt_fim_tiny`` through the command line, exports the run, and
  ``AutoModelForCausalLM`` gives our logits.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ptobj.objectives import registry
from ptobj.extras import DISTRIBUTION, MissingExtra, require

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE = "ptobj"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(req: str) -> str:
    return _norm(re.match(r"[A-Za-z0-9._-]+", req).group(0))


def _extra_closure(extra: str) -> set[str]:
    """Distribution names an extra brings, following ``pretrain-objectives[other]``."""
    out: set[str] = set()
    for req in PYPROJECT["project"]["optional-dependencies"][extra]:
        name = _req_name(req)
        if name == _norm(DISTRIBUTION):
            for inner in re.search(r"\[(.*?)\]", req).group(1).split(","):
                out |= _extra_closure(inner.strip())
        else:
            out.add(name)
    return out


# ---- every optional import is guarded by the extra that declares it ----------------------
def _imports_and_guards(path: Path):
    """(top-level third-party imports not inside a ``try: ... except ImportError``,
    [(extra, module)] from ``require`` calls) of one file."""
    tree = ast.parse(path.read_text(), str(path))
    optional: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            optional |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    imports, guards = set(), []
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            imports |= {a.name.partition(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imports.add(node.module.partition(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require":
            extra, *mods = [a.value for a in node.args]
            guards += [(extra, m) for m in mods]
    base = {_req_name(r).replace("-", "_") for r in PYPROJECT["project"]["dependencies"]}
    third = {m for m in imports if m not in sys.stdlib_module_names and m != PACKAGE and m not in base
             and m != "__future__"}
    return third, guards


def test_every_third_party_import_is_guarded_by_its_extra():
    dists = importlib.metadata.packages_distributions()
    extras = PYPROJECT["project"]["optional-dependencies"]
    problems = []
    files = sorted((ROOT / PACKAGE).rglob("*.py"))
    assert len(files) > 20, files
    guards_of = {p: _imports_and_guards(p) for p in files}
    checked = 0
    for path, (imports, guards) in guards_of.items():
        rel = path.relative_to(ROOT)
        # a package's __init__ guards every module below it
        covered = {m for _, m in guards}
        for parent in rel.parents[:-1]:
            init = ROOT / parent / "__init__.py"
            if init != path and init in guards_of:
                covered |= {m for _, m in guards_of[init][1]}
        problems += [f"{rel}: imports {m} without require(<extra>, {m!r}, ...)" for m in sorted(imports - covered)]
        for extra, module in guards:
            checked += 1
            if extra not in extras:
                problems.append(f"{rel}: require({extra!r}, ...): no such extra in pyproject.toml")
                continue
            provides = {_norm(d) for d in dists.get(module, [])}
            if not provides:
                problems.append(f"{rel}: {module} is not installed here, so its extra cannot be checked")
            elif not provides & _extra_closure(extra):
                problems.append(f"{rel}: {module} comes from {sorted(provides)}, which the {extra!r} extra lacks")
    assert checked >= 10, checked
    assert not problems, "\n".join(problems)


def test_require_names_the_extra_and_the_missing_module():
    require("train", "numpy", by="here")  # installed: nothing happens
    with pytest.raises(MissingExtra, match=re.escape(f"pip install '{DISTRIBUTION}[data]'")) as info:
        require("data", "numpy", "surely_not_a_module_name", by="here")
    assert info.value.name == "surely_not_a_module_name" and "here needs surely_not_a_module_name" in str(info.value)
    assert isinstance(info.value, ModuleNotFoundError)


# ---- the wheel, installed alone ----------------------------------------------------------
def _source_files() -> list[str]:
    """Files a build sees: tracked or untracked-but-not-ignored, in the packages and the project files."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--",
                          "pyproject.toml", "README.md", PACKAGE],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return sorted(f for f in out.split("\0") if f and (ROOT / f).is_file())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the checkout's files (no stale build/ directory can leak in)."""
    src = tmp_path_factory.mktemp("src")
    for f in _source_files():
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(out), str(src)], check=True, capture_output=True, text=True)
    (whl,) = out.glob("*.whl")
    return whl


def test_wheel_carries_every_data_file_of_the_package(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    data = [f for f in _source_files() if f.startswith(PACKAGE + "/") and not f.endswith(".py")]
    assert any(f.startswith("ptobj/recipes/configs/") for f in data) and any(f.startswith("ptobj/data_pipeline/configs/") for f in data)
    assert any(f.startswith("ptobj/recipes/experiments/") for f in data) and any("/launch/" in f for f in data)
    assert [f for f in data if f not in names] == []
    with zipfile.ZipFile(wheel) as z:
        assert all(z.read(f) == (ROOT / f).read_bytes() for f in data)
        py = [f for f in _source_files() if f.startswith(PACKAGE + "/") and f.endswith(".py")]
        assert [f for f in py if f not in names] == []
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    always = [line for line in meta.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert [_req_name(line.split(":", 1)[1].strip()) for line in always] == ["numpy"], always


def test_wheel_installs_one_top_level_name_and_the_command(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/RECORD"))
        record = z.read(f"{info}/RECORD").decode().splitlines()
        top_level = z.read(f"{info}/top_level.txt").decode().split() if f"{info}/top_level.txt" in names else None
        entry_points = z.read(f"{info}/entry_points.txt").decode()
    tops = {line.split(",")[0].split("/")[0] for line in record if line}
    assert tops == {PACKAGE, info}, sorted(tops)
    assert top_level in (None, [PACKAGE]), top_level
    assert re.search(r"^ptobj = ptobj\.cli:main$", entry_points, re.M), entry_points


BASE_CHECK = r'''
import importlib, importlib.metadata, json, sys
import numpy as np

from ptobj import objectives
from ptobj.objectives import CONTRACT_FIELDS, registry


class ByteTokenizer:
    """Lossless bytes: byte b is id first_regular + b (what FIM needs: encode, decode)."""

    def __init__(self, first_regular):
        self.off, self.vocab_size = first_regular, first_regular + 256

    def encode(self, text):
        return [b + self.off for b in text.encode("utf-8")]

    def decode(self, ids):
        return bytes(i - self.off for i in ids if self.off <= i < self.vocab_size).decode("utf-8", "replace")


S = 64
special = objectives.SpecialTokens()
tok = ByteTokenizer(special.first_regular)
a = tok.encode("we add a and b to get c, then we add c and d to get e. it is the sum of all.")
b = tok.encode("print the sum of a b c d e at the end")
ctx = np.array((a + [special.eot] + b)[: S + 1], np.int32)     # packed context (decoders); encoders cut it
starts = lambda ids: np.array([i == 0 or ids[i - 1] == tok.off + 32 for i in range(len(ids))], bool)
raw = {"tokens": ctx, "word_start": starts(ctx), "sentence_start": np.isin(np.arange(len(ctx)), [0, len(a) + 1]),
       "random_tokens": np.array(b, np.int32), "random_word_start": starts(b)}
ran = {}
for name in registry.names():
    fields = {f.name for f in __import__("dataclasses").fields(registry.config_class(name))}
    cfg = registry.make_config(name, {"seq_length": S} if "seq_length" in fields else {})
    # the reserved ids plus the span sentinels the objective declares, after the vocabulary
    run_special = special.with_sentinels(tok.vocab_size, registry.task(name).sentinels_for(cfg))
    t = registry.build(name, cfg, special=run_special, vocab_size=tok.vocab_size, tokenizer=tok)
    if hasattr(t, "encode_record"):          # objectives that read records (SFT, reward model): one, padded
        record = {"conversation": [{"role": "user", "content": "add a and b"}, {"role": "assistant", "content": "c"}],
                  "ranked": ([{"role": "user", "content": "add a and b"}], ["c", "d"])}[t.record_kind]
        fill = getattr(t, "record_fill", {})
        sample = {f: np.pad(v, (0, S + 1 - len(v)), constant_values=0 if f == "tokens" else fill.get(f, 0))
                  for f, v in t.encode_record(record, tok.encode).items()}
    else:
        unknown = [f for f in t.reads if f not in raw]
        assert not unknown, f"{name} reads {unknown}: give this check a literal for it"
        sample = {f: raw[f] for f in t.reads}
    targets = 0
    for index in range(4):                   # a row may draw no target; four rows all empty is a fault
        assert isinstance(t, objectives.Transform), name      # the batch contract: a sample and its key
        out, again = t(sample, 7, index=index), t(sample, 7, index=index)
        for f in CONTRACT_FIELDS:
            assert out[f].shape == (S,), (name, f, out[f].shape)
            assert np.array_equal(out[f], again[f]), (name, f)
        assert (out["kv_start"] <= out["kv_end"]).all(), name
        targets += int(out["loss_mask"].sum()) + sum(int((v >= 0).sum()) for f, v in out.items() if f.endswith("_rank"))
    assert targets > 0, name
    ran[name] = targets

errors = {}
for module in ("ptobj.data_pipeline.tokenizer", "ptobj.data_pipeline.build", "ptobj.models", "ptobj.kernels",
               "ptobj.recipes.train", "ptobj.hf"):
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        errors[module] = f"{type(exc).__name__}: {exc}"
print(json.dumps({
    "objectives_file": objectives.__file__, "prefix": sys.prefix, "ran": ran, "errors": errors,
    "distributions": sorted(d.metadata["Name"] for d in importlib.metadata.distributions()),
}))
'''


def test_wheel_alone_runs_every_objective_outside_the_checkout(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)  # pip runs from here, against the new interpreter
    python = env_dir / "bin" / "python"
    # the numpy this suite runs with, so pip takes it from its cache
    (tmp_path / "constraints.txt").write_text(f"numpy=={np.__version__}\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--only-binary", ":all:",
                    "-c", str(tmp_path / "constraints.txt"), str(wheel)], check=True, capture_output=True, text=True)
    (tmp_path / "check.py").write_text(BASE_CHECK)
    run = subprocess.run([str(python), "-I", "check.py"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])

    assert Path(report["objectives_file"]).is_relative_to(report["prefix"]), report["objectives_file"]
    assert [_norm(d) for d in report["distributions"]] == ["numpy", _norm(DISTRIBUTION)], report["distributions"]
    assert sorted(report["ran"]) == registry.names()
    needs = {"ptobj.data_pipeline.tokenizer": "data", "ptobj.data_pipeline.build": "train", "ptobj.models": "train",
             "ptobj.kernels": "train", "ptobj.recipes.train": "train", "ptobj.hf": "hf"}
    for module, extra in needs.items():
        assert module in report["errors"], f"{module} imported without its extra"
        assert report["errors"][module].startswith("MissingExtra:"), report["errors"][module]
        assert f"pip install '{DISTRIBUTION}[{extra}]'" in report["errors"][module], report["errors"][module]


# ---- the wheel with [train], beside transformers and Hugging Face's own `kernels` -----------
LOCK = ROOT / "requirements" / "lock.txt"

LOGITS_CHECK = r'''
import json, sys
from pathlib import Path
import torch
import kernels, transformers                       # Hugging Face's kernels package, beside ours
from transformers import AutoModelForCausalLM
import ptobj
from ptobj.models.config import ModelConfig
from ptobj.models.model import build_model
from ptobj.models.parallel import init_parallel
from ptobj.recipes.engine import checkpoint as ckpt

run, hf_dir = Path(sys.argv[1]), Path(sys.argv[2])
cfg = ModelConfig.from_dict(json.loads((run / "model_config.json").read_text()))
ours = build_model(cfg, init_parallel(tp=1, pp=1, backend="gloo")).eval()
ckpt.load_checkpoint(ckpt.latest_checkpoint(run / "checkpoints"), ckpt.TensorLayout().model_items(ours))
hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
ids = torch.randint(16, cfg.vocab_size - 64, (2, 48), generator=torch.Generator().manual_seed(0))
s = ids.shape[1]
with torch.no_grad():
    a = ours.logits({"tokens": ids, "kv_start": torch.zeros(2, s, dtype=torch.int32),
                     "kv_end": torch.arange(1, s + 1, dtype=torch.int32).expand(2, s).contiguous()})
    b = hf(ids).logits
print(json.dumps({"ptobj": ptobj.__file__, "kernels": kernels.__file__, "transformers": transformers.__version__,
                  "kernels_version": __import__("importlib.metadata").metadata.version("kernels"),
                  "max_abs_diff": (a - b[..., : a.shape[-1]]).abs().max().item(), "max_abs_logit": a.abs().max().item()}))
'''


def _locked_pins() -> list[str]:
    """``name==version`` of every package the lock holds (its hashes dropped: a constraints file)."""
    return [line.split()[0] for line in LOCK.read_text().splitlines() if re.match(r"^[A-Za-z0-9][^ ]*==", line)]


@pytest.mark.slow
def test_wheel_with_train_extra_trains_exports_and_loads_beside_hf_kernels(wheel, tmp_path):
    """Outside the checkout: install, ``ptobj train`` two steps, ``ptobj export``, HF logits == ours."""
    pins = _locked_pins()
    assert any(p.startswith("kernels==") for p in pins), "the lock should hold Hugging Face's kernels (transformers' dependency)"
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    bin_dir = env_dir / "bin"
    (tmp_path / "constraints.txt").write_text("\n".join(pins) + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install", "-q",
         "-c", str(tmp_path / "constraints.txt"), f"ptobj[train] @ {wheel.as_uri()}", "transformers", "kernels"],
        capture_output=True, text=True, timeout=1200)
    assert install.returncode == 0, install.stderr[-3000:]
    work = tmp_path / "work"                      # the user's folder: no checkout anywhere above it
    work.mkdir()
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("PYTHONPATH", "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONWARNINGS"] = "ignore"
    train = subprocess.run(
        [str(bin_dir / "ptobj"), "train", "gpt_fim_tiny", "schedule.train_steps=2", "schedule.warmup_steps=1",
         "data.corpus.max_bytes=120000", "data.corpus.valid_documents=20", "data.tokenizer.vocab_size=512", "data.seq_length=64",
         "schedule.micro_batch_size=4", "logging.run_dir=run", "logging.progress_bar=false", "eval.batches=1",
         "eval.infill.enabled=false", "logging.tensorboard=false"],
        cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert train.returncode == 0, train.stderr[-3000:]
    assert (work / "run" / "final_metrics.json").is_file()
    export = subprocess.run([str(bin_dir / "ptobj"), "export", "run", "hf"], cwd=work, env=env, capture_output=True,
                            text=True, timeout=600)
    assert export.returncode == 0, export.stderr[-3000:]
    (tmp_path / "logits.py").write_text(LOGITS_CHECK)
    check = subprocess.run([str(bin_dir / "python"), "-I", str(tmp_path / "logits.py"), "run", "hf"], cwd=work,
                           env=env, capture_output=True, text=True, timeout=600)
    assert check.returncode == 0, check.stderr[-3000:]
    report = json.loads(check.stdout.strip().splitlines()[-1])
    assert Path(report["ptobj"]).is_relative_to(env_dir) and Path(report["kernels"]).is_relative_to(env_dir), report
    assert report["max_abs_diff"] <= 1e-4 * max(1.0, report["max_abs_logit"]), report
