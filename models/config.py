"""ModelConfig: one frozen, validated description of a decoder or an encoder.

``kind="decoder"``: Llama-shaped GPT (RoPE, RMSNorm, SwiGLU, no biases, tied
embeddings), next-token LM head. ``kind="encoder"``: BERT-shaped (learned
absolute positions, segment embeddings, LayerNorm, GeLU, biases), cloze LM
head plus optional SBO / SOP / NSP heads. Both run pre-norm megatron-core
transformer blocks; the attention pattern comes from the batch's row
intervals, never from the model kind.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

KINDS = ("decoder", "encoder")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "decoder"
    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    # None: one key/value head per query head (no grouped-query attention)
    num_query_groups: int | None = None
    # None: 4 * hidden_size (encoder) or the Llama rule 8/3 * hidden rounded up to 64 (decoder)
    ffn_hidden_size: int | None = None
    # the model's (padded) vocabulary; pass tokenizer.padded_vocab_size(multiple)
    vocab_size: int = 256
    max_position_embeddings: int = 512
    seq_length: int = 128
    # heads
    lm_head: bool = True
    sbo_head: bool = False
    sop_head: bool = False
    nsp_head: bool = False
    # SBO relative-position table covers offsets 1..sbo_max_offset (larger ones are clamped)
    sbo_max_offset: int = 32
    # encoder segment (UniLM LM id / sentence A-B) embeddings; 0 disables them
    num_segment_types: int = 6
    init_method_std: float = 0.02
    params_dtype: str = "float32"
    norm_epsilon: float = 1e-5
    rotary_base: int = 10000
    hidden_dropout: float = 0.0
    # megatron sequence parallelism (needs tensor parallel > 1 to have an effect)
    sequence_parallel: bool = False
    # megatron activation recompute: None, "selective" or "full"
    recompute_granularity: str | None = None

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> None:
            raise ValueError(f"ModelConfig.{field}: {why} (got {getattr(self, field)!r})")

        if self.kind not in KINDS:
            bad("kind", f"must be one of {KINDS}")
        for name in ("num_layers", "hidden_size", "num_attention_heads", "vocab_size",
                     "max_position_embeddings", "seq_length", "sbo_max_offset", "rotary_base"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                bad(name, "must be a positive int")
        if self.hidden_size % self.num_attention_heads:
            bad("hidden_size", f"must be divisible by num_attention_heads={self.num_attention_heads}")
        groups = self.num_query_groups
        if groups is not None and (not isinstance(groups, int) or groups < 1 or self.num_attention_heads % groups):
            bad("num_query_groups", f"must be a positive divisor of num_attention_heads={self.num_attention_heads}")
        if self.ffn_hidden_size is not None and (not isinstance(self.ffn_hidden_size, int) or self.ffn_hidden_size < 1):
            bad("ffn_hidden_size", "must be a positive int or None")
        if self.seq_length > self.max_position_embeddings:
            bad("seq_length", f"must be <= max_position_embeddings={self.max_position_embeddings}")
        if not isinstance(self.num_segment_types, int) or self.num_segment_types < 0:
            bad("num_segment_types", "must be an int >= 0")
        if not self.init_method_std > 0:
            bad("init_method_std", "must be > 0")
        if self.params_dtype not in DTYPES:
            bad("params_dtype", f"must be one of {DTYPES}")
        if not 0.0 <= self.hidden_dropout < 1.0:
            bad("hidden_dropout", "must lie in [0, 1)")
        if not self.norm_epsilon > 0:
            bad("norm_epsilon", "must be > 0")
        if self.recompute_granularity not in (None, "selective", "full"):
            bad("recompute_granularity", "must be None, 'selective' or 'full'")
        if self.kind == "decoder":
            for head in ("sbo_head", "sop_head", "nsp_head"):
                if getattr(self, head):
                    bad(head, "is an encoder head; set kind='encoder' or turn it off")
        if not (self.lm_head or self.sop_head or self.nsp_head):
            bad("lm_head", "at least one of lm_head / sop_head / nsp_head must be on")
        if self.sbo_head and not self.lm_head:
            bad("sbo_head", "projects through the tied LM vocabulary; needs lm_head=True")

    # derived sizes -------------------------------------------------------
    @property
    def query_groups(self) -> int:
        return self.num_query_groups or self.num_attention_heads

    @property
    def ffn_size(self) -> int:
        if self.ffn_hidden_size is not None:
            return self.ffn_hidden_size
        if self.kind == "encoder":
            return 4 * self.hidden_size
        return -(-int(8 * self.hidden_size / 3) // 64) * 64

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"ModelConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


# Realistic GPU sizes follow GPT-3 table 2.1 widths/depths; decoders use GQA-free Llama blocks.
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                        ffn_hidden_size=128, vocab_size=256, max_position_embeddings=256, seq_length=64),
    "125M": ModelConfig(num_layers=12, hidden_size=768, num_attention_heads=12, vocab_size=32768,
                        max_position_embeddings=2048, seq_length=2048, params_dtype="bfloat16"),
    "350M": ModelConfig(num_layers=24, hidden_size=1024, num_attention_heads=16, vocab_size=32768,
                        max_position_embeddings=2048, seq_length=2048, params_dtype="bfloat16"),
    "1.3B": ModelConfig(num_layers=24, hidden_size=2048, num_attention_heads=16, vocab_size=32768,
                        max_position_embeddings=2048, seq_length=2048, params_dtype="bfloat16"),
}


def preset(name: str, **overrides) -> ModelConfig:
    """A preset with fields replaced, e.g. ``preset("350M", kind="encoder", sop_head=True)``."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
