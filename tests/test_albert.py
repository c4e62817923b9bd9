"""ALBERT (Lan et al. 2020) in the encoder: factorised embedding and cross-layer sharing.

The parameter count is checked against a closed form written from the paper's
description (embedding V*E + E*H instead of V*H; a shared sublayer counted
once), on built models, and at ALBERT-base size against the paper's 12M.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ptobj.models.config import ModelConfig, preset

HEADS = {"lm": "token", "sop": "sequence"}


def albert_params(V: int, E: int, H: int, L: int, I: int, P: int, T: int, share: str,  # noqa: E741
                  post_norm: bool = True) -> int:
    """Parameters of an encoder with an MLM head and a SOP head (pooler + 2-way classifier).

    embeddings: (V + P + T) * E, the embedding LayerNorm (post-norm only), and the E -> H
    projection when E < H; attention sublayer: Q, K, V, O with biases + a LayerNorm;
    FFN sublayer: H -> I -> H with biases + a LayerNorm; each counted once when shared,
    L times otherwise; pre-norm adds the final LayerNorm; MLM head: H -> E dense,
    LayerNorm(E), output bias V (the projection is the tied embedding)."""
    embedding = (V + P + T) * E + (2 * E if post_norm else 0) + (E * H + H if E != H else 0)
    attention = 4 * (H * H + H) + 2 * H
    ffn = 2 * H * I + I + H + 2 * H
    attention_copies = 1 if share in ("all", "attention") else L
    ffn_copies = 1 if share in ("all", "ffn") else L
    final_norm = 0 if post_norm else 2 * H
    mlm = H * E + E + 2 * E + V
    sop = (H * H + H) + (2 * H + 2)
    return embedding + attention_copies * attention + ffn_copies * ffn + final_norm + mlm + sop


def _numel(model) -> int:
    return sum(p.numel() for p in model.parameters())  # a shared weight once


@pytest.fixture(scope="module")
def pg():
    from ptobj.models.parallel import destroy_parallel, init_parallel

    collection = init_parallel(tp=1, pp=1, backend="gloo", seed=0)
    yield collection
    destroy_parallel()


def _tiny(**fields) -> ModelConfig:
    return preset("tiny", kind="encoder", heads=HEADS, num_query_groups=None, num_layers=3, num_segment_types=2,
                  **fields)


@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("embedding_size", [None, 16])
@pytest.mark.parametrize("share", ["none", "all", "attention", "ffn"])
def test_parameter_count_follows_the_formula(pg, share, embedding_size, norm):
    from ptobj.models.model import build_model

    cfg = _tiny(share_layers=share, embedding_size=embedding_size, norm_position=norm)
    expected = albert_params(cfg.vocab_size, cfg.embed_size, cfg.hidden_size, cfg.num_layers, cfg.ffn_size,
                             cfg.max_position_embeddings, cfg.num_segment_types, share, post_norm=norm == "post")
    assert _numel(build_model(cfg, pg)) == expected


def test_albert_base_is_the_papers_12M(pg):
    """ALBERT-base: V=30000, E=128, H=768, 12 layers, all shared (paper, table 3: 12M)."""
    from ptobj.models.model import build_model

    cfg = ModelConfig(kind="encoder", num_layers=12, hidden_size=768, num_attention_heads=12, vocab_size=30000,
                      embedding_size=128, share_layers="all", norm_position="post", max_position_embeddings=512,
                      seq_length=512, num_segment_types=2, heads=HEADS)
    args = (30000, 128, 768, 12, 3072, 512, 2)
    n = _numel(build_model(cfg, pg))
    assert n == albert_params(*args, "all") == 11_813_810
    assert round(n / 1e6) == 12
    # the paper's table 4 (E=128) reports whole millions: 12 / 64 / 38 / 89 for all / attention / FFN / none
    for share, paper in (("all", 12), ("attention", 64), ("ffn", 38), ("none", 89)):
        assert abs(albert_params(*args, share) / 1e6 - paper) < 1.0, share
    # and the factorisation is what takes BERT's V*H embedding down: E=768 unshared is BERT-base (~110M)
    assert abs(albert_params(30000, 768, 768, 12, 3072, 512, 2, "none") / 1e6 - 109.7) < 0.1


def test_shared_layers_are_one_set_of_weights(pg):
    from ptobj.models.model import build_model

    model = build_model(_tiny(share_layers="attention", norm_position="post"), pg)
    layers = model.lm.decoder.layers
    for layer in layers[1:]:
        assert layer.self_attention is layers[0].self_attention
        assert layer.post_attention_layernorm is layers[0].post_attention_layernorm
        assert layer.mlp is not layers[0].mlp
    assert [layer.layer_number for layer in layers] == [1, 2, 3]

    model = build_model(_tiny(share_layers="all", embedding_size=16), pg)
    names = {n for n, _ in model.named_parameters()}
    assert not any(".layers.1." in n or ".layers.2." in n for n in names)  # parameters() lists each once
    state = model.state_dict()  # ... while the state dict has every layer's view of them
    assert state["lm.decoder.layers.2.mlp.linear_fc1.weight"].data_ptr() == \
        state["lm.decoder.layers.0.mlp.linear_fc1.weight"].data_ptr()


def test_a_shared_model_trains_and_reloads(pg):
    """Gradients of a shared weight sum over the layers using it; a saved state dict
    (every layer's view) loads into a freshly drawn model and gives the same outputs."""
    from ptobj.models.model import build_model
    from synthetic_batches import synthetic_batch

    cfg = _tiny(share_layers="all", embedding_size=16, norm_position="post")
    batch = synthetic_batch(2, 32, cfg.vocab_size, kind="encoder", mask="bidirectional", heads=HEADS, seed=3)
    torch.manual_seed(0)
    model = build_model(cfg, pg)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(4):
        out = model(batch)
        loss = sum(v["loss_sum"] / v["count"] for v in out.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    torch.manual_seed(1)
    other = build_model(cfg, pg)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(other.eval().logits(batch), model.eval().logits(batch), atol=0, rtol=0)


def test_factorised_embedding_is_v_by_e_plus_e_by_h(pg):
    from ptobj.models.model import build_model

    cfg = _tiny(embedding_size=16, norm_position="post")
    emb = build_model(cfg, pg).lm.embedding
    assert tuple(emb.word_embeddings.weight.shape) == (cfg.vocab_size, 16)
    assert tuple(emb.position_embeddings.weight.shape) == (cfg.max_position_embeddings, 16)
    assert tuple(emb.projection.weight.shape) == (cfg.hidden_size, 16)
    assert emb.norm.normalized_shape == (16,)
    assert build_model(_tiny(), pg).lm.embedding.projection is None  # E = H: no projection, pre-norm: no norm


@pytest.mark.parametrize("fields, why", [
    ({"kind": "decoder", "share_layers": "all"}, "share_layers: is an encoder option"),
    ({"kind": "decoder", "norm_position": "post"}, "norm_position: is an encoder option"),
    ({"kind": "decoder", "embedding_size": 32}, "embedding_size: is an encoder option"),
    ({"kind": "encoder", "embedding_size": 128}, r"embedding_size: must be an int in \[1, hidden_size=64\]"),
    ({"kind": "encoder", "share_layers": "some"}, "share_layers: must be one of"),
    ({"kind": "encoder", "norm_position": "middle"}, "norm_position: must be one of"),
])
def test_bad_albert_fields_are_named(fields, why):
    with pytest.raises(ValueError, match=why):
        preset("tiny", **fields)


@pytest.mark.parametrize("fields, why", [({"share_layers": "all"}, "cannot be split over pipeline stages"),
                                         ({"embedding_size": 16}, "factorised embedding with pipeline parallel 2")])
def test_pipeline_parallel_refuses_what_it_cannot_split(fields, why):
    from ptobj.models.model import build_model

    group = lambda n: SimpleNamespace(size=lambda: n, rank=lambda: 0)  # noqa: E731
    with pytest.raises(ValueError, match=why):
        build_model(_tiny(**fields), SimpleNamespace(tp=group(1), pp=group(2)))
