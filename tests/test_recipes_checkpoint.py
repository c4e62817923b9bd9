"""Checkpoints: atomic (a save killed at any point never becomes `latest`), checksummed
(a damaged file is named and its checkpoint skipped), and finite (NaN is never written)."""

from __future__ import annotations

import re

import pytest
import torch

from ptobj.recipes.engine import checkpoint as ckpt


class Killed(BaseException):
    """Stands in for SIGKILL in the middle of a save."""


def _state(v: float) -> dict:
    return {"w": torch.full((3,), v), "b": torch.arange(1000, dtype=torch.float32) * v, "step": int(v)}


def _template() -> dict:
    return {"w": torch.zeros(3), "b": torch.zeros(1000), "step": -1}


def _data_file(step_dir):
    return next(p for p in sorted(step_dir.iterdir()) if p.suffix == ".distcp")


def test_save_publishes_and_latest_points_to_it(tmp_path):
    p = ckpt.save_checkpoint(tmp_path, 5, _state(5.0), extra_meta={"layout": {"tp": 1}})
    assert (tmp_path / "latest").read_text().strip() == "step_00000005"
    assert ckpt.latest_checkpoint(tmp_path) == p
    meta, state = ckpt.load_checkpoint(p, _template())
    assert meta["step"] == 5 and meta["layout"] == {"tp": 1}
    assert torch.equal(state["w"], torch.full((3,), 5.0)) and state["step"] == 5
    # every file but meta.json carries its size and sha256
    assert sorted(meta["files"]) == sorted(f.name for f in p.iterdir() if f.name != "meta.json")
    assert all(len(v["sha256"]) == 64 and v["bytes"] > 0 for v in meta["files"].values())


def test_kill_before_publish_leaves_previous_latest(tmp_path):
    good = ckpt.save_checkpoint(tmp_path, 2, _state(2.0))

    def die(tmp_dir):
        raise Killed()

    with pytest.raises(Killed):
        ckpt.save_checkpoint(tmp_path, 4, _state(4.0), _before_publish=die)
    assert ckpt.latest_checkpoint(tmp_path) == good
    assert not (tmp_path / "step_00000004").exists()
    leftovers = ckpt.remove_partial_saves(tmp_path)
    assert [p.name for p in leftovers] == [".tmp-step_00000004"]
    assert ckpt.latest_checkpoint(tmp_path) == good


def _truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _empty(p):
    p.write_bytes(b"")


def _flip_a_byte(p):
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


DAMAGE = {
    "truncated data file": (_data_file, _truncate, r"__0_0\.distcp: \d+ bytes, meta\.json records \d+ \(truncated"),
    "0-byte data file": (_data_file, _empty, r"__0_0\.distcp: 0 bytes, meta\.json records"),
    "flipped byte": (_data_file, _flip_a_byte, r"__0_0\.distcp: sha256 differs from meta\.json \(corrupted\)"),
    "0-byte DCP metadata": (lambda d: d / ".metadata", _empty, r"\.metadata: 0 bytes"),
    "damaged meta.json": (lambda d: d / "meta.json", _truncate, r"meta\.json: unreadable \(JSONDecodeError"),
    "no meta.json": (lambda d: d / "meta.json", lambda p: p.unlink(), r"meta\.json: missing"),
    "missing data file": (_data_file, lambda p: p.unlink(), r"__0_0\.distcp: missing"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_checkpoint_is_named_and_skipped(tmp_path, case):
    pick, damage, reason = DAMAGE[case]
    good = ckpt.save_checkpoint(tmp_path, 2, _state(2.0))
    bad = ckpt.save_checkpoint(tmp_path, 4, _state(4.0))
    damage(pick(bad))
    assert (tmp_path / "latest").read_text().strip() == bad.name
    with pytest.raises(ckpt.DamagedCheckpoint, match=reason):
        ckpt.load_checkpoint(bad, _template())
    skipped = []
    step_dir, meta, state = ckpt.load_newest(tmp_path, _template, on_skip=skipped.append)
    assert step_dir == good and meta["step"] == 2 and torch.equal(state["w"], torch.full((3,), 2.0))
    assert len(skipped) == 1 and skipped[0].startswith(f"skipped checkpoint {bad}: ")
    assert re.search(reason, skipped[0]), skipped
    # `latest` no longer names the damaged checkpoint
    assert (tmp_path / "latest").read_text().strip() == good.name
    # a new save of the same step replaces the damaged one; pruning keeps the newest good ones
    again = ckpt.save_checkpoint(tmp_path, 4, _state(4.0), keep=2)
    assert ckpt.load_newest(tmp_path, _template)[0] == again


def test_no_checkpoint_verifies_is_an_error_naming_each(tmp_path):
    a = ckpt.save_checkpoint(tmp_path, 1, _state(1.0))
    b = ckpt.save_checkpoint(tmp_path, 2, _state(2.0))
    _truncate(_data_file(a))
    (b / "meta.json").write_text("{}")
    with pytest.raises(ckpt.DamagedCheckpoint, match=r"no checkpoint verifies \(step_00000002: .*meta\.json: no "
                                                     r"per-file checksums.*; step_00000001: .*__0_0\.distcp"):
        ckpt.load_newest(tmp_path, _template)
    assert ckpt.load_newest(tmp_path / "nothing-here", _template) is None


def test_non_finite_state_is_never_written(tmp_path):
    good = ckpt.save_checkpoint(tmp_path, 1, _state(1.0))
    bad = _state(2.0)
    bad["b"][7] = float("nan")
    with pytest.raises(ckpt.NonFiniteState, match=r"step 2: refusing to save a checkpoint: 1 tensor\(s\) hold NaN/inf \(b\)"):
        ckpt.save_checkpoint(tmp_path, 2, bad)
    assert not (tmp_path / "step_00000002").exists() and not list(tmp_path.glob(".tmp-*"))
    assert ckpt.latest_checkpoint(tmp_path) == good


def test_keep_prunes_old_checkpoints(tmp_path):
    for s in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, s, _state(float(s)), keep=2)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000003", "step_00000004"]
    # saved behind newer steps (a run resumed past damaged ones): those do not count toward `keep`,
    # so the good step before is kept
    ckpt.save_checkpoint(tmp_path, 1, _state(1.0))
    ckpt.save_checkpoint(tmp_path, 2, _state(2.0), keep=2)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == [f"step_0000000{i}" for i in (1, 2, 3, 4)]


def test_tensors_load_into_another_dtype(tmp_path):
    """A bf16 run's weights load into the fp32 model an export rebuilds."""
    w = torch.randn(4, 8).to(torch.bfloat16)
    step_dir = ckpt.save_checkpoint(tmp_path, 1, {"model/w": w})
    target = {"model/w": torch.zeros(4, 8, dtype=torch.float32)}
    ckpt.load_checkpoint(step_dir, target)
    assert torch.equal(target["model/w"], w.float())


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_layout_local_inverts_items_after_a_round_trip(tmp_path, stride):
    """A tensor-parallel parameter (strided like SwiGLU's fc1 for stride 2) saved as its logical
    parts comes back, through ``local``, as the rank's tensor in the parameter's own layout."""
    like = torch.nn.Parameter(torch.zeros(6 * stride, 4))
    like.tensor_model_parallel, like.partition_dim, like.partition_stride = True, 0, stride
    plain = torch.zeros(5)
    value = torch.arange(24.0 * stride).view(6 * stride, 4)
    layout = ckpt.TensorLayout()
    items = {**layout.items("w", value, like), **layout.items("b", torch.arange(5.0), plain)}
    assert len(items) == 1 + stride
    ckpt.save_checkpoint(tmp_path, 1, items)
    into = {**layout.items("w", torch.zeros_like(value), like), **layout.items("b", torch.zeros(5), plain)}
    ckpt.load_checkpoint(tmp_path / "step_00000001", into)
    assert torch.equal(layout.local(into, "w", like), value)
    assert torch.equal(layout.local(into, "b", plain), torch.arange(5.0))
