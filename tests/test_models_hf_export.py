"""HF export: a tiny GQA decoder exported to LlamaForCausalLM gives our logits; the folder
carries what Hugging Face tools read (architectures, special ids, dtype, generation defaults)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptobj.models.config import preset


@pytest.fixture(scope="module")
def pg():
    from ptobj.models.parallel import destroy_parallel, init_parallel

    collection = init_parallel(tp=1, pp=1, backend="gloo", seed=0)
    yield collection
    destroy_parallel()


def test_split_qkv_follows_megatron_group_interleaving():
    from ptobj.models.hf_export import split_qkv

    cfg = preset("tiny", num_attention_heads=4, num_query_groups=2, hidden_size=8)  # r=2 q heads per group, d=2
    # tag each row with (group, slot, dim): slot 0..1 = q heads, 2 = k, 3 = v
    rows = torch.tensor([[g * 100 + slot * 10 + dim] for g in range(2) for slot in range(4) for dim in range(2)],
                        dtype=torch.float32)
    q, k, v = split_qkv(rows, cfg)
    assert q[:, 0].tolist() == [0, 1, 10, 11, 100, 101, 110, 111]  # head j = group j // 2, slot j % 2
    assert k[:, 0].tolist() == [20, 21, 120, 121]
    assert v[:, 0].tolist() == [30, 31, 130, 131]


def test_export_loads_in_transformers_with_matching_logits(pg, tmp_path):
    from transformers import LlamaForCausalLM

    from ptobj.models.hf_export import export
    from ptobj.models.model import build_model

    torch.manual_seed(0)
    cfg = preset("tiny", num_layers=2, num_attention_heads=4, num_query_groups=2, rotary_base=5000)
    model = build_model(cfg, pg).eval()
    with torch.no_grad():  # norms start at 1: give them values so their mapping is checked too
        for name, p in model.named_parameters():
            if "layernorm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
    export(model, cfg, tmp_path / "hf")
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert hf.config.num_key_value_heads == 2

    rng = np.random.default_rng(0)
    tokens = torch.as_tensor(rng.integers(16, cfg.vocab_size, size=(2, 24)))
    s = tokens.shape[1]
    batch = {"tokens": tokens, "kv_start": torch.zeros(2, s, dtype=torch.int32),
             "kv_end": torch.arange(1, s + 1, dtype=torch.int32).expand(2, s).contiguous()}
    with torch.no_grad():
        ours = model.logits(batch)
        theirs = hf(input_ids=tokens).logits
    assert ours.abs().max() > 0.1  # not a degenerate comparison
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


TEXTS = ["The quick brown fox jumps over the lazy dog 12345.", "  indented\tcode = f(x)  # comment",
         "中文分词 测试 文本 😀", "def f(a, b):\n    return a + b\n"]


def test_exported_tokenizer_gives_our_ids(pg, tmp_path):
    from transformers import AutoTokenizer

    from ptobj.data_pipeline.tokenizer import SentencePieceTokenizer
    from ptobj.models.hf_export import export
    from ptobj.models.model import build_model

    ours = SentencePieceTokenizer.train(TEXTS * 20, 340, model_path=tmp_path / "sp.model")
    cfg = preset("tiny", vocab_size=ours.padded_vocab_size(64))
    export(build_model(cfg, pg), cfg, tmp_path / "hf", tokenizer_model=tmp_path / "sp.model")
    assert (tmp_path / "hf" / "sentencepiece.model").read_bytes() == (tmp_path / "sp.model").read_bytes()
    hf = AutoTokenizer.from_pretrained(tmp_path / "hf")
    samples = ["Hello  world 2024!\n\n  x", "The lazy dog 😀 ñ Ω", "中文 test", " leading", "tab\tx", "zzqqxx ~~"]
    for text in samples:
        ids = hf(text, add_special_tokens=False)["input_ids"]
        assert ids == ours.encode(text), text
        assert hf.decode(ids) == ours.decode(ids) == text
    special = ours.special
    assert (hf.eos_token_id, hf.pad_token_id, hf.mask_token_id) == (special.eot, special.pad, special.mask)
    assert hf.convert_tokens_to_ids("<fim_middle>") == special.fim_middle


def test_span_sentinels_follow_the_pieces_in_the_exported_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from ptobj.data_pipeline.tokenizer import SentencePieceTokenizer
    from ptobj.models.hf_tokenizer import write_hf_tokenizer

    ours = SentencePieceTokenizer.train(TEXTS * 20, 340, model_path=tmp_path / "sp.model")
    special = ours.special.with_sentinels(ours.vocab_size, 5)
    write_hf_tokenizer(tmp_path / "sp.model", tmp_path / "hf", special)
    hf = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert len(hf) == ours.vocab_size + 5
    assert hf.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_4>"]) == special.sentinels()[[0, 4]].tolist()
    # raw text spelling a sentinel is special to HF tools, never to our pipeline
    assert ours.encode("<extra_id_0>") != [special.sentinel_base]
    with pytest.raises(ValueError, match="sentinels start at"):
        write_hf_tokenizer(tmp_path / "sp.model", tmp_path / "bad", ours.special.with_sentinels(ours.vocab_size + 1, 2))


def test_config_carries_what_hf_tools_read(pg, tmp_path):
    import json

    import transformers
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from ptobj.data_pipeline.tokenizer import SentencePieceTokenizer
    from ptobj.models.hf_export import export
    from ptobj.models.model import build_model

    ours = SentencePieceTokenizer.train(TEXTS * 20, 340, model_path=tmp_path / "sp.model")
    cfg = preset("tiny", vocab_size=ours.padded_vocab_size(64), rotary_base=5000)
    export(build_model(cfg, pg), cfg, tmp_path / "hf", tokenizer_model=tmp_path / "sp.model", dtype=torch.bfloat16)
    raw = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert raw["architectures"] == ["LlamaForCausalLM"]
    assert raw["torch_dtype"] == raw["dtype"] == "bfloat16"
    assert raw["rope_theta"] == 5000.0
    config = AutoConfig.from_pretrained(tmp_path / "hf")
    assert getattr(transformers, config.architectures[0]).__name__ == "LlamaForCausalLM"  # how TRL picks the class
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    gen = GenerationConfig.from_pretrained(tmp_path / "hf")
    special = ours.special
    assert (config.eos_token_id, config.pad_token_id, config.bos_token_id) == (special.eot, special.pad, None)
    assert (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == (special.eot, special.pad, None)
    assert (gen.eos_token_id, gen.pad_token_id, gen.bos_token_id) == (special.eot, special.pad, None)
    assert tok.convert_ids_to_tokens(special.eot) == "<|endoftext|>"
    assert tok.model_max_length == cfg.max_position_embeddings
    from safetensors import safe_open

    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}


ENCODERS = {  # our encoder -> the transformers class that represents it exactly
    "MegatronBertForPreTraining": {},
    "BertForPreTraining": {"norm_position": "post"},
    "AlbertForPreTraining": {"norm_position": "post", "embedding_size": 32, "share_layers": "all", "num_layers": 3},
    "AlbertForPreTraining-attention": {"norm_position": "post", "embedding_size": 16, "share_layers": "attention",
                                       "num_layers": 3},
    "AlbertForPreTraining-ffn": {"norm_position": "post", "share_layers": "ffn", "num_layers": 3},
    "AlbertForPreTraining-factorised": {"norm_position": "post", "embedding_size": 32},
}


def _encoder(pg, heads, **fields):
    from ptobj.models.model import build_model

    torch.manual_seed(0)
    cfg = preset("tiny", kind="encoder", heads=heads, num_query_groups=None, **fields)
    model = build_model(cfg, pg).eval()
    with torch.no_grad():  # norms start at 1 and biases at 0: move them so their mapping is checked too
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    return cfg, model


@pytest.mark.parametrize("sop", [True, False], ids=["pretraining", "mlm"])
@pytest.mark.parametrize("name", list(ENCODERS))
def test_encoder_exports_give_our_mlm_and_sop_logits(pg, tmp_path, name, sop):
    import transformers

    from ptobj.models.hf_export import dropped_heads, export, hf_format

    heads = {"lm": "token", "sbo": "span_boundary", **({"sop": "sequence"} if sop else {})}
    cfg, model = _encoder(pg, heads, **ENCODERS[name])
    fmt = hf_format(cfg)
    architecture = name.split("-")[0] if sop else name.split("-")[0].replace("ForPreTraining", "ForMaskedLM")
    assert fmt.architecture == architecture
    assert dropped_heads(cfg) == ["sbo"]
    export(model, cfg, tmp_path / "hf")
    hf, info = getattr(transformers, fmt.auto_class).from_pretrained(tmp_path / "hf", dtype=torch.float32,
                                                                    output_loading_info=True)
    assert type(hf).__name__ == architecture
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    tokens = torch.as_tensor(np.random.default_rng(0).integers(16, cfg.vocab_size, size=(2, 24)))
    batch = fmt.probe_batch(tokens, cfg)
    assert batch["segment_ids"].max() == 1  # both segment embeddings take part
    with torch.no_grad():
        ours = {"token": model.logits(batch), **{"sequence": v for v in model.sequence_logits(batch).values()}}
        theirs = fmt.hf_logits(hf.eval()(**fmt.hf_inputs(batch)))
    assert set(theirs) == ({"token", "sequence"} if sop else {"token"})
    assert ours["token"].abs().max() > 0.5  # not a degenerate comparison
    for kind in theirs:
        torch.testing.assert_close(theirs[kind], ours[kind], atol=1e-4, rtol=0)


def test_albert_shares_layers_on_disk_as_hf_does(pg, tmp_path):
    """All-shared: one ALBERT layer group (the paper's size on disk); otherwise one group per layer."""
    import json

    from ptobj.models.hf_export import export

    for share, groups in (("all", 1), ("attention", 3)):
        cfg, model = _encoder(pg, {"lm": "token", "sop": "sequence"}, **ENCODERS["AlbertForPreTraining"]
                              | {"share_layers": share})
        export(model, cfg, tmp_path / share)
        raw = json.loads((tmp_path / share / "config.json").read_text())
        assert (raw["num_hidden_groups"], raw["embedding_size"], raw["hidden_act"]) == (groups, 32, "gelu")


@pytest.mark.parametrize("fields, why", [
    ({"embedding_size": 32}, r"norm_position='pre' with embedding_size=32.*no Hugging Face twin.*norm_position: post"),
    ({"share_layers": "all"}, r"share_layers='all' has no Hugging Face twin"),
    ({"norm_position": "post", "num_query_groups": 2}, "num_query_groups=2: BERT / ALBERT have no grouped-query"),
    ({"norm_position": "post", "heads": {"sop": "sequence"}}, "has no token head"),
    ({"norm_position": "post", "heads": {"lm": "token", "sop": "sequence", "nsp": "sequence"}}, "2 sequence heads"),
])
def test_encoders_without_a_twin_are_refused_naming_the_field(tmp_path, fields, why):
    from ptobj.models.hf_export import export

    cfg = preset("tiny", **{"kind": "encoder", "num_query_groups": None, **fields})
    with pytest.raises(NotImplementedError, match=why):
        export({}, cfg, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
