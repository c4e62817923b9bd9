"""The training config tree: one frozen dataclass per YAML section.

Sections that configure another package reuse that package's own dataclass
(``model`` is :class:`ptobj.models.config.ModelConfig`; ``data.corpus`` /
``data.tokenizer`` are data_pipeline's); the rest live here because only the
recipe builds them. ``model.vocab_size`` and ``model.seq_length`` are filled in
from the tokenizer and ``data.seq_length`` at run time.

The ``objective`` section names the objective and its config; everything that
follows from that choice comes from the objective's Task declaration
(:mod:`ptobj.objectives.task`) when the config is built, once: the typed spec
(``TrainConfig.objective_spec``, with ``seq_length`` from ``data``) and its
plan (``TrainConfig.plan``: sampler and input length, model kind and heads,
losses, held-out suites). ``model.kind`` / ``model.heads`` may be left out;
a value that contradicts the declaration is an error naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence

from ptobj.data_pipeline.config import CorpusConfig, TokenizerConfig
from ptobj.data_pipeline.records import RecordsConfig
from ptobj.models.config import ModelConfig
from ptobj.recipes.engine.config import ConfigError, load_config
from ptobj.recipes.engine.infill_config import InfillConfig
from ptobj.recipes.engine.wandb_log import WandbConfig


SEED_MAX = 2**63 - 1


def check_seed(name: str, seed: int) -> None:
    """Seeds key every random stream (:mod:`ptobj.objectives.streams`): integers in [0, 2**63 - 1]."""
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"{name} must lie in [0, 2**63 - 1], got {seed}")


@dataclass(frozen=True)
class DataConfig:
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    # records (conversations, ranked responses) for the objectives that read records (SFT, reward
    # models) instead of the corpus; their tokenizer is the init_from run's (or tokenizer.model_path)
    records: RecordsConfig = field(default_factory=RecordsConfig)
    # prepared corpora are cached here, keyed by corpus + tokenizer settings (git-ignored)
    cache_dir: str = ".cache"
    prepare_workers: int = 1
    # the model's sequence length; how samples are cut follows from the objective
    seq_length: int = 128
    # the model's vocabulary is the tokenizer's, padded up to a multiple of this
    vocab_multiple: int = 64
    # DataLoader worker processes preparing batches ahead (0: in the training process)
    loader_workers: int = 0
    # how long ranks other than 0 wait for rank 0 to prepare the corpus (a large one takes hours)
    prepare_wait_minutes: float = 24 * 60

    def __post_init__(self):
        if self.seq_length < 8:
            raise ValueError(f"seq_length must be >= 8, got {self.seq_length}")
        if self.loader_workers < 0:
            raise ValueError(f"loader_workers must be >= 0, got {self.loader_workers}")
        if self.vocab_multiple < 1:
            raise ValueError(f"vocab_multiple must be >= 1, got {self.vocab_multiple}")
        if not self.prepare_wait_minutes > 0:
            raise ValueError(f"prepare_wait_minutes must be > 0, got {self.prepare_wait_minutes}")
        if self.prepare_workers < 1:
            raise ValueError(f"prepare_workers must be >= 1, got {self.prepare_workers}")


@dataclass(frozen=True)
class ObjectiveConfig:
    """What to train: ``name`` + ``config`` (one objective), or ``mix`` (a list of ``{weight,
    name, config}``, one objective drawn per sample) or ``compose`` (a list of specs run in
    order); see :mod:`ptobj.objectives.registry`. Config fields named ``seq_length`` default to
    ``data.seq_length``. Nothing given: plain causal LM."""

    name: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    mix: list[Any] | None = None
    compose: list[Any] | None = None
    # int32 field recording which mix member made each sample (for per-objective logging)
    tag_field: str | None = None
    # weight of each loss the objective declares (e.g. lm, sbo, sop) in the total; missing ones weigh 1.0
    loss_weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        given = [k for k in ("name", "mix", "compose") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ConfigError(f"objective: give one of name / mix / compose, got {given}")
        if self.config and self.name is None:
            raise ConfigError("objective.config: needs objective.name")
        if self.tag_field is not None and self.mix is None:
            raise ConfigError("objective.tag_field: only a mix tags its samples")
        for loss, w in self.loss_weights.items():
            if not w >= 0:
                raise ConfigError(f"objective.loss_weights.{loss}: must be >= 0, got {w}")

    def spec_data(self) -> dict:
        """The spec as plain data (what ``ptobj.objectives.registry.parse`` reads)."""
        if self.mix is not None:
            out = {"mix": list(self.mix)}
            if self.tag_field is not None:
                out["tag_field"] = self.tag_field
            return out
        if self.compose is not None:
            return {"compose": list(self.compose)}
        return {"name": self.name or "causal_lm", "config": dict(self.config)}

    def weight(self, loss: str) -> float:
        return float(self.loss_weights.get(loss, 1.0))


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip_grad: float = 1.0  # 0 disables clipping (the norm is still logged)
    # megatron-core's distributed optimizer (sharded state, GPU only); "auto": on GPU
    distributed_optimizer: Literal["auto", "on", "off"] = "auto"

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr must lie in [0, lr={self.lr}], got {self.min_lr}")
        if self.clip_grad < 0:
            raise ValueError(f"clip_grad must be >= 0, got {self.clip_grad}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")


@dataclass(frozen=True)
class ScheduleConfig:
    train_steps: int = 40
    warmup_steps: int = 4
    micro_batch_size: int = 8  # per data-parallel rank
    grad_accum_steps: int = 1
    seed: int = 1234  # model init, data order and transform randomness
    # stop (without the final checkpoint / eval) once this many steps are done, as if
    # the job were killed there; 0 = run to train_steps. For tests.
    stop_after_steps: int = 0
    # save and exit (status 4: requeue me) before this many minutes of wall time have passed, or
    # before SLURM's job end time (SLURM_JOB_END_TIME), keeping exit_margin_minutes to save; 0: none
    time_limit_minutes: float = 0.0
    exit_margin_minutes: float = 5.0
    # signals that make the run finish its step, save and exit with status 4 (SLURM sends SIGTERM
    # before a preemption kill, and SIGUSR1 with --signal=USR1@SECONDS before the time limit)
    stop_signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1")

    def __post_init__(self):
        check_seed("seed", self.seed)
        for name in ("train_steps", "micro_batch_size", "grad_accum_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_steps <= self.train_steps:
            raise ValueError(f"warmup_steps must lie in [0, train_steps={self.train_steps}], got {self.warmup_steps}")
        if self.stop_after_steps < 0:
            raise ValueError(f"stop_after_steps must be >= 0 (0: run to train_steps), got {self.stop_after_steps}")
        for name in ("time_limit_minutes", "exit_margin_minutes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        from ptobj.recipes.engine.stopping import signal_number

        for sig in self.stop_signals:
            signal_number(sig)


@dataclass(frozen=True)
class CheckpointConfig:
    dir: str = ""  # "" -> <run_dir>/checkpoints
    every_steps: int = 0  # 0: only at the end
    keep: int = 2  # newest complete checkpoints kept (0 keeps all)
    resume: bool = True  # continue from <dir>/latest when it exists
    save_final: bool = True

    def __post_init__(self):
        for name in ("every_steps", "keep"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: {'only at the end' if name == 'every_steps' else 'keep all'}),"
                                 f" got {getattr(self, name)}")


@dataclass(frozen=True)
class LoggingConfig:
    run_dir: str = "runs/default"
    every_steps: int = 5
    tensorboard: bool = True
    progress_bar: bool = True
    # GPU peak FLOP/s for MFU (dense bf16); 0 -> looked up from the device name
    peak_flops: float = 0.0
    # Weights & Biases (the [wandb] extra): project, entity, name, tags, mode (online / offline)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self):
        if self.every_steps < 1:
            raise ValueError(f"every_steps must be >= 1, got {self.every_steps}")
        if self.peak_flops < 0:
            raise ValueError(f"peak_flops must be >= 0 (0: looked up), got {self.peak_flops}")


@dataclass(frozen=True)
class EvalConfig:
    every_steps: int = 0  # 0: only at the end
    batches: int = 4
    micro_batch_size: int = 8
    at_end: bool = True
    # the held-out streams' seed (None: schedule.seed + 1); fix it to compare runs of several seeds
    # on the same held-out samples
    seed: int | None = None
    # held-out suites beyond the objective's own: {name: {name, config[, fields: {from: to}]}}; e.g. an
    # SOP-trained encoder on NSP pairs: {nsp: {name: nsp, fields: {nsp_label: sop_label}}}
    suites: dict[str, Any] = field(default_factory=dict)
    # the objective's declared evaluations beyond losses (FIM: infilling of held-out code), at the end
    infill: InfillConfig = field(default_factory=InfillConfig)

    def __post_init__(self):
        if self.seed is not None:
            check_seed("seed", self.seed)
        if self.every_steps < 0:
            raise ValueError(f"every_steps must be >= 0 (0: only at the end), got {self.every_steps}")
        for name in ("batches", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ParallelConfig:
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    # auto: bf16 on GPU, fp32 on CPU
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    def __post_init__(self):
        if self.tensor_parallel < 1 or self.pipeline_parallel < 1:
            raise ValueError("tensor_parallel and pipeline_parallel must be >= 1")
        if self.pipeline_parallel != 1:
            raise ValueError("pipeline_parallel > 1 is not supported by this recipe yet (use tensor_parallel)")


@dataclass(frozen=True)
class TrainConfig:
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    # start from a trained run's weights (its newest complete checkpoint, or init_step): the model
    # only, with a fresh optimizer and schedule; the model config must match that run's (and a head
    # that run lacks, e.g. a reward model's, starts fresh). Ignored once this run has a checkpoint.
    init_from: str = ""
    init_step: int = 0  # 0 = the newest complete checkpoint
    # derived from ``objective`` once, here (not part of the YAML)
    objective_spec: Any = field(init=False, repr=False, compare=False)  # ptobj.objectives.registry typed spec
    plan: Any = field(init=False, repr=False, compare=False)            # ptobj.objectives.registry.Plan

    def __post_init__(self):
        from ptobj.objectives import registry

        try:
            spec = registry.parse(self.objective.spec_data(), defaults={"seq_length": self.data.seq_length})
            plan = registry.plan(spec)
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(str(exc.args[0]) if exc.args else str(exc)) from exc
        m = self.model
        names = ", ".join(leaf.name for leaf in registry.leaves(spec))
        if m.kind is not None and m.kind != plan.model:
            raise ConfigError(f"model.kind: {m.kind!r} contradicts the objective ({names}: a {plan.model}); "
                              "leave it out")
        if m.heads is not None and dict(m.heads) != plan.losses:
            raise ConfigError(f"model.heads: {dict(m.heads)} contradicts the objective ({names}: {plan.losses}); "
                              "leave it out")
        for loss in self.objective.loss_weights:
            if loss not in plan.losses:
                raise ConfigError(f"objective.loss_weights.{loss}: the objective ({names}) has no such loss; "
                                  f"its losses are {sorted(plan.losses)}")
        if self.init_step < 0:
            raise ConfigError(f"init_step: must be >= 0, got {self.init_step}")
        if self.init_step and not self.init_from:
            raise ConfigError("init_step: needs init_from (the run whose checkpoint to start from)")
        object.__setattr__(self, "model", replace(m, kind=plan.model, heads=dict(plan.losses)))
        object.__setattr__(self, "objective_spec", spec)
        object.__setattr__(self, "plan", plan)
        if self.eval.suites:
            eval_suites(self)  # a bad held-out suite fails now, naming it

    @property
    def run_dir(self) -> Path:
        return Path(self.logging.run_dir)

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir) if self.checkpoint.dir else self.run_dir / "checkpoints"


@dataclass(frozen=True)
class Suite:
    """A held-out suite: an objective spec, and the fields of its samples renamed for the model
    (``{"nsp_label": "sop_label"}``: an SOP-trained model's head reads NSP's labels)."""

    spec: Any
    fields: dict = field(default_factory=dict)


def eval_suites(cfg: TrainConfig) -> dict[str, Suite]:
    """The held-out suites of a run: those the objective declares, plus ``eval.suites``."""
    from ptobj.objectives import registry

    out = {name: Suite(spec) for name, spec in cfg.plan.evals.items()}
    for name, given in cfg.eval.suites.items():
        where = f"eval.suites.{name}"
        if not isinstance(given, dict):
            raise ConfigError(f"{where}: expected an objective spec (name, config) with optional fields, got {given!r}")
        given = dict(given)
        fields = given.pop("fields", None) or {}
        if not isinstance(fields, dict):
            raise ConfigError(f"{where}.fields: expected a mapping of field renames, got {fields!r}")
        try:
            spec = registry.parse(given, defaults={"seq_length": cfg.data.seq_length}, where=where)
            suite_plan = registry.plan(spec)
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(str(exc.args[0]) if exc.args else str(exc)) from exc
        if suite_plan.model != cfg.plan.model:
            raise ConfigError(f"{where}: a {suite_plan.model} objective cannot evaluate this {cfg.plan.model}")
        out[name] = Suite(spec, dict(fields))
    return out


RECIPES_DIR = Path(__file__).resolve().parents[1] / "configs"


def bundled_recipes() -> list[str]:
    """The names of the recipes that come with the package (``ptobj/recipes/configs/*.yaml``)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_path(recipe: str | Path) -> Path:
    """A recipe's YAML file: ``recipe`` itself when it is a file, else the bundled recipe of
    that name (``gpt_fim_tiny`` or ``gpt_fim_tiny.yaml``)."""
    path = Path(recipe)
    if path.is_file():
        return path
    name = path.name.removesuffix(".yaml")
    if path.parent == Path(".") and (RECIPES_DIR / f"{name}.yaml").is_file():
        return RECIPES_DIR / f"{name}.yaml"
    raise ConfigError(f"{recipe}: no such file, and no bundled recipe of that name; "
                      f"bundled: {', '.join(bundled_recipes())}")


def load_train_config(recipe: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """The config of ``recipe`` (a bundled name or a YAML file) with ``overrides`` applied."""
    path = recipe_path(recipe)
    try:
        return load_config(TrainConfig, path, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{recipe}: {exc}") from exc
