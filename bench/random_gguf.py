"""Writes a llama-architecture GGUF of a chosen size with random F16 weights, fast
enough for tens of gigabytes: the load benchmarks need a file as large as a real
model, not a real model.

The tensors are streamed to the file one at a time (the writer never holds the
model in memory), each a slice at its own offset of one 128 MiB random block, so
writing runs at disk speed instead of random-number speed. The F16 values keep
their exponent small (|w| < 0.25), so no weight is NaN or infinite and a decode on
them runs like any other. The tokenizer is the byte-only one of the serving tests.

    python bench/random_gguf.py --size-gib 19 --out /tmp/model.gguf
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hybrid_compute.dev.tiny_models import TinyShape, llama_writer  # noqa: E402

BLOCK_VALUES = 64 * 1024 * 1024
"""F16 values in the random block every tensor is cut from (128 MiB): more than the
largest tensor of the shapes below holds, so each tensor is a slice, never a copy."""
SMALL_EXPONENT_MASK = 0xB3FF
"""Keeps the sign, the mantissa and exponent bits 12-13 of an F16: |value| < 0.25."""


@dataclass(frozen=True)
class Shape:
    layers: int
    embedding: int
    feed_forward: int
    heads: int
    kv_heads: int
    context: int = 4096

    @property
    def kv(self) -> int:
        return self.kv_heads * (self.embedding // self.heads)

    def layer_tensors(self, layer: int) -> list[tuple[str, tuple[int, ...]]]:
        """(name, numpy shape) of one block's tensors; numpy shapes are ggml's reversed."""
        e, f, kv, prefix = self.embedding, self.feed_forward, self.kv, f"blk.{layer}"
        return [(f"{prefix}.attn_norm.weight", (e,)), (f"{prefix}.attn_q.weight", (e, e)),
                (f"{prefix}.attn_k.weight", (kv, e)), (f"{prefix}.attn_v.weight", (kv, e)),
                (f"{prefix}.attn_output.weight", (e, e)), (f"{prefix}.ffn_norm.weight", (e,)),
                (f"{prefix}.ffn_gate.weight", (f, e)), (f"{prefix}.ffn_up.weight", (f, e)),
                (f"{prefix}.ffn_down.weight", (e, f))]


def shape_for(size_bytes: int) -> Shape:
    """A llama-like shape whose F16 weights come to about ``size_bytes``: Llama-3-8B's
    width from 8 GiB up (19 GiB is about 43 blocks of it), a 1B-class width below."""
    if size_bytes >= 8 << 30:
        width = Shape(layers=1, embedding=4096, feed_forward=14336, heads=32, kv_heads=8)
    else:
        width = Shape(layers=1, embedding=2048, feed_forward=5632, heads=16, kv_heads=4)
    per_layer = sum(2 * int(np.prod(dims)) for _name, dims in width.layer_tensors(0))
    return Shape(layers=max(1, round(size_bytes / per_layer)), embedding=width.embedding,
                 feed_forward=width.feed_forward, heads=width.heads, kv_heads=width.kv_heads)


def _tensors(shape: Shape, vocab: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    yield "token_embd.weight", (vocab, shape.embedding)
    for layer in range(shape.layers):
        yield from shape.layer_tensors(layer)
    yield "output_norm.weight", (shape.embedding,)
    yield "output.weight", (vocab, shape.embedding)


def _is_norm(dims: tuple[int, ...]) -> bool:
    return len(dims) == 1


def write_random_model(path: Path, size_bytes: int, seed: int = 0) -> Shape:
    """Writes the model and fsyncs it, so its pages are clean and can be evicted."""
    shape = shape_for(size_bytes)
    writer, vocab = llama_writer(
        path, f"random-{shape.layers}x{shape.embedding}",
        TinyShape(layers=shape.layers, embedding=shape.embedding, heads=shape.heads,
                  kv_heads=shape.kv_heads, feed_forward=shape.feed_forward,
                  context=shape.context),
        gguf.LlamaFileType.MOSTLY_F16)
    tensors = list(_tensors(shape, vocab))
    for name, dims in tensors:
        dtype = np.dtype(np.float32 if _is_norm(dims) else np.float16)
        writer.add_tensor_info(name, dims, dtype, int(np.prod(dims)) * dtype.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    block = (rng.integers(0, 1 << 16, BLOCK_VALUES, dtype=np.uint16)
             & np.uint16(SMALL_EXPONENT_MASK)).view(np.float16)
    block_twice = np.concatenate((block, block))
    for index, (_name, dims) in enumerate(tensors):
        if _is_norm(dims):
            writer.write_tensor_data(np.ones(dims, dtype=np.float32))
            continue
        count = int(np.prod(dims))
        start = (index * 7_919_993) % BLOCK_VALUES
        values = (block_twice[start:start + count] if count <= BLOCK_VALUES
                  else np.resize(block, count))
        writer.write_tensor_data(values.reshape(dims))
    for handle in writer.fout or []:
        handle.flush()
        os.fsync(handle.fileno())
    writer.close()
    return shape


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gib", type=float, default=1.5, help="about this large")
    parser.add_argument("--out", type=Path, required=True, help="the GGUF file to write")
    args = parser.parse_args()
    started = time.monotonic()
    shape = write_random_model(args.out, int(args.size_gib * (1 << 30)))
    seconds = time.monotonic() - started
    size = args.out.stat().st_size
    print(f"wrote {args.out}: {size / 1e9:.2f} GB, {shape.layers} blocks of "
          f"{shape.embedding} wide, in {seconds:.1f}s ({size / seconds / 1e9:.2f} GB/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
