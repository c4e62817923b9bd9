"""Export a model to a Hugging Face folder: weights (safetensors), ``config.json``,
``generation_config.json`` and tokenizer files.

``export(model_or_state, cfg, out_dir, tokenizer_model=...)`` is the one entry; it
picks the Hugging Face format for ``cfg.kind`` from :data:`FORMATS` (the one place
that dispatches on the model kind). Decoders export to ``LlamaForCausalLM``;
encoders are not supported yet (:func:`hf_format` says so).

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
``AutoTokenizer.from_pretrained(out_dir)`` work; see ``models.hf_tokenizer``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from models.config import ModelConfig
from objectives.sample import SpecialTokens

PREFIX = "lm."


@dataclass(frozen=True)
class HFFormat:
    """How one model kind is written for, and loaded by, Hugging Face tools."""

    architecture: str  # config.json "architectures"[0]: a transformers model class
    auto_class: str  # the transformers Auto class that loads the folder
    pipeline_task: str  # transformers.pipeline(task, model=out_dir)
    write: Callable[[dict, ModelConfig, Path, SpecialTokens], None]  # (tensors, cfg, out_dir, special)
    probe_batch: Callable[[torch.Tensor], dict]  # token ids [b, s] -> the batch our model.logits reads


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
            raise KeyError(f"state dict lacks {key!r}: is this a decoder built by models.build_model?")
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
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in llama_state_dict(full, cfg).items()}
    dtype_name = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    write_config(llama_config(cfg, special=special, dtype=dtype_name), out_dir, dtype_name,
                 rope_theta=float(cfg.rotary_base))  # transformers 5 nests it in rope_parameters
    write_generation_config(out_dir, special)
    path = out_dir / "model.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    _default_mode(path)  # safetensors writes it owner-only; the folder is for sharing and serving


def causal_batch(tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    b, s = tokens.shape
    return {"tokens": tokens, "kv_start": torch.zeros(b, s, dtype=torch.int32),
            "kv_end": torch.arange(1, s + 1, dtype=torch.int32).expand(b, s).contiguous()}


LLAMA = HFFormat(architecture="LlamaForCausalLM", auto_class="AutoModelForCausalLM",
                 pipeline_task="text-generation", write=write_llama, probe_batch=causal_batch)

# model kind -> format; an encoder format (e.g. BERT / ALBERT) is one more entry
FORMATS: dict[str, HFFormat] = {"decoder": LLAMA}


def hf_format(cfg: ModelConfig) -> HFFormat:
    fmt = FORMATS.get(cfg.kind)
    if fmt is None:
        supported = ", ".join(f"{k} ({f.architecture})" for k, f in FORMATS.items())
        raise NotImplementedError(f"ModelConfig.kind={cfg.kind!r}: Hugging Face export of {cfg.kind}s is not "
                                  f"supported yet; supported: {supported}")
    return fmt


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


def write_generation_config(out_dir: Path, special: SpecialTokens) -> None:
    from transformers import GenerationConfig

    GenerationConfig(bos_token_id=None, eos_token_id=special.eot, pad_token_id=special.pad).save_pretrained(out_dir)


def export(model_or_state, cfg: ModelConfig, out_dir: str | Path, *, tokenizer_model: str | Path | None = None,
           special: SpecialTokens | None = None, tp_group=None, dtype: torch.dtype | None = None) -> Path:
    """Write ``out_dir`` loadable by ``from_pretrained`` of the format's Auto class.

    ``model_or_state``: a model from ``build_model`` (tensor-parallel shards are
    gathered over ``tp_group``; call on every TP rank, TP rank 0 writes) or a full
    (TP=1) state dict. ``tokenizer_model``: the sentencepiece ``.model`` the ids come
    from. ``dtype``: the weights' dtype on disk (default: as given)."""
    from models.sharding import full_state_dict

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
    (out_dir / "pretrain_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    if tokenizer_model is not None:
        from models.hf_tokenizer import write_hf_tokenizer

        shutil.copyfile(tokenizer_model, out_dir / "sentencepiece.model")
        write_hf_tokenizer(tokenizer_model, out_dir, special, model_max_length=cfg.max_position_embeddings)
    return out_dir
