"""Hook points, capture/replace and the prefix/suffix split, for every registered architecture."""

from __future__ import annotations

import pytest
import torch

from medseglens_core.errors import InvalidInput, MedSegLensError, NotFound
from medseglens_core.models import architectures, build_model, capture, replace

# Small inputs keep this fast; 64 is divisible by the U-Net's total stride 16 and SegFormer's 32.
SIZE = 64


def _model(arch: str):
    torch.manual_seed(0)
    return build_model(arch, input_size=SIZE).eval()


def _hooks(model) -> list[int]:
    return sum(len(h._forward_hooks) for h in model.modules())


@pytest.fixture(params=architectures())
def model(request):
    return _model(request.param)


@pytest.fixture
def x():
    return torch.randn(2, 4, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def test_registry_lists_both_and_refuses_duplicates():
    from medseglens_core.models.base import SegModel, register

    assert set(architectures()) == {"segformer", "unet"}
    with pytest.raises(InvalidInput, match="already registered"):
        register("unet")(type("Dup", (SegModel,), {}))
    with pytest.raises(NotFound, match="unknown architecture"):
        build_model("resnet")
    with pytest.raises(InvalidInput, match="unknown unet config keys"):
        build_model("unet", chanels=(8, 16))


def test_forward_shape_and_hook_points(model, x):
    with torch.no_grad():
        assert model(x).shape == (2, 4, SIZE, SIZE)
    assert model.default_hook in model.hook_points
    expected = {"segformer": {"stage1", "stage2", "stage3", "stage4"}, "unet": {"bottleneck", "enc1", "dec1"}}
    assert expected[model.arch] <= set(model.hook_points)


def test_unet_matches_monai_forward(x):
    model = _model("unet")
    with torch.no_grad():
        assert torch.equal(model(x), model.net(x))


def test_segformer_matches_transformers_forward(x):
    model = _model("segformer")
    with torch.no_grad():
        ref = model.net(pixel_values=x).logits
        ref = torch.nn.functional.interpolate(ref, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        assert torch.equal(model(x), ref)


def test_capture_then_replace_is_identity_and_zeros_change(model, x):
    with torch.no_grad():
        ref = model(x)
        for hook in model.hook_points:
            with capture(model, hook) as cap:
                model(x)
            assert cap.value.ndim == 4 and cap.value.shape[0] == 2
            with replace(model, hook, cap.value.clone()):
                assert torch.equal(model(x), ref), hook
            with replace(model, hook, torch.zeros_like(cap.value)):
                assert not torch.allclose(model(x), ref), hook
            with replace(model, hook, lambda h: h):
                assert torch.equal(model(x), ref), hook
    assert _hooks(model) == 0


def test_replace_feeds_decode_head_too():
    # Zeroing stage4 must change the logits through the decode head, not only through later stages
    # (there are none after stage4): the pitfall of DESIGN section 4.
    model = _model("segformer")
    x = torch.randn(1, 4, SIZE, SIZE)
    with torch.no_grad(), replace(model, "stage4", lambda h: torch.zeros_like(h)):
        edited = model(x)
    with torch.no_grad():
        assert not torch.allclose(edited, model(x))


def test_suffix_from_prefix_is_bit_identical(model, x):
    with torch.no_grad():
        ref = model(x)
        for hook in model.hook_points:
            prefix = model.run_prefix(x, hook)
            assert torch.equal(model.run_suffix(prefix, prefix.h), ref), hook
            assert not torch.allclose(model.run_suffix(prefix, torch.zeros_like(prefix.h)), ref), hook


def test_suffix_agrees_with_hook_replacement(model, x):
    hook = model.default_hook
    with torch.no_grad():
        prefix = model.run_prefix(x, hook)
        edited = prefix.h * 1.5 + 0.1
        with replace(model, hook, edited):
            via_hook = model(x)
        assert torch.allclose(model.run_suffix(prefix, edited), via_hook, atol=1e-5)


def test_hooks_removed_after_exception(model, x):
    with pytest.raises(RuntimeError, match="boom"), capture(model, model.default_hook):
        raise RuntimeError("boom")
    with (
        pytest.raises(InvalidInput, match="must be a tensor of shape"),
        replace(model, model.default_hook, torch.zeros(1)),
    ):
        model(x)
    assert _hooks(model) == 0


def test_unknown_hook_and_bad_suffix_shape(model, x):
    with pytest.raises(NotFound, match="choose one of"):
        model.run_prefix(x, "layer99")
    with pytest.raises(MedSegLensError):
        capture(model, "nope").__enter__()
    prefix = model.run_prefix(x, model.default_hook)
    with pytest.raises(InvalidInput, match="expected"):
        model.run_suffix(prefix, prefix.h[:1])


@pytest.mark.parametrize("variant", ["b1", "b2"])
def test_segformer_variants_selectable(variant):
    model = build_model("segformer", variant=variant, input_size=SIZE)
    assert model.hook_module("stage4").layer_norm.normalized_shape == (512,)
    assert model.config["variant"] == variant
