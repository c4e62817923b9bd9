"""Export a decoder to Hugging Face ``LlamaForCausalLM`` (safetensors + config.json
+ tokenizer files).

Weight layout differences handled here:

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

Tokenizer: ids are sentencepiece ids + 16 behind 16 reserved specials. We copy
the sentencepiece ``.model`` (as ``sentencepiece.model``) and write
``tokenizer.json`` (a ``tokenizers`` Unigram with the 16 reserved tokens
prepended, so ids line up) plus ``tokenizer_config.json``, which makes
``AutoTokenizer.from_pretrained(out_dir)`` work; see ``models.hf_tokenizer``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from models.config import ModelConfig

PREFIX = "lm."


def llama_config(cfg: ModelConfig, *, eos_id: int = 1, pad_id: int = 0, dtype: str | None = None):
    from transformers import LlamaConfig

    if cfg.kind != "decoder":
        raise ValueError(f"ModelConfig.kind: only decoders export to Llama, got {cfg.kind!r}")
    return LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.query_groups, head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.norm_epsilon,
        rope_theta=float(cfg.rotary_base), tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
        hidden_act="silu", initializer_range=cfg.init_method_std, bos_token_id=None, eos_token_id=eos_id,
        pad_token_id=pad_id, dtype=dtype or cfg.params_dtype,
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


def llama_state_dict(full: dict[str, torch.Tensor], cfg: ModelConfig, dtype: torch.dtype | None = None
                     ) -> dict[str, torch.Tensor]:
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
    return {k: (v.to(dtype) if dtype is not None else v).detach().cpu().contiguous().clone() for k, v in out.items()}


def export_llama(model_or_state, cfg: ModelConfig, out_dir: str | Path, *, tokenizer_model: str | Path | None = None,
                 tp_group=None, dtype: torch.dtype | None = None) -> Path:
    """Write ``out_dir`` loadable by ``LlamaForCausalLM.from_pretrained``. ``model_or_state``:
    a model from ``build_model`` (tensor-parallel shards are gathered over ``tp_group``;
    call on every TP rank, rank 0 writes) or a full state dict. ``tokenizer_model``: the
    sentencepiece ``.model`` the ids come from."""
    from safetensors.torch import save_file

    from models.sharding import full_state_dict

    write = True
    if isinstance(model_or_state, torch.nn.Module):
        full = full_state_dict(model_or_state, tp_group)
        if tp_group is not None and torch.distributed.get_world_size(tp_group) > 1:
            write = torch.distributed.get_rank(tp_group) == 0
    else:
        full = model_or_state
    out_dir = Path(out_dir)
    if not write:
        return out_dir
    tensors = llama_state_dict(full, cfg, dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype_name = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    llama_config(cfg, dtype=dtype_name).save_pretrained(out_dir)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "pretrain_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    if tokenizer_model is not None:
        from models.hf_tokenizer import write_hf_tokenizer

        shutil.copyfile(tokenizer_model, out_dir / "sentencepiece.model")
        write_hf_tokenizer(tokenizer_model, out_dir)
    return out_dir
