"""The encoder's input embedding: BERT's, with ALBERT's factorisation.

word (vocabulary-parallel) + learned absolute position + segment embeddings, all
of width E = ``ModelConfig.embed_size``; then, for a post-norm encoder, BERT's
embedding LayerNorm (over E); then, when E < hidden, ALBERT's projection E -> H.
Output [s, b, H] ([s/tp, b, H] under sequence parallelism), as megatron's
``LanguageModelEmbedding`` gives it.

Everything after the vocabulary lookup (whose all-reduce makes it whole on
every tensor-parallel rank) runs replicated on the full sequence, so the norm
and projection parameters get identical gradients on every rank.
"""

from __future__ import annotations

import torch
from megatron.core import tensor_parallel
from megatron.core.transformer.module import MegatronModule


class EncoderEmbedding(MegatronModule):
    def __init__(self, cfg, tconfig, tp_group):
        super().__init__(config=tconfig)
        width, dtype = cfg.embed_size, tconfig.params_dtype
        self.tp_group = tp_group
        self.word_embeddings = tensor_parallel.VocabParallelEmbedding(
            num_embeddings=cfg.vocab_size, embedding_dim=width, init_method=tconfig.embedding_init_method,
            config=tconfig, tp_group=tp_group)
        self.position_embeddings = torch.nn.Embedding(cfg.max_position_embeddings, width, dtype=dtype)
        tconfig.embedding_init_method(self.position_embeddings.weight)
        self.tokentype_embeddings = None
        if cfg.num_segment_types:
            self.tokentype_embeddings = torch.nn.Embedding(cfg.num_segment_types, width, dtype=dtype)
            tconfig.embedding_init_method(self.tokentype_embeddings.weight)
        self.norm = (torch.nn.LayerNorm(width, eps=cfg.norm_epsilon, dtype=dtype)
                     if cfg.norm_position == "post" else None)
        self.projection = None
        if width != cfg.hidden_size:
            self.projection = torch.nn.Linear(width, cfg.hidden_size, dtype=dtype)
            tconfig.init_method(self.projection.weight)
            torch.nn.init.zeros_(self.projection.bias)
        self.embedding_dropout = torch.nn.Dropout(tconfig.hidden_dropout)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                tokentype_ids: torch.Tensor | None = None) -> torch.Tensor:
        """ids [b, s] -> [s, b, H] (sequence-parallel slice when enabled)."""
        x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
        if tokentype_ids is not None:
            x = x + self.tokentype_embeddings(tokentype_ids)
        x = x.transpose(0, 1).contiguous()
        if self.norm is not None:
            x = self.norm(x)
        if self.projection is not None:
            x = self.projection(x)
        if self.config.sequence_parallel:
            x = tensor_parallel.scatter_to_sequence_parallel_region(x, group=self.tp_group)
            with tensor_parallel.get_cuda_rng_tracker().fork():
                return self.embedding_dropout(x)
        return self.embedding_dropout(x)
