"""Atomic writes and checksummed tensor files: a corrupted cache entry is detected, never used."""

import torch

from alignbench import io


def test_atomic_write_leaves_no_temp_files(tmp_path):
    p = tmp_path / "a" / "b.json"
    io.write_json(p, {"x": 1, "y": float("nan")})
    assert io.read_json(p) == {"x": 1, "y": None}
    assert [f.name for f in p.parent.iterdir()] == ["b.json"]


def test_corrupted_tensor_file_is_rejected(tmp_path):
    p = tmp_path / "t.safetensors"
    io.save_tensors(p, {"a": torch.arange(5.0)})
    assert torch.equal(io.load_tensors(p)["a"], torch.arange(5.0))
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    assert io.load_tensors(p) is None
    assert io.load_tensors(tmp_path / "missing.safetensors") is None


def test_nonblocking_lock(tmp_path):
    with io.file_lock(tmp_path / "x.lock") as a:
        assert a
        # flock locks are per open file description: a second open in the same process conflicts too
        with io.file_lock(tmp_path / "x.lock", blocking=False) as b:
            assert b is False
