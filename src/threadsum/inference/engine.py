"""Engines: what turns token ids into summaries behind the Summarizer and ``threadsum evaluate``.

Two engines share one interface (:class:`Engine`): token id sequences in, :class:`GeneratedBatch`
(texts and token counts, in length-sorted batches) out.

- ``torch``: the Hugging Face model and ``generate`` (:func:`threadsum.generation.generate_batches`).
- ``ctranslate2``: a folder written by ``threadsum export --format ctranslate2`` run by the class its
  family names (:attr:`threadsum.family.Family.ct2_class`): a ``ctranslate2.Translator`` for seq2seq
  (:func:`threadsum.generation.translate_batches`), a ``ctranslate2.Generator`` for decoder-only
  models (:func:`threadsum.generation.generator_batches`); int8 on CPUs, float16/int8_float16 on CUDA.

Both take their decoding settings, batching and source cut from :mod:`threadsum.generation`, so a
thread gets the same summary from either (a test holds this for float32). ``inference.engine=auto``
picks ``ctranslate2`` for a converted folder and ``torch`` for everything else.
"""
from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

from threadsum.config import GenerationConfig as DecodingConfig
from threadsum.deps import require
from threadsum.errors import DeviceError, UserError
from threadsum.generation import (
    Chooser,
    GeneratedBatch,
    SpecialTokens,
    generate_batches,
    generator_batches,
    source_limit,
    translate_batches,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

ENGINES = ("auto", "torch", "ctranslate2")
"""Values of ``inference.engine``."""

EXPORT_MANIFEST = "threadsum-export.json"
"""File in a converted folder: format, quantization, source positions and vocabulary size."""

CT2_WEIGHTS = "model.bin"
"""The weights file CTranslate2's converter writes."""

QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "float16", "float32")
"""Weight types ``threadsum export --quantization`` accepts (CTranslate2's names)."""


class EngineError(UserError, ValueError):
    """The engine asked for cannot run this model folder; the message says what to use instead."""


def is_ctranslate2_dir(path: str | Path) -> bool:
    """True for a folder holding CTranslate2 weights (``model.bin``), as ``threadsum export`` writes."""
    return (Path(path) / CT2_WEIGHTS).is_file()


def read_manifest(model_dir: str | Path) -> dict[str, Any]:
    """The export manifest of a converted folder ({} when absent, e.g. converted by hand)."""
    path = Path(model_dir) / EXPORT_MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def choose_engine(setting: str, model_dir: str) -> str:
    """``torch`` or ``ctranslate2`` for ``inference.engine`` = ``setting`` and this model folder.

    Raises:
        EngineError: ``torch`` for a converted folder (no PyTorch weights in it), ``ctranslate2`` for a
            folder that was not exported, or an unknown name.
    """
    if setting not in ENGINES:
        raise EngineError(f"inference.engine '{setting}' is not known; use one of {', '.join(ENGINES)}")
    converted = is_ctranslate2_dir(model_dir)
    if setting == "auto":
        return "ctranslate2" if converted else "torch"
    if setting == "torch" and converted:
        raise EngineError(f"{model_dir} holds CTranslate2 weights, which only the ctranslate2 engine runs; "
                          f"set inference.engine=auto (or ctranslate2), or use the folder it was exported from")
    if setting == "ctranslate2" and not converted:
        raise EngineError(f"{model_dir} holds no CTranslate2 weights; convert it first with "
                          f"`threadsum export {model_dir} --format ctranslate2 --out DIR` and use DIR, "
                          f"or set inference.engine=auto")
    return setting


class Engine(ABC):
    """Token ids in, summaries out; length-sorted batches come from :mod:`threadsum.generation`."""

    name: str = "engine"
    tokenizer: Any
    device: Any
    model: Any = None
    """The torch model (torch engine only)."""
    family: Any = None
    """The model's :class:`threadsum.family.Family` (seq2seq or causal)."""

    @property
    @abstractmethod
    def source_limit(self) -> Optional[int]:
        """Longest source the model reads, in tokens (its position table), or None if unbounded."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Rows of the model's embedding table: every source token id must be below it."""

    @abstractmethod
    def generate_batches(self, sequences: Sequence[Sequence[int]], gen: DecodingConfig,
                         batch_size: Optional[int] = None, choose: Optional[Chooser] = None) -> Iterator[GeneratedBatch]:
        """Summaries of ``sequences`` (``[n_threads][src_len]`` token ids), one length-sorted batch at a time.

        With ``rerank: grounding`` each batch also holds ``rerank_candidates`` candidates per thread (the
        n best beams, best first; ``GeneratedBatch.candidates``/``scores``) and ``choose`` picks the one kept."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """engine, device, dtype (or compute type) and library version, for logs and ``/readyz``."""

    def generate_texts(self, sequences: Sequence[Sequence[int]], gen: DecodingConfig,
                       batch_size: Optional[int] = None, choose: Optional[Chooser] = None) -> list[str]:
        """Summaries of ``sequences`` in input order (``choose``: see :meth:`generate_batches`)."""
        out: list[str] = [""] * len(sequences)
        for batch in self.generate_batches(sequences, gen, batch_size, choose):
            for i, text in zip(batch.indices, batch.texts):
                out[i] = text
        return out


class TorchEngine(Engine):
    """A Hugging Face model (seq2seq or decoder-only) decoded by ``generate`` (any device and dtype torch supports)."""

    name = "torch"

    def __init__(self, model: Any, tokenizer: Any, device: "torch.device"):
        from threadsum.family import family_of

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device
        self.family = family_of(model)

    @property
    def source_limit(self) -> Optional[int]:
        """The model's positions (``generation.source_limit`` with no room kept for new tokens)."""
        return source_limit(self.model)

    @property
    def vocab_size(self) -> int:
        """Rows of the model's input embedding matrix."""
        return int(self.model.get_input_embeddings().weight.shape[0])

    def generate_batches(self, sequences, gen, batch_size=None, choose=None):
        """Decode with the model's ``generate`` (see ``generation.generate_batches``)."""
        return generate_batches(self.model, self.tokenizer, sequences, gen, self.device, batch_size, choose)

    def describe(self) -> dict[str, Any]:
        """engine, device, parameter dtype, parameter count and torch version."""
        import torch

        dtype = next(self.model.parameters()).dtype
        return {"engine": self.name, "device": str(self.device), "dtype": str(dtype).replace("torch.", ""),
                "parameters": sum(p.numel() for p in self.model.parameters()), "torch": torch.__version__}


class CTranslate2Engine(Engine):
    """A folder written by ``threadsum export --format ctranslate2``, run by ``ctranslate2.Translator``
    (seq2seq) or ``ctranslate2.Generator`` (decoder-only): the manifest's family says which."""

    name = "ctranslate2"

    def __init__(self, runner: Any, tokenizer: Any, special: SpecialTokens, manifest: dict[str, Any],
                 device: str, compute_type: str):
        """``runner``: the loaded ``ctranslate2.Translator`` or ``Generator`` of the manifest's family."""
        from threadsum.family import get_family

        self.runner = runner
        self.tokenizer = tokenizer
        self.special = special
        self.manifest = manifest
        self.device = device
        self.compute_type = compute_type
        self.family = get_family(manifest.get("family") or "seq2seq")
        # the one place the CTranslate2 class decides how a batch is decoded
        self._batches = {"Translator": self._translate, "Generator": self._generate}[self.family.ct2_class]

    @property
    def source_limit(self) -> Optional[int]:
        """``max_source_positions`` recorded in the export manifest (None if absent)."""
        return self.manifest.get("max_source_positions")

    @property
    def vocab_size(self) -> int:
        """``vocab_size`` from the export manifest, else the tokenizer's length."""
        return int(self.manifest.get("vocab_size") or len(self.tokenizer))

    def generate_batches(self, sequences, gen, batch_size=None, choose=None):
        """Decode with the family's CTranslate2 class (``generation.translate_batches`` or
        ``generation.generator_batches``)."""
        return self._batches(sequences, gen, batch_size, choose)

    def _translate(self, sequences, gen, batch_size, choose):
        return translate_batches(self.runner, self.tokenizer, sequences, gen, self.special,
                                 self.source_limit, batch_size, choose)

    def _generate(self, sequences, gen, batch_size, choose):
        return generator_batches(self.runner, self.tokenizer, sequences, gen, self.special, self.family,
                                 self.source_limit, batch_size, choose)

    def describe(self) -> dict[str, Any]:
        """engine, device, compute type, parameter count and quantization from the manifest, ctranslate2 version."""
        import ctranslate2

        return {"engine": self.name, "device": self.device, "dtype": self.compute_type,
                "parameters": self.manifest.get("parameters"), "quantization": self.manifest.get("quantization"),
                "ctranslate2": ctranslate2.__version__}


# ------------------------------------------------------------------------------------ loading
def ct2_device(name: Optional[str]) -> tuple[str, int]:
    """CTranslate2's device and index for a threadsum device name (auto, cpu, cuda, cuda:N).

    ``auto`` is cuda when CTranslate2 sees a GPU, else cpu. Raises:
        DeviceError: mps or an unknown name (CTranslate2 runs on CPUs and CUDA GPUs only), or cuda
            asked for without a GPU CTranslate2 can use.
    """
    import ctranslate2

    text = (name or "auto").strip().lower()
    gpus = ctranslate2.get_cuda_device_count()
    if text == "auto":
        return ("cuda", 0) if gpus else ("cpu", 0)
    if text == "cpu":
        return "cpu", 0
    if text == "cuda" or text.startswith("cuda:"):
        index = int(text.split(":", 1)[1]) if ":" in text and text.split(":", 1)[1].isdigit() else 0
        if index >= gpus:
            raise DeviceError(f"device '{name}': CTranslate2 sees {gpus} CUDA device(s) here; use cpu or auto")
        return "cuda", index
    raise DeviceError(f"device '{name}' is not available to the ctranslate2 engine; use auto, cpu, cuda or cuda:N "
                      f"(or inference.engine=torch with the unconverted model)")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


_DTYPE_COMPUTE = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
                  "bf16": "bfloat16", "bfloat16": "bfloat16"}


def ct2_compute_type(quantization: Optional[str], device: str, dtype: Any = None) -> str:
    """The compute type for a converted model: its quantization, or ``dtype`` when one is given.

    A type the device lacks falls back to the nearest it has (float16 weights on a CPU compute in
    float32, int8_float16 as int8_float32), per ``ctranslate2.get_supported_compute_types``.
    Raises:
        DeviceError: an unknown dtype name.
    """
    import ctranslate2

    wanted = quantization or "default"
    if dtype not in (None, "auto"):
        wanted = _DTYPE_COMPUTE.get(str(dtype).replace("torch.", "").lower())
        if wanted is None:
            raise DeviceError(f"dtype '{dtype}' is not supported; use auto, fp32, bf16 or fp16")
    supported = ctranslate2.get_supported_compute_types(device)
    if wanted == "default" or wanted in supported:
        return wanted
    fallbacks = {"float16": ["float32"], "bfloat16": ["float32"], "int8_float16": ["int8_float32", "int8"],
                 "int8_bfloat16": ["int8_float32", "int8"], "int8": ["int8_float32"], "int8_float32": ["int8"]}
    return next((c for c in fallbacks.get(wanted, []) if c in supported), "default")


def load_ctranslate2_engine(model_dir: str, device: Optional[str] = "auto", dtype: Any = None,
                            tokenizer: Any = None, threads: int = 0) -> CTranslate2Engine:
    """Load a converted folder; ``threads`` is CTranslate2's ``intra_threads`` (0: every usable core).

    The CTranslate2 class is the family's (:attr:`threadsum.family.Family.ct2_class`, from the
    export manifest): ``Translator`` for seq2seq, ``Generator`` for decoder-only models.

    Raises:
        MissingExtraError: ctranslate2 is not installed (``pip install 'threadsum[fast]'``).
        DeviceError: see :func:`ct2_device`.
    """
    require("ctranslate2", "fast")
    import ctranslate2
    from transformers import GenerationConfig

    from threadsum.model import load_tokenizer

    from threadsum.family import family_of_folder

    dev, index = ct2_device(device)
    manifest = read_manifest(model_dir)
    compute = ct2_compute_type(manifest.get("quantization"), dev, dtype)
    intra = threads or usable_cores()
    family = family_of_folder(model_dir)
    manifest = {**manifest, "family": family.name}
    runner = getattr(ctranslate2, family.ct2_class)(str(model_dir), device=dev, device_index=index,
                                                    compute_type=compute, intra_threads=intra if dev == "cpu" else 0)
    try:
        gen_config = GenerationConfig.from_pretrained(str(model_dir))
    except (OSError, ValueError):
        gen_config = None
    special = SpecialTokens.of(gen_config) if gen_config is not None else SpecialTokens(None, None, None, None)
    device_name = dev if dev == "cpu" else f"{dev}:{index}"
    return CTranslate2Engine(runner, tokenizer or load_tokenizer(str(model_dir)), special, manifest,
                             device_name, compute)


def load_torch_engine(model_dir: str, device: Optional[str] = "auto", dtype: Any = None, tokenizer: Any = None,
                      attn_implementation: Optional[str] = None, threads: int = 0) -> TorchEngine:
    """Load a Hugging Face model folder (or hub id) onto ``device`` in ``dtype`` (see threadsum.devices).

    ``threads`` > 0 sets torch's intra-op CPU threads for this process (``torch.set_num_threads``;
    0 leaves torch's default, one per core). On a machine other jobs share, fewer threads than cores
    avoids OpenMP threads spinning against each other (measured: one generation 17x slower with two
    threads on an oversubscribed 2-core CPU; bench/bench_serve.py).
    """
    import torch

    from threadsum.devices import resolve_device, resolve_dtype
    from threadsum.model import load_pretrained_model, load_tokenizer

    if threads > 0:
        torch.set_num_threads(threads)
    dev = resolve_device(device or "auto")
    model = load_pretrained_model(model_dir, attn_implementation, dtype=resolve_dtype(dtype, dev))
    model.to(dev)
    return TorchEngine(model, tokenizer or load_tokenizer(model_dir), dev)


def load_engine(model_dir: str, setting: str = "auto", device: Optional[str] = "auto", dtype: Any = None,
                tokenizer: Any = None, attn_implementation: Optional[str] = None, threads: int = 0) -> Engine:
    """The engine ``inference.engine`` = ``setting`` picks for ``model_dir`` (see :func:`choose_engine`)."""
    if choose_engine(setting, model_dir) == "ctranslate2":
        return load_ctranslate2_engine(model_dir, device, dtype, tokenizer, threads)
    return load_torch_engine(model_dir, device, dtype, tokenizer, attn_implementation, threads)
