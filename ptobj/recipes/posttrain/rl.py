"""Online RL on an exported policy and reward model, with InstructGPT's pretraining mix (PPO-ptx):
``ptobj rl --policy HF_DIR --reward HF_DIR --prompts FILE --ptx-data RUN_OR_CONFIG --out DIR``.

The trainer is TRL's RLOO (REINFORCE with a leave-one-out baseline, Ahmadian et al. 2024), chosen
over GRPO because it optimises what InstructGPT's PPO does: one scalar reward per completion with
the KL to the reference policy folded into that reward (``r - beta * KL``), each completion one
action; GRPO normalises rewards by the group's standard deviation and puts the KL in the per-token
loss. TRL (1.16) has no PPO trainer.

The ptx term (Ouyang et al. 2022, eq. 2): every micro-step the loss gains
``ptx_coef * (LM loss on a micro-batch of the pretraining data)``. The batches come from this
framework's own pipeline (:func:`ptobj.recipes.engine.data.build_run_data`: the prepared corpus, the sampler and
the objective of a pretraining run or recipe YAML), at stream positions keyed by the step, so a
rerun reads the same batches. The sample's attention (``kv_start`` / ``kv_end``: per-document
causal for causal LM and FIM) reaches the Hugging Face model as the 4-D mask it takes for any
pattern (:func:`interval_mask`), so the policy sees its pretraining batches as it was trained on
them.

The reward model (``LlamaForSequenceClassification``, as ``ptobj.recipes.export`` writes one) scores
the prompt's and the completion's token ids as generated, closed by ``<|end|>``, where it reads
its score (:class:`RewardModelScore`). TRL's own reward-model path would decode the completion,
drop the special tokens and re-tokenize, so the model would read its score at another position.

Needs the ``[rlhf]`` extra (trl).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ptobj.extras import require

require("rlhf", "trl", "accelerate", by=__name__)
require("data", "datasets", by=__name__)

from trl import RLOOTrainer

PROBE_TEXT = "def add(a, b):\n    return a + b  # sum\n\nThe quick brown fox, 2024."


class ArgError(ValueError):
    """A bad command-line argument or input file; the message names it."""


# ----------------------------------------------------------------------------- the pretraining batches


def ptx_config(source: str | Path, overrides: Sequence[str] = ()):
    """The pretraining data of the ptx term: a run directory (its ``config.yaml``) or a training
    recipe YAML, with ``key=value`` overrides (e.g. ``data.cache_dir=...``)."""
    from ptobj.recipes.engine.config import ConfigError
    from ptobj.recipes.engine.train_config import load_train_config

    path = Path(source)
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise ArgError(f"--ptx-data {path}: a folder without config.yaml; pass a run directory written by "
                           "ptobj.recipes.train or a recipe YAML")
        path = path / "config.yaml"
    elif not path.is_file():
        raise ArgError(f"--ptx-data {path}: not found (a run directory or a recipe YAML)")
    try:
        cfg = load_train_config(path, overrides)
    except ConfigError as exc:
        raise ArgError(f"--ptx-data: {exc}") from None
    if cfg.plan.model != "decoder":
        raise ArgError(f"--ptx-data {path}: objective {cfg.objective_spec} trains an {cfg.plan.model}; "
                       "the ptx term needs a decoder objective (causal_lm, fim)")
    return cfg


class PtxBatches:
    """Micro-batch ``k`` of the pretraining stream as Hugging Face causal-LM inputs.

    Rank ``r`` of ``w`` reads positions ``(k * w + r) * batch_size + [0, batch_size)`` of the
    framework's :class:`~ptobj.data_pipeline.dataset.ObjectiveDataset` (the run's objective, e.g. FIM,
    applied as in pretraining)."""

    def __init__(self, dataset, batch_size: int, *, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ArgError(f"--ptx-batch-size must be >= 1, got {batch_size}")
        self.dataset, self.batch_size, self.rank, self.world_size = dataset, int(batch_size), rank, world_size

    @classmethod
    def from_config(cls, cfg, batch_size: int, *, rank: int = 0, world_size: int = 1, progress: bool = True):
        """The train stream of ``cfg`` (prepared once, reused from ``data.cache_dir``) and its tokenizer."""
        from ptobj.recipes.engine.data import build_run_data
        from ptobj.recipes.engine.distributed import DistInfo

        info = DistInfo(rank=rank, world_size=world_size, local_rank=rank, device=torch.device("cpu"), backend="")
        data = build_run_data(cfg, info, progress=progress)
        return cls(data.train, batch_size, rank=rank, world_size=world_size), data

    def positions(self, k: int) -> np.ndarray:
        first = (int(k) * self.world_size + self.rank) * self.batch_size
        return np.arange(first, first + self.batch_size)

    def batch(self, k: int, device="cpu") -> dict[str, torch.Tensor]:
        sample = self.dataset.read(self.positions(k))
        keep = ("tokens", "labels", "loss_mask", "kv_start", "kv_end")
        return {f: torch.as_tensor(np.ascontiguousarray(sample[f])).to(device) for f in keep}


def interval_mask(kv_start: torch.Tensor, kv_end: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The row intervals as the additive [b, 1, s, s] mask transformers takes for any attention
    (0 where query i sees key j: kv_start[i] <= j < kv_end[i]; the dtype's minimum elsewhere)."""
    j = torch.arange(kv_start.shape[1], device=kv_start.device)
    sees = (j >= kv_start[:, :, None]) & (j < kv_end[:, :, None])
    zero = torch.zeros((), dtype=dtype, device=kv_start.device)
    return torch.where(sees, zero, torch.finfo(dtype).min)[:, None]


def ptx_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The pretraining LM loss: mean next-token NLL over the positions ``loss_mask`` counts, with
    the sample's own attention (positions 0..s-1 along the row, as our decoder's RoPE takes them)."""
    mask = interval_mask(batch["kv_start"], batch["kv_end"], next(model.parameters()).dtype)  # model may be wrapped
    logits = model(input_ids=batch["tokens"].long(), attention_mask=mask, use_cache=False).logits.float()
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten().long(),
                                            reduction="none")
    weight = batch["loss_mask"].flatten().float()
    return (nll * weight).sum() / weight.sum().clamp(min=1.0)


def check_same_tokenizer(tokenizer, ours, *, what: str) -> None:
    """The policy's Hugging Face tokenizer must give the ptx data's ids."""
    theirs = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    if theirs != ours.encode(PROBE_TEXT):
        raise ArgError(f"{what}: its tokenizer and the policy's disagree on a probe text "
                       f"({ours.encode(PROBE_TEXT)[:8]}... vs {theirs[:8]}...); ptx batches would be other words")


# ----------------------------------------------------------------------------- the reward


class RewardModelScore:
    """A TRL reward function: the exported reward model's score of ``prompt ids + completion ids``
    as generated, closed by the reward tokenizer's end of response (a chat model's ``<|end|>``,
    where ``ptobj.objectives.reward`` reads the score; EOT otherwise) in place of whatever stopped
    generation (``<|end|>``, EOT, or the length limit)."""

    __name__ = "reward_model"  # TRL logs rewards/<name>/mean

    def __init__(self, path: str | Path, tokenizer, device="cpu", batch_size: int = 32):
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ArgError(f"--reward {path}: no config.json; pass a folder written by ptobj.recipes.export "
                           "(LlamaForSequenceClassification)")
        config = AutoConfig.from_pretrained(path)
        if not any(a.endswith("ForSequenceClassification") for a in (config.architectures or [])):
            raise ArgError(f"--reward {path}: a {config.architectures} folder; the reward model is a "
                           "sequence classifier (LlamaForSequenceClassification)")
        if config.num_labels != 1:
            raise ArgError(f"--reward {path}: a reward model has one score, this one has num_labels={config.num_labels}")
        if config.pad_token_id is None:
            raise ArgError(f"--reward {path}: config.json has no pad_token_id (the model finds each row's last "
                           "token through it)")
        own = AutoTokenizer.from_pretrained(path)
        if own(PROBE_TEXT, add_special_tokens=False)["input_ids"] != tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]:
            raise ArgError(f"--reward {path}: its tokenizer and the policy's disagree on a probe text")
        self.close, self.pad = own.eos_token_id, config.pad_token_id
        if self.close is None or self.close == self.pad:
            raise ArgError(f"--reward {path}: its tokenizer needs an end-of-response (eos) token apart from pad")
        self.stops = {self.close, tokenizer.eos_token_id, config.eos_token_id} - {None}
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).to(device).eval()
        self.tokenizer, self.device, self.batch_size = tokenizer, device, batch_size

    def sequences(self, prompts: list, completion_ids: list[list[int]]) -> list[list[int]]:
        out = []
        for p, c in zip(prompt_ids(self.tokenizer, prompts), completion_ids, strict=True):
            c = list(c)
            while c and c[-1] in self.stops:
                c.pop()
            out.append(list(p) + c + [self.close])
        return out

    @torch.no_grad()
    def score(self, sequences: list[list[int]]) -> list[float]:
        scores = []
        for at in range(0, len(sequences), self.batch_size):
            ids, mask = right_padded(sequences[at:at + self.batch_size], self.pad)
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            scores += logits[:, 0].float().cpu().tolist()
        return scores

    def __call__(self, prompts, completions, completion_ids, **kwargs) -> list[float]:
        return self.score(self.sequences(list(prompts), completion_ids))


def prompt_ids(tokenizer, prompts: list) -> list[list[int]]:
    """The prompts' ids as TRL makes them for generation (conversations through the chat template,
    ending with the assistant's opening marker)."""
    if prompts and not isinstance(prompts[0], str):
        return tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"]
    return tokenizer(text=prompts)["input_ids"]


def right_padded(sequences: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` [n, longest], padded on the right: a sequence-classification
    model reads each row's score at its last non-pad token."""
    n = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), n), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), n), dtype=torch.long)
    for row, s in enumerate(sequences):
        ids[row, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[row, :len(s)] = 1
    return ids, mask


# ----------------------------------------------------------------------------- the trainer


class EpochKeyedSampler:
    """TRL's prompt sampler (``RepeatSampler``) with each epoch's order a function of the epoch.
    TRL draws epoch ``e``'s order as the ``e+1``-th permutation of one generator seeded once, so
    a run resumed in epoch ``e`` would read epoch 0's order again. Here the generator is seeded
    afresh and ``e`` permutations are drawn before the epoch's: the order of an uninterrupted
    TRL run, whatever epoch the run starts in (the trainer sets the epoch at each epoch's start)."""

    def __init__(self, sampler):
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        generator, seed = getattr(self.sampler, "generator", None), getattr(self.sampler, "seed", None)
        if generator is not None and seed is not None:  # else TRL does not shuffle, or not reproducibly
            generator.manual_seed(seed)
            for _ in range(self.epoch):
                torch.randperm(self.sampler.num_samples, generator=generator)
        return iter(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class RLOOPtxTrainer(RLOOTrainer):
    """TRL's RLOO whose loss adds ``ptx_coef`` times the LM loss on pretraining batch ``k``, ``k``
    the micro-step (``global_step * grad_accum + micro index``); logs ``ptx_loss``. ``global_step``
    is the Trainer's, restored from a checkpoint on resume, so a resumed run reads the batches an
    uninterrupted one reads."""

    def __init__(self, *args, ptx: PtxBatches | None = None, ptx_coef: float = 0.0, **kwargs):
        from transformers import TrainerCallback

        super().__init__(*args, **kwargs)
        self.ptx, self.ptx_coef = ptx, float(ptx_coef)
        trainer = self

        class _Epoch(TrainerCallback):
            def on_epoch_begin(self, args, state, control, **kwargs):
                if trainer.prompt_sampler is not None:  # state.epoch: whole at an epoch's start, or resumed mid-epoch
                    trainer.prompt_sampler.set_epoch(int(state.epoch + 1e-6))

        self.prompt_sampler: EpochKeyedSampler | None = None
        self.add_callback(_Epoch())

    def _get_train_sampler(self, dataset=None):
        self.prompt_sampler = EpochKeyedSampler(super()._get_train_sampler(dataset))
        return self.prompt_sampler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.ptx is None or not self.model.training:
            return loss
        accum = self.args.gradient_accumulation_steps
        k = self.state.global_step * accum + self._step % accum  # a resume starts at a step's first micro-batch
        lm = ptx_loss(model, self.ptx.batch(k, self.accelerator.device))
        self._metrics["train"]["ptx_loss"].append(self.accelerator.gather(lm.detach()).mean().item())
        total = loss + self.ptx_coef * lm
        if not torch.isfinite(total):  # never applied: the step stops here, before backward
            raise FloatingPointError(f"step {self.state.global_step}: non-finite loss (RLOO {loss.item()}, "
                                     f"ptx {lm.item()} on ptx batch {k})")
        return total


class JsonLog:
    """A transformers callback appending every log (step, reward, kl, ptx_loss, ...) to a JSON-lines file."""

    def __init__(self, path: Path):
        from transformers import TrainerCallback

        self.path = path
        outer = self

        class _Callback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if state.is_world_process_zero and logs:
                    with outer.path.open("a") as f:
                        f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

        self.callback = _Callback()


# ----------------------------------------------------------------------------- checkpoints and resume

RUN_FILE = "run.json"  # the settings of the run in OUT, to resume only the same run


def newest_checkpoint(folder: Path) -> Path | None:
    """The newest complete Trainer checkpoint ``folder/checkpoint-N``: one holding
    ``trainer_state.json``, which the Trainer writes after the weights, optimizer and RNG states.
    Incomplete ones (a crash while saving) are named and skipped."""
    found = []
    for path in folder.glob("checkpoint-*") if folder.is_dir() else ():
        step = path.name.removeprefix("checkpoint-")
        if not (path.is_dir() and step.isdigit()):
            continue
        if (path / "trainer_state.json").is_file():
            found.append((int(step), path))
        else:
            print(f"[resume] skipping {path}: incomplete (no trainer_state.json)", file=sys.stderr)
    return max(found)[1] if found else None


def resume_point(out_dir: Path, settings: dict, *, resume: bool) -> Path | None:
    """The checkpoint a run with ``settings`` in ``out_dir`` resumes from (None: a fresh start);
    checks only, writes nothing. A new or empty folder starts the run; a folder holding the same
    run (its ``run.json``) resumes from its newest complete checkpoint, or starts over when it has
    none. Refused: ``resume=False`` on a folder that is not empty, a run with other settings
    (named), a folder holding something else."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ArgError(f"--out {out_dir}: exists and is not a folder")
    if not (out_dir.is_dir() and any(out_dir.iterdir())):
        return None
    if not resume:
        raise ArgError(f"--out {out_dir}: not empty and --no-resume given; choose a new folder")
    run_file = out_dir / RUN_FILE
    if not run_file.is_file():
        raise ArgError(f"--out {out_dir}: exists, is not empty and holds no run ({RUN_FILE}); choose a new one")
    before, now = json.loads(run_file.read_text()), as_json(settings)
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {before.get(k)!r} there, {now.get(k)!r} now" for k in changed)
        raise ArgError(f"--out {out_dir}: holds a run with other settings ({diffs}); "
                       "rerun with its settings to resume, or choose a new folder")
    return newest_checkpoint(out_dir / "checkpoints")


def open_out(out_dir: Path, settings: dict, checkpoint: Path | None) -> None:
    """Write ``run.json`` of a fresh run, or cut ``log.jsonl`` of a resumed one to the steps up to
    its checkpoint (those after it are run again). The first process writes, once every process
    has made its :func:`resume_point` decision."""
    state = processes()
    state.wait_for_everyone()
    if state.is_main_process:
        write_out(out_dir, settings, checkpoint)
    state.wait_for_everyone()


def write_out(out_dir: Path, settings: dict, checkpoint: Path | None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    if not (out_dir / RUN_FILE).is_file():
        (out_dir / RUN_FILE).write_text(json.dumps(as_json(settings), indent=1) + "\n")
    done = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] if checkpoint else 0
    log = out_dir / "log.jsonl"
    if log.is_file():
        log.write_text("".join(line + "\n" for line in log.read_text().splitlines() if json.loads(line)["step"] <= done))
        print(f"[resume] {out_dir}: " + (f"from {checkpoint.name}" if checkpoint else "no checkpoint, starting over"),
              file=sys.stderr)


def processes():
    """accelerate's state of this launch (rank, world size), on CPU where there is no GPU as the
    Trainer's ``use_cpu`` is: made first without ``cpu=True``, a torchrun launch on CPU would be
    taken for independent single processes (no device branch matches)."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def as_json(settings: dict) -> dict:
    return json.loads(json.dumps(settings, default=str))


def checkpoint_args(out_dir: Path, save_every: int) -> dict:
    """The Trainer's own checkpointing: every ``save_every`` steps and at the end (0: never) into
    ``out_dir/checkpoints``, the newest two kept."""
    if save_every < 0:
        raise ArgError(f"--save-every must be >= 0 (0: no checkpoints), got {save_every}")
    if save_every == 0:
        return dict(output_dir=str(out_dir / "checkpoints"), save_strategy="no")
    return dict(output_dir=str(out_dir / "checkpoints"), save_strategy="steps", save_steps=save_every,
                save_total_limit=2)


# ----------------------------------------------------------------------------- inputs


def load_rows(path: str | Path, columns: dict[str, str] | list[dict[str, str]], flag: str):
    """A ``datasets.Dataset`` from a jsonl / json / csv / parquet file (.txt: one ``text`` row per
    line) holding ``columns`` (our name -> the file's; a list: the first layout the file has),
    renamed to our names; rows with an empty column dropped."""
    import datasets

    path = Path(path)
    if not path.is_file():
        raise ArgError(f"{flag} {path}: not found")
    kind = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}.get(path.suffix)
    if kind is None:
        raise ArgError(f"{flag} {path}: expected .jsonl, .json, .csv, .parquet or .txt")
    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as exc:  # datasets' parse errors come in many types
        raise ArgError(f"{flag} {path}: cannot be read ({type(exc).__name__}: {exc})") from None
    layouts = [columns] if isinstance(columns, dict) else list(columns)
    found = [c for c in layouts if all(given in ds.column_names for given in c.values())]
    if not found:
        missing = [g for g in layouts[0].values() if g not in ds.column_names]
        want = " or ".join("(" + ", ".join(c.values()) + ")" for c in layouts)
        raise ArgError(f"{flag} {path}: no {missing[0]!r} column (columns: {ds.column_names}; expected {want})")
    columns = found[0]
    ds = ds.select_columns(list(columns.values()))
    ds = ds.rename_columns({given: ours for ours, given in columns.items() if given != ours})
    ds = ds.filter(lambda r: all(bool(r[c]) for c in columns))
    if len(ds) == 0:
        raise ArgError(f"{flag} {path}: no rows with every column non-empty")
    return ds


def load_prompts(path: str | Path, column: str = "prompt"):
    """The prompts (a ``prompt`` column); a .txt file is one prompt per line."""
    if Path(path).suffix == ".txt":
        column = "text"
    return load_rows(path, {"prompt": column}, "--prompts")


def as_conversations(dataset, tokenizer, roles: dict[str, str]):
    """For a chat policy (its tokenizer has a chat template), text columns become one-message
    conversations (``roles``: column -> role), so a prompt reads ``<|user|> prompt <|end|>
    <|assistant|>`` as in SFT."""
    first = next(iter(roles))
    if not getattr(tokenizer, "chat_template", None) or not isinstance(dataset[0][first], str):
        return dataset
    return dataset.map(lambda r: {c: [{"role": role, "content": r[c]}] for c, role in roles.items()})


def load_policy(path: str | Path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ArgError(f"--policy {path}: no config.json; pass a folder written by ptobj.recipes.export (LlamaForCausalLM)")
    config = AutoConfig.from_pretrained(path)
    if not any(a.endswith("ForCausalLM") for a in (config.architectures or [])):
        raise ArgError(f"--policy {path}: a {config.architectures} folder; the policy is a causal LM")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"  # TRL generates from left-padded prompts
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, tokenizer


# ----------------------------------------------------------------------------- the run


def train(policy, reward, prompts, out_dir, *, prompt_column: str = "prompt", ptx_data=None, ptx_set=(), ptx_coef: float = 0.5,
          ptx_batch_size: int = 4, steps: int = 100, lr: float = 1e-5, prompts_per_step: int = 4,
          generations: int = 4, max_completion_length: int = 64, beta: float = 0.05, temperature: float = 1.0,
          seed: int = 0, logging_steps: int = 1, save_every: int = 50, resume: bool = True, save: bool = True,
          progress: bool = True):
    """Build and run the trainer, resuming the run in ``out_dir`` if there is one (:func:`resume_point`);
    returns it (``trainer.state.log_history`` holds the logs)."""
    from transformers import set_seed
    from trl import RLOOConfig

    settings = dict(policy=policy, reward=reward, prompts=prompts, prompt_column=prompt_column, ptx_data=ptx_data,
                    ptx_set=list(ptx_set), ptx_coef=ptx_coef, ptx_batch_size=ptx_batch_size, steps=steps, lr=lr,
                    prompts_per_step=prompts_per_step, generations=generations,
                    max_completion_length=max_completion_length, beta=beta, temperature=temperature, seed=seed)

    for name, value, low in (("--steps", steps, 1), ("--prompts-per-step", prompts_per_step, 1),
                             ("--generations", generations, 2), ("--max-completion-length", max_completion_length, 1)):
        if value < low:
            raise ArgError(f"{name} must be >= {low}, got {value}")
    if ptx_coef < 0 or not math.isfinite(ptx_coef):
        raise ArgError(f"--ptx-coef must be a finite number >= 0, got {ptx_coef}")
    out_dir = Path(out_dir)
    saving = checkpoint_args(out_dir, save_every)
    checkpoint = resume_point(out_dir, settings, resume=resume)
    dataset = load_prompts(prompts, prompt_column)
    set_seed(seed)
    model, tokenizer = load_policy(policy)
    dataset = as_conversations(dataset, tokenizer, {"prompt": "user"})
    score = RewardModelScore(reward, tokenizer)

    ptx = None
    if ptx_data is not None and ptx_coef > 0:
        state = processes()  # each process reads its own share of a step's ptx batches
        cfg = ptx_config(ptx_data, ptx_set)
        ptx, data = PtxBatches.from_config(cfg, ptx_batch_size, rank=state.process_index,
                                           world_size=state.num_processes, progress=progress)
        check_same_tokenizer(tokenizer, data.tokenizer, what=f"--ptx-data {ptx_data}")
        if data.vocab_size > model.config.vocab_size:
            raise ArgError(f"--ptx-data {ptx_data}: its ids reach {data.vocab_size - 1}, the policy embeds "
                           f"{model.config.vocab_size}")

    open_out(out_dir, settings, checkpoint)
    args = RLOOConfig(
        **saving, max_steps=steps, learning_rate=lr, seed=seed, data_seed=seed,
        per_device_train_batch_size=prompts_per_step * generations, gradient_accumulation_steps=1,
        num_generations=generations, max_completion_length=max_completion_length, beta=beta,
        temperature=temperature, logging_steps=logging_steps, report_to=[],
        disable_tqdm=not progress, use_cpu=not torch.cuda.is_available(), lr_scheduler_type="constant",
    )
    log = JsonLog(out_dir / "log.jsonl")
    trainer = RLOOPtxTrainer(model=model, reward_funcs=score, args=args, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[log.callback], ptx=ptx, ptx_coef=ptx_coef)
    score.model.to(trainer.accelerator.device)
    score.device = trainer.accelerator.device
    return train_and_save(trainer, tokenizer, out_dir, save, checkpoint)


def train_and_save(trainer, tokenizer, out_dir: Path, save: bool, checkpoint: Path | None = None):
    """Run a TRL trainer (from ``checkpoint`` when given); with ``save``, the trained policy and its
    tokenizer go to ``out_dir/policy``. A step that raises (a non-finite loss) leaves the newest
    checkpoint as it was: the Trainer saves only after a step's update."""
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if save:
        trainer.save_model(str(out_dir / "policy"))
        tokenizer.save_pretrained(str(out_dir / "policy"))
    return trainer


def add_checkpoint_args(p) -> None:
    p.add_argument("--save-every", type=int, default=50,
                   help="write a checkpoint to OUT/checkpoints every N steps and at the end, the newest two kept "
                        "(default 50; 0: none)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="refuse an OUT that is not empty instead of resuming the run it holds")


def main(argv: Sequence[str] | None = None, prog: str = "ptobj rl") -> int:
    import argparse

    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, help="exported policy folder (LlamaForCausalLM, e.g. the SFT run's)")
    p.add_argument("--reward", required=True, help="exported reward model folder (LlamaForSequenceClassification)")
    p.add_argument("--prompts", required=True, help="prompts file: .jsonl/.json/.csv/.parquet (a 'prompt' column) or .txt")
    p.add_argument("--prompt-column", default="prompt", help="the prompts' column (default: prompt)")
    p.add_argument("--out", required=True, help="output folder: run.json, log.jsonl, checkpoints/ and policy/; "
                   "a folder holding this run (same settings) resumes from its newest checkpoint")
    add_checkpoint_args(p)
    p.add_argument("--ptx-data", default=None,
                   help="pretraining run directory or recipe YAML whose data feeds the ptx term (default: none)")
    p.add_argument("--ptx-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override in the ptx recipe (e.g. data.cache_dir=.cache); repeatable")
    p.add_argument("--ptx-coef", type=float, default=0.5, help="gamma, the ptx loss's weight (default 0.5)")
    p.add_argument("--ptx-batch-size", type=int, default=4, help="pretraining sequences per micro-step (default 4)")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps (default 100)")
    p.add_argument("--lr", type=float, default=1e-5, help="learning rate (default 1e-5, constant)")
    p.add_argument("--prompts-per-step", type=int, default=4, help="prompts per step (default 4)")
    p.add_argument("--generations", type=int, default=4, help="completions per prompt, >= 2 (default 4)")
    p.add_argument("--max-completion-length", type=int, default=64, help="new tokens at most (default 64)")
    p.add_argument("--beta", type=float, default=0.05, help="KL penalty to the initial policy (default 0.05)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        trainer = train(a.policy, a.reward, a.prompts, a.out, prompt_column=a.prompt_column, ptx_data=a.ptx_data, ptx_set=a.ptx_set,
                        ptx_coef=a.ptx_coef, ptx_batch_size=a.ptx_batch_size, steps=a.steps, lr=a.lr,
                        prompts_per_step=a.prompts_per_step, generations=a.generations,
                        max_completion_length=a.max_completion_length, beta=a.beta, temperature=a.temperature,
                        seed=a.seed, save_every=a.save_every, resume=a.resume)
    except (ArgError, FileNotFoundError) as exc:
        print(f"rl error: {exc}", file=sys.stderr)
        return 2
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    if rewards:
        print(f"[rl] reward: first step {rewards[0]:.4g}, last step {rewards[-1]:.4g}; log: {Path(a.out) / 'log.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
