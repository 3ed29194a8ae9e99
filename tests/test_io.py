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


def test_compact_logp_is_float16_with_a_floor():
    import numpy as np

    from alignbench.io import LOGP_FLOOR, compact_logp

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 500)) * 4
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    c = compact_logp(lp)
    assert c.dtype == np.float16
    kept = lp >= LOGP_FLOOR
    assert (lp < LOGP_FLOOR).any() and np.all(np.isneginf(c[~kept]))
    # float16 keeps 11 significant bits: |error| <= 2^-11 |logp|
    assert np.all(np.abs(c[kept].astype(float) - lp[kept]) <= 2.0 ** -11 * np.abs(lp[kept]) + 1e-12)
    p = np.exp(c.astype(float))
    assert np.allclose(p.sum(-1), 1.0, atol=5e-3)  # readers renormalise; the dropped mass is < N e^-16
