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


def test_compact_logp_codes_round_trip_within_half_a_step():
    import numpy as np

    from alignbench.io import LOGP_NONE, LOGP_STEP, compact_logp, expand_logp

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 500)) * 4
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    c = compact_logp(lp)
    assert c.dtype == np.uint8
    back = expand_logp(c)
    kept = -lp / LOGP_STEP < LOGP_NONE - 0.5  # codes 0..254
    assert (~kept).any() and np.all(np.isneginf(back[~kept])) and np.all(c[~kept] == LOGP_NONE)
    assert np.max(np.abs(back[kept] - lp[kept])) <= LOGP_STEP / 2 + 1e-12
    assert np.allclose(np.exp(back).sum(-1), 1.0, atol=0.04)  # readers renormalise each row
    assert expand_logp(lp.astype(np.float32)).dtype == np.float64  # older float tables read as they are
    assert compact_logp(np.array([[0.0, -np.inf]])).tolist() == [[0, LOGP_NONE]]
