"""Phase-2 divergences against dense float64 references: values and gradients."""

import pytest
import torch

from sdzero.losses import (
    full_vocab_divergence,
    sampled_token_reverse_kl,
    token_logprobs_from_hidden,
    topk_divergence,
    topk_divergence_from_hidden,
)

N, V, H = 13, 50, 8


def dense(s_logits, t_logits, kind, beta=0.5):
    """Reference in float64 over given logits (already restricted to a support if need be)."""
    s = torch.log_softmax(s_logits.double(), -1)
    t = torch.log_softmax(t_logits.double(), -1)
    P, Q = t.exp(), s.exp()
    fwd = (P * (t - s)).sum(-1)
    rev = (Q * (s - t)).sum(-1)
    if kind == "forward":
        return fwd
    if kind == "reverse":
        return rev
    if kind == "mixed":
        return beta * fwd + (1 - beta) * rev
    M = beta * P + (1 - beta) * Q
    return beta * (P * (t - M.log())).sum(-1) + (1 - beta) * (Q * (s - M.log())).sum(-1)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(N, V, generator=g) * 2
    t = torch.randn(N, V, generator=g) * 2
    mask = torch.rand(N, generator=g) > 0.3
    return s, t, mask


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum()


@pytest.mark.parametrize("kind,beta", [("forward", 0.5), ("reverse", 0.5), ("mixed", 0.5), ("mixed", 0.2)])
def test_topk_matches_a_dense_reference_on_the_support(data, kind, beta):
    s, t, mask = data
    k = 7
    s32 = s.clone().requires_grad_(True)
    loss, per_token = topk_divergence(s32, t, mask, k=k, kind=kind, beta=beta)
    # Reference: per row, the teacher's k largest tokens, both sides renormalised over them, float64.
    s64 = s.double().clone().requires_grad_(True)
    rows = []
    for i in range(N):
        support = torch.argsort(t[i], descending=True)[:k]
        rows.append(dense(s64[i, support], t[i, support], kind, beta))
    ref_per_token = torch.stack(rows)
    ref = masked_mean(ref_per_token, mask.double())
    assert torch.allclose(per_token.double(), ref_per_token, atol=1e-5)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    (g,) = torch.autograd.grad(loss, s32)
    (g_ref,) = torch.autograd.grad(ref, s64)
    assert torch.allclose(g.double(), g_ref, atol=1e-6)
    assert g[~mask].abs().max() == 0  # masked positions get no gradient


def test_topk_with_the_whole_vocabulary_is_the_full_divergence(data):
    s, t, mask = data
    loss, _ = topk_divergence(s, t, mask, k=V, kind="reverse")
    assert loss.item() == pytest.approx(masked_mean(dense(s, t, "reverse"), mask.double()).item(), abs=1e-5)


def test_topk_accepts_bf16_logits(data):
    s, t, mask = data
    loss, _ = topk_divergence(s.bfloat16(), t.bfloat16(), mask, k=8)
    ref, _ = topk_divergence(s.bfloat16().float(), t.bfloat16().float(), mask, k=8)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(ref.item(), abs=1e-5)


@pytest.mark.parametrize("kind", ["forward", "reverse", "jsd"])
@pytest.mark.parametrize("chunk", [1, 4, 100])
def test_full_vocab_chunked_matches_a_dense_reference(kind, chunk):
    g = torch.Generator().manual_seed(1)
    hs, ht = torch.randn(N, H, generator=g), torch.randn(N, H, generator=g)
    ws, wt = torch.randn(V, H, generator=g), torch.randn(V, H, generator=g)
    mask = torch.rand(N, generator=g) > 0.3
    hs32, ws32 = hs.clone().requires_grad_(True), ws.clone().requires_grad_(True)
    loss, per_token = full_vocab_divergence(hs32, ws32, ht, wt, mask, kind=kind, beta=0.3, chunk_size=chunk)
    hs64, ws64 = hs.double().clone().requires_grad_(True), ws.double().clone().requires_grad_(True)
    ref_per_token = dense(hs64 @ ws64.T, ht.double() @ wt.double().T, kind, beta=0.3)
    ref = masked_mean(ref_per_token, mask.double())
    assert torch.allclose(per_token.double(), ref_per_token, atol=1e-4)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    g_h, g_w = torch.autograd.grad(loss, (hs32, ws32))
    r_h, r_w = torch.autograd.grad(ref, (hs64, ws64))
    assert torch.allclose(g_h.double(), r_h, atol=1e-5) and torch.allclose(g_w.double(), r_w, atol=1e-5)


@pytest.mark.parametrize("kind", ["forward", "reverse", "mixed"])
@pytest.mark.parametrize("chunk", [1, 5, 100])
def test_topk_from_hidden_matches_the_dense_reference(kind, chunk):
    """The trainer's top-k path (student logits only at the k ids) against float64 on full logits."""
    g = torch.Generator().manual_seed(4)
    hs, ht = torch.randn(N, H, generator=g), torch.randn(N, H, generator=g)
    ws, wt = torch.randn(V, H, generator=g), torch.randn(V, H, generator=g)
    mask = torch.rand(N, generator=g) > 0.3
    k = 9
    hs32, ws32 = hs.clone().requires_grad_(True), ws.clone().requires_grad_(True)
    loss, per_token = topk_divergence_from_hidden(hs32, ws32, ht, wt, mask, k=k, kind=kind, beta=0.3,
                                                  chunk_size=chunk)
    hs64, ws64 = hs.double().clone().requires_grad_(True), ws.double().clone().requires_grad_(True)
    s_full, t_full = hs64 @ ws64.T, ht.double() @ wt.double().T
    rows = []
    for i in range(N):
        support = torch.argsort(t_full[i], descending=True)[:k]
        rows.append(dense(s_full[i, support], t_full[i, support], kind, beta=0.3))
    ref_per_token = torch.stack(rows)
    ref = masked_mean(ref_per_token, mask.double())
    assert torch.allclose(per_token.double(), ref_per_token, atol=1e-5)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    g_h, g_w = torch.autograd.grad(loss, (hs32, ws32))
    r_h, r_w = torch.autograd.grad(ref, (hs64, ws64))
    assert torch.allclose(g_h.double(), r_h, atol=1e-5) and torch.allclose(g_w.double(), r_w, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 4, 100])
def test_token_logprobs_from_hidden_matches_log_softmax(chunk):
    g = torch.Generator().manual_seed(5)
    h, w = torch.randn(N, H, generator=g), torch.randn(V, H, generator=g)
    targets = torch.randint(0, V, (N,), generator=g)
    h32 = h.clone().requires_grad_(True)
    lp = token_logprobs_from_hidden(h32, w, targets, chunk_size=chunk)
    h64 = h.double().clone().requires_grad_(True)
    ref = torch.log_softmax(h64 @ w.double().T, -1).gather(-1, targets[:, None]).squeeze(-1)
    assert torch.allclose(lp.double(), ref, atol=1e-5)
    (g32,) = torch.autograd.grad(lp.sum(), h32)
    (g64,) = torch.autograd.grad(ref.sum(), h64)
    assert torch.allclose(g32.double(), g64, atol=1e-5)


def test_full_vocab_never_differentiates_the_teacher():
    g = torch.Generator().manual_seed(2)
    hs, ht = torch.randn(4, H, generator=g, requires_grad=True), torch.randn(4, H, generator=g, requires_grad=True)
    ws, wt = torch.randn(V, H, generator=g), torch.randn(V, H, generator=g, requires_grad=True)
    loss, _ = full_vocab_divergence(hs, ws, ht, wt, chunk_size=2)
    loss.backward()
    assert ht.grad is None and wt.grad is None and hs.grad is not None


def test_sampled_token_reverse_kl_has_the_dense_gradient_in_expectation():
    """Enumerate every token as the sample, weight by S: the expected gradient equals grad KL(S||T)."""
    g = torch.Generator().manual_seed(3)
    s_logits = torch.randn(V, generator=g, dtype=torch.float64, requires_grad=True)
    t_logits = torch.randn(V, generator=g, dtype=torch.float64)
    s = torch.log_softmax(s_logits, -1)
    t = torch.log_softmax(t_logits, -1)
    weights = s.exp().detach()
    expected_grad = torch.zeros(V, dtype=torch.float64)
    for y in range(V):
        loss, est = sampled_token_reverse_kl(s[y : y + 1], t[y : y + 1])
        (gy,) = torch.autograd.grad(loss, s_logits, retain_graph=True)
        expected_grad += weights[y] * gy
    (dense_grad,) = torch.autograd.grad(dense(s_logits, t_logits, "reverse"), s_logits)
    assert torch.allclose(expected_grad, dense_grad, atol=1e-10)
    # And the per-token estimate is unbiased for the KL value itself.
    assert (weights * (s - t)).sum().item() == pytest.approx(dense(s_logits, t_logits, "reverse").item(), rel=1e-10)


def test_sampled_token_mask_and_teacher_detached():
    s = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    t = torch.tensor([-1.5, -1.0, -0.5], requires_grad=True)
    loss, est = sampled_token_reverse_kl(s, t, mask=torch.tensor([True, True, False]))
    assert torch.allclose(est, torch.tensor([0.5, -1.0, 0.0]))
    loss.backward()
    assert t.grad is None
    assert torch.allclose(s.grad, torch.tensor([0.5, -1.0, 0.0]) / 2)


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown divergence"):
        topk_divergence(torch.zeros(2, 4), torch.zeros(2, 4), kind="sideways")
