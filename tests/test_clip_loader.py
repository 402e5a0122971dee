"""CLIP loader and tokenizer: offline, on tiny OpenAI-format models."""
import time

import open_clip
import open_clip.pretrained as oc_pretrained
import pytest
import torch
from open_clip.model import CLIP

from promptot.clip import (EOT_TOKEN, SOT_TOKEN, BackboneNotFoundError, PromptedCLIP, build_tiny_clip, load_clip,
                           register_backbone, save_openai_state_dict, token_length, tokenize)
from promptot.clip import loader as loader_mod


@pytest.fixture(scope="module")
def tiny_vit() -> CLIP:
    return build_tiny_clip("vit")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and an empty default cache, whatever the machine has in ~/.cache/clip."""
    calls = []

    def no_network(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(oc_pretrained, "download_pretrained_from_url", no_network)
    monkeypatch.setattr(oc_pretrained, "download_pretrained_from_hf", no_network)
    monkeypatch.setattr(loader_mod, "DEFAULT_CACHE_DIR", str(tmp_path / "default_cache"))
    return calls


def _outputs(model: CLIP, image_size: int):
    ids = tokenize(["a photo of a cat.", "a dog"])
    x = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.encode_text(ids), model.encode_image(x)


# ---------------------------------------------------------------- tokenizer
def test_tokenize_spec_example():
    ids = tokenize("a photo of a cat")
    assert ids.shape == (1, 77) and ids.dtype == torch.long
    assert ids[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 0]
    assert ids[0, 7:].eq(0).all()
    assert (SOT_TOKEN, EOT_TOKEN) == (49406, 49407)
    assert torch.equal(tokenize(["a photo of a cat"]), open_clip.get_tokenizer("ViT-B-32")(["a photo of a cat"]))


def test_token_length_and_overflow():
    assert token_length("a photo of a") == 4
    assert token_length("cat") == 1
    assert token_length("double-decker bus") == len(tokenize("double-decker bus")[0].nonzero()) - 2
    with pytest.raises(ValueError, match="truncate=True"):
        tokenize("word " * 100)
    cut = tokenize("word " * 100, truncate=True)
    assert cut[0, -1] == EOT_TOKEN and cut.shape == (1, 77)
    assert tokenize(["a", "b"], context_length=16).shape == (2, 16)


# ---------------------------------------------------------------- local files
@pytest.mark.parametrize("vision,jit", [("vit", False), ("vit", True), ("rn", False)])
def test_roundtrip_identical(tmp_path, vision, jit):
    model = build_tiny_clip(vision)
    path = save_openai_state_dict(model, tmp_path / "tiny.pt", jit=jit)
    loaded = load_clip("custom", path=path)
    assert isinstance(loaded, CLIP) and not isinstance(loaded, torch.jit.ScriptModule)
    assert not loaded.training
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():  # exact, including weights open_clip would round through fp16
        assert torch.equal(loaded.state_dict()[k], v), k
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple) else size
    for a, b in zip(_outputs(model, size), _outputs(loaded, size)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_wrapped_state_dict(tmp_path, tiny_vit):
    sd = {"module." + k: v for k, v in tiny_vit.state_dict().items()}
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "wrapped.pth")
    loaded = load_clip("custom", path=str(tmp_path / "wrapped.pth"))
    torch.testing.assert_close(_outputs(loaded, 32)[0], _outputs(tiny_vit, 32)[0], atol=0, rtol=0)


def test_not_a_clip_checkpoint(tmp_path):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an OpenAI-format CLIP"):
        load_clip("custom", path=str(tmp_path / "other.pt"))


def test_missing_path(tmp_path):
    missing = tmp_path / "nope" / "ViT-B-16.pt"
    with pytest.raises(BackboneNotFoundError) as err:
        load_clip("ViT-B/16", path=str(missing))
    assert str(missing) in str(err.value) and "MODEL.BACKBONE.PATH" in str(err.value)


def test_fp16_precision(tmp_path, tiny_vit):
    path = save_openai_state_dict(tiny_vit, tmp_path / "tiny.pt")
    half = load_clip("custom", path=path, precision="fp16")
    # The reference convention: conv / linear / attention weights and projections are half.
    assert half.visual.conv1.weight.dtype == torch.float16
    assert half.text_projection.dtype == torch.float16 and half.visual.proj.dtype == torch.float16
    assert half.transformer.resblocks[0].attn.in_proj_weight.dtype == torch.float16
    assert PromptedCLIP(half).dtype == torch.float16
    for prec in ("fp32", "amp"):
        assert all(p.dtype == torch.float32 for p in load_clip("custom", path=path, precision=prec).parameters())
    with pytest.raises(ValueError, match="precision"):
        load_clip("custom", path=path, precision="bf16")


# ---------------------------------------------------------------- names
def test_registered_backbone(tmp_path, tiny_vit):
    path = save_openai_state_dict(tiny_vit, tmp_path / "mini.pt")
    built = []
    register_backbone("test-mini", lambda: built.append(1) or path)
    loaded = load_clip("test-mini")
    assert built == [1]
    torch.testing.assert_close(_outputs(loaded, 32)[1], _outputs(tiny_vit, 32)[1], atol=0, rtol=0)


def test_unknown_name_lists_names(tmp_path, tiny_vit):
    register_backbone("test-mini-2", lambda: "unused")
    with pytest.raises(ValueError) as err:
        load_clip("ViT-B/61")
    msg = str(err.value)
    for name in ("RN50", "ViT-B/16", "ViT-L/14@336px", "test-mini-2", "MODEL:TAG"):
        assert name in msg
    assert "Did you mean" in msg


def test_reference_name_offline_fails_fast(offline, tmp_path):
    start = time.time()
    with pytest.raises(BackboneNotFoundError) as err:
        load_clip("ViT-B/16", cache_dir=str(tmp_path / "cache"))
    assert time.time() - start < 5
    msg = str(err.value)
    assert offline, "the download must have been attempted"
    for part in ("ViT-B/16", "ViT-B-16.pt", "MODEL.BACKBONE.PATH", str(tmp_path / "cache"), "openaipublic"):
        assert part in msg, part
    assert "\n" not in msg
    # open_clip spelling defaults to the openai tag.
    with pytest.raises(BackboneNotFoundError, match="ViT-B-32.pt"):
        load_clip("ViT-B-32")


def test_reference_name_uses_cached_file(offline, tmp_path, tiny_vit):
    # A file already in the cache (as OpenAI's clip package leaves it) is used without any download.
    save_openai_state_dict(tiny_vit, tmp_path / "ViT-B-16.pt")
    loaded = load_clip("ViT-B/16", cache_dir=str(tmp_path))
    assert not offline
    torch.testing.assert_close(_outputs(loaded, 32)[0], _outputs(tiny_vit, 32)[0], atol=0, rtol=0)


def test_open_clip_tags(offline, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("Failed to download weights for tag 'laion2b_s34b_b79k'")

    monkeypatch.setattr(open_clip, "create_model", fail)
    with pytest.raises(BackboneNotFoundError, match="laion2b_s34b_b79k"):
        load_clip("ViT-B-32:laion2b_s34b_b79k")
    no_openai = next(m for m in open_clip.list_models()
                     if not oc_pretrained.get_pretrained_url(m, "openai") and oc_pretrained.list_pretrained_tags_by_model(m))
    with pytest.raises(ValueError, match="name a tag"):
        load_clip(no_openai)
