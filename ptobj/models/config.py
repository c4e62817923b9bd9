"""ModelConfig: one frozen, validated description of a decoder or an encoder.

``kind="decoder"``: Llama-shaped GPT (RoPE, RMSNorm, SwiGLU, no biases, tied
embeddings), next-token LM head, pre-norm. ``kind="encoder"``: BERT-shaped
(learned absolute positions, segment embeddings, LayerNorm, GeLU, biases),
BERT's cloze LM head (dense + GeLU + LayerNorm, tied projection, output bias)
plus optional span-boundary / sequence-classification heads. Either kind may carry a
``scalar`` head (a reward model's score, read where the batch says). The attention
pattern comes from the batch's row intervals, never from the model kind.

Encoder architecture options (each has an exact Hugging Face twin, see
``ptobj.models.hf_export``):

* ``norm_position``: ``"pre"`` (megatron's order: LayerNorm before attention and
  MLP, a final LayerNorm; MegatronBERT) or ``"post"`` (BERT's and ALBERT's
  original order: LayerNorm after each residual add and on the embeddings, no
  final LayerNorm).
* ``embedding_size`` (ALBERT's E): the vocabulary is embedded in E < H
  dimensions and projected to H; the LM head maps H back to E before the tied
  projection. None = H.
* ``share_layers`` (ALBERT's cross-layer sharing): ``"all"``, ``"attention"``
  or ``"ffn"`` sublayers (with their LayerNorm) shared by every layer; ``"none"``.

``heads`` maps each loss name to the head kind computing it
(``{"lm": "token", "sop": "sequence"}``; see :mod:`ptobj.models.heads`). In a
training recipe ``kind`` and ``heads`` come from the objective's declaration
(``ptobj.objectives.task``) and may be left out; set by hand they must agree with it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

KINDS = ("decoder", "encoder")
# head kinds ptobj.models.heads implements; the sample fields each reads are in ptobj.objectives.task
HEAD_KINDS = ("token", "span_boundary", "sequence", "scalar")
# head kinds a decoder may have (the others read an encoder's bidirectional states)
DECODER_HEAD_KINDS = ("token", "scalar")
ATTENTION_BACKENDS = ("auto", "triton", "flex", "sdpa", "reference")
DTYPES = ("float32", "bfloat16", "float16")
NORM_POSITIONS = ("pre", "post")
# which sublayers every layer shares with the first (ALBERT's all-shared / shared-attention / shared-FFN)
SHARE_LAYERS = ("none", "all", "attention", "ffn")


@dataclass(frozen=True)
class ModelConfig:
    # "decoder" | "encoder"; None = not chosen yet (a recipe derives it from the objective)
    kind: str | None = None
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
    # loss name -> head kind; None = {"lm": "token"} (a recipe derives it from the objective)
    heads: dict[str, str] | None = None
    # span-boundary relative-position table covers offsets 1..sbo_max_offset (larger ones are clamped)
    sbo_max_offset: int = 32
    # encoder segment (UniLM LM id / sentence A-B) embeddings; 0 disables them
    num_segment_types: int = 6
    # encoders: "pre" (megatron, MegatronBERT) or "post" (BERT / ALBERT's original LayerNorm order)
    norm_position: str = "pre"
    # encoders: ALBERT's factorised embedding size E (vocabulary -> E -> hidden); None = hidden_size
    embedding_size: int | None = None
    # encoders: ALBERT's cross-layer parameter sharing, one of SHARE_LAYERS
    share_layers: str = "none"
    init_method_std: float = 0.02
    params_dtype: str = "float32"
    norm_epsilon: float = 1e-5
    rotary_base: int = 10000
    hidden_dropout: float = 0.0
    # megatron sequence parallelism (needs tensor parallel > 1 to have an effect)
    sequence_parallel: bool = False
    # megatron activation recompute: None, "selective" or "full"
    recompute_granularity: str | None = None
    # attention kernels (ptobj.kernels.masked_attention): auto = triton for fp16/bf16 on CUDA, else
    # the torch reference; flex = FlexAttention; sdpa = PyTorch SDPA (plain causal masks only)
    attention_backend: str = "auto"

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> None:
            raise ValueError(f"ModelConfig.{field}: {why} (got {getattr(self, field)!r})")

        if self.kind is not None and self.kind not in KINDS:
            bad("kind", f"must be one of {KINDS} (or None until a recipe derives it)")
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
        if self.norm_position not in NORM_POSITIONS:
            bad("norm_position", f"must be one of {NORM_POSITIONS}")
        if self.share_layers not in SHARE_LAYERS:
            bad("share_layers", f"must be one of {SHARE_LAYERS}")
        if self.embedding_size is not None and (not isinstance(self.embedding_size, int)
                                                or isinstance(self.embedding_size, bool)
                                                or not 1 <= self.embedding_size <= self.hidden_size):
            bad("embedding_size", f"must be an int in [1, hidden_size={self.hidden_size}] or None")
        if self.kind == "decoder":
            for name, plain in (("norm_position", "pre"), ("share_layers", "none")):
                if getattr(self, name) != plain:
                    bad(name, f"is an encoder option; decoders are {plain!r}")
            if self.embedding_size not in (None, self.hidden_size):
                bad("embedding_size", "is an encoder option; decoders embed in hidden_size")
        if not self.init_method_std > 0:
            bad("init_method_std", "must be > 0")
        if self.params_dtype not in DTYPES:
            bad("params_dtype", f"must be one of {DTYPES}")
        if not 0.0 <= self.hidden_dropout < 1.0:
            bad("hidden_dropout", "must lie in [0, 1)")
        if not self.norm_epsilon > 0:
            bad("norm_epsilon", "must be > 0")
        if self.attention_backend not in ATTENTION_BACKENDS:
            bad("attention_backend", f"must be one of {ATTENTION_BACKENDS}")
        if self.recompute_granularity not in (None, "selective", "full"):
            bad("recompute_granularity", "must be None, 'selective' or 'full'")
        heads = self.head_kinds
        if not heads:
            bad("heads", "needs at least one head")
        for name, head in heads.items():
            if head not in HEAD_KINDS:
                bad("heads", f"head kind of {name!r} must be one of {HEAD_KINDS}")
            if self.kind == "decoder" and head not in DECODER_HEAD_KINDS:
                bad("heads", f"{name!r} ({head}) is an encoder head; decoders have {DECODER_HEAD_KINDS} heads")
        if list(heads.values()).count("token") > 1:
            bad("heads", "at most one token head (it reads the batch's labels / loss_mask)")

    # derived values ------------------------------------------------------
    @property
    def head_kinds(self) -> dict[str, str]:
        return dict(self.heads) if self.heads is not None else {"lm": "token"}

    def require_kind(self) -> str:
        if self.kind is None:
            raise ValueError("ModelConfig.kind: not set; choose 'decoder' or 'encoder' (recipes derive it "
                             "from the objective)")
        return self.kind

    @property
    def query_groups(self) -> int:
        return self.num_query_groups or self.num_attention_heads

    @property
    def ffn_size(self) -> int:
        if self.ffn_hidden_size is not None:
            return self.ffn_hidden_size
        if self.require_kind() == "encoder":
            return 4 * self.hidden_size
        return -(-int(8 * self.hidden_size / 3) // 64) * 64

    @property
    def embed_size(self) -> int:
        """Width of the token / position / segment embeddings (ALBERT's E)."""
        return self.embedding_size or self.hidden_size

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
    "tiny": ModelConfig(kind="decoder", num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                        ffn_hidden_size=128, vocab_size=256, max_position_embeddings=256, seq_length=64),
    "125M": ModelConfig(kind="decoder", num_layers=12, hidden_size=768, num_attention_heads=12, vocab_size=32768,
                        max_position_embeddings=2048, seq_length=2048, params_dtype="bfloat16"),
    "350M": ModelConfig(kind="decoder", num_layers=24, hidden_size=1024, num_attention_heads=16, vocab_size=32768,
                        max_position_embeddings=2048, seq_length=2048, params_dtype="bfloat16"),
    "1.3B": ModelConfig(kind="decoder", num_layers=24, hidden_size=2048, num_attention_heads=16, vocab_size=32768,
                        max_position_embeddings=2048, seq_length=2048, params_dtype="bfloat16"),
}


def preset(name: str, **overrides) -> ModelConfig:
    """A preset with fields replaced, e.g. ``preset("350M", kind="encoder", heads={"lm": "token", "sop": "sequence"})``."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
