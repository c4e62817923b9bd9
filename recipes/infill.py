"""Show what a FIM-trained decoder does: greedy infilling of a held-out snippet.

A few consecutive lines of a held-out document are cut into prefix / middle /
suffix; the prompt is PSM, ``<PRE> prefix <SUF> suffix <MID>``, and the model
generates the middle token by token (argmax) until EOT, a sentinel, or the
token budget. Every tensor-parallel rank must call this together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Infill:
    prefix: str
    suffix: str
    reference: str
    generated: str

    def render(self) -> str:
        bar = "-" * 60
        return (f"{bar}\ninfilled sample (greedy, PSM prompt from a held-out snippet)\n"
                f"[prefix]\n{self.prefix}\n[suffix]\n{self.suffix}\n[reference middle]\n{self.reference}\n"
                f"[generated middle]\n{self.generated}\n[generated middle, as a Python string]\n{self.generated!r}\n{bar}")


def pick_snippet(token_data, tokenizer, *, prefix_lines: int = 4, middle_lines: int = 2,
                 suffix_lines: int = 3, max_docs: int = 200) -> tuple[str, str, str] | None:
    """(prefix, middle, suffix) from the first held-out document long enough, starting at a ``def``."""
    need = prefix_lines + middle_lines + suffix_lines
    for d in range(min(token_data.num_documents, max_docs)):
        lines = tokenizer.decode(token_data.document_tokens(d).tolist()).split("\n")
        starts = [i for i, line in enumerate(lines) if line.lstrip().startswith("def ") and i + need <= len(lines)]
        if not starts and len(lines) < need:
            continue
        a = starts[0] if starts else 0
        cut1, cut2 = a + prefix_lines, a + prefix_lines + middle_lines
        middle = "\n".join(lines[cut1:cut2]) + "\n"
        if not middle.strip():
            continue
        prefix = "\n".join(lines[a:cut1]) + "\n"
        suffix = "\n".join(lines[cut2:a + need]) + "\n"
        return prefix, middle, suffix
    return None


@torch.no_grad()
def greedy_infill(model, tokenizer, prefix: str, suffix: str, *, seq_length: int, max_new_tokens: int,
                  device: torch.device, autocast=None) -> str:
    sp = tokenizer.special
    budget = max(8, seq_length - max_new_tokens - 3)
    pre, suf = tokenizer.encode(prefix), tokenizer.encode(suffix)
    while len(pre) + len(suf) > budget:  # keep the text nearest the hole
        if len(pre) >= len(suf):
            pre = pre[1:]
        else:
            suf = suf[:-1]
    ids = [sp.fim_prefix, *pre, sp.fim_suffix, *suf, sp.fim_middle]
    stop = set(int(i) for i in sp.ids())  # any reserved id ends the middle (EOT in training)
    was_training = model.training
    model.eval()
    out: list[int] = []
    try:
        for _ in range(max_new_tokens):
            if len(ids) >= seq_length:
                break
            n = len(ids)
            tokens = torch.tensor([ids], dtype=torch.int32, device=device)
            ar = torch.arange(n, dtype=torch.int32, device=device)[None]
            batch = {"tokens": tokens, "position_ids": ar, "segment_ids": torch.zeros_like(tokens),
                     "kv_start": torch.zeros_like(tokens), "kv_end": ar + 1}
            if autocast is not None:
                with autocast():
                    logits = _full_vocab_logits(model, batch)
            else:
                logits = _full_vocab_logits(model, batch)
            last = logits[0, -1, : tokenizer.vocab_size].float()
            nxt = int(torch.argmax(last))
            if nxt in stop:
                break
            ids.append(nxt)
            out.append(nxt)
    finally:
        model.train(was_training)
    return tokenizer.decode(np.asarray(out, dtype=np.int64).tolist())


def _full_vocab_logits(model, batch) -> torch.Tensor:
    """[b, s, V] logits; the vocabulary shards of tensor-parallel ranks are gathered
    here with a plain all_gather (megatron's gather allocates on CUDA, so it fails on CPU)."""
    local = model.logits(batch, gather=False)
    group = getattr(model, "tp_group", None)
    if group is None or not torch.distributed.is_initialized() or torch.distributed.get_world_size(group) == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(torch.distributed.get_world_size(group))]
    torch.distributed.all_gather(parts, local.contiguous(), group=group)
    return torch.cat(parts, dim=-1)
