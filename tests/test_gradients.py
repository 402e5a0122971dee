"""ProGrad's gradient rule (``promptot/gradients.py``) on hand-made gradients: obtuse -> projected, acute -> unchanged,
decided per parameter tensor, with λ scaling the removed component; and against the reference's formula written out
literally on random tensors."""
from __future__ import annotations

import pytest
import torch

from promptot.gradients import ProGradProjection, project_conflicting


def test_obtuse_is_projected_onto_the_normal_plane():
    d, g = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # 135 degrees apart
    out = project_conflicting(d, g, lam=1.0)
    # g_hat = (-1, 1)/sqrt2, d.g_hat = -1/sqrt2, d - (d.g_hat) g_hat = (1, 0) + (-1/2, 1/2)
    torch.testing.assert_close(out, torch.tensor([0.5, 0.5]), rtol=0, atol=1e-7)
    assert float(out @ g) == pytest.approx(0.0, abs=1e-7)  # nothing left against g_g
    torch.testing.assert_close(project_conflicting(d, g, lam=0.5), torch.tensor([0.75, 0.25]), rtol=0, atol=1e-7)


def test_acute_and_orthogonal_are_unchanged():
    d = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    for g in (torch.tensor([[1.0, 1.0], [1.0, 1.0]]), torch.tensor([[2.0, -1.0], [0.0, 0.0]])):  # acute, orthogonal
        assert torch.equal(project_conflicting(d, g), d)


def test_zero_gradients_leave_the_update_unchanged():
    d = torch.tensor([1.0, -2.0])
    assert torch.equal(project_conflicting(d, torch.zeros(2)), d)
    assert torch.equal(project_conflicting(torch.zeros(2), d), torch.zeros(2))


def test_rule_is_applied_per_tensor_not_on_the_concatenation():
    """Tensor a conflicts with its general gradient, tensor b agrees strongly: over the concatenation the cosine is
    positive (a global rule would change nothing), but per tensor a is projected and b is not."""
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([1.0, 0.0]), torch.tensor([10.0, 0.0])
    ga, gb = torch.tensor([-1.0, 1.0]), torch.tensor([10.0, 0.0])
    assert float(torch.cat([a.grad, b.grad]) @ torch.cat([ga, gb])) > 0
    proj = ProGradProjection(lam=1.0)
    proj.set_general([a, b], [ga, gb])
    frac = proj.apply([a, b])
    torch.testing.assert_close(a.grad, torch.tensor([0.5, 0.5]), rtol=0, atol=1e-7)
    assert torch.equal(b.grad, torch.tensor([10.0, 0.0]))
    assert frac == 0.5
    with pytest.raises(RuntimeError, match="set_general"):
        proj.apply()  # g_g is used once per step


def test_matches_the_reference_formula_on_random_tensors():
    """The reference code's expression, written out literally (b = general, a = task gradient)."""
    gen = torch.Generator().manual_seed(0)
    n_proj = 0
    for _ in range(50):
        a_grad, b_grad = torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen)
        lam = float(torch.rand(1, generator=gen))
        b_grad_norm = b_grad / torch.linalg.norm(b_grad)
        a_grad_norm = a_grad / torch.linalg.norm(a_grad)
        expected = a_grad
        if torch.dot(a_grad_norm.flatten(), b_grad_norm.flatten()) < 0:
            expected = a_grad - lam * torch.dot(a_grad.flatten(), b_grad_norm.flatten()) * b_grad_norm
            n_proj += 1
        torch.testing.assert_close(project_conflicting(a_grad, b_grad, lam), expected, rtol=1e-6, atol=1e-6)
    assert 10 < n_proj < 40  # both branches were exercised


def test_half_precision_gradients_are_handled_in_float32():
    d, g = torch.tensor([300.0, 0.0], dtype=torch.float16), torch.tensor([-300.0, 300.0], dtype=torch.float16)
    out = project_conflicting(d, g)  # 300^2 alone exceeds the fp16 range (65504): the dots must run in fp32
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), torch.tensor([150.0, 150.0]), rtol=1e-3, atol=0)
    big = torch.full((4096,), 8.0, dtype=torch.float16)  # ||big||^2 = 262144
    out = project_conflicting(big, -big)  # exactly opposite: the whole gradient is removed
    assert torch.isfinite(out.float()).all() and float(out.float().abs().max()) < 1e-2


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes differ"):
        project_conflicting(torch.zeros(2), torch.zeros(3))
