"""Token cross-entropy of an LM head without materialising the full fp32 logits, for both model families.

The collated batch's labels are aligned with the positions of the model's last hidden state
(:meth:`threadsum.family.Family.collate`: a seq2seq decoder position scores its own target token, a
causal position scores the next token), so one function, :func:`lm_loss_sum`, is the training loss,
the validation loss and the chunked head of both families. Only labelled positions reach the head:
a causal example with a 1,000-token prompt and a 110-token summary computes 110 rows of logits, not
1,110 (``bench/bench_loss_memory.py`` measures it).

The plain path builds ``logits.float()`` for every target token: ``4 B x vocab`` per token (BART:
50,265 x 4 B = 201 kB per target token, 103 MB for two 256-token summaries, plus the bf16 copy and
the log-softmax saved for backward). :func:`chunked_lm_loss` walks the target tokens in chunks of
``chunk_tokens``: per chunk it computes the logits, the loss and the gradients with respect to the
hidden states, the head's weight and bias, then drops the chunk's logits. Backward only scales the
stored gradients. Peak extra memory is one chunk's logits (``chunk_tokens x vocab x 4 B``) instead of
all of them; the arithmetic is the plain path's (same matmuls, fp32 softmax), so the loss and the
gradients match ``F.cross_entropy(reduction="sum", label_smoothing=...)`` to float rounding (a test
holds this). The idea is the "fused linear cross-entropy" of Liger-Kernel and Apple's Cut Cross-Entropy;
this is a plain-PyTorch version of it that runs on any device.

Gradient of the smoothed cross-entropy with respect to a token's logits ``z`` (target ``y``,
smoothing ``eps``, ``V`` classes, ``p = softmax(z)``): ``p - (1 - eps) * onehot(y) - eps / V``
(PyTorch's definition of label smoothing); ignored tokens (label ``-100``) contribute nothing.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from threadsum.family import IGNORE_INDEX  # noqa: F401 - re-exported: the one definition lives there


def _chunked_loss_only(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                       labels: torch.Tensor, label_smoothing: float, chunk_tokens: int) -> torch.Tensor:
    """The forward of :class:`_ChunkedLinearCrossEntropy` without its gradients (validation)."""
    vocab, eps = weight.shape[0], float(label_smoothing)
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_tokens):
        y = labels[start:start + chunk_tokens]
        keep = y != IGNORE_INDEX
        if not bool(keep.any()):
            continue
        logits = hidden[start:start + chunk_tokens][keep] @ weight.t()
        if bias is not None:
            logits = logits + bias
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        nll = -log_probs.gather(1, y[keep][:, None]).squeeze(1)
        loss += ((1.0 - eps) * nll - (eps / vocab) * log_probs.sum(dim=-1)).sum()
    return loss


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype the head's matmuls run in: the autocast dtype inside an autocast region of the
    weight's device type, else the weight's own (what ``hidden @ weight.t()`` would use)."""
    kind = weight.device.type
    if weight.dtype not in (torch.float32, torch.float64):
        return weight.dtype
    try:  # torch >= 2.4
        on, dtype = torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)
    except (TypeError, AttributeError):  # torch 2.3: per-device functions
        cpu = kind == "cpu"
        on = torch.is_autocast_cpu_enabled() if cpu else torch.is_autocast_enabled()
        dtype = torch.get_autocast_cpu_dtype() if cpu else torch.get_autocast_gpu_dtype()
    return dtype if on else weight.dtype


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                labels: torch.Tensor, label_smoothing: float, chunk_tokens: int) -> torch.Tensor:
        n_tokens, vocab = hidden.shape[0], weight.shape[0]
        # The casts autocast would make are made here once per call, with autocast off inside: a cast
        # of the transposed weight is a non-leaf that autocast's cache does not keep, so it would be
        # copied again for every chunk ([d_model, vocab] each), and the in-place accumulation below
        # would fall out of autocast and run in fp32.
        compute = _compute_dtype(weight)
        with torch.autocast(weight.device.type, enabled=False):
            w = weight.to(compute)
            loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_hidden = torch.zeros_like(hidden)
            acc = torch.promote_types(weight.dtype, torch.float32)  # gradient sums never below fp32
            want_w = weight.requires_grad
            want_b = bias is not None and bias.requires_grad
            # allocated by the first chunk's product (no zero-filled [vocab, d_model] buffer to add to)
            grad_weight: Optional[torch.Tensor] = None
            grad_bias: Optional[torch.Tensor] = None
            eps = float(label_smoothing)
            for start in range(0, n_tokens, chunk_tokens):
                h = hidden[start:start + chunk_tokens]
                y = labels[start:start + chunk_tokens]
                keep = y != IGNORE_INDEX
                if not bool(keep.any()):
                    continue
                h, y = h[keep].to(compute), y[keep]
                logits = h @ w.t()
                if bias is not None:
                    logits = logits + bias.to(compute)
                log_probs = torch.log_softmax(logits.float(), dim=-1)
                del logits
                nll = -log_probs.gather(1, y[:, None]).squeeze(1)
                loss += ((1.0 - eps) * nll - (eps / vocab) * log_probs.sum(dim=-1)).sum()
                grad_logits = log_probs.exp_()  # softmax, in place of the log-probabilities
                del log_probs
                grad_logits.scatter_add_(1, y[:, None], torch.full_like(y[:, None], -(1.0 - eps),
                                                                         dtype=grad_logits.dtype))
                if eps:
                    grad_logits -= eps / vocab
                if want_b:
                    part = grad_logits.sum(dim=0, dtype=acc)
                    grad_bias = part if grad_bias is None else grad_bias.add_(part)
                g = grad_logits.to(compute)
                del grad_logits
                rows = keep.nonzero().squeeze(1) + start
                grad_hidden.index_copy_(0, rows, (g @ w).to(hidden.dtype))
                if want_w:
                    part = g.t() @ h
                    grad_weight = part.to(acc) if grad_weight is None else grad_weight.add_(part)
                del g
            if want_w and grad_weight is None:  # no scored token at all
                grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device)
            if want_b and grad_bias is None:
                grad_bias = torch.zeros(vocab, dtype=acc, device=hidden.device)
        ctx.save_for_backward(grad_hidden,
                              grad_weight if grad_weight is not None else torch.empty(0),
                              grad_bias if grad_bias is not None else torch.empty(0))
        ctx.has = (grad_weight is not None, grad_bias is not None)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        has_w, has_b = ctx.has
        w_dtype, b_dtype = ctx.dtypes
        # scaled in place: these buffers were made by forward for this one backward (the training step
        # never retains the graph), and a scaled copy would hold a second [vocab, d_model] gradient
        return (
            grad_hidden.mul_(grad_loss.to(grad_hidden.dtype)),
            grad_weight.mul_(grad_loss.to(grad_weight.dtype)).to(w_dtype) if has_w else None,
            grad_bias.mul_(grad_loss.to(grad_bias.dtype)).to(b_dtype) if has_b else None,
            None, None, None,
        )


def chunked_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], labels: torch.Tensor,
                    label_smoothing: float = 0.0, chunk_tokens: int = 1024) -> torch.Tensor:
    """Summed token cross-entropy of ``hidden @ weight.T + bias`` against ``labels``, chunk by chunk.

    Args:
        hidden: decoder output ``[tokens, d_model]`` (flatten ``[batch, tgt_len, d_model]`` first).
        weight: LM head weight ``[vocab, d_model]`` (BART: the tied token embedding).
        bias: added to the logits, ``[vocab]`` (BART's ``final_logits_bias`` row), or None.
        labels: target ids ``[tokens]``; ``-100`` marks positions that are not scored.
        label_smoothing: in [0, 1), as ``F.cross_entropy``'s.
        chunk_tokens: target tokens per chunk; the extra memory is ``chunk_tokens x vocab x 4 B``
            (1,024 tokens at BART's vocabulary: 206 MB).
    Returns:
        A float32 scalar: the sum over scored tokens (divide by their count for the mean), with a
        gradient for ``hidden``, ``weight`` and ``bias`` equal to the plain path's.
    Raises:
        ValueError: mismatched shapes or a non-positive ``chunk_tokens``.
    """
    if chunk_tokens <= 0:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    if hidden.dim() != 2 or labels.dim() != 1 or hidden.shape[0] != labels.shape[0]:
        raise ValueError(f"hidden must be [tokens, d_model] and labels [tokens]; got {tuple(hidden.shape)} "
                         f"and {tuple(labels.shape)}")
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"weight {tuple(weight.shape)} does not match d_model {hidden.shape[1]}")
    if not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in (hidden, weight, bias)):
        return _chunked_loss_only(hidden, weight, bias, labels, label_smoothing, chunk_tokens)
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, bias, labels, label_smoothing, chunk_tokens)


CHUNKED_MODEL_TYPES = ("bart", "mbart", "llama", "qwen2", "qwen3", "mistral", "phi3", "smollm3")
"""Model types whose logits are exactly ``lm_head(inner_model(...).last_hidden_state)`` (+ BART's
``final_logits_bias``), checked in each modeling file of transformers, so the chunked loss computes the
same function. Gemma 2/3 (final logit soft-capping) and Cohere (a logit scale) are not; they take the
full-logits path."""


def chunk_tokens_for(configured: int, distributed: bool) -> int:
    """``train.loss_chunk_tokens`` (tokens per chunk) as a run uses it: ``configured`` in one process,
    0 (the full-logits path) under DDP/FSDP (``distributed``: several processes), whose hooks live on
    the model's own forward (gradient sync, parameter unsharding), which the chunked path bypasses.
    The one place this rule is decided; pure, so the planner applies it without an accelerator."""
    return 0 if distributed else configured


def loss_chunk_tokens(configured: int, accelerator: Any) -> int:
    """``train.loss_chunk_tokens`` for this run's ``accelerator`` (see :func:`chunk_tokens_for`)."""
    from accelerate.utils import DistributedType

    return chunk_tokens_for(configured, accelerator.distributed_type != DistributedType.NO)


def chunkable_head(model: Any) -> Optional[tuple[Any, Any, Optional[torch.Tensor]]]:
    """``(inner model, lm_head weight [vocab, d_model], bias [vocab] or None)`` when the chunked loss
    can replace the model's head for ``model`` (a plain or peft-wrapped model of
    :data:`CHUNKED_MODEL_TYPES` in one process), else None (the plain path is used; several processes
    wrap the model and need its own forward for gradient synchronisation)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    head = getattr(base, "lm_head", None)
    if getattr(config, "model_type", None) not in CHUNKED_MODEL_TYPES or not isinstance(head, torch.nn.Linear):
        return None
    if type(head) is not torch.nn.Linear or not hasattr(base, "model"):  # e.g. a LoRA-wrapped head
        return None
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    bias = getattr(base, "final_logits_bias", None)
    bias = bias.reshape(-1) if bias is not None else None
    if head.bias is not None:
        bias = head.bias if bias is None else bias + head.bias
    return base.model, head.weight, bias


def lm_loss_sum(model: Any, inputs: dict[str, torch.Tensor], labels: torch.Tensor, label_smoothing: float,
                chunk_tokens: int) -> torch.Tensor:
    """Summed token cross-entropy of one micro-batch, for either model family.

    Args:
        inputs: the model's forward inputs (:attr:`threadsum.family.Family.model_inputs` of a collated
            batch: ``input_ids``, ``attention_mask`` ``[batch, len]``, seq2seq also ``decoder_input_ids``).
        labels: ``[batch, out_len]`` aligned with the output positions (``-100`` where not scored).
        chunk_tokens: > 0 uses :func:`chunked_lm_loss` on the labelled positions only when
            :func:`chunkable_head` allows it; 0 (or a model it does not cover) computes the full
            fp32 logits and ``F.cross_entropy``.
    Returns: a float32 scalar, the sum over scored tokens.
    """
    import torch.nn.functional as F

    head = chunkable_head(model) if chunk_tokens else None
    if head is None:
        logits = model(**inputs).logits
        # backward needs only the log-softmax: the logits are not held past this expression
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum", label_smoothing=label_smoothing)
    inner, weight, bias = head
    hidden = inner(**inputs).last_hidden_state
    flat, y = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    keep = (y != IGNORE_INDEX).nonzero().squeeze(1)
    if keep.numel() < y.numel():  # the head and its gradient only where there is a label
        flat, y = flat.index_select(0, keep), y.index_select(0, keep)
    return chunked_lm_loss(flat, weight, bias, y, label_smoothing, chunk_tokens)
