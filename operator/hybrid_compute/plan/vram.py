"""How much GPU memory a llama-server needs for one model: weights, KV cache and
compute buffers, estimated from a GGUF file's header or from a published shape.

The figures follow how llama.cpp lays memory out:

* **Weights**: every tensor of an offloaded layer, plus the output head and final
  norm when all layers are offloaded. Token embeddings stay in host memory (the
  input layer is never offloaded); a model with tied embeddings gets a copy of
  them on the GPU as its output head.
* **KV cache**: ``--ctx-size`` cells shared by all ``--parallel`` sequences (each
  gets ctx/parallel), times every offloaded layer's KV heads times the key and
  value lengths, times the bytes per element of the cache type. A quantised cache
  needs flash attention (llama-server refuses a quantised V cache without it), so
  without ``--flash-attn`` it is counted as f16. Encoder models (BERT family) keep
  no KV cache.
* **Compute buffers**: the largest stage of one micro-batch (``--ubatch-size``
  tokens): logits over the vocabulary, the feed-forward activations, or, without
  flash attention, the attention scores over the whole context; plus the residual
  stream. This is an upper-bound sketch of ggml's allocator, not a replay of it.

The CUDA context of the process is not included: the operator's ``--headroom``
keeps room for the driver on every GPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, get_args

import yaml
from pydantic import Field

from hybrid_compute.api.common import ApiModel
from hybrid_compute.api.units import GIB, MIB

CacheType = Literal["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl"]
CACHE_TYPES: tuple[str, ...] = get_args(CacheType)

# Bytes per element: ggml block size over elements per block.
_CACHE_ELEMENT_BYTES: dict[str, Fraction] = {
    "f32": Fraction(4),
    "f16": Fraction(2),
    "bf16": Fraction(2),
    "q8_0": Fraction(34, 32),
    "q5_1": Fraction(24, 32),
    "q5_0": Fraction(22, 32),
    "q4_1": Fraction(20, 32),
    "q4_0": Fraction(18, 32),
    "iq4_nl": Fraction(18, 32),
}
_UNQUANTISED = frozenset({"f32", "f16", "bf16"})

# Architectures llama.cpp runs as encoders: no KV cache, no logits.
ENCODER_ARCHITECTURES = frozenset({
    "bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "neo-bert",
    "modern-bert", "t5encoder",
})
# Tensors of the input layer, which llama.cpp keeps in host memory.
_INPUT_TENSOR_PREFIXES = ("token_embd", "position_embd", "token_types")
_FLOAT32_BYTES = 4
# Tensors of the residual stream alive at once (input, normed, attention out, sum).
_RESIDUAL_COPIES = 4


class GgufError(ValueError):
    """The file is not a GGUF model this estimator understands."""


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a model."""

    name: str
    architecture: str
    layers: int
    embedding_length: int
    feed_forward_length: int
    head_count: int
    kv_heads_per_layer: tuple[int, ...]
    key_length: int
    value_length: int
    vocab_size: int
    trained_context: int | None
    layer_weight_bytes: int
    """All ``blk.N.*`` tensors together."""
    output_weight_bytes: int
    """Output head and final norm, offloaded with the last layer."""
    input_weight_bytes: int
    """Token (and position) embeddings, which stay in host memory."""
    has_kv_cache: bool = True
    sliding_window: int | None = None


@dataclass(frozen=True)
class ServerSettings:
    """The llama-server flags that change its memory."""

    ctx_size: int = 8192
    parallel: int = 1
    flash_attn: bool = False
    cache_type_k: CacheType = "f16"
    cache_type_v: CacheType = "f16"
    gpu_layers: int | None = None
    """--n-gpu-layers; None offloads everything (llama-server's 99)."""
    ubatch_size: int = 512


@dataclass(frozen=True)
class VramEstimate:
    weights: int
    kv_cache: int
    compute: int
    host_weights: int
    """Weights that stay in host memory (input layer, layers not offloaded)."""
    offloaded_layers: int
    cache_type_k: str
    cache_type_v: str
    notes: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute

    def quantity(self) -> str:
        """The total as a ModelSlot ``spec.model.vram``, rounded up to 256 MiB."""
        step = 256 * MIB
        return f"{math.ceil(self.total / step) * step // MIB}Mi"


def _cache_type(requested: str, flash_attn: bool, notes: list[str], which: str) -> str:
    if requested in _UNQUANTISED or flash_attn:
        return requested
    notes.append(f"a {requested} {which} cache needs --flash-attn; counted as f16")
    return "f16"


def estimate(shape: ModelShape, settings: ServerSettings) -> VramEstimate:
    """The memory one llama-server process puts on the GPU for ``shape``."""
    if settings.ctx_size <= 0 or settings.parallel <= 0 or settings.ubatch_size <= 0:
        raise ValueError("context, parallel and micro-batch size must be positive")
    notes: list[str] = []
    requested_layers = shape.layers + 1 if settings.gpu_layers is None else settings.gpu_layers
    offloaded = min(max(requested_layers, 0), shape.layers)
    output_on_gpu = requested_layers > shape.layers
    layer_fraction = Fraction(offloaded, shape.layers) if shape.layers else Fraction(0)

    weights = int(shape.layer_weight_bytes * layer_fraction)
    if output_on_gpu:
        weights += shape.output_weight_bytes
    host = shape.input_weight_bytes + shape.layer_weight_bytes - int(
        shape.layer_weight_bytes * layer_fraction)
    if not output_on_gpu:
        host += shape.output_weight_bytes

    type_k = _cache_type(settings.cache_type_k, settings.flash_attn, notes, "K")
    type_v = _cache_type(settings.cache_type_v, settings.flash_attn, notes, "V")
    kv_cache = 0
    if shape.has_kv_cache:
        per_cell = sum(
            heads * (shape.key_length * _CACHE_ELEMENT_BYTES[type_k]
                     + shape.value_length * _CACHE_ELEMENT_BYTES[type_v])
            for heads in shape.kv_heads_per_layer[:offloaded])
        kv_cache = math.ceil(settings.ctx_size * per_cell)
        if shape.sliding_window:
            notes.append(f"sliding-window layers (window {shape.sliding_window}) are counted "
                         f"at the full context, so the KV cache is an upper bound")
    if shape.trained_context and settings.ctx_size > shape.trained_context:
        notes.append(f"--ctx-size {settings.ctx_size} is above the model's trained context "
                     f"{shape.trained_context}")

    compute = _compute_bytes(shape, settings, output_on_gpu) if offloaded else 0
    return VramEstimate(weights=weights, kv_cache=kv_cache, compute=compute, host_weights=host,
                        offloaded_layers=offloaded, cache_type_k=type_k, cache_type_v=type_v,
                        notes=tuple(notes))


def _compute_bytes(shape: ModelShape, settings: ServerSettings, output_on_gpu: bool) -> int:
    tokens = min(settings.ubatch_size, settings.ctx_size)
    residual = tokens * shape.embedding_length * _FLOAT32_BYTES * _RESIDUAL_COPIES
    feed_forward = tokens * shape.feed_forward_length * _FLOAT32_BYTES * 2  # gate and up
    if settings.flash_attn:
        attention = tokens * shape.head_count * (shape.key_length + shape.value_length) \
            * _FLOAT32_BYTES
    else:
        # The reserved graph is the worst case: a micro-batch attending over every cell.
        attended = settings.ctx_size if shape.has_kv_cache else tokens
        attention = tokens * attended * shape.head_count * _FLOAT32_BYTES
    logits = tokens * shape.vocab_size * _FLOAT32_BYTES \
        if shape.has_kv_cache and output_on_gpu else 0
    return residual + max(feed_forward, attention, logits)


# -- reading a GGUF file --------------------------------------------------------------


def read_shape(path: Path) -> ModelShape:
    """The shape of the model in a GGUF file, from its header and tensor table
    (the file is memory-mapped; tensor data is not read)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    # A truncated file runs the reader off the end of its buffer (IndexError).
    except (OSError, ValueError, IndexError) as error:
        raise GgufError(f"{path}: not a readable GGUF file ({error})") from error

    def value(key: str) -> Any:
        field = reader.get_field(key)
        return None if field is None else field.contents()

    architecture = value("general.architecture")
    if not isinstance(architecture, str):
        raise GgufError(f"{path}: general.architecture is missing")

    def required(key: str) -> Any:
        found = value(f"{architecture}.{key}")
        if found is None:
            raise GgufError(f"{path}: {architecture}.{key} is missing from the header")
        return found

    layers = int(required("block_count"))
    embedding_length = int(required("embedding_length"))
    head_count = _first(required("attention.head_count"))
    kv_heads = value(f"{architecture}.attention.head_count_kv")
    kv_heads_per_layer = _per_layer(head_count if kv_heads is None else kv_heads, layers)
    head_dim = embedding_length // head_count if head_count else 0
    key_length = int(value(f"{architecture}.attention.key_length") or head_dim)
    value_length = int(value(f"{architecture}.attention.value_length") or head_dim)
    feed_forward = value(f"{architecture}.feed_forward_length")
    feed_forward_length = _first(feed_forward) if feed_forward is not None \
        else 4 * embedding_length
    causal = value(f"{architecture}.attention.causal")
    has_kv_cache = architecture not in ENCODER_ARCHITECTURES and causal is not False

    weights = _weights(reader.tensors, has_kv_cache)
    tokens = reader.get_field("tokenizer.ggml.tokens")
    vocab_size = len(tokens.data) if tokens is not None else int(
        value(f"{architecture}.vocab_size") or weights.embedding_rows or 0)
    trained_context = value(f"{architecture}.context_length")
    window = value(f"{architecture}.attention.sliding_window")
    name = value("general.name")
    return ModelShape(
        name=name if isinstance(name, str) and name else path.name,
        architecture=architecture,
        layers=layers,
        embedding_length=embedding_length,
        feed_forward_length=feed_forward_length,
        head_count=head_count,
        kv_heads_per_layer=kv_heads_per_layer,
        key_length=key_length,
        value_length=value_length,
        vocab_size=vocab_size,
        trained_context=int(trained_context) if trained_context else None,
        layer_weight_bytes=weights.layers,
        output_weight_bytes=weights.output,
        input_weight_bytes=weights.input,
        has_kv_cache=has_kv_cache,
        sliding_window=int(window) if window else None,
    )


class _Weights(NamedTuple):
    layers: int
    output: int
    input: int
    embedding_rows: int | None


def _weights(tensors: Iterable[Any], has_kv_cache: bool) -> _Weights:
    """Tensor bytes of the repeating layers, of the output head and of the input
    embeddings, and the embedding table's rows."""
    layer_bytes = output_bytes = input_bytes = 0
    tensor_names: set[str] = set()
    embedding_bytes = 0
    embedding_rows: int | None = None
    for tensor in tensors:
        tensor_names.add(tensor.name)
        size = int(tensor.n_bytes)
        if tensor.name.startswith("blk."):
            layer_bytes += size
        elif tensor.name.startswith(_INPUT_TENSOR_PREFIXES):
            input_bytes += size
            if tensor.name == "token_embd.weight":
                embedding_bytes = size
                embedding_rows = int(tensor.shape[-1])
        else:
            output_bytes += size
    if has_kv_cache and "output.weight" not in tensor_names:
        output_bytes += embedding_bytes  # tied embeddings: the head is a GPU copy
    return _Weights(layer_bytes, output_bytes, input_bytes, embedding_rows)


def _first(found: Any) -> int:
    """A per-layer array's largest entry, or the scalar itself."""
    return max(int(v) for v in found) if isinstance(found, list) else int(found)


def _per_layer(found: Any, layers: int) -> tuple[int, ...]:
    if isinstance(found, list):
        if len(found) != layers:
            raise GgufError(f"head_count_kv has {len(found)} entries for {layers} layers")
        return tuple(int(v) for v in found)
    return (int(found),) * layers


# -- the seed's models, from their published shapes ---------------------------------


class PublishedModel(ApiModel):
    """A model as its model card and config.json describe it, and how the seed runs it."""

    slot: str
    name: str
    quantization: str
    bits_per_weight: Annotated[float, Field(gt=0)]
    """Average over the whole file, as the quantisation's published file size gives it."""
    parameters: Annotated[int, Field(gt=0)]
    architecture: str
    layers: Annotated[int, Field(gt=0)]
    embedding_length: Annotated[int, Field(gt=0)]
    feed_forward_length: Annotated[int, Field(gt=0)]
    head_count: Annotated[int, Field(gt=0)]
    kv_heads: Annotated[int, Field(gt=0)]
    head_dim: Annotated[int, Field(gt=0)]
    vocab_size: Annotated[int, Field(gt=0)]
    tied_embeddings: bool = False
    trained_context: int | None = None
    seed_vram_gb: Annotated[float, Field(gt=0)]
    """The seed's VRAM column, in the seed's GB (the 3090's 24GB: read as GiB)."""
    ctx_size: Annotated[int, Field(gt=0)]
    parallel: Annotated[int, Field(gt=0)] = 1
    flash_attn: bool = False
    gap_note: str | None = None
    """Why the estimate and the seed's figure differ, where they do by more than 15%."""

    def shape(self) -> ModelShape:
        has_kv_cache = self.architecture not in ENCODER_ARCHITECTURES
        embedding_params = self.vocab_size * self.embedding_length
        head_params = embedding_params if has_kv_cache else 0
        layer_params = self.parameters - embedding_params - head_params \
            + (head_params if self.tied_embeddings else 0) - self.embedding_length

        def to_bytes(params: int) -> int:
            return int(params * self.bits_per_weight / 8)

        return ModelShape(
            name=self.name,
            architecture=self.architecture,
            layers=self.layers,
            embedding_length=self.embedding_length,
            feed_forward_length=self.feed_forward_length,
            head_count=self.head_count,
            kv_heads_per_layer=(self.kv_heads,) * self.layers,
            key_length=self.head_dim,
            value_length=self.head_dim,
            vocab_size=self.vocab_size,
            trained_context=self.trained_context,
            layer_weight_bytes=to_bytes(layer_params),
            output_weight_bytes=to_bytes(head_params + self.embedding_length),
            input_weight_bytes=to_bytes(embedding_params),
            has_kv_cache=has_kv_cache,
        )

    def settings(self) -> ServerSettings:
        return ServerSettings(ctx_size=self.ctx_size, parallel=self.parallel,
                              flash_attn=self.flash_attn)


@cache
def seed_models() -> tuple[PublishedModel, ...]:
    text = resources.files("hybrid_compute").joinpath("data/seed_models.yaml").read_text()
    return tuple(PublishedModel.model_validate(entry) for entry in yaml.safe_load(text))


# -- reports ---------------------------------------------------------------------------


def _gib(value: int) -> str:
    return f"{value / GIB:.2f} GiB"


def describe(shape: ModelShape, settings: ServerSettings, result: VramEstimate) -> str:
    """The breakdown ``hybrid-compute vram`` prints."""
    heads = "/".join(str(h) for h in sorted(set(shape.kv_heads_per_layer)))
    attention_heads = f"{heads} KV heads" if shape.has_kv_cache else f"{shape.head_count} heads"
    trained = f", trained context {shape.trained_context}" if shape.trained_context else ""
    per_sequence = settings.ctx_size // settings.parallel
    kv_detail = (f"{result.cache_type_k}/{result.cache_type_v}" if shape.has_kv_cache
                 else "encoder model: none")
    lines = [
        f"{shape.name} ({shape.architecture}, {shape.layers} layers, {attention_heads} x "
        f"{shape.key_length}+{shape.value_length}{trained})",
        f"context {settings.ctx_size} tokens over {settings.parallel} parallel sequences "
        f"({per_sequence} each), flash attention {'on' if settings.flash_attn else 'off'}, "
        f"{result.offloaded_layers}/{shape.layers} layers on the GPU",
        f"  weights   {_gib(result.weights):>11}   ({_gib(result.host_weights)} stays in host "
        f"memory)",
        f"  KV cache  {_gib(result.kv_cache):>11}   ({kv_detail})",
        f"  compute   {_gib(result.compute):>11}   (micro-batch of "
        f"{min(settings.ubatch_size, settings.ctx_size)} tokens)",
        f"  total     {_gib(result.total):>11}   -> spec.model.vram: {result.quantity()}",
    ]
    lines.extend(f"note: {note}" for note in result.notes)
    return "\n".join(lines)


SEED_TOLERANCE = 0.15
"""A gap to the seed's VRAM column beyond this needs an explanation in the data."""


@dataclass(frozen=True)
class SeedRow:
    model: PublishedModel
    estimate: VramEstimate

    @property
    def ratio(self) -> float:
        return self.estimate.total / (self.model.seed_vram_gb * GIB)

    def off_by_more_than(self, tolerance: float) -> bool:
        return abs(self.ratio - 1) > tolerance


def seed_rows() -> list[SeedRow]:
    return [SeedRow(model, estimate(model.shape(), model.settings())) for model in seed_models()]


def seed_table(rows: list[SeedRow]) -> str:
    header = (f"{'SLOT':<12} {'MODEL':<30} {'QUANT':<7} {'CTX':>5} {'PAR':>3} {'FA':<3} "
              f"{'WEIGHTS':>9} {'KV':>9} {'COMPUTE':>9} {'ESTIMATE':>9} {'SEED':>8} RATIO")
    lines = [header]
    for row in rows:
        model, result = row.model, row.estimate
        lines.append(
            f"{model.slot:<12} {model.name:<30} {model.quantization:<7} {model.ctx_size:>5} "
            f"{model.parallel:>3} {'on' if model.flash_attn else 'off':<3} "
            f"{result.weights / GIB:>9.2f} {result.kv_cache / GIB:>9.2f} "
            f"{result.compute / GIB:>9.2f} {result.total / GIB:>9.2f} "
            f"{model.seed_vram_gb:>8.1f} {row.ratio:.2f}")
    lines.append("GiB; SEED is the seed's VRAM column (~GB, read as GiB like the 3090's 24GB).")
    for row in rows:
        if row.off_by_more_than(SEED_TOLERANCE):
            lines.append(f"{row.model.slot}: {row.ratio:.2f} of the seed's figure: "
                         f"{row.model.gap_note or 'no explanation recorded'}")
    return "\n".join(lines)
