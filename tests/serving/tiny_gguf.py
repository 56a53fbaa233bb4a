"""Writes a tiny llama-architecture GGUF with random weights: a real model file that
llama-server loads and runs in milliseconds. Its answers are gibberish, so tests
check the shape of responses, never their text.

The tokenizer is SentencePiece-style with only byte tokens (byte fallback), which
encodes any text without a trained vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

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


def _vocabulary() -> tuple[list[bytes], list[float], list[int]]:
    tokens = [t.encode() for t in SPECIAL_TOKENS]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    for value in range(256):
        tokens.append(f"<0x{value:02X}>".encode())
        types.append(gguf.TokenType.BYTE)
    return tokens, [0.0] * len(tokens), [int(t) for t in types]


def write_tiny_model(path: Path, shape: TinyShape = TinyShape(), seed: int = 0,
                     name: str = "tiny") -> Path:
    tokens, scores, types = _vocabulary()
    vocab = len(tokens)
    rng = np.random.default_rng(seed)

    def weights(*dims: int) -> np.ndarray:  # type: ignore[type-arg]
        return (rng.standard_normal(dims) * 0.02).astype(np.float32)

    def ones(size: int) -> np.ndarray:  # type: ignore[type-arg]
        return np.ones(size, dtype=np.float32)

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
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)

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
