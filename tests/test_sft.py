"""SFT: the chat template's reserved control tokens, the loss on response tokens only, packed
conversations with per-conversation attention, init_from, and a tiny run end to end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from ptobj.objectives import registry
from ptobj.objectives.intervals import dense
from ptobj.objectives.sample import SpecialTokens
from ptobj.objectives.sft import SFT, SFTConfig, render

SP = SpecialTokens()
ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "ptobj" / "recipes" / "configs"


def char_encode(text: str) -> list[int]:
    """A stand-in tokenizer: one regular id per character."""
    return [SP.first_regular + ord(c) % 200 for c in text]


def c(text: str) -> list[int]:
    return char_encode(text)


CONVERSATION = [{"role": "system", "content": "ab"}, {"role": "user", "content": "cd"},
                {"role": "assistant", "content": "ef"}, {"role": "user", "content": "g"},
                {"role": "assistant", "content": "hi"}]


def test_render_writes_the_template_and_marks_the_assistant_tokens():
    ids, response = render(CONVERSATION, char_encode, SP)
    S, U, A, E, T = SP.chat_system, SP.chat_user, SP.chat_assistant, SP.chat_end, SP.eot
    assert ids.tolist() == [S, *c("ab"), E, U, *c("cd"), E, A, *c("ef"), E, U, *c("g"), E, A, *c("hi"), E, T]
    #                         S  a  b  E  U  c  d  E  A  e  f  E  U  g  E  A  h  i  E  T
    assert response.astype(int).tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0]


def test_bad_records_are_named():
    with pytest.raises(ValueError, match=r"record 7\.messages\[1\]\.role: 'bot'"):
        render([{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}], char_encode, SP, "record 7")
    with pytest.raises(ValueError, match="non-empty list"):
        render([], char_encode, SP)
    with pytest.raises(ValueError, match="reserved id"):   # a tokenizer that leaks a reserved id
        render([{"role": "user", "content": "x"}], lambda t: [SP.chat_user], SP)


def _packed(convs, S):
    """Conversations packed into one row of S + 1 ids (pad after), as the record sampler does."""
    ids = np.concatenate([render(m, char_encode, SP)[0] for m in convs])
    resp = np.concatenate([render(m, char_encode, SP)[1] for m in convs]).astype(np.int32)
    pad = S + 1 - ids.size
    return {"tokens": np.pad(ids, (0, pad)).astype(np.int32), "response": np.pad(resp, (0, pad)).astype(np.int32)}


def test_loss_counts_where_the_label_is_a_response_token():
    first = [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "cd"}]
    second = [{"role": "user", "content": "e"}, {"role": "assistant", "content": "fgh"}]
    S = 24
    out = SFT(SFTConfig(S), special=SP, vocab_size=300)(_packed([first, second], S))
    # row: U a b E A c d E T | U e E A f g h E T | pad x 6  (S + 1 = 25 ids)
    expected = np.zeros(S)
    expected[[4, 5, 6]] = 1      # labels c, d, <|end|> of the first answer (inputs A, c, d)
    expected[[12, 13, 14, 15]] = 1  # labels f, g, h, <|end|> of the second
    np.testing.assert_array_equal(out["loss_mask"], expected)
    assert out["labels"][[4, 5, 6]].tolist() == [*c("cd"), SP.chat_end]
    assert out["labels"][15] == SP.chat_end


def test_packed_conversations_attend_only_within_themselves():
    convs = [[{"role": "user", "content": "x" * n}, {"role": "assistant", "content": "y" * (n + 1)}] for n in (1, 3, 2)]
    S = 40
    batch = _packed(convs, S)
    out = SFT(SFTConfig(S), special=SP, vocab_size=300)(batch)
    lengths = [render(m, char_encode, SP)[0].size for m in convs]
    doc = np.repeat(np.arange(len(lengths)), lengths)
    doc = np.concatenate([doc, np.full(S + 1 - doc.size, len(lengths))])[:S]   # padding: a segment of its own
    allowed = (doc[:, None] == doc[None, :]) & (np.arange(S)[None, :] <= np.arange(S)[:, None])
    np.testing.assert_array_equal(dense(out["kv_start"], out["kv_end"], S), allowed)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    for a, b in zip(starts[:-1], starts[1:]):
        assert out["position_ids"][a:b].tolist() == list(range(b - a))


def test_literal_control_strings_in_a_record_tokenize_to_ordinary_pieces(tiny_corpus):
    from ptobj.data_pipeline.build import prepare_corpus

    tok = prepare_corpus(*tiny_corpus, progress=False).tokenizer
    text = "say <|user|> then <|assistant|> and <|end|> <|system|>"
    ids, response = render([{"role": "user", "content": text}, {"role": "assistant", "content": "<|end|>"}],
                           tok.encode, tok.special)
    reserved = ids[ids < tok.special.first_regular].tolist()
    s = tok.special
    assert reserved == [s.chat_user, s.chat_end, s.chat_assistant, s.chat_end, s.eot]   # the template's only
    body = ids[1: ids.tolist().index(s.chat_end)]
    assert tok.decode(body.tolist()) == text


def test_record_sampler_packs_whole_conversations(tmp_path):
    from ptobj.data_pipeline.records import RecordSampler

    convs = [SFT(SFTConfig(32), special=SP, vocab_size=300).encode_record(
        [{"role": "user", "content": "u" * k}, {"role": "assistant", "content": "a" * k}], char_encode)
        for k in range(1, 9)]
    sampler = RecordSampler(convs, 33, pack=True, seed=3, special=SP)
    rows = sampler.read(np.zeros(len(sampler), int), np.arange(len(sampler)))
    seen = []
    for row in rows["tokens"]:
        ends = np.flatnonzero(row == SP.eot)
        starts = np.concatenate([[0], ends[:-1] + 1])
        seen += [int(e - s + 1) for s, e in zip(starts, ends)]
        assert (row[ends[-1] + 1:] == SP.pad).all()
    assert sorted(seen) == sorted(len(cv["tokens"]) for cv in convs)   # every conversation once, whole
    again = RecordSampler(convs, 33, pack=True, seed=3, special=SP).read([1, 1], [0, 1])
    np.testing.assert_array_equal(again["tokens"], sampler.read([1, 1], [0, 1])["tokens"])


def test_a_conversation_longer_than_a_context_is_cut_and_counted():
    from ptobj.data_pipeline.records import RecordSampler

    t = SFT(SFTConfig(16), special=SP, vocab_size=300)
    long = t.encode_record([{"role": "user", "content": "u" * 10}, {"role": "assistant", "content": "a" * 20}],
                           char_encode)
    short = t.encode_record([{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}], char_encode)
    sampler = RecordSampler([short, long], 17, pack=True, shuffle=False, special=SP)
    assert sampler.truncated == 1 and len(sampler) == 2
    np.testing.assert_array_equal(sampler.read([0], [1])["tokens"][0], long["tokens"][:17])


def test_prompt_response_columns_read_as_a_conversation(tmp_path):
    from ptobj.data_pipeline.records import RecordsConfig, conversation, load_records

    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) for i in range(3)) + "\n")
    cfg = RecordsConfig(source=str(path), prompt_field="question", response_field="answer")
    rows, _ = load_records(cfg, cache_dir=str(tmp_path / "cache"))
    assert conversation(rows[1], cfg, "r") == [{"role": "user", "content": "q1"},
                                               {"role": "assistant", "content": "a1"}]
    from ptobj.data_pipeline.corpus import CorpusError

    with pytest.raises(CorpusError, match="needs 'messages' or 'prompt'"):
        conversation({"text": "x"}, RecordsConfig(source="x"), "r")


# ----------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def pretrained(tiny_corpus, tmp_path_factory):
    """A tiny causal LM run (the model section of sft_tiny.yaml) to start from."""
    from ptobj.recipes.train import run
    from ptobj.recipes.engine.train_config import load_train_config
    from test_recipes_train import shrink

    run_dir = tmp_path_factory.mktemp("pretrain") / "run"
    cfg = shrink(load_train_config(CONFIGS / "causal_lm_tiny.yaml"), tiny_corpus, run_dir, steps=4)
    run(cfg, progress=False)
    return run_dir


def sft_config(pretrained: Path, run_dir: Path, *more: str):
    from ptobj.recipes.engine.train_config import load_train_config

    return load_train_config(CONFIGS / "sft_tiny.yaml", [
        f"init_from={pretrained}", f"logging.run_dir={run_dir}", "logging.progress_bar=false",
        "schedule.train_steps=8", "schedule.warmup_steps=1", "eval.batches=1", "optim.lr=3e-3", *more])


def test_init_from_loads_the_weights_and_refuses_another_model(pretrained, tmp_path):
    import torch

    from ptobj.recipes.engine import checkpoint as ckpt
    from ptobj.recipes.engine.config import ConfigError
    from ptobj.recipes.train import Session

    sess = Session(sft_config(pretrained, tmp_path / "sft"), progress=False)
    _, saved = ckpt.read_items(ckpt.latest_checkpoint(pretrained / "checkpoints"))
    ours = dict(sess.model.named_parameters())
    for name in ("lm.embedding.word_embeddings.weight", "lm.decoder.layers.1.mlp.linear_fc2.weight"):
        torch.testing.assert_close(ours[name].detach(), saved["model/" + name], rtol=0, atol=0)
    with pytest.raises(ConfigError, match=r"init_from: .* model\.hidden_size=64, this run model\.hidden_size=32"):
        Session(sft_config(pretrained, tmp_path / "bad", "model.hidden_size=32"), progress=False)
    with pytest.raises(ConfigError, match=r"model\.num_layers=2, this run model\.num_layers=3"):
        Session(sft_config(pretrained, tmp_path / "bad2", "model.num_layers=3"), progress=False)


def test_sft_runs_from_a_pretrained_model_and_exports_its_chat_template(pretrained, tmp_path):
    import transformers

    from ptobj.data_pipeline.tokenizer import SentencePieceTokenizer
    from ptobj.recipes.export import export_run
    from ptobj.recipes.train import run

    result = run(sft_config(pretrained, tmp_path / "sft"), progress=False)
    losses = [result.losses[s] for s in sorted(result.losses)]
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert losses[-1] < losses[0], losses
    assert np.isfinite(result.eval_metrics["heldout/lm_loss"])
    out = export_run(tmp_path / "sft", tmp_path / "hf")
    assert out.max_abs_diff < 1e-4
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours = SentencePieceTokenizer.load(tmp_path / "sft" / "tokenizer.model")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi to Ann."},
                {"role": "assistant", "content": "Hello, Ann!"}]
    ids, _ = render(messages, ours.encode, ours.special)
    theirs = hf_tok.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert list(theirs) == ids[:-1].tolist()   # the template without the EOT closing a training record
    prompt = hf_tok.apply_chat_template(messages[:2], tokenize=True, add_generation_prompt=True, return_dict=False)
    assert list(prompt) == [*ids[: ids.tolist().index(ours.special.chat_assistant) + 1].tolist()]
    assert hf_tok.eos_token_id == ours.special.chat_end
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [ours.special.chat_end, ours.special.eot]
