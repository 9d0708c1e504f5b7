"""Model families: everything that differs between encoder-decoder and decoder-only models, in one place.

threadsum trains and serves two kinds of Hugging Face models:

- ``seq2seq`` (BART, mBART, Pegasus, T5...): the thread is the encoder input, the summary the
  decoder's labels (teacher forcing from ``decoder_start_token_id``);
- ``causal`` (Llama, Qwen2/3, Mistral, SmolLM, Phi, Gemma...): the thread becomes a *prompt* (the
  tokenizer's chat template with a generation prompt, or ``data.prompt.template``) and the summary
  plus the end-of-turn token its *completion*; one sequence ``prompt + completion`` is fed, and only
  the completion is scored unless ``train.train_on_prompt``.

The family is resolved once (:func:`threadsum.model.family_for` from a config, :func:`family_of` from a model or its
config: ``is_encoder_decoder``) and the rest of the pipeline asks it, never branches on it:

============================  ====================================  ===========================================
decision                       seq2seq                               causal
============================  ====================================  ===========================================
loader (``auto_class``)        ``AutoModelForSeq2SeqLM``             ``AutoModelForCausalLM``
peft task, LoRA targets        ``SEQ_2_SEQ_LM``; q/k/v/out, fc1/2    ``CAUSAL_LM``; q/k/v/o, gate/up/down
source ids                     ``tokenizer(text)`` (<s> ... </s>)    prompt prefix + text + generation prompt
target ids                     ``tokenizer(text_target=...)``        summary ids + end-of-turn id
token budget of a batch        b x (pad(src) + pad(tgt))             b x pad(src + tgt)
labelled positions             every target token                    completion (all with train_on_prompt)
collation                      encoder input, shifted decoder input  one right-padded sequence, shifted labels
generation                     right padding, output = summary       left padding, prompt stripped from output
source window at generation    the encoder's positions               positions - max_new_tokens
CTranslate2                    ``Translator``                        ``Generator``
LoRA merge on export           ``AutoPeftModelForSeq2SeqLM``         ``AutoPeftModelForCausalLM``
============================  ====================================  ===========================================

The labels of a collated batch are aligned with the positions of the model's last hidden state, so
the loss (:mod:`threadsum.train.loss`) is the same function for both: ``hidden[b, t]`` is scored
against ``labels[b, t]``. A causal batch's ``labels[b, t]`` is therefore the token at ``t + 1``.

Prompt ids are built piece-wise (prefix ids + the thread's ids + suffix ids, each encoded without
special tokens, :class:`PromptTokenizer`), by the same object in ``prepare``, the Summarizer, the
service and evaluation, so the tokens a model was trained on are exactly the ones it sees when it
generates. Truncation cuts the thread text (``data.render.truncation``), never the template.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from threadsum.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from threadsum.config import PromptConfig

FAMILIES = ("seq2seq", "causal")
"""Values ``model.family`` resolves to."""

IGNORE_INDEX = -100
"""Label of positions that are not scored (padding, prompt), as in Hugging Face and ``F.cross_entropy``."""

CAUSAL_ARCHITECTURES = ("llama", "qwen2")
"""``model.tiny.architecture`` values that build a decoder-only model."""

_SENTINEL = "\u2063THREADSUM_THREAD\u2063"  # invisible separator: no chat template rewrites it


class FamilyError(UserError, ValueError):
    """The model's family cannot be resolved or does not fit the request; the message names the fix."""


# ------------------------------------------------------------------------------------- prompts
class PromptTokenizer:
    """The tokenizer as a causal model's source side sees it: ``text -> prefix + ids(text) + suffix``.

    Behaves like the Hugging Face tokenizer for the calls rendering and inference make:
    ``tok(text_or_texts, add_special_tokens=True, truncation=..., max_length=...)`` returns
    ``{"input_ids": ...}`` with the prompt around each text (``max_length`` cuts the *text*, so the
    generation prompt always survives); ``add_special_tokens=False`` (used to cut text at token
    boundaries, with ``return_offsets_mapping``) is the plain tokenizer's answer. Every other
    attribute is the wrapped tokenizer's.

    Attributes:
        prefix_ids / suffix_ids: template tokens before / after the thread text.
        end_id: the token that ends a completion (ChatML ``<|im_end|>``, Llama-3 ``<|eot_id|>``, or EOS).
        n_special_tokens: ``len(prefix_ids) + len(suffix_ids)``: the overhead rendering budgets for.
        kind: ``"chat_template"`` or ``"plain"``; ``text``: the prompt with ``{thread}`` in place.
    """

    backend_tokenizer = None  # the batched fast path of rendering would skip the template

    def __init__(self, tokenizer: Any, prefix_ids: list[int], suffix_ids: list[int], end_id: int,
                 kind: str, text: str):
        self.tokenizer = tokenizer
        self.prefix_ids, self.suffix_ids, self.end_id = list(prefix_ids), list(suffix_ids), int(end_id)
        self.n_special_tokens = len(self.prefix_ids) + len(self.suffix_ids)
        self.kind, self.text = kind, text

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["tokenizer"], name)

    def __len__(self) -> int:
        return len(self.tokenizer)

    def __call__(self, text: Any, add_special_tokens: bool = True, truncation: bool = False,
                 max_length: Optional[int] = None, **kwargs: Any) -> Any:
        kwargs.pop("return_attention_mask", None)
        if not add_special_tokens:
            return self.tokenizer(text, add_special_tokens=False, **kwargs)
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        inner = self.tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"] if texts else []
        room = None
        if truncation and max_length:
            room = max(0, int(max_length) - self.n_special_tokens)
        ids = [self.prefix_ids + (x[:room] if room is not None else x) + self.suffix_ids for x in inner]
        return {"input_ids": ids[0] if single else ids}

    def describe(self) -> dict[str, Any]:
        """JSON form for prepare.json and the model card: kind, prompt text, token counts, end token."""
        return {"kind": self.kind, "prompt": self.text, "prefix_tokens": len(self.prefix_ids),
                "suffix_tokens": len(self.suffix_ids),
                "end_token": self.tokenizer.convert_ids_to_tokens(self.end_id)}


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _bos_prefix(tokenizer: Any) -> list[int]:
    """``[bos]`` when the tokenizer itself starts every text with BOS (Llama), else []."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return [bos] if ids and ids[0] == bos else []


def prompt_tokenizer(tokenizer: Any, prompt: "PromptConfig") -> PromptTokenizer:
    """The :class:`PromptTokenizer` of ``tokenizer`` under ``data.prompt``.

    With a chat template (and ``prompt.chat_template='auto'``) the prompt is
    ``apply_chat_template([system, user: instruction + blank line + thread], add_generation_prompt=True)``;
    the end token is the first token the template writes after an assistant message's content.
    Without one it is ``prompt.template`` (BOS first when the tokenizer adds one) and the end token EOS.

    Raises:
        FamilyError: the tokenizer has neither an end-of-turn nor an EOS token (a completion could
            never end), or the chat template drops the thread text.
    """
    if isinstance(tokenizer, PromptTokenizer):
        return tokenizer
    has_chat = bool(getattr(tokenizer, "chat_template", None)) and prompt.chat_template == "auto"
    eos = getattr(tokenizer, "eos_token_id", None)
    if has_chat:
        user = (prompt.instruction + "\n\n" if prompt.instruction else "") + _SENTINEL
        messages = ([{"role": "system", "content": prompt.system}] if prompt.system else []) + \
            [{"role": "user", "content": user}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if _SENTINEL not in text:
            raise FamilyError("the tokenizer's chat template drops the user message; set "
                              "data.prompt.chat_template=none to use data.prompt.template")
        before, after = text.split(_SENTINEL, 1)
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": _SENTINEL}],
                                             tokenize=False)
        closing = _encode(tokenizer, full.rsplit(_SENTINEL, 1)[1]) if _SENTINEL in full else []
        specials = set(getattr(tokenizer, "all_special_ids", []) or [])
        end_id = closing[0] if closing and closing[0] in specials else eos
        kind = "chat_template"
        prefix, suffix = _encode(tokenizer, before), _encode(tokenizer, after)
        shown = text.replace(_SENTINEL, "{thread}")
    else:
        shown = prompt.template.replace("{thread}", _SENTINEL).format(
            instruction=prompt.instruction, system=prompt.system).replace(_SENTINEL, "{thread}")
        before, after = shown.split("{thread}", 1)
        prefix, suffix = _bos_prefix(tokenizer) + _encode(tokenizer, before), _encode(tokenizer, after)
        end_id, kind = eos, "plain"
    if end_id is None:
        raise FamilyError("the tokenizer has no EOS token, so a completion could never end; use a tokenizer "
                          "with eos_token set (or a chat template that closes each turn)")
    return PromptTokenizer(tokenizer, prefix, suffix, end_id, kind, shown)


def model_positions(config: Any) -> Optional[int]:
    """Longest input (tokens) the model's encoder (or a decoder-only model's context) accepts, or None.

    ``config`` is a model config, a dict of config.json, or a model (its ``.config`` is used).
    BART, mBART, Pegasus, Marian, Llama and Qwen name it ``max_position_embeddings``, LED
    ``max_encoder_position_embeddings``; T5's relative positions have no limit (None).
    """
    config = getattr(config, "config", config)
    for name in ("max_encoder_position_embeddings", "max_position_embeddings"):
        value = config.get(name) if isinstance(config, dict) else getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# ------------------------------------------------------------------------------------- families
@dataclass(frozen=True)
class Family:
    """What one model family decides (see the module docstring): :class:`Seq2SeqFamily` and
    :class:`CausalFamily` implement it; :data:`SEQ2SEQ` and :data:`CAUSAL` are their instances."""

    name: str
    auto_class: str
    """transformers class that loads a pretrained model of the family."""
    peft_task: str
    """peft ``TaskType`` of LoRA adapters."""
    lora_targets: tuple[str, ...]
    """Module names that receive LoRA adapters when ``model.lora.target_modules`` is empty."""
    model_inputs: tuple[str, ...]
    """Tensors of a collated batch that the model's forward takes."""
    ct2_class: str
    """CTranslate2 class that runs the converted model (``Translator`` or ``Generator``)."""
    padding_side: str
    """Where batched generation pads (``right``; decoder-only models need ``left``)."""
    prompt_in_output: bool
    """``generate`` returns the prompt before the new tokens (they are cut off)."""
    peft_auto_class: str
    """peft class that loads a saved LoRA adapter with its base model (``threadsum export`` merges it)."""

    def source_tokenizer(self, tokenizer: Any, prompt: "PromptConfig") -> Any:
        """The tokenizer rendering and inference encode sources with (a :class:`PromptTokenizer` for causal)."""
        raise NotImplementedError

    def target_ids(self, tokenizer: Any, prompt: "PromptConfig", summaries: Sequence[str],
                   max_tokens: int) -> list[list[int]]:
        """Label ids of each summary, at most ``max_tokens`` tokens, always ending with the end token."""
        raise NotImplementedError

    def budget_lengths(self, src_lens: np.ndarray, tgt_lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The two lengths [rows] the token-budget sampler pads separately, so that a batch costs
        ``b x (pad(a) + pad(b))`` padded tokens."""
        raise NotImplementedError

    def label_lengths(self, src_lens: np.ndarray, tgt_lens: np.ndarray, train_on_prompt: bool) -> np.ndarray:
        """Scored tokens [rows] of each example: the loss denominator."""
        raise NotImplementedError

    def collate(self, input_ids: list[list[int]], labels: list[list[int]], pad_id: int, pad: Any,
                decoder_start_id: Optional[int] = None, train_on_prompt: bool = False) -> dict[str, Any]:
        """Pad one micro-batch (``pad``: a PadRule or a multiple) into model inputs and aligned labels.

        Args:
            input_ids: source (seq2seq) or prompt (causal) ids per thread.
            labels: target or completion ids per thread.
        Returns:
            int64 tensors named by :attr:`model_inputs` (``input_ids``/``attention_mask``
            ``[batch, len]``, seq2seq also ``decoder_input_ids`` ``[batch, tgt_len]``), ``labels``
            aligned with the model's output positions (``-100`` where not scored), and the counts
            ``n_label_tokens`` (the loss denominator), ``n_real_tokens`` (non-padding tokens) and
            ``n_padded_tokens`` (tokens including padding).
        """
        raise NotImplementedError

    def source_limit(self, model_config: Any, max_new_tokens: int = 0) -> Optional[int]:
        """Longest source a model reads, in tokens, or None if unbounded: :meth:`source_window` of the
        model's positions (:func:`threadsum.model.model_positions`)."""
        return self.source_window(model_positions(model_config), max_new_tokens)

    def source_window(self, positions: Optional[int], max_new_tokens: int = 0) -> Optional[int]:
        """Source tokens a window of ``positions`` leaves (None: unbounded)."""
        raise NotImplementedError

    def source_budget(self, positions: Optional[int], max_source_tokens: int, max_target_tokens: int,
                      max_new_tokens: int) -> int:
        """Source tokens of an example, the same in ``prepare`` and at generation so that a model sees
        the prompts it was trained on: ``max_source_tokens`` within :meth:`source_window`, keeping room
        for the longer of the training target and the generated summary (causal models)."""
        window = self.source_window(positions, max(max_target_tokens, max_new_tokens))
        return min(max_source_tokens, window) if window else max_source_tokens

    def pad_id(self, tokenizer: Any) -> int:
        """Padding id: the tokenizer's pad token; tokenizers without one (Llama 3) pad with EOS.

        Raises FamilyError when the tokenizer has neither."""
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        if pad is None:
            raise FamilyError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
        return int(pad)

    def fit_source(self, ids: list[int], limit: int) -> list[int]:
        """``ids`` cut to ``limit`` tokens: the head for seq2seq (as ``truncation=True``), the tail for
        a causal prompt (its generation prompt is at the end). Sources built by ``prepare`` and the
        Summarizer already fit; this guards ids given directly."""
        if len(ids) <= limit:
            return ids
        return ids[len(ids) - limit:] if self.prompt_in_output else ids[:limit]

    def new_tokens(self, output: Any, prompt_width: int) -> Any:
        """The generated tokens of ``generate``'s output ``[rows, len]``: the prompt columns
        (``prompt_width``, left-padded) cut off when :attr:`prompt_in_output`."""
        return output[:, prompt_width:] if self.prompt_in_output else output


class Seq2SeqFamily(Family):
    """Encoder-decoder models: source -> encoder, summary -> decoder labels (teacher forcing)."""

    def source_tokenizer(self, tokenizer, prompt):
        """The tokenizer itself (BART: ``<s> text </s>``)."""
        return tokenizer

    def target_ids(self, tokenizer, prompt, summaries, max_tokens):
        """``tokenizer(text_target=...)`` ids (BART: ``<s> ... </s>``), cut with the closing token kept."""
        if not summaries:
            return []
        full = tokenizer(text_target=list(summaries))["input_ids"]
        long = [i for i, x in enumerate(full) if len(x) > max_tokens]
        out = [list(x) for x in full]
        if long:  # truncation keeps the closing special token, so a slice of the full ids is not the same
            cut = tokenizer(text_target=[summaries[i] for i in long], max_length=max_tokens, truncation=True)["input_ids"]
            for i, x in zip(long, cut):
                out[i] = list(x)
        return out

    def budget_lengths(self, src_lens, tgt_lens):
        """(source, target): the encoder and decoder pad separately."""
        return np.asarray(src_lens, dtype=np.int64), np.asarray(tgt_lens, dtype=np.int64)

    def label_lengths(self, src_lens, tgt_lens, train_on_prompt):
        """Every target token is scored."""
        return np.asarray(tgt_lens, dtype=np.int64)

    def collate(self, input_ids, labels, pad_id, pad, decoder_start_id=None, train_on_prompt=False):
        """Encoder input, the decoder input ``[start] + labels[:-1]`` and the labels (see :meth:`Family.collate`)."""
        import torch

        from threadsum.train.batching import pad_length

        if decoder_start_id is None:
            raise FamilyError("the model config has no decoder_start_token_id; set it in its config.json")
        b = len(input_ids)
        ls = pad_length(max(len(x) for x in input_ids), pad)
        lt = pad_length(max(len(y) for y in labels), pad)
        src = torch.full((b, ls), pad_id, dtype=torch.long)
        att = torch.zeros((b, ls), dtype=torch.long)
        lab = torch.full((b, lt), IGNORE_INDEX, dtype=torch.long)
        dec = torch.full((b, lt), pad_id, dtype=torch.long)
        n_src = n_lab = 0
        for i, (x, y) in enumerate(zip(input_ids, labels)):
            src[i, : len(x)] = torch.as_tensor(x, dtype=torch.long)
            att[i, : len(x)] = 1
            lab[i, : len(y)] = torch.as_tensor(y, dtype=torch.long)
            dec[i, 0] = decoder_start_id  # teacher forcing: the decoder sees [start] + labels[:-1]
            if len(y) > 1:
                dec[i, 1: len(y)] = torch.as_tensor(y[:-1], dtype=torch.long)
            n_src += len(x)
            n_lab += len(y)
        return {"input_ids": src, "attention_mask": att, "decoder_input_ids": dec, "labels": lab,
                "n_label_tokens": n_lab, "n_real_tokens": n_src + n_lab, "n_padded_tokens": b * (ls + lt)}

    def source_window(self, positions, max_new_tokens=0):
        """The encoder's positions: the summary has a window of its own."""
        return positions


class CausalFamily(Family):
    """Decoder-only models: prompt + completion in one sequence, the completion scored."""

    def source_tokenizer(self, tokenizer, prompt):
        """The :class:`PromptTokenizer` of ``data.prompt``."""
        return prompt_tokenizer(tokenizer, prompt)

    def target_ids(self, tokenizer, prompt, summaries, max_tokens):
        """The summary's ids without special tokens, then the end-of-turn id (:func:`prompt_tokenizer`),
        which is labelled even when it equals the pad token."""
        if not summaries:
            return []
        end = prompt_tokenizer(tokenizer, prompt).end_id
        ids = tokenizer(list(summaries), add_special_tokens=False, return_attention_mask=False)["input_ids"]
        return [list(x[: max_tokens - 1]) + [end] for x in ids]

    def budget_lengths(self, src_lens, tgt_lens):
        """(prompt + completion, 0): one sequence is padded."""
        src, tgt = np.asarray(src_lens, dtype=np.int64), np.asarray(tgt_lens, dtype=np.int64)
        return src + tgt, np.zeros_like(tgt)

    def label_lengths(self, src_lens, tgt_lens, train_on_prompt):
        """The completion, or every position but the first with ``train_on_prompt``."""
        src, tgt = np.asarray(src_lens, dtype=np.int64), np.asarray(tgt_lens, dtype=np.int64)
        return src + tgt - 1 if train_on_prompt else tgt

    def collate(self, input_ids, labels, pad_id, pad, decoder_start_id=None, train_on_prompt=False):
        """``prompt + completion`` right-padded; ``labels[b, t]`` is the token at ``t + 1`` where it is
        scored (see :meth:`Family.collate`). Padding is masked by length, so pad == EOS is harmless."""
        import torch

        from threadsum.train.batching import pad_length

        b = len(input_ids)
        width = pad_length(max(len(x) + len(y) for x, y in zip(input_ids, labels)), pad)
        ids = torch.full((b, width), pad_id, dtype=torch.long)
        att = torch.zeros((b, width), dtype=torch.long)
        lab = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
        n_real = n_lab = 0
        for i, (x, y) in enumerate(zip(input_ids, labels)):
            seq = torch.as_tensor(list(x) + list(y), dtype=torch.long)
            n = len(seq)
            ids[i, :n] = seq
            att[i, :n] = 1
            first = 1 if train_on_prompt else len(x)  # the first scored token; position t predicts t + 1
            lab[i, first - 1: n - 1] = seq[first:n]
            n_real += n
            n_lab += n - first
        return {"input_ids": ids, "attention_mask": att, "labels": lab, "n_label_tokens": n_lab,
                "n_real_tokens": n_real, "n_padded_tokens": b * width}

    def source_window(self, positions, max_new_tokens=0):
        """The context minus ``max_new_tokens``: the summary shares the window with the prompt."""
        return None if positions is None else max(1, int(positions) - int(max_new_tokens))


SEQ2SEQ = Seq2SeqFamily("seq2seq", "AutoModelForSeq2SeqLM", "SEQ_2_SEQ_LM",
                        ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
                        ("input_ids", "attention_mask", "decoder_input_ids"), "Translator", "right", False,
                        "AutoPeftModelForSeq2SeqLM")
CAUSAL = CausalFamily("causal", "AutoModelForCausalLM", "CAUSAL_LM",
                      ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
                      ("input_ids", "attention_mask"), "Generator", "left", True, "AutoPeftModelForCausalLM")
_BY_NAME = {f.name: f for f in (SEQ2SEQ, CAUSAL)}


def get_family(name: str) -> Family:
    """The :class:`Family` named ``name`` (``seq2seq`` or ``causal``). Raises FamilyError otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise FamilyError(f"model family '{name}' is not known; use one of {', '.join(FAMILIES)}") from None


SEQ2SEQ_MODEL_TYPES = ("bart", "mbart", "pegasus", "t5", "mt5", "led", "marian")
"""``model_type`` values of encoder-decoders, for a config.json that omits ``is_encoder_decoder``."""


def family_of(model_or_config: Any) -> Family:
    """The family of a model, a model config, or a dict of config.json: ``is_encoder_decoder``; a
    dict without it is seq2seq for a known encoder-decoder ``model_type`` or BART-style keys
    (``encoder_layers``), else causal (transformers' default)."""
    config = getattr(model_or_config, "config", model_or_config)
    if hasattr(config, "get_base_model"):
        config = config.get_base_model().config
    if isinstance(config, dict):
        if "is_encoder_decoder" in config:
            return SEQ2SEQ if config["is_encoder_decoder"] else CAUSAL
        return SEQ2SEQ if config.get("model_type") in SEQ2SEQ_MODEL_TYPES or "encoder_layers" in config else CAUSAL
    return SEQ2SEQ if getattr(config, "is_encoder_decoder", False) else CAUSAL


def family_of_folder(path: str | Path, default: Optional[Family] = None) -> Optional[Family]:
    """The family of a saved model folder: its export manifest's ``family`` (``threadsum export``),
    its transformers ``config.json`` (one with a ``model_type``; a CTranslate2 converter's config.json
    is not one), or a LoRA adapter folder's ``adapter_config.json`` (its peft ``task_type``); else
    ``default`` (seq2seq when the argument is omitted: a folder converted by hand from BART)."""
    folder = Path(path)
    by_task = {f.peft_task: f for f in _BY_NAME.values()}
    for name in ("threadsum-export.json", "config.json", "adapter_config.json"):
        try:
            data = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        if name == "threadsum-export.json" and data.get("family") in _BY_NAME:
            return _BY_NAME[data["family"]]
        if name == "config.json" and "model_type" in data:
            return family_of(data)
        if name == "adapter_config.json" and data.get("task_type") in by_task:
            return by_task[data["task_type"]]
    return SEQ2SEQ if default is None else default


UNRESOLVED = Family("unknown", "", "", (), (), "", "right", False, "")
"""Sentinel ``default`` of :func:`family_of_folder` meaning 'say nothing' (never used as a family)."""


def check_prepared_family(prepared_dir: str | Path, family: Family) -> None:
    """Refuse a prepared folder tokenized for the other family (prompt/completion vs source/target).

    Raises:
        FamilyError: ``prepare.json`` records another family; the message gives the prepare command.
    """
    info = Path(prepared_dir) / "prepare.json"
    try:
        recorded = json.loads(info.read_text()).get("family", SEQ2SEQ.name)
    except (OSError, ValueError):
        return  # open_prepared reports a missing or broken folder
    if recorded != family.name:
        raise FamilyError(f"data.prepared_dir {prepared_dir} was prepared for a {recorded} model, but this model is "
                          f"{family.name}; run `threadsum prepare -c CONFIG --force` with this model's config "
                          f"(or point data.prepared_dir at a folder prepared for it)")
