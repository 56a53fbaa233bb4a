"""Writes small llama-architecture GGUFs with random weights: real model files that
llama-server loads and runs in moments. Their answers are gibberish, so tests
check the shape of responses, never their text.

The tokenizer is SentencePiece-style with only byte tokens (byte fallback), which
encodes any text without a trained vocabulary.

The local cluster's samples get one file each under their own names
(:func:`ensure_sample_models`): tens of megabytes for ``fast``, a few hundred for
the 32B slots, so a swap to ``quality`` takes a visible second or two. They are
written once into the cache and reused.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import numpy.typing as npt

from hybrid_compute.dev.toolchain import cache_home

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")


@dataclass(frozen=True)
class TinyShape:
    layers: int = 2
    embedding: int = 64
    heads: int = 4
    kv_heads: int = 2
    feed_forward: int = 128
    context: int = 2048

    @property
    def head_dim(self) -> int:
        return self.embedding // self.heads


def byte_vocabulary() -> tuple[list[bytes], list[float], list[int]]:
    tokens = [t.encode() for t in SPECIAL_TOKENS]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    for value in range(256):
        tokens.append(f"<0x{value:02X}>".encode())
        types.append(gguf.TokenType.BYTE)
    return tokens, [0.0] * len(tokens), [int(t) for t in types]


def llama_writer(path: Path, name: str, shape: TinyShape,
                 file_type: gguf.LlamaFileType) -> tuple[gguf.GGUFWriter, int]:
    """A GGUF writer for a llama-architecture model of ``shape`` with the byte-only
    tokenizer, its metadata added; returns it with the vocabulary size."""
    tokens, scores, types = byte_vocabulary()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.embedding)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.feed_forward)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(file_type)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    return writer, len(tokens)


def write_tiny_model(path: Path, shape: TinyShape = TinyShape(), seed: int = 0,
                     name: str = "tiny") -> Path:
    rng = np.random.default_rng(seed)

    def weights(*dims: int) -> npt.NDArray[np.float32]:
        return (rng.standard_normal(dims) * 0.02).astype(np.float32)

    def ones(size: int) -> npt.NDArray[np.float32]:
        return np.ones(size, dtype=np.float32)

    writer, vocab = llama_writer(path, name, shape, gguf.LlamaFileType.ALL_F32)
    kv = shape.kv_heads * shape.head_dim
    # numpy shapes are ggml's dimensions reversed: (rows, columns).
    writer.add_tensor("token_embd.weight", weights(vocab, shape.embedding))
    for layer in range(shape.layers):
        prefix = f"blk.{layer}"
        writer.add_tensor(f"{prefix}.attn_norm.weight", ones(shape.embedding))
        writer.add_tensor(f"{prefix}.attn_q.weight", weights(shape.embedding, shape.embedding))
        writer.add_tensor(f"{prefix}.attn_k.weight", weights(kv, shape.embedding))
        writer.add_tensor(f"{prefix}.attn_v.weight", weights(kv, shape.embedding))
        writer.add_tensor(f"{prefix}.attn_output.weight",
                          weights(shape.embedding, shape.embedding))
        writer.add_tensor(f"{prefix}.ffn_norm.weight", ones(shape.embedding))
        writer.add_tensor(f"{prefix}.ffn_gate.weight",
                          weights(shape.feed_forward, shape.embedding))
        writer.add_tensor(f"{prefix}.ffn_up.weight",
                          weights(shape.feed_forward, shape.embedding))
        writer.add_tensor(f"{prefix}.ffn_down.weight",
                          weights(shape.embedding, shape.feed_forward))
    writer.add_tensor("output_norm.weight", ones(shape.embedding))
    writer.add_tensor("output.weight", weights(vocab, shape.embedding))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


SAMPLE_MODELS_VERSION = "1"
SAMPLE_SHAPES: dict[str, TinyShape] = {
    # manifests/samples/modelslots.yaml's files, at sizes that load in about the
    # same proportion as the real ones (F32: 4 bytes a weight).
    "llama-3.1-8b-instruct-q6_k.gguf": TinyShape(layers=4, embedding=512, heads=8,
                                                 kv_heads=4, feed_forward=1536, context=8192),
    "qwen2.5-coder-32b-instruct-q4_k_m.gguf": TinyShape(layers=6, embedding=1024, heads=16,
                                                        kv_heads=8, feed_forward=2816,
                                                        context=8192),
    "deepseek-r1-distill-qwen-32b-q4_k_m.gguf": TinyShape(layers=6, embedding=1024, heads=16,
                                                          kv_heads=8, feed_forward=2816,
                                                          context=8192),
    "nomic-embed-text-v1.5.f16.gguf": TinyShape(context=2048),
}


def sample_models_home() -> Path:
    return cache_home() / f"dev-models-v{SAMPLE_MODELS_VERSION}"


def ensure_sample_models(folder: Path | None = None, log: bool = True) -> Path:
    """The samples' model files in ``folder`` (the cache by default), written once."""
    folder = folder or sample_models_home()
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (name, shape) in enumerate(SAMPLE_SHAPES.items()):
        path = folder / name
        if path.exists():
            continue
        started = time.monotonic()
        partial = folder / f".{name}.partial"
        write_tiny_model(partial, shape, seed=seed, name=name.removesuffix(".gguf"))
        os.replace(partial, path)
        if log:
            print(f"  wrote {path.name} ({path.stat().st_size / 1e6:.0f} MB, random weights) "
                  f"in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return folder
