"""The one typed configuration of threadsum.

A run is described by one YAML file (see ``configs/``) plus ``section.key=value`` overrides from
the command line. Every field has a one-line docstring; unknown keys and wrong types are rejected
with a message that names the key. The resolved config is written next to every output
(``config.yaml``) so each artifact says exactly how it was made.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from threadsum.errors import ConfigError  # noqa: F401 - re-exported: callers import it from here


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


# --------------------------------------------------------------------------------------- data
class CleanConfig(_Section):
    """Cleaning steps of ``prepare`` (``data.clean``), each switchable."""

    repair_lotus_punctuation: bool = True
    """Replace Enron's Lotus Notes punctuation codes ('California=01,s' -> 'California’s')."""
    decode_quoted_printable: bool = True
    """Decode quoted-printable artifacts (=09, =20, soft line breaks '=\\n') in bodies that are quoted-printable."""
    remove_quoted_history: bool = True
    """Drop quoted/forwarded text that duplicates an email already in the thread (unique content is kept)."""
    collapse_headers: bool = True
    """Collapse From/Sent/To/Cc/Subject header blocks of quoted mail to one short line."""
    max_recipients_shown: int = Field(5, ge=0)
    """Long distribution lists are shortened to this many names plus '(+N more)'."""
    normalize_names: bool = True
    """Rewrite Enron-style names 'Theriot, Kim S. KTHERIO' as 'Kim S. Theriot' (sender and recipients)."""
    strip_signatures: bool = True
    """Strip signatures and legal disclaimers (conservative patterns only)."""
    normalize_whitespace: bool = True
    """Collapse runs of blank lines and trailing spaces."""
    drop_duplicate_emails: bool = True
    """Drop exact-duplicate emails (same sender, time and body) within a thread."""


class RenderConfig(_Section):
    """How a cleaned thread is rendered into model input text (``data.render``)."""

    template: str = "From: {sender}\nTo: {recipients}\nDate: {date}\n{body}"
    """Per-email template; fields: sender, recipients, date, body, subject, index."""
    subject_template: str = "Subject: {subject}"
    """Rendered once at the top of the thread."""
    email_separator: str = "\n---\n"
    """Text placed between rendered emails."""
    truncation: Literal["smart", "head"] = "smart"
    """'smart' keeps the first and latest emails and shortens long bodies proportionally; 'head' cuts the end."""


class PromptConfig(_Section):
    """How a decoder-only (causal) model is asked for a summary (``data.prompt``); seq2seq models ignore it.

    The rendered thread becomes the user message of the tokenizer's chat template (generation prompt
    added) or, without one, ``template``; the summary plus the end-of-turn token is the completion.
    """

    chat_template: Literal["auto", "none"] = "auto"
    """'auto': the tokenizer's chat template when it has one, else ``template``; 'none': always ``template``."""
    system: str = "You summarize email threads in a few sentences: who asked or decided what, and what happens next."
    """System message of the chat template ('' for none)."""
    instruction: str = "Summarize this email thread."
    """First line of the user message, before the thread."""
    template: str = "{instruction}\n\n{thread}\n\nSummary:\n"
    """Plain prompt for tokenizers without a chat template; must contain {thread} (and may {instruction}, {system})."""

    @field_validator("template")
    @classmethod
    def _has_thread(cls, value: str) -> str:
        if "{thread}" not in value:
            raise ValueError("data.prompt.template must contain {thread} (where the rendered thread goes)")
        return value


class DataConfig(_Section):
    """``prepare``: input readers, token budgets, splits, cleaning and rendering (``data``)."""

    source: Optional[str] = None
    """Raw input: a Kaggle folder/CSV, a JSON file, a folder of .eml, a Maildir, an .mbox, Gmail API or
    Microsoft Graph JSON, or a .jsonl of threads."""
    format: Literal["auto", "kaggle_csv", "kaggle_json", "maildir", "eml", "mbox", "gmail_json", "graph_json",
                    "jsonl"] = "auto"
    """Reader to use (threadsum.data.readers.FORMATS); 'auto' detects it from the path and the files' first bytes."""
    kaggle: bool = False
    """Download the Kaggle corpus with kagglehub into the cache when 'source' is not given."""
    kaggle_dataset: str = "marawanxmamdouh/email-thread-summary-dataset"
    """Kaggle dataset handle used when 'kaggle' is on."""
    prepared_dir: str = "outputs/prepared"
    """Where prepare writes splits, cache, rejects and the data report."""
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of threads (by hash of thread_id) in the validation split."""
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of threads (by hash of thread_id) in the test split."""
    split_seed: str = "threadsum"
    """Salt of the split hash; change it to draw a different deterministic split."""
    max_source_tokens: int = Field(1024, ge=16)
    """Token budget of the model input (BART's window is 1,024)."""
    max_target_tokens: int = Field(256, ge=4)
    """Token budget of the summary; longer references are truncated and counted."""
    max_body_chars: int = Field(200_000, ge=100)
    """Bodies above this many characters are cut before cleaning (the cut is counted)."""
    strict: bool = False
    """Exit non-zero when any row or thread is rejected."""
    num_proc: int = Field(1, ge=1)
    """Worker processes for cleaning in prepare (1: in-process); tokenizing already uses every core."""
    clean: CleanConfig = CleanConfig()
    """Cleaning steps, each switchable."""
    render: RenderConfig = RenderConfig()
    """How a thread becomes model input text."""
    prompt: PromptConfig = PromptConfig()
    """How a causal model is prompted (chat template or plain template); part of the prepared data's cache key."""

    @model_validator(mode="after")
    def _fractions(self) -> "DataConfig":
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise ValueError("data.validation_fraction + data.test_fraction must be < 1")
        return self


# -------------------------------------------------------------------------------------- model
class TinyModelConfig(_Section):
    """Architecture of the random-init model used when ``model.init='random'`` (``model.tiny``)."""

    architecture: Literal["bart", "llama", "qwen2"] = "bart"
    """'bart': an encoder-decoder (family seq2seq); 'llama' or 'qwen2': a decoder-only LM (family causal)
    with a ChatML chat template on its trained tokenizer."""
    d_model: int = 128
    """Hidden size of the random-init model."""
    encoder_layers: int = 2
    """Encoder layers (bart only)."""
    decoder_layers: int = 2
    """Decoder layers (the only stack of a decoder-only model)."""
    attention_heads: int = 4
    """Attention heads (encoder and decoder)."""
    kv_heads: int = Field(0, ge=0)
    """Key/value heads of a decoder-only model (grouped-query attention); 0: as many as attention_heads."""
    ffn_dim: int = 512
    """Feed-forward width."""
    vocab_size: int = 4000
    """Vocabulary of the byte-level BPE tokenizer trained on the training split."""
    max_position_embeddings: int = 1024
    """Longest sequence the model accepts."""
    dropout: float = 0.1
    """Dropout of the random-init model."""
    init_std: float = Field(0.02, gt=0)
    """Std of the normal weight init (BART's is 0.02; a tiny model learns to read the source sooner with ~0.1)."""


class LoraConfig(_Section):
    """LoRA adapters trained with peft instead of all weights (``model.lora``)."""

    enabled: bool = False
    """Train low-rank adapters (peft) instead of all weights."""
    r: int = Field(16, ge=1)
    """Adapter rank."""
    alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    """Dropout on the adapter input."""
    target_modules: list[str] = []
    """Module names that receive adapters; empty: the model family's attention and MLP projections
    (seq2seq: q/k/v/out_proj, fc1, fc2; causal: q/k/v/o_proj, gate/up/down_proj)."""
    merge_on_export: bool = True
    """Export a merged full model (True) or only the adapter (False)."""


class ModelConfig(_Section):
    """Which model and tokenizer to load and how to adapt it (``model``)."""

    name_or_path: Optional[str] = "facebook/bart-large"
    """Hub id or local directory of a pretrained seq2seq or causal LM (ignored when init='random')."""
    family: Literal["auto", "seq2seq", "causal"] = "auto"
    """'auto': from the model's config (encoder-decoder or not), or model.tiny.architecture with init='random'."""
    init: Literal["pretrained", "random"] = "pretrained"
    """'pretrained' loads weights with from_pretrained; 'random' builds a model from 'tiny'."""
    tokenizer: Optional[str] = None
    """Tokenizer hub id/dir; default: the model's. With init='random' a BPE is trained on the train split."""
    tiny: TinyModelConfig = TinyModelConfig()
    """Architecture of the random-init model."""
    lora: LoraConfig = LoraConfig()
    """Parameter-efficient fine-tuning."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory, about 30% more compute."""
    freeze_embeddings: bool = False
    """Keep the shared token embeddings fixed."""
    attn_implementation: Optional[Literal["eager", "sdpa"]] = "sdpa"
    """Attention kernel."""


# -------------------------------------------------------------------------------------- train
class TrainConfig(_Section):
    """The training loop: batching in tokens, optimizer, schedule, checkpoints, distribution (``train``)."""

    output_dir: str = "outputs/run"
    """Run folder: checkpoints/, model/, metrics.jsonl, run.json, config.yaml."""
    seed: int = 42
    """Seed of model init, sampler order and dropout."""
    epochs: float = Field(3.0, gt=0)
    """Passes over the training split (ignored when max_steps > 0)."""
    max_steps: int = Field(0, ge=0)
    """Optimizer steps to run; 0 means derive from epochs."""
    max_tokens: int = Field(4096, ge=16)
    """Micro-batch token budget (source + target, padded): threads per micro-batch vary with length."""
    batch_tokens: int = Field(16384, ge=16)
    """Effective tokens per optimizer step; accumulation = ceil(batch_tokens / max_tokens)."""
    max_batch_size: int = Field(64, ge=1)
    """Upper bound on threads per micro-batch."""
    pad_to_multiple_of: int = Field(8, ge=1)
    """Round padded lengths up to this multiple to limit distinct shapes."""
    pad_buckets: list[Annotated[int, Field(ge=1)]] = []
    """Pad source and target lengths up to the next of these (tokens, ascending): a bounded set of shapes for train.compile; [] with compile: 64,128,256,512,768,1024; [] without: pad_to_multiple_of only."""
    compile: bool = False
    """torch.compile the model (CPU and CUDA; compiled once per padded shape, see pad_buckets); pays off over long runs (docs/training.md)."""
    compile_backend: str = "inductor"
    """torch.compile backend: 'inductor' (generates kernels), 'aot_eager' (traces only: checks a model compiles, fast)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """'auto': bf16 where supported, else fp16 on CUDA, else fp32."""
    optimizer: Literal["adamw", "adafactor", "adamw8bit"] = "adamw"
    """AdamW (fused on CUDA), Adafactor, or 8-bit AdamW (bitsandbytes)."""
    lr: float = Field(5e-5, gt=0)
    """Peak learning rate."""
    weight_decay: float = Field(0.01, ge=0)
    """Decoupled weight decay (not applied to biases and norms)."""
    warmup_steps: int = Field(100, ge=0)
    """Linear warmup steps."""
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    """Decay after warmup."""
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    """Label smoothing of the cross-entropy."""
    train_on_prompt: bool = False
    """Causal models: also score the prompt tokens (default: only the summary and its end token are labels)."""
    loss_chunk_tokens: int = Field(1024, ge=0)
    """Target tokens per chunk of the LM-head loss: never builds the full fp32 logits (train/loss.py); 0: plain full-logits path (always used with several processes)."""
    reuse_freed_memory: bool = True
    """CPU on glibc: keep freed blocks in the heap for the next micro-batch instead of unmapping them and page-faulting them back (threadsum/heap.py; 15-20% more tokens/s measured, RSS +5%); given back when the run ends."""
    max_grad_norm: float = Field(1.0, ge=0)
    """Gradient clipping norm (0 disables)."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """A non-finite loss or gradient norm: 'stop' fails the run at that step (exit 4, no checkpoint of it, the last good one kept); 'skip' skips the update and counts it."""
    max_nonfinite_skips: int = Field(10, ge=1)
    """With on_nonfinite=skip: the run fails (exit 4) when this many steps in a row are non-finite."""
    eval_every_steps: int = Field(200, ge=0)
    """Validation loss every N optimizer steps (0: only at the end)."""
    eval_rouge_samples: int = Field(0, ge=0)
    """Threads of the validation split scored with ROUGE at each evaluation (0: off)."""
    checkpoint_every_steps: int = Field(500, ge=0)
    """Checkpoint every N optimizer steps (0: off)."""
    checkpoint_every_minutes: float = Field(0.0, ge=0)
    """Checkpoint every M minutes of wall time (0: off)."""
    keep_last: int = Field(2, ge=1)
    """Complete checkpoints kept besides the best one."""
    resume: str = "auto"
    """'auto' (newest complete checkpoint in output_dir), 'none', or a checkpoint path."""
    log_every_steps: int = Field(10, ge=1)
    """Log line / metrics record every N optimizer steps."""
    auto_fit: bool = False
    """Choose levers and the largest micro-batch budget that fit the device (see 'threadsum plan')."""
    memory_limit_gb: float = Field(0.0, ge=0)
    """CPU: treat RSS above this as out-of-memory and back off (0: off)."""
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    """Distributed strategy when launched with several processes (see train/distributed.py)."""
    fsdp_sharding: Literal["full_shard", "shard_grad_op"] = "full_shard"
    """FSDP: 'full_shard' re-gathers layer weights for backward (least memory); 'shard_grad_op' keeps them from forward to backward."""
    fsdp_cpu_offload: bool = False
    """FSDP: keep sharded parameters and optimizer state in CPU memory (slower; fits bigger models)."""
    dist_timeout_minutes: float = Field(30.0, gt=0)
    """A collective that waits longer than this (a dead or stuck rank) fails the run instead of hanging."""
    compute_max_tokens: int = Field(0, ge=0)
    """Largest piece of a micro-batch run in one forward/backward (0: max_tokens); pieces are accumulated, the step is unchanged."""
    oom_backoff_after: int = Field(2, ge=1)
    """After this many out-of-memory events, keep the lowered piece budget for the rest of the run."""
    export_best: bool = False
    """Export the weights of the best-validation checkpoint to model/ instead of the last step's."""

    @field_validator("strategy", mode="before")
    @classmethod
    def _no_deepspeed(cls, value: Any) -> Any:
        if value == "deepspeed":
            raise ValueError("deepspeed is not supported by the training loop; use train.strategy=fsdp "
                             "(fsdp_sharding=full_shard is the ZeRO-3 equivalent, shard_grad_op the ZeRO-2 one)")
        return value


# ------------------------------------------------------------------------------------ evaluate
class GenerationConfig(_Section):
    """Beam-search decoding settings shared by evaluate, summarize and serve (``eval.generation``)."""

    num_beams: int = Field(4, ge=1)
    """Beam width."""
    length_penalty: float = 1.0
    """Exponent on length in beam scores (>1 favours longer)."""
    no_repeat_ngram_size: int = Field(3, ge=0)
    """Forbid repeating n-grams of this size (0: off)."""
    min_new_tokens: int = Field(10, ge=0)
    """Shortest summary in tokens."""
    max_new_tokens: int = Field(128, ge=1)
    """Longest summary in tokens."""
    batch_size: int = Field(16, ge=1)
    """Threads per generation batch (sorted by length)."""
    rerank: Literal["none", "grounding"] = "none"
    """'grounding': decode ``rerank_candidates`` beams and keep the one with the fewest unsupported claims,
    then the most important facts carried, then the model's rank (``threadsum.verify.rerank``); 'none': the
    top beam. Default chosen by bench/bench_coverage.py (docs/evaluation.md)."""
    rerank_candidates: int = Field(4, ge=2)
    """Candidates per thread for ``rerank: grounding`` (the beam width is raised to at least this)."""


class EvalConfig(_Section):
    """``evaluate``: split, baselines, bootstrap intervals, device and dtype (``eval``)."""

    split: Literal["train", "validation", "test"] = "test"
    """Split to score."""
    max_threads: int = Field(0, ge=0)
    """Score at most this many threads (0: all)."""
    bootstrap_samples: int = Field(1000, ge=0)
    """Bootstrap resamples for the 95% confidence intervals."""
    seed: int = 0
    """Seed of the bootstrap resampling (same seed, same intervals)."""
    lead_k: int = Field(3, ge=1)
    """Sentences in the lead-k baseline (first k sentences of the thread text)."""
    device: str = "auto"
    """Device to generate on: 'auto' (cuda when available, else cpu), 'cpu', 'cuda', 'cuda:1', 'mps'."""
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Weights dtype for generation; 'auto': bf16 on GPUs that support it, else fp32 (CPUs too: why in threadsum.devices.resolve_dtype)."""
    generation: GenerationConfig = GenerationConfig()
    """Decoding settings (also used by summarize and serve)."""


# --------------------------------------------------------------------------------------- track
class TrackConfig(_Section):
    """MLflow experiment tracking (``track``)."""

    tracking_uri: str = ""
    """MLflow URI; '' = sqlite file under the output dir (or $MLFLOW_TRACKING_URI); 'none' disables."""
    experiment: str = "threadsum"
    """MLflow experiment name."""
    run_name: Optional[str] = None
    """MLflow run name; default: '<name>-<output folder name>'."""
    log_model: bool = False
    """Copy the model folder's weights (*.safetensors, *.bin, *.pt) into MLflow's artifact store; false: log their path and sha256 only."""
    artifact_max_mb: float = Field(50.0, ge=0)
    """Other files above this size in a logged folder stay in the output dir instead of being copied to MLflow (MiB; 0: no limit)."""


# --------------------------------------------------------------------------------------- serve
class ServeConfig(_Section):
    """The HTTP service: binding, micro-batching, request limits, auth, device (``serve``)."""

    host: str = "127.0.0.1"
    """Interface to bind."""
    port: int = Field(8000, ge=0, le=65535)
    """Port to bind."""
    max_batch_size: int = Field(16, ge=1)
    """Most threads generated together."""
    max_wait_ms: float = Field(20.0, ge=0)
    """How long a batch waits for company (from its first request's arrival or the previous batch's end)."""
    queue_size: int = Field(256, ge=1)
    """Pending threads beyond which requests get 503 + Retry-After."""
    max_body_bytes: int = Field(1_000_000, ge=1)
    """Largest request body (413 above)."""
    max_emails: int = Field(200, ge=1)
    """Most emails per thread (422 above)."""
    max_chars: int = Field(200_000, ge=1)
    """Most characters per thread (422 above)."""
    api_key: Optional[str] = None
    """When set, requests need header 'X-API-Key' with this value."""
    cors_origins: list[str] = []
    """Origins allowed by CORS."""
    max_batch_threads: int = Field(64, ge=1)
    """Most threads in one /v1/summarize/batch request (422 above)."""
    warmup: bool = True
    """Run one short generation at startup; /readyz answers 503 until it is done."""
    device: str = "auto"
    """Device of the served model: auto, cpu, cuda or cuda:N."""
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Weights dtype of the served model; 'auto': bf16 on GPUs that support it, else fp32 (CPUs too: why in threadsum.devices.resolve_dtype)."""
    malloc_trim_interval_s: float = Field(1.0, ge=0)
    """Least seconds between glibc malloc_trim(0) calls after batches (0: never); keeps RSS flat (docs/serving.md)."""
    malloc_trim_growth_mb: float = Field(32.0, ge=0)
    """Trim only once resident memory has grown by more than this many MiB since the last trim (0: at
    every interval): a trim costs page faults in the batches after it (docs/serving.md)."""
    drain_timeout_s: float = Field(30.0, ge=0)
    """After SIGTERM: seconds to finish accepted work (new work gets 503) before exiting anyway."""

    @property
    def batch_limit(self) -> int:
        """Most threads one request may hold: max_batch_threads, and never more than queue_size."""
        return min(self.max_batch_threads, self.queue_size)


# --------------------------------------------------------------------------------------- cloud
class SageMakerConfig(_Section):
    """SageMaker training jobs: instances, spot, limits, IAM role, S3, image (``sagemaker``)."""

    instance_type: Optional[str] = None
    """Training instance type; default: the planner's pick."""
    instance_count: int = Field(1, ge=1)
    """Instances (torchrun across them when > 1)."""
    spot: bool = False
    """Managed spot training with checkpoint resume."""
    max_run_hours: float = Field(24.0, gt=0)
    """MaxRuntimeInSeconds, in hours."""
    max_wait_hours: float = Field(48.0, gt=0)
    """MaxWaitTimeInSeconds for spot, in hours (>= max_run_hours)."""
    role: Optional[str] = None
    """IAM role ARN of the job."""
    s3_prefix: Optional[str] = None
    """s3://bucket/prefix for data, code, checkpoints and output."""
    region: Optional[str] = None
    """AWS region (default: the session's)."""
    image_uri: Optional[str] = None
    """Training image; default: the AWS Hugging Face PyTorch training container for the region."""
    checkpoint_every_minutes: float = Field(10.0, gt=0)
    """Time-based checkpoints inside jobs (SIGTERM may not reach the script)."""
    volume_size_gb: int = Field(50, ge=1, le=16384)
    """EBS volume per instance for data, the pretrained model cache and checkpoints."""

    @model_validator(mode="after")
    def _spot_wait(self) -> "SageMakerConfig":
        if self.spot and self.max_wait_hours < self.max_run_hours:
            raise ValueError("sagemaker.max_wait_hours must be >= sagemaker.max_run_hours for spot jobs")
        return self


class InferenceConfig(_Section):
    """Which generation engine summarize, serve and evaluate use, and its CPU threads (``inference``)."""
    engine: Literal["auto", "torch", "ctranslate2"] = "auto"
    """Engine for summarize, serve and evaluate: auto (ctranslate2 for a `threadsum export` folder, else torch)."""
    threads: int = Field(0, ge=0)
    """CPU threads of the engine: ctranslate2's intra_threads, torch's intra-op threads (0: every core
    this process may use)."""


# ---------------------------------------------------------------------------------------- root
class Config(_Section):
    """The whole run description: one section per command, validated on load.

    Unknown keys and wrong types raise :class:`pydantic.ValidationError` here; go through
    :func:`load_config` or :func:`config_from_dict` to get a :class:`~threadsum.errors.ConfigError`
    that names the key instead.
    """

    name: str = "run"
    """Short name of this recipe (used in run names)."""
    data: DataConfig = DataConfig()
    """prepare: readers, cleaning, rendering, splits."""
    model: ModelConfig = ModelConfig()
    """Which model and how to adapt it."""
    train: TrainConfig = TrainConfig()
    """The training loop."""
    eval: EvalConfig = EvalConfig()
    """evaluate: generation and scoring."""
    track: TrackConfig = TrackConfig()
    """Experiment tracking."""
    serve: ServeConfig = ServeConfig()
    """HTTP service."""
    inference: InferenceConfig = InferenceConfig()
    """Which engine generates summaries (summarize, serve, evaluate)."""
    sagemaker: SageMakerConfig = SageMakerConfig()
    """SageMaker training jobs."""

    # ---- I/O
    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain JSON-compatible Python values (pydantic ``model_dump(mode='json')``)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """Return the config as YAML text, sections in declaration order (what :meth:`save` writes)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, directory: str | Path, filename: str = "config.yaml") -> Path:
        """Write the resolved config next to an output (atomically).

        The YAML is written to ``<filename>.tmp`` and renamed over the target, so a reader never
        sees a half-written file. ``directory`` is created when missing.

        Returns:
            The path written, ``directory / filename``.

        Raises:
            OSError: the directory cannot be created or the file cannot be written.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / filename
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_yaml())
        tmp.replace(path)
        return path


# ------------------------------------------------------------------------- comparing configs
BOOKKEEPING_KEYS = (
    "name", "train.output_dir", "train.resume", "train.log_every_steps", "train.checkpoint_every_steps",
    "train.checkpoint_every_minutes", "train.keep_last", "train.memory_limit_gb", "train.auto_fit",
    "train.dist_timeout_minutes", "data.prepared_dir", "data.num_proc", "sagemaker.role", "sagemaker.s3_prefix",
    "track.", "serve.",
)
"""Settings that change no figure a run reports: where it writes, how often it logs or saves, how it is
tracked or served. Keys ending in '.' name a whole section. (The run list hides changes of these.)"""

WEIGHT_NEUTRAL_KEYS = BOOKKEEPING_KEYS + (
    "train.eval_every_steps", "train.eval_rouge_samples", "data.source", "data.strict",
    # distributed layout: the same math on any strategy or world size (see train/distributed.py)
    "train.strategy", "train.fsdp_sharding", "train.fsdp_cpu_offload",
    "eval.", "sagemaker.",
)
"""Settings that do not change the trained weights: bookkeeping, what is measured, the raw data source
once prepared, the distributed layout. A resumed run warns about a change of any other setting."""


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}} -> {'a.b': 1}``: nested sections become dotted keys (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def differing_settings(old: dict[str, Any], new: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` for each setting that differs between two config dicts
    (``Config.to_dict()`` shape), sorted by key; ``ignore`` holds keys and 'section.' prefixes to skip."""
    a, b = flatten(old or {}), flatten(new or {})
    out = []
    for key in sorted(set(a) | set(b)):
        if any(key == n or (n.endswith(".") and key.startswith(n)) for n in ignore):
            continue
        if a.get(key) != b.get(key):
            out.append((key, a.get(key), b.get(key)))
    return out


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            section = key.rsplit(".", 1)[0] if "." in key else ""
            lines.append(f"  - unknown key '{key}'" + (f" (check the spelling; valid keys of '{section}' are listed by `threadsum config --show`)" if section else ""))
        else:
            got = e.get("input")
            got_s = json.dumps(got) if isinstance(got, (str, int, float, bool, type(None))) else type(got).__name__
            lines.append(f"  - '{key}': {e['msg']} (got {got_s})")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split one ``section.key=value`` override: ``'train.lr=3e-4'`` -> ``(['train', 'lr'], 0.0003)``.

    Values are parsed as YAML scalars/lists (``yaml.safe_load``); text that is not valid YAML is
    kept as a string, and a string containing ``e`` or ``.`` that parses as a float becomes a
    float (YAML 1.1 reads ``3e-4`` as a string). An empty value gives ``''``.

    Raises:
        ConfigError: the text has no ``=`` or the key has an empty part (``train..lr``, ``=1``).
    """
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value (e.g. train.lr=3e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key; use section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML reads '3e-4' as a string (no dot): accept it as a float
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in "e.") and value.strip() else value
        except ValueError:
            pass
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides, in order, to a raw (not yet validated) config mapping.

    Missing sections are created; a later override of the same key wins. ``data`` is changed in
    place. Values are not validated here (:func:`load_config` validates the result).

    Args:
        data: the mapping loaded from YAML (``{section: {key: value}}``).
        overrides: texts such as ``'train.lr=3e-4'`` (parsed by :func:`parse_override`).

    Returns:
        ``data`` itself, with the overrides applied.

    Raises:
        ConfigError: an override is malformed (see :func:`parse_override`) or goes through a key that
            holds a value instead of a section (``train.lr.x=1``).
    """
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
                node[part] = child
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or defaults when path is None) and apply ``a.b=c`` overrides.

    Args:
        path: a YAML file holding a mapping of sections (see ``configs/``); None: all defaults.
        overrides: ``section.key=value`` texts applied after the file (see :func:`apply_overrides`).

    Returns:
        The validated :class:`Config`.

    Raises:
        ConfigError: the file is missing, is not valid YAML or not a mapping, an override is
            malformed, or validation fails (the message lists every unknown key and wrong value).
    """
    data: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{p}' not found; pass an existing YAML file (see configs/)")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file '{p}' is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file '{p}' must hold a mapping of sections, got {type(loaded).__name__}")
        data = loaded
        origin = str(p)
    if overrides:
        data = apply_overrides(data, list(overrides))
        origin += " + overrides"
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, origin)) from None


def config_from_dict(data: dict[str, Any], origin: str = "dict") -> Config:
    """Validate a config mapping built in code (e.g. a config with auto-fit overrides applied).

    Args:
        data: ``{section: {key: value}}``, as :meth:`Config.to_dict` returns.
        origin: where ``data`` came from, named in the error message.

    Returns:
        The validated :class:`Config`.

    Raises:
        ConfigError: an unknown key or a wrong value; the message lists each with its key.
    """
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, origin)) from None


def describe_fields(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """List ``(key, default, docstring)`` for every leaf field, for ``threadsum config --show``.

    Nested sections are walked recursively; ``key`` is dotted (``train.lr``), ``default`` is JSON
    text, and ``docstring`` is the field's attribute docstring (pydantic ``use_attribute_docstrings``).
    """
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe_fields(ann, key + "."))
        else:
            rows.append((key, json.dumps(field.default, default=str), field.description or ""))
    return rows
