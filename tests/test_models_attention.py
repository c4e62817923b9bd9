"""The model's attention plumbing: one AttentionMask per micro-batch reaches every layer as
megatron's attention_mask, the backend comes from ModelConfig.attention_backend, and
activation recompute replays the same mask."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import ptobj.kernels.attention_mask as attention_mask
from ptobj.models.config import preset


@pytest.fixture(scope="module")
def pg():
    from ptobj.models.parallel import destroy_parallel, init_parallel

    collection = init_parallel(tp=1, pp=1, backend="gloo", seed=0)
    yield collection
    destroy_parallel()


def batch(mask="fim_docs", seed=0):
    from synthetic_batches import synthetic_batch

    return synthetic_batch(2, 32, 256, kind="decoder", mask=mask, mean_doc=10 if mask == "fim_docs" else None,
                           seed=seed)


def loss_and_grads(model, b):
    out = model(b)["lm"]
    loss = out["loss_sum"] / out["count"]
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    return loss.detach(), grads


def test_mask_is_built_once_per_forward_for_every_layer(pg, monkeypatch):
    from ptobj.models.model import build_model

    torch.manual_seed(0)
    model = build_model(preset("tiny", num_layers=3), pg)
    built, seen = [], []
    real_build, real_from_data = attention_mask.AttentionMask.build.__func__, attention_mask.AttentionMask.from_data.__func__

    def counting_build(cls, *args, **kw):
        built.append(kw.get("backend"))
        return real_build(cls, *args, **kw)

    def counting_from_data(cls, data, **kw):
        seen.append(data.data_ptr())
        return real_from_data(cls, data, **kw)

    monkeypatch.setattr(attention_mask.AttentionMask, "build", classmethod(counting_build))
    monkeypatch.setattr(attention_mask.AttentionMask, "from_data", classmethod(counting_from_data))
    loss_and_grads(model, batch())
    assert built == ["reference"]  # auto on CPU
    assert len(seen) == 3 and len(set(seen)) == 1  # all three layers read the one tensor


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_backend_from_config_gives_the_same_model_output(pg, backend):
    from ptobj.models.model import build_model

    torch.manual_seed(0)
    base = build_model(preset("tiny"), pg)
    other = build_model(preset("tiny", attention_backend=backend), pg)
    other.load_state_dict(base.state_dict())
    b = batch(mask="causal")  # sdpa serves plain causal attention only
    want, want_grads = loss_and_grads(base, b)
    got, got_grads = loss_and_grads(other, b)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_sdpa_backend_rejects_document_masks_by_name(pg):
    from ptobj.models.model import build_model

    model = build_model(preset("tiny", attention_backend="sdpa"), pg)
    with pytest.raises(ValueError, match="plain causal"):
        model(batch(mask="fim_docs"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="megatron's recompute keeps CUDA RNG state")
@pytest.mark.parametrize("granularity", ["full", "selective"])
def test_recompute_replays_the_same_mask(pg, granularity):
    from ptobj.models.model import build_model

    torch.manual_seed(0)
    cfg = preset("tiny", params_dtype="bfloat16")  # auto -> the triton backend on CUDA
    plain = build_model(cfg, pg, device="cuda")
    recomputed = build_model(dataclasses.replace(cfg, recompute_granularity=granularity), pg, device="cuda")
    recomputed.load_state_dict(plain.state_dict())
    b = {k: v.cuda() for k, v in batch().items()}
    want, want_grads = loss_and_grads(plain, b)
    got, got_grads = loss_and_grads(recomputed, b)
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)


def test_bad_backend_is_named():
    with pytest.raises(ValueError, match=r"ModelConfig\.attention_backend"):
        preset("tiny", attention_backend="cuda")
