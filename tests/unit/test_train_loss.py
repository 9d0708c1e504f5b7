"""The chunked LM-head loss equals the plain path (full fp32 logits + F.cross_entropy) in value and gradients."""
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from threadsum.train.loss import chunked_lm_loss  # noqa: E402


def _plain(hidden, weight, bias, labels, eps):
    logits = hidden @ weight.t() + bias
    return F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="sum", label_smoothing=eps)


def _grads(fn, hidden, weight, bias, labels, eps, **kw):
    h, w, b = (t.detach().clone().requires_grad_(True) for t in (hidden, weight, bias))
    loss = fn(h, w, b, labels, eps, **kw)
    (loss * 0.37).backward()  # a non-unit upstream gradient, as the loop's 1/tokens scaling gives
    return loss.detach(), h.grad, w.grad, b.grad


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_loss_and_gradients_match_plain_path(eps, chunk):
    g = torch.Generator().manual_seed(0)
    n, d, vocab = 53, 16, 101
    hidden = torch.randn(n, d, generator=g, dtype=torch.float64)
    weight = torch.randn(vocab, d, generator=g, dtype=torch.float64) * 0.5
    bias = torch.randn(vocab, generator=g, dtype=torch.float64) * 0.1
    labels = torch.randint(0, vocab, (n,), generator=g)
    labels[::5] = -100  # padding positions are not scored
    ref = _grads(_plain, hidden, weight, bias, labels, eps)
    got = _grads(lambda h, w, b, y, e: chunked_lm_loss(h, w, b, y, e, chunk_tokens=chunk),
                 hidden, weight, bias, labels, eps)
    for name, a, b in zip(("loss", "hidden", "weight", "bias"), ref, got):
        # the plain path rounds its logits to fp32 (`.float()`), so both agree to fp32 rounding
        assert torch.allclose(a.double(), b.double(), rtol=1e-6, atol=1e-7), name


def test_float32_tolerance_and_all_ignored_chunk():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(40, 32, generator=g)
    weight = torch.randn(500, 32, generator=g) * 0.2
    bias = torch.zeros(500)
    labels = torch.randint(0, 500, (40,), generator=g)
    labels[:16] = -100  # the first two chunks of 8 score nothing
    ref = _grads(_plain, hidden, weight, bias, labels, 0.1)
    got = _grads(lambda h, w, b, y, e: chunked_lm_loss(h, w, b, y, e, chunk_tokens=8), hidden, weight, bias, labels, 0.1)
    for a, b in zip(ref, got):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(got[1][:16]) == 0


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunked_lm_loss(torch.zeros(2, 4), torch.zeros(5, 4), None, torch.zeros(2, dtype=torch.long), chunk_tokens=0)
    with pytest.raises(ValueError, match="d_model"):
        chunked_lm_loss(torch.zeros(2, 4), torch.zeros(5, 3), None, torch.zeros(2, dtype=torch.long))
