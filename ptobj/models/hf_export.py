"""Export a model to a Hugging Face folder: weights (safetensors), ``config.json``,
``generation_config.json`` and tokenizer files.

``export(model_or_state, cfg, out_dir, tokenizer_model=...)`` is the one entry; it
picks the Hugging Face format for ``cfg`` from :data:`FORMATS` through
:func:`format_name` (the one place that dispatches on the model's kind and
architecture):

=========================================  ==============================================
our model                                   Hugging Face class
=========================================  ==============================================
decoder                                     ``LlamaForCausalLM``
decoder with a scalar head (reward model)   ``LlamaForSequenceClassification`` (num_labels=1)
encoder, ``norm_position="post"``           ``BertForPreTraining`` (a sequence head) /
                                            ``BertForMaskedLM`` (token head only)
encoder, post-norm, ``embedding_size`` <    ``AlbertForPreTraining`` / ``AlbertForMaskedLM``
hidden or ``share_layers`` != "none"
encoder, ``norm_position="pre"``            ``MegatronBertForPreTraining`` /
                                            ``MegatronBertForMaskedLM``
=========================================  ==============================================

A pre-norm encoder with a factorised embedding or shared layers has no
Hugging Face twin (ALBERT is post-norm) and is refused, naming the field.
Encoder heads: the token head becomes the MLM head (``cls.predictions`` /
``predictions``, tied to the word embeddings, with its transform and bias);
one sequence head (SOP or NSP) becomes the pooler plus ``seq_relationship`` /
``sop_classifier``; span-boundary (SBO) heads have no Hugging Face twin and are
dropped (the export says so). ALBERT with all layers shared is written as one
layer group; attention-only or FFN-only sharing as one group per layer (the
shared weights repeated), which computes the same.

Decoder weight layout differences handled here:

* megatron fuses Q, K, V into ``linear_qkv.weight`` of shape
  ``[groups * (q_per_group + 2) * head_dim, hidden]``, interleaved per query
  group: for each group, its ``q_per_group`` query heads, then its key head,
  then its value head. Llama keeps ``q_proj`` (heads in order; head j belongs
  to group j // q_per_group), ``k_proj`` and ``v_proj``.
* megatron fuses SwiGLU's two input projections into ``linear_fc1.weight`` =
  [gate; up] (``silu(first half) * second half``): Llama's ``gate_proj`` and
  ``up_proj``.
* RoPE: megatron's default (non-interleaved, rotate-half) rotary layout is
  Llama's, so Q/K rows need no permutation.
* The LM head is tied to the input embedding (``tie_word_embeddings``).

What the Hugging Face ecosystem reads from ``config.json``: ``architectures``
(TRL, vLLM and text-generation servers pick the model class from it), the
special-token ids (EOT is ``eos``; ``pad`` is our pad; no BOS: our documents
are not prefixed with one, and the tokenizer files say the same), and the
weights' dtype under both ``torch_dtype`` (transformers 4.x, vLLM) and
``dtype`` (transformers 5), and ``rope_theta`` at the top level as 4.x reads it
(5.x nests it in ``rope_parameters``). ``generation_config.json`` stops at EOT.

Tokenizer: ids are sentencepiece ids + 16 behind 16 reserved specials. We copy
the sentencepiece ``.model`` (as ``sentencepiece.model``) and write
``tokenizer.json`` (a ``tokenizers`` Unigram with the 16 reserved tokens
prepended, so ids line up) plus ``tokenizer_config.json``, which makes
``AutoTokenizer.from_pretrained(out_dir)`` work; see ``ptobj.models.hf_tokenizer``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ptobj.models.config import ModelConfig
from ptobj.objectives.sample import SpecialTokens

PREFIX = "lm."


@dataclass(frozen=True)
class HFFormat:
    """How one model kind is written for, and loaded by, Hugging Face tools."""

    architecture: str  # config.json "architectures"[0]: a transformers model class
    auto_class: str  # the transformers Auto class that loads the folder
    pipeline_task: str  # transformers.pipeline(task, model=out_dir)
    write: Callable[[dict, ModelConfig, Path, SpecialTokens], None]  # (tensors, cfg, out_dir, special)
    probe_batch: Callable[[torch.Tensor, ModelConfig], dict]  # token ids [b, s] -> the batch our model reads
    hf_inputs: Callable[[dict], dict]  # that batch -> the transformers model's keyword arguments
    # the transformers model's output -> its logits by our head kind: "token" [b, s, V], "sequence" [b, 2]
    hf_logits: Callable[[Any], dict[str, torch.Tensor]]
    bert_template: bool = False  # the tokenizer adds [CLS] A [SEP] (B [SEP]) as our encoder objectives do
    scores: bool = False  # a score per sequence (a reward model), no LM logits: hf_logits gives "scalar" [b]


# ----------------------------------------------------------------------------- decoder -> Llama


def llama_config(cfg: ModelConfig, *, special: SpecialTokens | None = None, dtype: str | None = None):
    from transformers import LlamaConfig

    special = special or SpecialTokens()
    return LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.query_groups, head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.norm_epsilon,
        rope_theta=float(cfg.rotary_base), tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
        hidden_act="silu", initializer_range=cfg.init_method_std, architectures=[LLAMA.architecture],
        bos_token_id=None, eos_token_id=special.eot, pad_token_id=special.pad, dtype=dtype or cfg.params_dtype,
    )


def split_qkv(qkv: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """megatron's per-group interleaved [g*(r+2)*d, h] -> q [g*r*d, h], k [g*d, h], v [g*d, h]."""
    g, d = cfg.query_groups, cfg.head_dim
    r = cfg.num_attention_heads // g
    grouped = qkv.reshape(g, r + 2, d, qkv.shape[-1])
    q = grouped[:, :r].reshape(g * r * d, -1)
    k = grouped[:, r].reshape(g * d, -1)
    v = grouped[:, r + 1].reshape(g * d, -1)
    return q, k, v


def llama_state_dict(full: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our full (TP=1) state dict -> Llama tensor names."""
    def get(name: str) -> torch.Tensor:
        key = PREFIX + name
        if key not in full:
            raise KeyError(f"state dict lacks {key!r}: is this a decoder built by ptobj.models.build_model?")
        return full[key]

    out = {"model.embed_tokens.weight": get("embedding.word_embeddings.weight"),
           "model.norm.weight": get("decoder.final_layernorm.weight")}
    for i in range(cfg.num_layers):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        q, k, v = split_qkv(get(src + "self_attention.linear_qkv.weight"), cfg)
        gate, up = torch.chunk(get(src + "mlp.linear_fc1.weight"), 2, dim=0)
        out.update({
            dst + "input_layernorm.weight": get(src + "input_layernorm.weight"),
            dst + "self_attn.q_proj.weight": q, dst + "self_attn.k_proj.weight": k,
            dst + "self_attn.v_proj.weight": v,
            dst + "self_attn.o_proj.weight": get(src + "self_attention.linear_proj.weight"),
            dst + "post_attention_layernorm.weight": get(src + "pre_mlp_layernorm.weight"),
            dst + "mlp.gate_proj.weight": gate, dst + "mlp.up_proj.weight": up,
            dst + "mlp.down_proj.weight": get(src + "mlp.linear_fc2.weight"),
        })
    return out


def write_llama(full: dict[str, torch.Tensor], cfg: ModelConfig, out_dir: Path, special: SpecialTokens) -> None:
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in llama_state_dict(full, cfg).items()}
    dtype_name = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    write_config(llama_config(cfg, special=special, dtype=dtype_name), out_dir, dtype_name,
                 rope_theta=float(cfg.rotary_base))  # transformers 5 nests it in rope_parameters
    write_generation_config(out_dir, special)
    _save(tensors, out_dir)


def _save(tensors: dict[str, torch.Tensor], out_dir: Path) -> None:
    from safetensors.torch import save_file

    path = out_dir / "model.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    _default_mode(path)  # safetensors writes it owner-only; the folder is for sharing and serving


def causal_batch(tokens: torch.Tensor, cfg: ModelConfig | None = None) -> dict[str, torch.Tensor]:
    b, s = tokens.shape
    return {"tokens": tokens, "kv_start": torch.zeros(b, s, dtype=torch.int32),
            "kv_end": torch.arange(1, s + 1, dtype=torch.int32).expand(b, s).contiguous()}


LLAMA = HFFormat(architecture="LlamaForCausalLM", auto_class="AutoModelForCausalLM",
                 pipeline_task="text-generation", write=write_llama, probe_batch=causal_batch,
                 hf_inputs=lambda batch: {"input_ids": batch["tokens"]},
                 hf_logits=lambda out: {"token": out.logits})


# ----------------------------------------------------------------------------- decoder + scalar head -> reward model


def _scalar_head(cfg: ModelConfig) -> str:
    names = [n for n, kind in cfg.head_kinds.items() if kind == "scalar"]
    if len(names) != 1:
        raise NotImplementedError(f"Hugging Face export: ModelConfig.heads {cfg.head_kinds} has {len(names)} scalar "
                                  "heads; LlamaForSequenceClassification has one score")
    return names[0]


def write_llama_reward(full: dict[str, torch.Tensor], cfg: ModelConfig, out_dir: Path,
                       special: SpecialTokens) -> None:
    """A reward model as ``LlamaForSequenceClassification`` (``num_labels=1``): the decoder and
    ``score`` = our scalar head. transformers reads the score at each row's last token that is
    not ``pad_token_id``: the ``<|end|>`` closing a chat-templated response, where we read it."""
    tensors = dict(llama_state_dict(full, cfg))
    key = f"heads.{_scalar_head(cfg)}.score.weight"
    if key not in full:
        raise KeyError(f"state dict lacks {key!r}: is this a reward model built by ptobj.models.build_model?")
    tensors["score.weight"] = full[key]
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    dtype_name = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    config = llama_config(cfg, special=special, dtype=dtype_name)
    config.architectures = [LLAMA_REWARD.architecture]
    config.num_labels = 1
    config.tie_word_embeddings = False  # no LM head to tie
    write_config(config, out_dir, dtype_name, rope_theta=float(cfg.rotary_base))
    _save(tensors, out_dir)


def reward_batch(tokens: torch.Tensor, cfg: ModelConfig | None = None) -> dict[str, torch.Tensor]:
    """The probe with padding after the second row's first half: the score is read at each
    row's last token that is not padding."""
    tokens = tokens.clone()
    if tokens.shape[0] > 1:
        tokens[1, tokens.shape[1] // 2:] = SpecialTokens().pad
    return causal_batch(tokens)


def last_real_token(tokens: torch.Tensor, pad: int) -> torch.Tensor:
    """Per row, the index of the last token that is not ``pad`` (transformers' rule)."""
    idx = torch.arange(tokens.shape[-1], device=tokens.device)
    return ((tokens != pad) * idx).argmax(-1)


LLAMA_REWARD = HFFormat(architecture="LlamaForSequenceClassification",
                        auto_class="AutoModelForSequenceClassification", pipeline_task="text-classification",
                        write=write_llama_reward, probe_batch=reward_batch,
                        hf_inputs=lambda batch: {"input_ids": batch["tokens"],
                                                 "attention_mask": (batch["tokens"] != SpecialTokens().pad).long()},
                        hf_logits=lambda out: {"scalar": out.logits[:, 0]}, scores=True)


# ----------------------------------------------------------------------------- encoder -> BERT / MegatronBERT / ALBERT


def _getter(full: dict[str, torch.Tensor]):
    def get(name: str) -> torch.Tensor:
        if name not in full:
            raise KeyError(f"state dict lacks {name!r}: is this an encoder built by ptobj.models.build_model?")
        return full[name]

    return get


def _sequence_head(cfg: ModelConfig) -> str | None:
    names = [n for n, kind in cfg.head_kinds.items() if kind == "sequence"]
    return names[0] if names else None


def _token_head(cfg: ModelConfig) -> str:
    return next(n for n, kind in cfg.head_kinds.items() if kind == "token")


def dropped_heads(cfg: ModelConfig) -> list[str]:
    """Heads of ``cfg`` the Hugging Face folder does not carry (SBO has no twin there)."""
    return [n for n, kind in cfg.head_kinds.items() if kind == "span_boundary"] if cfg.kind == "encoder" else []


def encoder_layer(full: dict[str, torch.Tensor], cfg: ModelConfig, i: int) -> dict[str, torch.Tensor]:
    """Layer ``i`` of our encoder in neutral names: q/k/v/o/fc1/fc2 ``.w``/``.b``, and the
    LayerNorm of the attention and of the MLP sublayer (``ln_attn`` / ``ln_mlp``: before
    them for pre-norm, after their residual add for post-norm)."""
    get = _getter(full)
    src = f"{PREFIX}decoder.layers.{i}."
    q, k, v = split_qkv(get(src + "self_attention.linear_qkv.weight"), cfg)
    qb, kb, vb = (t[:, 0] for t in split_qkv(get(src + "self_attention.linear_qkv.bias")[:, None], cfg))
    norms = (("input_layernorm", "pre_mlp_layernorm") if cfg.norm_position == "pre"
             else ("post_attention_layernorm", "post_mlp_layernorm"))
    out = {"q.w": q, "q.b": qb, "k.w": k, "k.b": kb, "v.w": v, "v.b": vb}
    for ours, mine in (("self_attention.linear_proj", "o"), ("mlp.linear_fc1", "fc1"), ("mlp.linear_fc2", "fc2"),
                       (norms[0], "ln_attn"), (norms[1], "ln_mlp")):
        out[mine + ".w"], out[mine + ".b"] = get(src + ours + ".weight"), get(src + ours + ".bias")
    return out


def _linear(out: dict, name: str, tensors: dict, key: str) -> None:
    out[name + ".weight"], out[name + ".bias"] = tensors[key + ".w"], tensors[key + ".b"]


def _embeddings(full: dict[str, torch.Tensor], cfg: ModelConfig, dst: str) -> dict[str, torch.Tensor]:
    get = _getter(full)
    emb = PREFIX + "embedding."
    out = {dst + "word_embeddings.weight": get(emb + "word_embeddings.weight"),
           dst + "position_embeddings.weight": get(emb + "position_embeddings.weight")}
    # no segment table: Hugging Face always adds one; a zero row adds nothing
    segments = full.get(emb + "tokentype_embeddings.weight")
    out[dst + "token_type_embeddings.weight"] = (segments if segments is not None else
                                                 torch.zeros(1, cfg.embed_size, dtype=out[dst + "word_embeddings.weight"].dtype))
    if cfg.norm_position == "post":
        out[dst + "LayerNorm.weight"], out[dst + "LayerNorm.bias"] = get(emb + "norm.weight"), get(emb + "norm.bias")
    return out


def _heads(full: dict[str, torch.Tensor], cfg: ModelConfig, mlm: str, pooler: str, classifier: str) -> dict:
    """The MLM transform + bias under ``mlm`` (``.dense``, ``.LayerNorm``, ``.bias``), and the
    sequence head's pooler and classifier, if the model has one."""
    get = _getter(full)
    head = f"heads.{_token_head(cfg)}."
    out = {mlm + "dense.weight": get(head + "dense.weight"), mlm + "dense.bias": get(head + "dense.bias"),
           mlm + "LayerNorm.weight": get(head + "norm.weight"), mlm + "LayerNorm.bias": get(head + "norm.bias"),
           mlm + "bias": get(head + "bias")}
    seq = _sequence_head(cfg)
    if seq is not None:
        for ours, theirs in (("pooler", pooler), ("classifier", classifier)):
            out[theirs + ".weight"] = get(f"heads.{seq}.{ours}.weight")
            out[theirs + ".bias"] = get(f"heads.{seq}.{ours}.bias")
    return out


def bert_state_dict(full: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our post-norm (BERT) or pre-norm (MegatronBERT) encoder -> their tensor names."""
    pre = cfg.norm_position == "pre"
    out = _embeddings(full, cfg, "bert.embeddings.")
    for i in range(cfg.num_layers):
        t, dst = encoder_layer(full, cfg, i), f"bert.encoder.layer.{i}."
        for ours, theirs in (("q", "attention.self.query"), ("k", "attention.self.key"),
                             ("v", "attention.self.value"), ("o", "attention.output.dense"),
                             ("fc1", "intermediate.dense"), ("fc2", "output.dense"),
                             ("ln_attn", "attention.ln" if pre else "attention.output.LayerNorm"),
                             ("ln_mlp", "ln" if pre else "output.LayerNorm")):
            _linear(out, dst + theirs, t, ours)
    if pre:
        get = _getter(full)
        out["bert.encoder.ln.weight"] = get(PREFIX + "decoder.final_layernorm.weight")
        out["bert.encoder.ln.bias"] = get(PREFIX + "decoder.final_layernorm.bias")
    out.update(_heads(full, cfg, "cls.predictions.", "bert.pooler.dense", "cls.seq_relationship"))
    for name in ("dense.weight", "dense.bias", "LayerNorm.weight", "LayerNorm.bias"):
        out["cls.predictions.transform." + name] = out.pop("cls.predictions." + name)
    return out


def albert_groups(cfg: ModelConfig) -> int:
    """ALBERT layer groups: one when every layer is shared, else one per layer."""
    return 1 if cfg.share_layers == "all" else cfg.num_layers


def albert_state_dict(full: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our post-norm encoder (factorised and/or shared) -> ALBERT tensor names."""
    out = _embeddings(full, cfg, "albert.embeddings.")
    get = _getter(full)
    mapping = "albert.encoder.embedding_hidden_mapping_in."
    if cfg.embed_size != cfg.hidden_size:
        out[mapping + "weight"] = get(PREFIX + "embedding.projection.weight")
        out[mapping + "bias"] = get(PREFIX + "embedding.projection.bias")
    else:  # ALBERT always projects; the identity is exact
        dtype = out["albert.embeddings.word_embeddings.weight"].dtype
        out[mapping + "weight"] = torch.eye(cfg.hidden_size, dtype=dtype)
        out[mapping + "bias"] = torch.zeros(cfg.hidden_size, dtype=dtype)
    for g in range(albert_groups(cfg)):
        t, dst = encoder_layer(full, cfg, g), f"albert.encoder.albert_layer_groups.{g}.albert_layers.0."
        for ours, theirs in (("q", "attention.query"), ("k", "attention.key"), ("v", "attention.value"),
                             ("o", "attention.dense"), ("ln_attn", "attention.LayerNorm"), ("fc1", "ffn"),
                             ("fc2", "ffn_output"), ("ln_mlp", "full_layer_layer_norm")):
            _linear(out, dst + theirs, t, ours)
    out.update(_heads(full, cfg, "predictions.", "albert.pooler", "sop_classifier.classifier"))
    return out


def encoder_config(cfg: ModelConfig, family: str, architecture: str, special: SpecialTokens, dtype: str):
    import transformers

    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                  num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.ffn_size, hidden_act="gelu",
                  hidden_dropout_prob=cfg.hidden_dropout, attention_probs_dropout_prob=0.0,
                  max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=max(1, cfg.num_segment_types),
                  initializer_range=cfg.init_method_std, layer_norm_eps=cfg.norm_epsilon, pad_token_id=special.pad,
                  bos_token_id=special.cls, eos_token_id=special.sep, tie_word_embeddings=True,
                  architectures=[architecture], dtype=dtype)
    if family == "albert":
        return transformers.AlbertConfig(embedding_size=cfg.embed_size, num_hidden_groups=albert_groups(cfg),
                                         inner_group_num=1, classifier_dropout_prob=cfg.hidden_dropout, **common)
    return getattr(transformers, {"bert": "BertConfig", "megatron_bert": "MegatronBertConfig"}[family])(**common)


def _encoder_writer(family: str, architecture: str):
    state_dict = albert_state_dict if family == "albert" else bert_state_dict

    def write(full: dict[str, torch.Tensor], cfg: ModelConfig, out_dir: Path, special: SpecialTokens) -> None:
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict(full, cfg).items()}
        dtype_name = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
        write_config(encoder_config(cfg, family, architecture, special, dtype_name), out_dir, dtype_name)
        _save(tensors, out_dir)

    return write


def encoder_batch(tokens: torch.Tensor, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Every position sees the whole row; the second half is segment 1 (when the model
    has two segment types), so the segment table is exercised."""
    b, s = tokens.shape
    segments = torch.zeros(b, s, dtype=torch.long)
    if cfg.num_segment_types > 1:
        segments[:, s // 2:] = 1
    return {"tokens": tokens, "position_ids": torch.arange(s).expand(b, s).contiguous(), "segment_ids": segments,
            "kv_start": torch.zeros(b, s, dtype=torch.int32), "kv_end": torch.full((b, s), s, dtype=torch.int32)}


def encoder_inputs(batch: dict) -> dict:
    return {"input_ids": batch["tokens"], "token_type_ids": batch["segment_ids"],
            "position_ids": batch["position_ids"], "attention_mask": torch.ones_like(batch["tokens"])}


def _encoder_format(family: str, architecture: str) -> HFFormat:
    pretraining = architecture.endswith("ForPreTraining")
    sequence = "sop_logits" if family == "albert" else "seq_relationship_logits"
    logits = ((lambda out: {"token": out.prediction_logits, "sequence": getattr(out, sequence)}) if pretraining
              else (lambda out: {"token": out.logits}))
    return HFFormat(architecture=architecture,
                    auto_class="AutoModelForPreTraining" if pretraining else "AutoModelForMaskedLM",
                    pipeline_task="fill-mask", write=_encoder_writer(family, architecture),
                    probe_batch=encoder_batch, hf_inputs=encoder_inputs, hf_logits=logits, bert_template=True)


# format name -> format; format_name(cfg) picks one
FORMATS: dict[str, HFFormat] = {
    "llama": LLAMA,
    "llama_reward": LLAMA_REWARD,
    **{f"{family}{suffix}": _encoder_format(family, f"{cls}{head}")
       for family, cls in (("bert", "Bert"), ("megatron_bert", "MegatronBert"), ("albert", "Albert"))
       for suffix, head in (("", "ForPreTraining"), ("_mlm", "ForMaskedLM"))},
}


def format_name(cfg: ModelConfig) -> str:
    """The :data:`FORMATS` entry that represents ``cfg`` exactly; a clear error when none does."""
    kind = cfg.require_kind()
    if kind == "decoder":
        if "scalar" in cfg.head_kinds.values():
            _scalar_head(cfg)
            return "llama_reward"
        return "llama"

    def refuse(why: str):
        raise NotImplementedError(f"Hugging Face export of this encoder: {why}")

    albert = cfg.embed_size != cfg.hidden_size or cfg.share_layers != "none"
    if cfg.norm_position == "pre" and albert:
        refuse(f"ModelConfig.norm_position='pre' with embedding_size={cfg.embedding_size} / "
               f"share_layers={cfg.share_layers!r} has no Hugging Face twin (ALBERT is post-norm); "
               "train it with model.norm_position: post")
    if cfg.query_groups != cfg.num_attention_heads:
        refuse(f"ModelConfig.num_query_groups={cfg.num_query_groups}: BERT / ALBERT have no grouped-query attention")
    kinds = list(cfg.head_kinds.values())
    if "token" not in kinds:
        refuse(f"ModelConfig.heads {cfg.head_kinds} has no token head (the MLM head every BERT class has)")
    if kinds.count("sequence") > 1:
        refuse(f"ModelConfig.heads {cfg.head_kinds} has {kinds.count('sequence')} sequence heads; "
               "BERT / ALBERT have one")
    family = "albert" if albert else "bert" if cfg.norm_position == "post" else "megatron_bert"
    return family if "sequence" in kinds else family + "_mlm"


def hf_format(cfg: ModelConfig) -> HFFormat:
    return FORMATS[format_name(cfg)]


# ----------------------------------------------------------------------------- shared files


def write_config(config, out_dir: Path, dtype_name: str, **legacy) -> None:
    """``config.save_pretrained`` plus the weights' dtype under both names transformers has
    used, and ``legacy`` keys that transformers 5 moved (readers on 4.x, e.g. vLLM, want them)."""
    config.save_pretrained(out_dir)
    path = out_dir / "config.json"
    values = json.loads(path.read_text())
    values["torch_dtype"] = values["dtype"] = dtype_name
    values.update(legacy)
    path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")


def _default_mode(path: Path) -> None:
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def write_generation_config(out_dir: Path, special: SpecialTokens, chat: bool = False) -> None:
    """Generation stops at EOT; a chat model's also at ``<|end|>``, which closes its turn."""
    from transformers import GenerationConfig

    eos = [special.chat_end, special.eot] if chat else special.eot
    GenerationConfig(bos_token_id=None, eos_token_id=eos, pad_token_id=special.pad).save_pretrained(out_dir)


def export(model_or_state, cfg: ModelConfig, out_dir: str | Path, *, tokenizer_model: str | Path | None = None,
           special: SpecialTokens | None = None, tp_group=None, dtype: torch.dtype | None = None,
           chat: bool = False) -> Path:
    """Write ``out_dir`` loadable by ``from_pretrained`` of the format's Auto class.

    ``model_or_state``: a model from ``build_model`` (tensor-parallel shards are
    gathered over ``tp_group``; call on every TP rank, TP rank 0 writes) or a full
    (TP=1) state dict. ``tokenizer_model``: the sentencepiece ``.model`` the ids come
    from. ``dtype``: the weights' dtype on disk (default: as given). ``chat``: a chat model
    (trained on ``ptobj.objectives.sft``'s template): the tokenizer carries the template and
    generation also stops at ``<|end|>``."""
    from ptobj.models.sharding import full_state_dict

    fmt = hf_format(cfg)
    special = special or SpecialTokens()
    if isinstance(model_or_state, torch.nn.Module):
        full = full_state_dict(model_or_state, tp_group)
        if tp_group is not None and torch.distributed.get_world_size(tp_group) > 1 \
                and torch.distributed.get_rank(tp_group) != 0:
            return Path(out_dir)
    else:
        full = model_or_state
    if dtype is not None:
        full = {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                for k, v in full.items()}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fmt.write(full, cfg, out_dir, special)
    if chat:
        write_generation_config(out_dir, special, chat=True)
    (out_dir / "pretrain_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    if tokenizer_model is not None:
        from ptobj.models.hf_tokenizer import write_hf_tokenizer

        shutil.copyfile(tokenizer_model, out_dir / "sentencepiece.model")
        write_hf_tokenizer(tokenizer_model, out_dir, special, model_max_length=cfg.max_position_embeddings,
                           bert_template=fmt.bert_template, chat=chat)
    return out_dir
