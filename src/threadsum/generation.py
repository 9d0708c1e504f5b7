"""Decoding: the one place that turns ``eval.generation`` settings into how summaries are generated.

Validation ROUGE during training, ``threadsum evaluate``, the :class:`~threadsum.inference.Summarizer`
(CLI and HTTP service) and the ``generation_config.json`` of an exported model all go through
:func:`build_generation_config` and :func:`generate_batches`, so the same thread gets the same summary
everywhere for the same settings (a test holds this). Models exported to CTranslate2 decode through
:func:`translate_options` and :func:`translate_batches` (seq2seq, a ``Translator``) or
:func:`generator_options` and :func:`generator_batches` (decoder-only, a ``Generator``), which map the
same settings. Adding a decoding option is one edit in :func:`decoding_settings` (and its CTranslate2
names in :func:`translate_options` and :func:`generator_options`).

Rules (and why):

- ``min_new_tokens`` is capped at ``max_new_tokens``: a floor above the ceiling is unsatisfiable
  and ``generate`` would raise mid-run.
- ``early_stopping`` is on for beam search: a beam stops when ``num_beams`` finished candidates
  exist (Hugging Face's meaning), as BART's summarization checkpoints do.
- Only the token counts above bound the summary: the model's own ``max_length`` is reset, and
  ``min_new_tokens`` takes precedence over a model's ``min_length`` (transformers' rule; BART-CNN
  ships ``min_length=56``).
- Greedy or beam search, never sampling: summaries are reproducible.
- ``rerank: grounding`` asks for ``rerank_candidates`` finished beams per thread (the beam width is
  raised to at least that many; :func:`candidates_wanted`) and a ``choose`` callback picks one
  (:func:`threadsum.verify.rerank.grounded_chooser`); without one the top beam is kept. Torch
  candidates come best first but without scores: ``sequences_scores`` needs ``output_scores``,
  which keeps every step's scores (batch x beams x steps x vocab floats), so the beam rank stands in
  for the score; CTranslate2 returns the scores (``return_scores``) at no cost.
- Beam scores are renormalized after the n-gram and length rules (``renormalize_logits``): a banned
  token's probability mass goes to the allowed ones, so a beam's score stays a log-probability. This
  is also how CTranslate2 scores beams, which keeps both engines' summaries equal (a test holds this).
- Inputs longer than the model's window are cut to it (:meth:`threadsum.family.Family.source_limit`:
  the encoder's positions, or a causal model's context minus ``max_new_tokens``); padding is where
  the family needs it (right for seq2seq, left for decoder-only models, whose new tokens must follow
  the prompt directly), with the family's pad id (a decoder-only tokenizer without one pads with EOS;
  the attention mask, built from lengths, hides it).
- Decoder-only models: the prompt is cut from the output, and ``no_repeat_ngram_size`` applies to the
  summary only (:class:`NoRepeatNGramAfter`); Hugging Face's own rule would also ban every n-gram of
  the thread, so the summary could not repeat a name or phrase it read.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple, Optional, Sequence

from threadsum.config import GenerationConfig as DecodingConfig

if TYPE_CHECKING:  # pragma: no cover
    import torch
    import transformers


Chooser = Callable[[int, list[str], list[Optional[float]]], int]
"""``choose(thread position, candidate texts best first, their scores or None) -> index of the one to keep``."""


def candidates_wanted(gen: DecodingConfig) -> int:
    """Candidates decoded per thread: ``rerank_candidates`` with ``rerank: grounding``, else 1."""
    return gen.rerank_candidates if gen.rerank == "grounding" else 1


def decoding_settings(gen: DecodingConfig) -> dict[str, Any]:
    """The ``generate()`` settings for ``eval.generation`` (the rules in the module docstring).

    Returns a dict of Hugging Face ``GenerationConfig`` fields; lengths are in tokens.
    """
    n = candidates_wanted(gen)
    beams = max(gen.num_beams, n) > 1
    return {
        "num_beams": max(gen.num_beams, n),
        "num_return_sequences": n,
        "do_sample": False,
        "length_penalty": gen.length_penalty,
        "early_stopping": beams,
        "no_repeat_ngram_size": gen.no_repeat_ngram_size,
        "min_new_tokens": min(gen.min_new_tokens, gen.max_new_tokens),
        "max_new_tokens": gen.max_new_tokens,
        "renormalize_logits": True,
        # scores/logits of every step would be batch x beams x steps x vocab floats: never keep them
        "output_scores": False,
        "output_logits": False,
        "return_dict_in_generate": False,
    }


def build_generation_config(gen: DecodingConfig, model: Any = None) -> "transformers.GenerationConfig":
    """A ``transformers.GenerationConfig``: the model's own (token ids such as ``decoder_start_token_id``
    and ``forced_bos_token_id``) with threadsum's :func:`decoding_settings` on top.

    Args:
        gen: the ``eval.generation`` section.
        model: a Hugging Face model (its ``generation_config`` and ``config`` supply the special token
            ids); None starts from defaults.
    """
    from transformers import GenerationConfig

    base = getattr(model, "generation_config", None)
    out = copy.deepcopy(base) if base is not None else GenerationConfig()
    model_config = getattr(model, "config", None)
    for key in ("decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id",
                "forced_bos_token_id", "forced_eos_token_id"):
        if getattr(out, key, None) is None and getattr(model_config, key, None) is not None:
            setattr(out, key, getattr(model_config, key))
    out.max_length = None
    out.update(**decoding_settings(gen))
    return out


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Index batches, longest input first (ties in input order), so each batch pads little.

    Padding is pure wasted compute and beam search multiplies it by ``num_beams``.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple["torch.Tensor", "torch.Tensor"]:
    """``input_ids`` and ``attention_mask``, both int64 ``[batch, max_len]`` on the CPU, padded on
    ``side`` ('right' or 'left')."""
    import torch

    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        n = len(r)
        cols = slice(0, n) if side == "right" else slice(width - n, width)
        ids[j, cols] = torch.as_tensor(list(r), dtype=torch.long)
        mask[j, cols] = 1
    return ids, mask


def source_limit(model: Any, max_new_tokens: int = 0) -> Optional[int]:
    """Longest input the model can read, in tokens, or None if unbounded
    (:meth:`threadsum.family.Family.source_limit`: a causal model keeps ``max_new_tokens`` of its context)."""
    from threadsum.family import family_of

    config = getattr(model, "config", None)
    return family_of(model).source_limit(config, max_new_tokens) if config is not None else None


def no_repeat_processor(prompt_width: int, ngram_size: int):
    """A :class:`NoRepeatNGramAfter` for a decoder-only batch whose prompts fill ``prompt_width`` columns."""
    from transformers import NoRepeatNGramLogitsProcessor

    class NoRepeatNGramAfter(NoRepeatNGramLogitsProcessor):
        """Hugging Face's no-repeat-n-gram rule over the generated tokens only (columns from
        ``prompt_width`` on), not over the prompt."""

        def __call__(self, input_ids, scores):
            return super().__call__(input_ids[:, prompt_width:], scores)

    return NoRepeatNGramAfter(ngram_size)


class GeneratedBatch(NamedTuple):
    """One length-sorted batch of generated summaries (unpacks as ``indices, texts, n_tokens``)."""

    indices: list[int]
    """Positions of these threads in the input sequence list."""
    texts: list[str]
    """Decoded summaries (special tokens removed, stripped), aligned with ``indices``."""
    n_tokens: list[int]
    """Generated tokens per summary, special tokens excluded."""
    candidates: Optional[list[list[str]]] = None
    """With ``rerank: grounding``: every candidate per thread, best beam first (``texts`` holds the chosen one)."""
    scores: Optional[list[list[Optional[float]]]] = None
    """The candidates' model scores (log-probabilities after the length penalty; None where the engine gives none)."""


def pick_candidates(idx: Sequence[int], rows: list[list[Any]], texts: list[list[str]],
                    scores: list[list[Optional[float]]], choose: Optional[Chooser], specials: set[int]
                    ) -> GeneratedBatch:
    """One :class:`GeneratedBatch` from ``rows`` (token ids ``[thread][candidate][len]``): the candidate
    ``choose`` picks per thread (the first without one), its token count, and all candidates."""
    chosen = [choose(i, t, s) if choose is not None and len(t) > 1 else 0 for i, t, s in zip(idx, texts, scores)]
    n_tokens = [sum(1 for tok in r[c] if int(tok) not in specials) for r, c in zip(rows, chosen)]
    many = any(len(t) > 1 for t in texts)
    return GeneratedBatch(list(idx), [t[c] for t, c in zip(texts, chosen)], n_tokens,
                          texts if many else None, scores if many else None)


def decode(tokenizer: Any, ids: Any) -> list[str]:
    """Token ids ``[batch, len]`` -> summaries: special tokens dropped, no space clean-up, stripped."""
    return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True,
                                                        clean_up_tokenization_spaces=False)]


def generate_batches(model: Any, tokenizer: Any, sequences: Sequence[Sequence[int]], gen: DecodingConfig,
                     device: "torch.device", batch_size: Optional[int] = None,
                     choose: Optional[Chooser] = None) -> Iterator[GeneratedBatch]:
    """Generate summaries for tokenized sources, one length-sorted batch at a time.

    Args:
        sequences: source token ids per thread (``[n_threads][src_len]``, lengths may differ).
        gen: decoding settings; ``gen.batch_size`` threads per batch unless ``batch_size`` is given.
        device: where the model lives; each batch's tensors are freed before the next one starts.
        choose: picks one of each thread's candidates (``rerank: grounding``); None keeps the top beam.
    Yields: :class:`GeneratedBatch` per batch; nothing but strings and ints leaves this function.
    """
    import torch
    from transformers import LogitsProcessorList

    from threadsum.family import family_of

    family = family_of(model)
    pad = family.pad_id(tokenizer)
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), device=device)
    config = build_generation_config(gen, model)
    no_repeat = config.no_repeat_ngram_size if family.prompt_in_output else 0
    if no_repeat:
        config.no_repeat_ngram_size = 0  # applied to the summary only, below
    limit = source_limit(model, gen.max_new_tokens) or 1 << 30
    for idx in length_sorted_batches([len(s) for s in sequences], batch_size or gen.batch_size):
        ids, mask = pad_batch([family.fit_source(list(sequences[i]), limit) for i in idx], pad, family.padding_side)
        processors = LogitsProcessorList([no_repeat_processor(ids.shape[1], no_repeat)] if no_repeat else [])
        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
                                 logits_processor=processors)
            out = family.new_tokens(out, ids.shape[1])
            n_tokens = (~torch.isin(out, special)).sum(dim=1).tolist()
            out = out.cpu()
        texts = decode(tokenizer, out)
        del ids, mask
        n = config.num_return_sequences or 1
        if n == 1:
            del out
            yield GeneratedBatch(idx, texts, n_tokens)
            continue
        rows = [out[j * n:(j + 1) * n].tolist() for j in range(len(idx))]  # generate returns them best first
        del out
        yield pick_candidates(idx, rows, [texts[j * n:(j + 1) * n] for j in range(len(idx))],
                              [[None] * n for _ in idx], choose, set(tokenizer.all_special_ids))


def generate_texts(model: Any, tokenizer: Any, sequences: Sequence[Sequence[int]], gen: DecodingConfig,
                   device: "torch.device", batch_size: Optional[int] = None,
                   choose: Optional[Chooser] = None) -> list[str]:
    """Summaries for ``sequences`` in input order (see :func:`generate_batches`)."""
    out: list[str] = [""] * len(sequences)
    for batch in generate_batches(model, tokenizer, sequences, gen, device, batch_size, choose):
        for i, text in zip(batch.indices, batch.texts):
            out[i] = text
    return out


# --------------------------------------------------------------------------------- CTranslate2
class SpecialTokens(NamedTuple):
    """The token ids that steer decoding, as a model's ``generation_config.json`` holds them."""

    decoder_start_token_id: Optional[int]
    """First decoder input (BART: ``</s>``); CTranslate2 reads it from the converted model itself."""
    forced_bos_token_id: Optional[int]
    """Token forced as the first generated one (bart-large checkpoints: ``<s>``), or None."""
    forced_eos_token_id: Optional[int]
    """Token forced as the last one when ``max_new_tokens`` is reached (BART: ``</s>``), or None."""
    eos_token_id: Any = None
    """Token(s) that end a summary: an id or a list (a chat model's ``<|im_end|>`` beside its EOS), or None."""

    def end_ids(self, tokenizer: Any) -> list[int]:
        """Every id that ends a summary: ``eos_token_id`` as a list, else the tokenizer's EOS ([] if none)."""
        ids = self.eos_token_id
        if ids is None:
            ids = getattr(tokenizer, "eos_token_id", None)
        if ids is None:
            return []
        return [int(i) for i in ids] if isinstance(ids, (list, tuple)) else [int(ids)]

    @classmethod
    def of(cls, generation_config: Any) -> "SpecialTokens":
        """Read from a ``transformers.GenerationConfig`` (or anything with those attributes)."""
        return cls(*(getattr(generation_config, k, None) for k in cls._fields))


def _ct2_search_options(s: dict[str, Any]) -> dict[str, Any]:
    """The search options both CTranslate2 runners (Translator, Generator) take from
    :func:`decoding_settings` ``s``: beam width, ``early_stopping`` as ``patience=1``, one
    hypotheses (``num_return_sequences``), length penalty, the no-repeat rule."""
    return {"beam_size": s["num_beams"], "patience": 1.0, "num_hypotheses": s["num_return_sequences"],
            "length_penalty": s["length_penalty"], "no_repeat_ngram_size": s["no_repeat_ngram_size"]}


def translate_options(gen: DecodingConfig, special: SpecialTokens) -> dict[str, Any]:
    """``ctranslate2.Translator.translate_batch`` options that decode like :func:`decoding_settings`.

    Rules (measured against Hugging Face ``generate`` on the same weights, see the equality test):

    - Hugging Face counts ``max_new_tokens``/``min_new_tokens`` after the decoder start token, the
      forced ``<s>`` included; CTranslate2's ``max_decoding_length``/``min_decoding_length`` count the
      same tokens (the target prefix included, the start token not).
    - A forced EOS (``forced_eos_token_id``) makes Hugging Face spend the last of ``max_new_tokens``
      on ``</s>``; CTranslate2 has no forced EOS and stops at the limit, so its limit is one lower
      and both keep the same words.
    - ``early_stopping`` (stop at ``num_beams`` finished beams) is CTranslate2's ``patience=1``.
    - ``sampling_topk=1``: no sampling; no scores, attention or logits are returned.
    - ``max_input_length=0``: sources are cut to the model's positions by :func:`translate_batches`.
    """
    s = decoding_settings(gen)
    max_len = s["max_new_tokens"] - (1 if special.forced_eos_token_id is not None else 0)
    max_len = max(max_len, 1)
    return {
        **_ct2_search_options(s),
        "min_decoding_length": min(s["min_new_tokens"], max_len),
        "max_decoding_length": max_len,
        "sampling_topk": 1,
        "max_input_length": 0,
        "return_scores": s["num_return_sequences"] > 1,
        "return_attention": False,
        "return_logits_vocab": s["output_logits"],
        "return_end_token": False,
    }


def translate_prefix(tokenizer: Any, special: SpecialTokens) -> Optional[list[str]]:
    """The target prefix that plays Hugging Face's forced BOS (``["<s>"]``), or None without one."""
    if special.forced_bos_token_id is None:
        return None
    return [tokenizer.convert_ids_to_tokens(special.forced_bos_token_id)]


def translate_batches(translator: Any, tokenizer: Any, sequences: Sequence[Sequence[int]], gen: DecodingConfig,
                      special: SpecialTokens, source_limit: Optional[int] = None,
                      batch_size: Optional[int] = None, choose: Optional[Chooser] = None) -> Iterator[GeneratedBatch]:
    """:func:`generate_batches` for a ``ctranslate2.Translator``: same batches, cut, decoding and output.

    Args:
        translator: a loaded ``ctranslate2.Translator`` (CPU or CUDA, any compute type).
        sequences: source token ids per thread (``[n_threads][src_len]``); cut at ``source_limit`` tokens.
        special: the model's start/forced token ids (:meth:`SpecialTokens.of` its generation config).
    Yields: :class:`GeneratedBatch` per length-sorted batch (``gen.batch_size`` threads unless given).
    """
    options = translate_options(gen, special)
    prefix = translate_prefix(tokenizer, special)
    specials = set(tokenizer.all_special_ids)
    limit = source_limit or 1 << 30
    for idx in length_sorted_batches([len(s) for s in sequences], batch_size or gen.batch_size):
        source = [tokenizer.convert_ids_to_tokens(list(sequences[i])[:limit]) for i in idx]
        results = translator.translate_batch(source, target_prefix=[prefix] * len(idx) if prefix else None,
                                             max_batch_size=0, **options)
        rows = [[tokenizer.convert_tokens_to_ids(h) for h in r.hypotheses] for r in results]
        scores = [list(r.scores) if r.scores else [None] * len(r.hypotheses) for r in results]
        yield pick_candidates(idx, rows, [decode(tokenizer, r) for r in rows], scores, choose, specials)


def generator_options(gen: DecodingConfig, end_ids: Sequence[int]) -> dict[str, Any]:
    """``ctranslate2.Generator.generate_batch`` options that decode like :func:`decoding_settings`
    for a decoder-only model.

    Rules (measured against Hugging Face ``generate`` on the same weights, see the equality test):

    - ``include_prompt_in_result=False``: the prompt is forwarded at once and left out of the result;
      ``max_length``/``min_length`` then count new tokens only, exactly as ``max_new_tokens`` and
      ``min_new_tokens`` (with the prompt in the result they would count one prompt token too).
    - ``end_token`` is every id of the generation config's ``eos_token_id`` (a chat model ends its
      summary with ``<|im_end|>``), not only the model's EOS; it is not returned (``return_end_token``).
    - ``early_stopping`` is ``patience=1``; ``sampling_topk=1``: no sampling; no scores or logits.
    - ``no_repeat_ngram_size`` covers the summary only, as the torch rule does
      (:func:`no_repeat_processor`), and beam scores count new tokens only, as long as every prompt of
      one call has the same length: :func:`generator_batches` makes sure of that.
    """
    s = decoding_settings(gen)
    return {
        **_ct2_search_options(s),
        "min_length": s["min_new_tokens"],
        "max_length": s["max_new_tokens"],
        "end_token": [int(i) for i in end_ids] or None,
        "return_end_token": False,
        "include_prompt_in_result": False,
        "sampling_topk": 1,
        "return_scores": s["num_return_sequences"] > 1,
        "return_logits_vocab": s["output_logits"],
    }


def equal_length_runs(batch: Sequence[int], lengths: Sequence[int]) -> list[list[int]]:
    """``batch`` (indices, sorted by length) split where the length changes: runs of equal-length rows."""
    runs: list[list[int]] = []
    for i in batch:
        if runs and lengths[runs[-1][-1]] == lengths[i]:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def generator_batches(generator: Any, tokenizer: Any, sequences: Sequence[Sequence[int]], gen: DecodingConfig,
                      special: SpecialTokens, family: Any, positions: Optional[int] = None,
                      batch_size: Optional[int] = None, choose: Optional[Chooser] = None) -> Iterator[GeneratedBatch]:
    """:func:`generate_batches` for a decoder-only model run by a ``ctranslate2.Generator``: same
    length-sorted batches, prompt cut, decoding and output.

    CTranslate2 forwards a batch's prompts at once only up to the shortest one and feeds the rest of
    each longer prompt through its decoding loop as forced tokens, which the n-gram rule then sees as
    if generated and beam search scores and counts in the length penalty (measured: 32/40 beam-2
    summaries equal to torch's in mixed-length calls, 40/40 in equal-length ones). So with
    ``no_repeat_ngram_size`` set or ``num_beams > 1`` a batch is run as runs of equal-length prompts
    (:func:`equal_length_runs`: one call per run, the summaries of one call per thread); greedy
    search without the n-gram rule is not affected and runs a batch in one call.

    Args:
        generator: a loaded ``ctranslate2.Generator`` (CPU or CUDA, any compute type).
        sequences: prompt token ids per thread (``[n_threads][prompt_len]``); a prompt longer than the
            context left by ``max_new_tokens`` (``family.source_window(positions, ...)``) keeps its tail.
        special: the generation config's ids; :meth:`SpecialTokens.end_ids` ends a summary.
        family: the model's :class:`threadsum.family.Family` (causal).
        positions: the model's context in tokens (None: unbounded).
    Yields: :class:`GeneratedBatch` per length-sorted batch (``gen.batch_size`` threads unless given).
    """
    options = generator_options(gen, special.end_ids(tokenizer))
    specials = set(tokenizer.all_special_ids)
    limit = family.source_window(positions, gen.max_new_tokens) or 1 << 30
    prompts = [family.fit_source(list(s), limit) for s in sequences]
    lengths = [len(p) for p in prompts]
    for idx in length_sorted_batches(lengths, batch_size or gen.batch_size):
        split = options["no_repeat_ngram_size"] or options["beam_size"] > 1
        runs = equal_length_runs(idx, lengths) if split else [idx]
        rows: list[list[list[int]]] = []
        scores: list[list[Optional[float]]] = []
        for run in runs:
            start = [tokenizer.convert_ids_to_tokens(prompts[i]) for i in run]
            results = generator.generate_batch(start, max_batch_size=0, **options)
            rows.extend([list(h) for h in r.sequences_ids] for r in results)
            scores.extend(list(r.scores) if r.scores else [None] * len(r.sequences_ids) for r in results)
        yield pick_candidates([i for run in runs for i in run], rows, [decode(tokenizer, r) for r in rows], scores,
                              choose, specials)
