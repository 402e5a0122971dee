"""Tests for promptot.miniclip: idx reader, image folders, domain shift, committed checkpoint."""
from __future__ import annotations

import gzip
import os
import sys
import types

import numpy as np
import pytest

import promptot.miniclip as mc
from promptot.datasets import fmnist as data
from promptot.fileio import sha256_file

needs_fmnist = pytest.mark.skipif(not data.fmnist_available(),
                                  reason=f"Fashion-MNIST missing: {data.APT_HINT}")


def _write_idx(path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_read_idx_synthetic(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x.gz", arr)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "x.gz"), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError):
        data.read_idx(tmp_path / "bad")


def test_missing_dataset_message(tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_DIR, str(tmp_path))
    with pytest.raises(data.FashionMNISTNotFound, match="apt-get install -y dataset-fashion-mnist"):
        data.find_fmnist_dir()


@needs_fmnist
def test_idx_reader_shapes():
    for split, n in (("train", 60000), ("test", 10000)):
        x, y = data.load_fmnist(split)
        assert x.shape == (n, 28, 28) and x.dtype == np.uint8
        assert y.shape == (n,)
        assert np.bincount(y, minlength=10).tolist() == [n // 10] * 10
    assert len(data.CLASSNAMES) == 10


def test_invert_recolor_deterministic_and_shifts():
    rng = np.random.default_rng(0)
    img = np.zeros((28, 28), np.uint8)
    img[6:22, 8:20] = rng.integers(60, 256, size=(16, 12))
    a, b = data.invert_recolor(img, 3), data.invert_recolor(img.copy(), 3)
    assert a.shape == (28, 28, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, data.invert_recolor(img, 4))  # per-image colour
    clean = data.identity_rgb(img, 3)
    fg = img > data.FOREGROUND_THRESHOLD
    # garment shading polarity reversed, background kept black, colour channels differ
    lum = a.astype(float).mean(-1)
    assert np.corrcoef(img[fg].astype(float), lum[fg])[0, 1] < -0.9
    assert (a[~fg] == 0).all()
    assert (a.max(-1).astype(int) - a.min(-1)).max() > 30
    assert np.abs(a.reshape(-1, 3).mean(0) - clean.reshape(-1, 3).mean(0)).max() > 10
    full = data.invert_recolor_full(img, 3)
    assert full[~fg].mean() > 100 and full[fg].mean() < full[~fg].mean()


@needs_fmnist
def test_materialize_images_idempotent(tmp_path):
    entries = data.materialize_images(tmp_path, "test", limit_per_class=2)
    assert len(entries) == 20 and sorted({e[1] for e in entries}) == list(range(10))
    marker = tmp_path / "test" / data.MARKER
    assert marker.is_file()
    from PIL import Image
    rel, label, name = entries[0]
    im = Image.open(tmp_path / rel)
    assert im.mode == "RGB" and im.size == (28, 28)
    assert name == data.CLASSNAMES[label] and data.class_dirname(name) in rel
    mtimes = {r: os.stat(tmp_path / r).st_mtime_ns for r, _, _ in entries}
    assert data.materialize_images(tmp_path, "test", limit_per_class=2) == entries
    assert all(os.stat(tmp_path / r).st_mtime_ns == t for r, t in mtimes.items())
    # an interrupted write (no marker, a file missing) is completed on the next call
    marker.unlink()
    os.remove(tmp_path / rel)
    assert data.materialize_images(tmp_path, "test", limit_per_class=2) == entries
    assert (tmp_path / rel).is_file() and marker.is_file()
    with pytest.raises(ValueError, match="another root"):
        data.materialize_images(tmp_path, "test", transform=data.invert_recolor, limit_per_class=2)
    shifted = data.materialize_images(tmp_path / "shift", "test", transform=data.invert_recolor,
                                      limit_per_class=1)
    x, _ = data.load_fmnist("test")
    idx = int(shifted[0][0].rsplit("/", 1)[1][:-4])
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "shift" / shifted[0][0])),
                                  data.invert_recolor(x[idx], idx))


def test_committed_checkpoint_verified(monkeypatch, tmp_path):
    monkeypatch.setenv(mc.ENV_CACHE, str(tmp_path))
    rec = mc.load_recipe()
    assert rec, "promptot/assets/miniclip/RECIPE.json missing"
    path = mc.checkpoint_path(build=False)
    assert path == str(mc.committed_checkpoint())
    assert os.path.getsize(path) < 10 * 2 ** 20
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def loaded():
    import open_clip
    return open_clip.load_openai_model(str(mc.committed_checkpoint()), precision="fp32", device="cpu").eval()


def test_checkpoint_loads_openai_format(loaded):
    from promptot.miniclip import pretrain
    rec = mc.load_recipe()
    assert sum(p.numel() for p in loaded.parameters()) == rec["parameters"]
    assert loaded.visual.image_size == (32, 32) or loaded.visual.image_size == 32
    import torch
    sd = torch.load(mc.committed_checkpoint(), map_location="cpu")
    assert all(v.dtype == torch.float16 for v in sd.values() if v.is_floating_point())
    assert pretrain.verify_reload(mc.committed_checkpoint(), sd) == 0


@needs_fmnist
@pytest.mark.parametrize("domain", ["clean", "invert_recolor"])
def test_recorded_zero_shot_accuracy(loaded, domain):
    import torch
    from promptot.miniclip import pretrain
    torch.set_num_threads(2)
    rec = mc.load_recipe()
    n = rec["subset"]
    x, y = pretrain.domain_images("test", domain, limit=n)
    acc = pretrain.zero_shot_accuracy(loaded, x, y, rec["eval_template"])
    assert abs(acc - rec["zero_shot"][f"test_{domain}_first{n}"]) <= 0.5
    assert acc > 10.0  # above chance


@needs_fmnist
def test_preprocess_matches_open_clip(tmp_path):
    """Training/eval images equal open_clip's eval preprocess applied to the materialised PNGs."""
    import torch
    from PIL import Image
    from open_clip.transform import image_transform
    from promptot.miniclip import pretrain
    entries = data.materialize_images(tmp_path, "test", transform=data.invert_recolor, limit_per_class=1)
    tf = image_transform(32, is_train=False, mean=pretrain.MEAN, std=pretrain.STD)
    ours_u8, _ = pretrain.domain_images("test", "invert_recolor", limit=max(int(r.rsplit("/", 1)[1][:-4])
                                                                              for r, _, _ in entries) + 1)
    for rel, _, _ in entries:
        i = int(rel.rsplit("/", 1)[1][:-4])
        ref = tf(Image.open(tmp_path / rel))
        ours = pretrain.normalize(torch.from_numpy(ours_u8[i:i + 1]))[0]
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_register_idempotent(monkeypatch):
    calls = []
    loader = types.ModuleType("promptot.clip.loader")
    loader.register_backbone = lambda name, resolver: calls.append((name, resolver))
    loader.declare_image_size = lambda name, size: calls.append((name, size))
    pkg = types.ModuleType("promptot.clip")
    pkg.loader = loader
    monkeypatch.setitem(sys.modules, "promptot.clip", pkg)
    monkeypatch.setitem(sys.modules, "promptot.clip.loader", loader)
    monkeypatch.setattr(mc, "_REGISTERED", False)
    assert mc.register() and mc.register()
    assert calls == [(mc.DEFAULT_NAME, mc.checkpoint_path), (mc.DEFAULT_NAME, 32)]


def test_checkpoint_path_falls_back_to_cached_build(monkeypatch, tmp_path):
    import json
    from promptot.miniclip import pretrain
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / mc.RECIPE_FILE).write_text(json.dumps({"seed": 3, "epochs": 1, "threads": 1, "sha256": "0" * 64}))
    monkeypatch.setattr(mc, "ASSET_DIR", assets)
    monkeypatch.setenv(mc.ENV_CACHE, str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="python -m promptot.miniclip pretrain"):
        mc.checkpoint_path(build=False)
    calls = []

    def fake_pretrain(seed, epochs, threads, out, recipe):
        calls.append((seed, epochs, threads))
        open(out, "wb").write(b"weights")
        recipe.write_text(json.dumps({"sha256": sha256_file(out)}))

    monkeypatch.setattr(pretrain, "pretrain", fake_pretrain)
    expected = str(tmp_path / "cache" / "miniclip" / mc.CHECKPOINT_FILE)
    assert mc.checkpoint_path() == expected and mc.checkpoint_path() == expected
    assert calls == [(3, 1, 1)]
