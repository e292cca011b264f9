"""Artifacts round-trip, are plain safetensors, and are written atomically."""

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from infl_cli.errors import InflError
from infl_cli.runtime import artifacts as art


def test_round_trip_and_plain_safetensors(tmp_path):
    tensors = {"weight": torch.randn(10, 784, dtype=torch.float64),
               "idx": torch.arange(5, dtype=torch.int64)}
    rec = art.save_artifact(tmp_path / "a.safetensors", tensors, {"stage": "x", "k": 3})
    back, rec2 = art.load_artifact(tmp_path / "a.safetensors", "x")
    assert rec == rec2 and rec["fingerprint"]
    for key in tensors:
        assert torch.equal(back[key], tensors[key]) and back[key].dtype == tensors[key].dtype
    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as fh:
        assert json.loads(fh.metadata()["infl"])["k"] == 3


def test_fingerprint_tracks_content(tmp_path):
    t = {"w": torch.zeros(3, dtype=torch.float64)}
    a = art.save_artifact(tmp_path / "a.safetensors", t, {"stage": "x"})["fingerprint"]
    b = art.save_artifact(tmp_path / "b.safetensors", {"w": torch.ones(3, dtype=torch.float64)},
                          {"stage": "x"})["fingerprint"]
    assert a != b


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "a.safetensors"
    art.save_artifact(path, {"w": torch.zeros(2)}, {"stage": "x"})
    before = path.read_bytes()
    with pytest.raises(Exception):
        art.save_artifact(path, {"w": torch.zeros(2), "bad": "not a tensor"}, {"stage": "x"})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


def test_wrong_stage_and_garbage_are_refused(tmp_path):
    art.save_artifact(tmp_path / "a.safetensors", {"w": torch.zeros(2)}, {"stage": "x"})
    with pytest.raises(InflError, match="expected 'train'"):
        art.load_artifact(tmp_path / "a.safetensors", "train")
    (tmp_path / "g.safetensors").write_bytes(b"garbage")
    with pytest.raises(InflError, match="not an infl artifact"):
        art.load_artifact(tmp_path / "g.safetensors")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    """Artifacts, JSON and figures get 0666 & ~umask, as a plain open() would give them,
    not the private mode of the temporary file behind the atomic write."""
    old = os.umask(umask)
    try:
        art.save_artifact(tmp_path / "a.safetensors", {"w": torch.zeros(2)}, {"stage": "x"})
        art.write_json(tmp_path / "m.json", {"k": 1})
        art.atomic_write(tmp_path / "f.png", lambda tmp: Path(tmp).write_bytes(b"png"))
    finally:
        os.umask(old)
    for name in ("a.safetensors", "m.json", "f.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
