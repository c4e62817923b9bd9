"""Our tokenizer as a Hugging Face ``tokenizer.json`` (+ ``tokenizer_config.json``).

Our ids are sentencepiece ids + 16, behind 16 reserved specials (pad=0, eot=1,
mask=2, cls=3, sep=4, FIM sentinels 5..8, unk=9, the chat template's <|system|>,
<|user|>, <|assistant|>, <|end|> 10..13, 14..15 spare). A ``tokenizers``
Unigram model over [16 reserved tokens] + [the sentencepiece pieces with their
scores] reproduces that numbering; sentencepiece's own unknown piece is renamed
and never chosen (our unk is id 9), and byte fallback covers every string.

Encoder exports add BERT's template (``bert_template``): ``tokenizer(a)`` gives
``[CLS] a [SEP]`` and ``tokenizer(a, b)`` gives ``[CLS] a [SEP] b [SEP]`` with
``token_type_ids`` 0 then 1, the layout our encoder objectives train on. Chat models
(SFT, reward models) carry the chat template of ``ptobj.objectives.sft`` (``chat_template``)
over the same reserved control tokens.

One HF convention differs from our pipeline: ``AutoTokenizer`` (transformers
5.x) turns special-token strings such as ``<fim_prefix>`` found in raw text
into the special id; our pipeline never does. Everything else (byte fallback,
digits, whitespace runs, newlines, CJK) encodes to the same ids as
``ptobj.data_pipeline.tokenizer.SentencePieceTokenizer``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ptobj.objectives.sample import SpecialTokens

NAMES = {"pad": "<pad>", "eot": "<|endoftext|>", "mask": "<mask>", "cls": "<cls>", "sep": "<sep>",
         "fim_prefix": "<fim_prefix>", "fim_middle": "<fim_middle>", "fim_suffix": "<fim_suffix>",
         "fim_pad": "<fim_pad>", "unk": "<unk>", "chat_system": "<|system|>", "chat_user": "<|user|>",
         "chat_assistant": "<|assistant|>", "chat_end": "<|end|>"}
WORD_BOUNDARY = "\u2581"
NEVER = -1e9  # score of pieces the Viterbi search must not pick


def chat_template() -> str:
    """The Jinja chat template of ``ptobj.objectives.sft.render``: ``<|role|> content <|end|>`` per
    message (``add_generation_prompt`` opens the assistant's turn). ``render`` closes a
    training conversation with EOT as well; a prompt for generation stops before it."""
    roles = "".join(f"{'if' if i == 0 else 'elif'} message['role'] == '{role}' -%}}{NAMES['chat_' + role]}{{%- "
                    for i, role in enumerate(("system", "user", "assistant")))
    return ("{%- for message in messages -%}{%- " + roles
            + "else -%}{{ raise_exception('unknown role: ' + message['role']) }}{%- endif -%}"
            + "{{ message['content'] }}" + NAMES["chat_end"] + "{%- endfor -%}"
            + "{%- if add_generation_prompt -%}" + NAMES["chat_assistant"] + "{%- endif -%}")


def reserved_names(special: SpecialTokens) -> list[str]:
    names = [f"<reserved_{i}>" for i in range(special.first_regular)]
    for field, text in NAMES.items():
        names[getattr(special, field)] = text
    return names


def sentinel_names(special: SpecialTokens) -> list[str]:
    """T5's names for the span sentinels (ids ``sentinel_base + i``, after the pieces)."""
    return [f"<extra_id_{i}>" for i in range(special.num_sentinels)]


def build_tokenizer(sp_model_path: str | Path, special: SpecialTokens | None = None, *, bert_template: bool = False):
    """A ``tokenizers.Tokenizer`` with our id numbering (and, for encoders, BERT's
    [CLS] / [SEP] template)."""
    import sentencepiece as spm
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, processors

    special = special or SpecialTokens()
    sp = spm.SentencePieceProcessor(model_file=str(sp_model_path))
    reserved = reserved_names(special)
    vocab = [(name, NEVER) for name in reserved]
    for i in range(sp.get_piece_size()):
        piece, score = sp.id_to_piece(i), sp.get_score(i)
        if sp.is_unknown(i) or sp.is_control(i):
            piece, score = f"<sp_unused_{i}>", NEVER
        vocab.append((piece, float(score)))
    if special.num_sentinels and special.sentinel_base != len(vocab):
        raise ValueError(f"sentinels start at {special.sentinel_base}, but {sp_model_path} ends at id {len(vocab)}")
    sentinels = sentinel_names(special)
    vocab += [(name, NEVER) for name in sentinels]
    tok = Tokenizer(models.Unigram(vocab, unk_id=special.unk, byte_fallback=True))
    # sentencepiece with the identity rule still escapes spaces as '▁' (no dummy prefix)
    tok.normalizer = normalizers.Replace(Regex(" "), WORD_BOUNDARY)
    tok.decoder = decoders.Sequence([decoders.Replace(WORD_BOUNDARY, " "), decoders.ByteFallback(), decoders.Fuse()])
    # the mask takes the space before it, as in training, where [MASK] replaces a whole '▁word'
    # piece (HF's sentencepiece tokenizers, ALBERT's and XLNet's, do the same)
    mask = reserved[special.mask]
    tok.add_special_tokens([AddedToken(name, special=True, normalized=False, lstrip=name == mask)
                            for name in reserved + sentinels])
    if bert_template:
        cls, sep = reserved[special.cls], reserved[special.sep]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, special.cls), (sep, special.sep)])
    return tok


def write_hf_tokenizer(sp_model_path: str | Path, out_dir: str | Path, special: SpecialTokens | None = None,
                       model_max_length: int | None = None, *, bert_template: bool = False,
                       chat: bool = False) -> None:
    """``chat``: a chat model's tokenizer (SFT, reward model): the chat template, and ``<|end|>``
    (which closes an assistant turn) as the end of sequence."""
    special = special or SpecialTokens()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    build_tokenizer(sp_model_path, special, bert_template=bert_template).save(str(out_dir / "tokenizer.json"))
    names = reserved_names(special)
    # what ends a sequence, as the model's config says too (hf_export): an encoder's [CLS] ... [SEP]
    # (begin and end, as RoBERTa's <s> ... </s>), a chat model's <|end|>, a decoder's EOT
    bos, eos = (special.cls, special.sep) if bert_template else (None, special.chat_end if chat else special.eot)
    extra = [special.fim_prefix, special.fim_middle, special.fim_suffix, special.fim_pad, special.chat_system,
             special.chat_user, special.chat_assistant, special.eot, special.chat_end]
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None if bos is None else names[bos], "add_bos_token": False, "add_eos_token": False,
        "eos_token": names[eos], "pad_token": names[special.pad], "unk_token": names[special.unk],
        "mask_token": {"content": names[special.mask], "lstrip": True, "rstrip": False, "normalized": False,
                       "single_word": False, "special": True, "__type": "AddedToken"},
        "cls_token": names[special.cls], "sep_token": names[special.sep],
        "additional_special_tokens": [names[i] for i in extra if i not in (bos, eos)] + sentinel_names(special),
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length or 10**9,
    }
    if chat:
        config["chat_template"] = chat_template()
    if bert_template:  # segment ids go to the model too (BERT's token_type_ids)
        config["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special_map = {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token",
                                          "cls_token", "sep_token", "additional_special_tokens") if config[k] is not None}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))
