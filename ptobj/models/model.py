"""build_model: a megatron-core GPTModel (decoder or encoder) plus objective heads.

Both kinds are megatron's ``GPTModel`` (embedding, ``TransformerBlock`` from a
layer spec, tied ``ColumnParallelLinear`` output), with our
``IntervalAttention`` as the spec's core attention, so the state dict has
GPTModel's names under ``lm.`` and megatron's TP/PP/SP/DP machinery applies.
The encoder is the same container with a bidirectional (``padding`` mask type)
spec and its own input embedding (:mod:`ptobj.models.embedding`: learned absolute
positions, segment embeddings, ALBERT's factorisation); its layers may be
post-norm and shared across depth (:mod:`ptobj.models.layers`). The attention pattern
of either kind comes only from the batch's ``kv_start``/``kv_end``.

Usage (one process; torchrun the same for TP/PP/DP)::

    from ptobj.models import ModelConfig, build_model, init_parallel
    pg = init_parallel(tp=1, pp=1)                 # once per process
    model = build_model(ModelConfig(kind="decoder"), pg)
    out = model(batch)   # {"lm": {"loss_sum", "count", "correct"}, ...}: one entry per head in cfg.heads
    (out["lm"]["loss_sum"] / out["lm"]["count"]).backward()
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.models.gpt.gpt_model import GPTModel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build
from megatron.core.transformer.transformer_config import TransformerConfig

from ptobj.models.attention import IntervalAttention, build_attention_mask
from ptobj.models.config import ModelConfig
from ptobj.models.embedding import EncoderEmbedding
from ptobj.models.heads import (ScalarHead, SentenceHead, SpanBoundaryHead, TokenHead, classification_sums, head_present,
                          ranking_sums, span_fields, unclaimed_targets, vocab_parallel_sums)
from ptobj.models.layers import layer_specs, post_norm, shared_slots, tie_shared_layers
from ptobj.models.norms import SequenceParallelNorm
from ptobj.models.rope import make_device_safe

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def transformer_config(cfg: ModelConfig, *, tp: int = 1, pp: int = 1, cpu_init: bool = True) -> TransformerConfig:
    """megatron TransformerConfig for ``cfg``. Fusions that need CUDA/apex/TE are off
    (they are not used by the local spec anyway); ``cpu_init`` draws each full
    weight on the CPU and splits it, so the initial model is the same for any TP."""
    dtype = TORCH_DTYPES[cfg.params_dtype]
    decoder = cfg.require_kind() == "decoder"
    recompute = {}
    if cfg.recompute_granularity == "full":
        recompute = dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    elif cfg.recompute_granularity == "selective":
        recompute = dict(recompute_granularity="selective")
    return TransformerConfig(
        num_layers=cfg.num_layers, hidden_size=cfg.hidden_size, num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.query_groups, ffn_hidden_size=cfg.ffn_size, init_method_std=cfg.init_method_std,
        normalization="RMSNorm" if decoder else "LayerNorm", layernorm_epsilon=cfg.norm_epsilon,
        gated_linear_unit=decoder, activation_func=F.silu if decoder else F.gelu,
        add_bias_linear=not decoder, add_qkv_bias=not decoder,
        hidden_dropout=cfg.hidden_dropout, attention_dropout=0.0,
        params_dtype=dtype, bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
        pipeline_dtype=dtype if pp > 1 else None,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        sequence_parallel=cfg.sequence_parallel and tp > 1,
        use_cpu_initialization=cpu_init, perform_initialization=True,
        gradient_accumulation_fusion=False, bias_activation_fusion=False, bias_dropout_fusion=False,
        masked_softmax_fusion=False, apply_rope_fusion=False, persist_layer_norm=False,
        **recompute,
    )


def layer_spec(cfg: ModelConfig, core_attention=None):
    """megatron's local (no Transformer Engine) GPT layer spec with our core attention
    (or ``core_attention``: any module with megatron's core-attention signature that
    reads ``attention_mask`` as ``kernels.AttentionMask`` data, e.g. a benchmark baseline)."""
    spec = get_gpt_layer_local_spec(normalization="RMSNorm" if cfg.kind == "decoder" else "LayerNorm")
    spec.submodules.self_attention.submodules.core_attention = core_attention or ModuleSpec(
        module=IntervalAttention, params={"backend": cfg.attention_backend})
    mask_type = AttnMaskType.causal if cfg.kind == "decoder" else AttnMaskType.padding
    spec.submodules.self_attention.params = {**spec.submodules.self_attention.params, "attn_mask_type": mask_type}
    spec.submodules.input_layernorm = SequenceParallelNorm
    spec.submodules.pre_mlp_layernorm = SequenceParallelNorm
    return post_norm(spec) if cfg.norm_position == "post" else spec


def block_spec(cfg: ModelConfig, tconfig: TransformerConfig, pp_rank: int, core_attention=None):
    """This pipeline stage's layers (shared slots left as placeholders after the first,
    see ptobj.models.layers) plus, for pre-norm, the final norm; all with SequenceParallelNorm."""
    layers = get_num_layers_to_build(tconfig, pp_rank=pp_rank)
    specs = layer_specs(layer_spec(cfg, core_attention), layers, shared_slots(cfg.norm_position, cfg.share_layers))
    return TransformerBlockSubmodules(layer_specs=specs,
                                      layer_norm=SequenceParallelNorm if cfg.norm_position == "pre" else None)


class EncoderGPTModel(GPTModel):
    """GPTModel with the encoder's input embedding (ptobj.models.embedding) swapped in just
    before megatron ties the output layer to it, so that tying (and, under pipeline
    parallelism, the last stage's copy of the weight) follows the embedding in use."""

    def __init__(self, *args, encoder: ModelConfig, **kwargs):
        self._encoder_cfg = encoder  # read by setup_embeddings_and_output_layer, called from __init__
        super().__init__(*args, **kwargs)

    def setup_embeddings_and_output_layer(self) -> None:
        if self.pre_process:
            self.embedding = EncoderEmbedding(self._encoder_cfg, self.config, self.pg_collection.tp)
        super().setup_embeddings_and_output_layer()


class PretrainModel(MegatronModule):
    """GPTModel (``self.lm``) + heads; ``forward(batch)`` returns per-objective sums."""

    def __init__(self, cfg: ModelConfig, tconfig: TransformerConfig, pg_collection, *,
                 pre_process: bool = True, post_process: bool = True, core_attention=None):
        super().__init__(config=tconfig)
        self.cfg = cfg
        self.pg_collection = pg_collection
        self.tp_group = pg_collection.tp
        decoder = cfg.kind == "decoder"
        lm_class, extra = (GPTModel, {}) if decoder else (EncoderGPTModel, {"encoder": cfg})
        self.lm = lm_class(
            config=tconfig, transformer_layer_spec=block_spec(cfg, tconfig, pg_collection.pp.rank(), core_attention), vocab_size=cfg.vocab_size,
            max_sequence_length=cfg.max_position_embeddings, pre_process=pre_process, post_process=post_process,
            share_embeddings_and_output_weights=True,
            position_embedding_type="rope" if decoder else "learned_absolute", rotary_base=cfg.rotary_base,
            pg_collection=pg_collection, **extra,
        )
        tie_shared_layers(self.lm.decoder.layers, shared_slots(cfg.norm_position, cfg.share_layers))
        if decoder:
            make_device_safe(self.lm.rotary_pos_emb)
        dtype = tconfig.params_dtype
        # loss name -> module, for the heads that have parameters (decoder token heads are the tied embedding alone)
        self.heads = torch.nn.ModuleDict()
        if post_process:
            std, eps = cfg.init_method_std, cfg.norm_epsilon
            for name, kind in cfg.head_kinds.items():
                if kind == "token" and not decoder:
                    self.heads[name] = TokenHead(cfg.hidden_size, cfg.embed_size, cfg.vocab_size // self.tp_group.size(),
                                                 std, eps, dtype)
                elif kind == "span_boundary":
                    self.heads[name] = SpanBoundaryHead(cfg.hidden_size, cfg.sbo_max_offset, std, eps, dtype,
                                                        out=cfg.embed_size)
                elif kind == "sequence":
                    self.heads[name] = SentenceHead(cfg.hidden_size, std, dtype)
                elif kind == "scalar":
                    self.heads[name] = ScalarHead(cfg.hidden_size, std, dtype)

    # megatron pipeline schedules hand activations to non-first stages through this
    def set_input_tensor(self, input_tensor) -> None:
        self.lm.set_input_tensor(input_tensor)

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Final (normed, on the last stage) hidden states [s, b, h]; [s/tp, b, h]
        under sequence parallelism."""
        tokens = batch["tokens"]
        s = tokens.shape[1]
        if s > self.cfg.max_position_embeddings:
            raise ValueError(f"batch tokens length {s} exceeds max_position_embeddings={self.cfg.max_position_embeddings}")
        # once per micro-batch; every layer's core attention reads it (see ptobj/models/attention.py)
        mask = build_attention_mask(batch["kv_start"], batch["kv_end"], self.cfg.attention_backend,
                                    self.config.params_dtype)
        emb = None
        if self.lm.pre_process:
            if self.cfg.kind == "encoder":
                segments = batch.get("segment_ids") if self.cfg.num_segment_types else None
                if segments is not None and int(segments.max()) >= self.cfg.num_segment_types:
                    raise ValueError(f"batch segment_ids reach {int(segments.max())}, but "
                                     f"num_segment_types={self.cfg.num_segment_types}")
                if segments is None and self.cfg.num_segment_types:
                    segments = torch.zeros_like(tokens)
                emb = self.lm.embedding(input_ids=tokens, position_ids=batch["position_ids"],
                                        tokentype_ids=None if segments is None else segments.long())
            else:
                emb = self.lm.embedding(input_ids=tokens, position_ids=None)
        rope = self.lm.rotary_pos_emb(s) if self.cfg.kind == "decoder" else None
        return self.lm.decoder(hidden_states=emb, attention_mask=mask, rotary_pos_emb=rope)

    def tied_weight(self) -> torch.Tensor:
        return self.lm.shared_embedding_or_output_weight()

    def logits(self, batch: dict[str, torch.Tensor], gather: bool = True) -> torch.Tensor:
        """LM logits [b, s, V] (all ranks' vocabulary when ``gather``, else this rank's slice);
        an encoder's through its token head, at every position."""
        hidden = self.hidden_states(batch)
        if self.cfg.kind == "decoder":
            logits, _ = self.lm.output_layer(hidden, weight=self.tied_weight())
            logits = logits.transpose(0, 1)
        else:
            logits = self._token_logits(self._token_head(), self._full_sequence(hidden).transpose(0, 1))
        if gather:
            logits = tensor_parallel.gather_from_tensor_model_parallel_region(logits, group=self.tp_group)
        return logits

    def sequence_logits(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each sequence head's logits [b, 2] (from the first position), by loss name."""
        names = [n for n, kind in self.cfg.head_kinds.items() if kind == "sequence"]
        if not names:
            return {}
        first = self._full_sequence(self.hidden_states(batch))[0]
        return {name: self.heads[name](first) for name in names}

    def scalar_scores(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each scalar head's score at every position [b, s], by loss name (a reward model reads
        the one at the end of a response)."""
        names = [n for n, kind in self.cfg.head_kinds.items() if kind == "scalar"]
        if not names:
            return {}
        full = self._full_sequence(self.hidden_states(batch)).transpose(0, 1)
        return {name: self.heads[name](full) for name in names}

    def forward(self, batch: dict[str, torch.Tensor]):
        """Per-loss sums for the heads whose fields are in ``batch`` (see module docstring);
        on a non-last pipeline stage, the hidden states."""
        wants = self._losses(batch)
        hidden = self.hidden_states(batch)
        if not self.lm.post_process:
            return hidden
        out = {}
        full = None
        for name, kind in wants.items():
            if kind == "token" and self.cfg.kind == "decoder":  # most positions count: project them all
                logits, _ = self.lm.output_layer(hidden, weight=self.tied_weight())
                out[name] = vocab_parallel_sums(logits, batch["labels"].t(), batch["loss_mask"].t(), self.tp_group)
                continue
            if full is None:
                full = self._full_sequence(hidden).transpose(0, 1)  # [b, s, h]
            if kind == "token":  # cloze: project only the predicted positions
                rows, cols = torch.nonzero(batch["loss_mask"] > 0, as_tuple=True)
                out[name] = vocab_parallel_sums(self._token_logits(name, full[rows, cols]),
                                                batch["labels"][rows, cols], batch["loss_mask"][rows, cols],
                                                self.tp_group)
            elif kind == "span_boundary":
                left, right, offset = (batch[f] for f in span_fields(name))
                rows, cols = torch.nonzero(offset > 0, as_tuple=True)
                y = self.heads[name](full, rows, left[rows, cols].long(), right[rows, cols].long(),
                                     offset[rows, cols].long())
                weight = torch.ones(rows.shape[0], device=full.device)
                out[name] = vocab_parallel_sums(self._project(y), batch["labels"][rows, cols], weight, self.tp_group)
            elif kind == "scalar":  # a score where the rank is given, compared pairwise within a row
                rank = batch[f"{name}_rank"]
                rows, cols = torch.nonzero(rank >= 0, as_tuple=True)
                out[name] = ranking_sums(self.heads[name](full[rows, cols]), rows, rank[rows, cols])
            else:  # sequence: classify from the first position ([CLS])
                out[name] = classification_sums(self.heads[name](full[:, 0]), batch[f"{name}_label"].reshape(-1))
        return out

    def _losses(self, batch) -> dict[str, str]:
        """The configured heads whose target fields are in ``batch`` (an evaluation batch may
        hold only some of them)."""
        heads = self.cfg.head_kinds
        stray = unclaimed_targets(heads, batch)
        if stray:
            raise ValueError(f"batch has target field(s) {stray} of no head; ModelConfig.heads is {heads}")
        wants = {name: kind for name, kind in heads.items() if head_present(name, kind, batch)}
        if not wants:
            raise ValueError(f"batch has the target fields of none of the heads {self.cfg.head_kinds}; "
                             f"it has {sorted(batch)}")
        return wants

    def _full_sequence(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.config.sequence_parallel:
            return tensor_parallel.gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=True,
                                                                        group=self.tp_group)
        return hidden

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """[..., E] -> this rank's vocabulary slice [..., V / tp] through the tied embedding."""
        x = tensor_parallel.copy_to_tensor_model_parallel_region(x, group=self.tp_group)
        return F.linear(x, self.tied_weight())

    def _token_head(self) -> str:
        names = [n for n, kind in self.cfg.head_kinds.items() if kind == "token"]
        if not names:
            raise ValueError(f"ModelConfig.heads {self.cfg.head_kinds} has no token head: the model has no LM logits")
        return names[0]

    def _token_logits(self, name: str, hidden: torch.Tensor) -> torch.Tensor:
        """An encoder's cloze logits: [..., H] -> this rank's vocabulary slice [..., V / tp]."""
        head = self.heads[name]
        return self._project(head(hidden)) + head.bias


def build_model(cfg: ModelConfig, pg_collection=None, *, device: str | torch.device | None = None,
                cpu_init: bool = True, pre_process: bool | None = None,
                post_process: bool | None = None, core_attention=None) -> PretrainModel:
    """Build the model for this rank. ``pg_collection``: from ``init_parallel`` (default:
    the groups of megatron's already-initialised ``parallel_state``). Pipeline stages
    default to this rank's place in the pipeline group. ``cpu_init``: draw full weights
    on the CPU and split them (same initial model for any TP; slower for big models);
    False initialises on the current CUDA device with megatron's TP-aware RNG."""
    from megatron.core.process_groups_config import ProcessGroupCollection

    if pg_collection is None:
        pg_collection = ProcessGroupCollection.use_mpu_process_groups()
    cfg.require_kind()
    tp = pg_collection.tp.size()
    pp = pg_collection.pp.size()
    if cfg.vocab_size % tp:
        raise ValueError(f"ModelConfig.vocab_size={cfg.vocab_size} must be divisible by tensor parallel size {tp}")
    if cfg.query_groups % tp:
        raise ValueError(f"ModelConfig.num_query_groups={cfg.query_groups} must be divisible by tensor parallel size {tp}")
    if pp > 1 and cfg.share_layers != "none":
        raise ValueError(f"ModelConfig.share_layers={cfg.share_layers!r}: layers shared across depth cannot be "
                         f"split over pipeline stages (pipeline parallel {pp})")
    if pp > 1 and cfg.embed_size != cfg.hidden_size:
        raise ValueError(f"ModelConfig.embedding_size={cfg.embedding_size}: a factorised embedding with pipeline "
                         f"parallel {pp} is not supported (the last stage's copy of the tied weight is "
                         "hidden_size wide)")
    if pp > 1 and not torch.cuda.is_available():
        raise ValueError("pipeline parallel > 1 needs CUDA: megatron-core 0.16.1 moves the tied output weight "
                         "to CUDA to synchronise the first and last stages")
    pp_rank = pg_collection.pp.rank()
    pre_process = pp_rank == 0 if pre_process is None else pre_process
    post_process = pp_rank == pp - 1 if post_process is None else post_process
    model = PretrainModel(cfg, transformer_config(cfg, tp=tp, pp=pp, cpu_init=cpu_init), pg_collection,
                          pre_process=pre_process, post_process=post_process, core_attention=core_attention)
    if device is not None:
        model = model.to(device)
    return model
