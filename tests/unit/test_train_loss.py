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


@pytest.mark.parametrize("lora", [False, True])
def test_model_loss_and_parameter_gradients_match_plain_path(lora):
    from transformers import BartConfig, BartForConditionalGeneration

    from threadsum.train.loss import chunkable_head, lm_loss_sum

    torch.manual_seed(0)
    cfg = BartConfig(vocab_size=97, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                     decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                     dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    model = BartForConditionalGeneration(cfg)
    model.final_logits_bias.normal_(0, 0.1)  # non-zero, so dropping it would show
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "fc1"]))
    assert chunkable_head(model) is not None
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, 97, (3, 11), generator=g)
    mask = torch.ones_like(src)
    mask[2, 7:] = 0
    dec = torch.randint(3, 97, (3, 9), generator=g)
    labels = torch.randint(3, 97, (3, 9), generator=g)
    labels[1, 5:] = -100

    def run(chunk):
        model.zero_grad(set_to_none=True)
        inputs = {"input_ids": src, "attention_mask": mask, "decoder_input_ids": dec}
        loss = lm_loss_sum(model, inputs, labels, 0.1, chunk)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain_loss, plain_grads = run(0)
    loss, grads = run(5)
    assert torch.allclose(loss, plain_loss, rtol=1e-5)
    assert grads.keys() == plain_grads.keys() and grads
    for name in grads:
        assert torch.allclose(grads[name], plain_grads[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("arch,lora", [("llama", False), ("qwen2", False), ("llama", True)])
def test_causal_label_only_head_matches_full_logits(arch, lora):
    """A causal batch (prompt ignored, completion scored, right padding): the chunked head over the
    labelled rows only gives the full-logits loss and gradients; so does validation (no grad)."""
    import transformers

    from threadsum.family import CAUSAL
    from threadsum.train.loss import chunkable_head, lm_loss_sum

    torch.manual_seed(0)
    cls_cfg, cls_model = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}[arch]
    cfg = getattr(transformers, cls_cfg)(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                         tie_word_embeddings=True)
    model = getattr(transformers, cls_model)(cfg)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(CAUSAL.lora_targets),
                                                 task_type=CAUSAL.peft_task))
    assert chunkable_head(model) is not None
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 101, (n,), generator=g).tolist() for n in (17, 9, 12)]
    completions = [torch.randint(3, 101, (n,), generator=g).tolist() + [2] for n in (4, 6, 1)]
    b = CAUSAL.collate(prompts, completions, pad_id=2, pad=8)  # pad == eos: the eos labels must survive
    assert b["n_label_tokens"] == sum(len(c) for c in completions)
    assert int((b["labels"] != -100).sum()) == b["n_label_tokens"]
    inputs = {k: b[k] for k in CAUSAL.model_inputs}

    def run(chunk):
        model.zero_grad(set_to_none=True)
        loss = lm_loss_sum(model, inputs, b["labels"], 0.1, chunk)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain_loss, plain_grads = run(0)
    loss, grads = run(3)
    assert torch.allclose(loss, plain_loss, rtol=1e-5)
    assert grads.keys() == plain_grads.keys() and grads
    for name in grads:
        assert torch.allclose(grads[name], plain_grads[name], rtol=1e-4, atol=1e-6), name
    with torch.no_grad():
        assert torch.allclose(lm_loss_sum(model, inputs, b["labels"], 0.1, 3), plain_loss, rtol=1e-5)


@pytest.mark.parametrize("chunk", [8, 1000])
def test_under_bf16_autocast_matches_the_plain_path_and_keeps_fp32_gradients(chunk):
    """Inside the training step's autocast the head runs in bf16 as the plain path's matmul would,
    while the loss and the weight/bias gradients stay fp32, to bf16 rounding of the plain path."""
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(40, 32, generator=g)
    weight = torch.randn(300, 32, generator=g) * 0.2
    bias = torch.randn(300, generator=g) * 0.1
    labels = torch.randint(0, 300, (40,), generator=g)
    labels[::7] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = _grads(_plain, hidden, weight, bias, labels, 0.1)
        got = _grads(lambda h, w, b, y, e: chunked_lm_loss(h, w, b, y, e, chunk_tokens=chunk),
                     hidden, weight, bias, labels, 0.1)
    exact = _grads(_plain, hidden, weight, bias, labels, 0.1)  # fp32 everywhere
    for name, a, b, e in zip(("loss", "hidden", "weight", "bias"), ref, got, exact):
        assert b.dtype == e.dtype == torch.float32, name
        scale = e.abs().max()
        assert (b - a).abs().max() <= 0.02 * scale, name  # both are the bf16 head: equal to rounding
        assert (b - e).abs().max() <= 0.05 * scale, name  # and near the fp32 result
    assert not torch.equal(got[2], exact[2])  # the head really ran in bf16
