"""Atomic checkpoints: a save killed at any point never becomes `latest`."""

from __future__ import annotations

import pytest
import torch

from recipes import checkpoint as ckpt


class Killed(BaseException):
    """Stands in for SIGKILL in the middle of a save."""


def _state(v: float) -> dict:
    return {"w": torch.full((3,), v), "step": v}


def test_save_publishes_and_latest_points_to_it(tmp_path):
    p = ckpt.save_checkpoint(tmp_path, 5, _state(5.0))
    assert (tmp_path / "latest").read_text().strip() == "step_00000005"
    assert ckpt.latest_checkpoint(tmp_path) == p
    assert torch.equal(ckpt.load_checkpoint(p)["w"], torch.full((3,), 5.0))


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


def test_incomplete_step_dir_and_dangling_pointer_are_ignored(tmp_path):
    good = ckpt.save_checkpoint(tmp_path, 1, _state(1.0))
    # a directory that looks like a newer step but never got its meta.json
    broken = tmp_path / "step_00000009"
    broken.mkdir()
    torch.save(_state(9.0), broken / ckpt.rank_file_name(0))
    assert ckpt.latest_checkpoint(tmp_path) == good
    # latest naming the broken one (e.g. edited by hand): fall back to the newest complete
    (tmp_path / "latest").write_text("step_00000009\n")
    assert ckpt.latest_checkpoint(tmp_path) == good
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        ckpt.load_checkpoint(broken)


def test_keep_prunes_old_checkpoints(tmp_path):
    for s in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, s, _state(float(s)), keep=2)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000003", "step_00000004"]
