"""The VRAM estimator, on GGUF files written here with known shapes, and the seed's
models from their published shapes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter

from hybrid_compute import cli
from hybrid_compute.plan import vram
from hybrid_compute.plan.vram import ServerSettings, estimate, read_shape

Q8_0_BLOCK_BYTES, Q8_0_BLOCK_ELEMENTS = 34, 32


@dataclass
class TinyModel:
    """A model shape small enough to write for real; byte counts follow from it."""

    architecture: str = "llama"
    layers: int = 4
    embedding: int = 64
    feed_forward: int = 128
    heads: int = 8
    kv_heads: int | list[int] = 2
    key_length: int | None = None
    value_length: int | None = None
    vocab: int = 96
    context_length: int = 4096
    tied: bool = False
    quantised_layers: bool = False
    causal: bool | None = None
    omit: set[str] = field(default_factory=set)

    @property
    def head_dim(self) -> int:
        return self.embedding // self.heads

    def layer_matrix_bytes(self, rows: int, cols: int) -> int:
        if self.quantised_layers:
            return rows * cols // Q8_0_BLOCK_ELEMENTS * Q8_0_BLOCK_BYTES
        return rows * cols * 2

    def expected_layer_bytes(self) -> int:
        """Per layer: q, k, v, o, gate, up, down, and two f32 norms."""
        kv = self.kv_heads if isinstance(self.kv_heads, int) else max(self.kv_heads)
        key = self.key_length or self.head_dim
        value = self.value_length or self.head_dim
        matrices = (self.layer_matrix_bytes(self.heads * key, self.embedding)
                    + self.layer_matrix_bytes(kv * key, self.embedding)
                    + self.layer_matrix_bytes(kv * value, self.embedding)
                    + self.layer_matrix_bytes(self.embedding, self.heads * value)
                    + 2 * self.layer_matrix_bytes(self.feed_forward, self.embedding)
                    + self.layer_matrix_bytes(self.embedding, self.feed_forward))
        return self.layers * (matrices + 2 * self.embedding * 4)

    def write(self, path: Path) -> Path:
        writer = GGUFWriter(path, self.architecture)
        arch = self.architecture
        if "block_count" not in self.omit:
            writer.add_uint32(f"{arch}.block_count", self.layers)
        writer.add_uint32(f"{arch}.context_length", self.context_length)
        writer.add_uint32(f"{arch}.embedding_length", self.embedding)
        writer.add_uint32(f"{arch}.feed_forward_length", self.feed_forward)
        writer.add_uint32(f"{arch}.attention.head_count", self.heads)
        if isinstance(self.kv_heads, list):
            writer.add_array(f"{arch}.attention.head_count_kv", self.kv_heads)
        else:
            writer.add_uint32(f"{arch}.attention.head_count_kv", self.kv_heads)
        if self.key_length:
            writer.add_uint32(f"{arch}.attention.key_length", self.key_length)
        if self.value_length:
            writer.add_uint32(f"{arch}.attention.value_length", self.value_length)
        if self.causal is not None:
            writer.add_bool(f"{arch}.attention.causal", self.causal)
        writer.add_name("tiny test model")
        writer.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(self.vocab)])

        def matrix(name: str, rows: int, cols: int, quantise: bool = False) -> None:
            # GGUF shapes list the fastest dimension first: (cols, rows).
            if quantise:
                blocks = np.zeros((rows, cols // Q8_0_BLOCK_ELEMENTS * Q8_0_BLOCK_BYTES),
                                  dtype=np.uint8)
                writer.add_tensor(name, blocks, raw_dtype=GGMLQuantizationType.Q8_0)
            else:
                writer.add_tensor(name, np.zeros((rows, cols), dtype=np.float16))

        kv_per_layer = (self.kv_heads if isinstance(self.kv_heads, list)
                        else [self.kv_heads] * self.layers)
        key = self.key_length or self.head_dim
        value = self.value_length or self.head_dim
        q = self.quantised_layers
        matrix("token_embd.weight", self.vocab, self.embedding)
        for index in range(self.layers):
            kv = max(kv_per_layer)
            prefix = f"blk.{index}"
            writer.add_tensor(f"{prefix}.attn_norm.weight", np.zeros(self.embedding, np.float32))
            matrix(f"{prefix}.attn_q.weight", self.heads * key, self.embedding, q)
            matrix(f"{prefix}.attn_k.weight", kv * key, self.embedding, q)
            matrix(f"{prefix}.attn_v.weight", kv * value, self.embedding, q)
            matrix(f"{prefix}.attn_output.weight", self.embedding, self.heads * value, q)
            writer.add_tensor(f"{prefix}.ffn_norm.weight", np.zeros(self.embedding, np.float32))
            matrix(f"{prefix}.ffn_gate.weight", self.feed_forward, self.embedding, q)
            matrix(f"{prefix}.ffn_up.weight", self.feed_forward, self.embedding, q)
            matrix(f"{prefix}.ffn_down.weight", self.embedding, self.feed_forward, q)
        writer.add_tensor("output_norm.weight", np.zeros(self.embedding, np.float32))
        if not self.tied:
            matrix("output.weight", self.vocab, self.embedding)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path


def f16_kv_bytes(model: TinyModel, ctx: int) -> int:
    kv = model.kv_heads if isinstance(model.kv_heads, list) else [model.kv_heads] * model.layers
    key = model.key_length or model.head_dim
    value = model.value_length or model.head_dim
    return ctx * sum(kv) * (key + value) * 2


def test_the_reader_takes_the_shape_from_the_header_and_the_tensor_table(tmp_path: Path) -> None:
    model = TinyModel(key_length=16, value_length=8)
    shape = read_shape(model.write(tmp_path / "tiny.gguf"))

    assert (shape.architecture, shape.layers, shape.head_count) == ("llama", 4, 8)
    assert shape.kv_heads_per_layer == (2, 2, 2, 2)
    assert (shape.key_length, shape.value_length) == (16, 8)
    assert shape.trained_context == 4096
    assert shape.vocab_size == 96
    assert shape.name == "tiny test model"
    assert shape.layer_weight_bytes == model.expected_layer_bytes()
    assert shape.input_weight_bytes == 96 * 64 * 2, "token embeddings stay in host memory"
    assert shape.output_weight_bytes == 96 * 64 * 2 + 64 * 4, "output head and final norm"


def test_head_dimensions_default_to_embedding_over_heads(tmp_path: Path) -> None:
    shape = read_shape(TinyModel(embedding=64, heads=4).write(tmp_path / "m.gguf"))
    assert (shape.key_length, shape.value_length) == (16, 16)


def test_quantised_tensors_count_their_block_bytes(tmp_path: Path) -> None:
    plain = read_shape(TinyModel().write(tmp_path / "f16.gguf"))
    quantised = read_shape(TinyModel(quantised_layers=True).write(tmp_path / "q8.gguf"))
    assert quantised.layer_weight_bytes == TinyModel(quantised_layers=True).expected_layer_bytes()
    assert quantised.layer_weight_bytes < plain.layer_weight_bytes


def test_kv_cache_is_context_times_layers_kv_heads_and_key_plus_value(tmp_path: Path) -> None:
    model = TinyModel(layers=6, kv_heads=4, key_length=32, value_length=16)
    shape = read_shape(model.write(tmp_path / "m.gguf"))
    result = estimate(shape, ServerSettings(ctx_size=8192))
    assert result.kv_cache == 8192 * 6 * 4 * (32 + 16) * 2
    assert result.kv_cache == f16_kv_bytes(model, 8192)


def test_parallel_sequences_share_the_context_rather_than_multiply_it(tmp_path: Path) -> None:
    shape = read_shape(TinyModel().write(tmp_path / "m.gguf"))
    one = estimate(shape, ServerSettings(ctx_size=8192, parallel=1))
    four = estimate(shape, ServerSettings(ctx_size=8192, parallel=4))
    doubled_context = estimate(shape, ServerSettings(ctx_size=16384, parallel=1))
    assert four.kv_cache == one.kv_cache
    assert doubled_context.kv_cache == 2 * one.kv_cache


def test_per_layer_kv_heads_are_summed_layer_by_layer(tmp_path: Path) -> None:
    model = TinyModel(layers=4, kv_heads=[8, 2, 8, 2])
    shape = read_shape(model.write(tmp_path / "m.gguf"))
    assert shape.kv_heads_per_layer == (8, 2, 8, 2)
    assert estimate(shape, ServerSettings(ctx_size=1024)).kv_cache == f16_kv_bytes(model, 1024)


@pytest.mark.parametrize(("cache_type", "bytes_per_element"), [
    ("f16", 2.0), ("q8_0", 34 / 32), ("q4_0", 18 / 32), ("f32", 4.0),
])
def test_cache_types_with_flash_attention(tmp_path: Path, cache_type: vram.CacheType,
                                          bytes_per_element: float) -> None:
    model = TinyModel()
    shape = read_shape(model.write(tmp_path / "m.gguf"))
    result = estimate(shape, ServerSettings(ctx_size=4096, flash_attn=True,
                                            cache_type_k=cache_type, cache_type_v=cache_type))
    assert result.kv_cache == f16_kv_bytes(model, 4096) / 2 * bytes_per_element
    assert result.notes == ()


def test_a_quantised_cache_without_flash_attention_counts_as_f16(tmp_path: Path) -> None:
    model = TinyModel()
    shape = read_shape(model.write(tmp_path / "m.gguf"))
    result = estimate(shape, ServerSettings(ctx_size=4096, cache_type_k="q8_0",
                                            cache_type_v="q4_0"))
    assert result.kv_cache == f16_kv_bytes(model, 4096)
    assert (result.cache_type_k, result.cache_type_v) == ("f16", "f16")
    assert any("q4_0 V cache needs --flash-attn" in note for note in result.notes), result.notes


def test_tied_embeddings_put_a_copy_of_them_on_the_gpu(tmp_path: Path) -> None:
    untied = read_shape(TinyModel().write(tmp_path / "untied.gguf"))
    tied = read_shape(TinyModel(tied=True).write(tmp_path / "tied.gguf"))
    assert tied.output_weight_bytes == untied.output_weight_bytes
    assert tied.input_weight_bytes == untied.input_weight_bytes


def test_weights_on_the_gpu_are_the_layers_and_output_not_the_embeddings(tmp_path: Path) -> None:
    model = TinyModel()
    shape = read_shape(model.write(tmp_path / "m.gguf"))
    result = estimate(shape, ServerSettings())
    assert result.weights == model.expected_layer_bytes() + shape.output_weight_bytes
    assert result.host_weights == shape.input_weight_bytes
    assert result.total == result.weights + result.kv_cache + result.compute


def test_partial_offload_keeps_the_rest_in_host_memory(tmp_path: Path) -> None:
    model = TinyModel(layers=4)
    shape = read_shape(model.write(tmp_path / "m.gguf"))
    full = estimate(shape, ServerSettings(ctx_size=2048))
    half = estimate(shape, ServerSettings(ctx_size=2048, gpu_layers=2))
    cpu = estimate(shape, ServerSettings(ctx_size=2048, gpu_layers=0))
    assert half.offloaded_layers == 2
    assert half.weights == model.expected_layer_bytes() // 2, "no output head with half layers"
    assert half.kv_cache == full.kv_cache // 2
    assert half.weights + half.host_weights == full.weights + full.host_weights
    assert (cpu.weights, cpu.kv_cache, cpu.compute) == (0, 0, 0)


def test_an_encoder_keeps_no_kv_cache(tmp_path: Path) -> None:
    shape = read_shape(TinyModel(architecture="bert").write(tmp_path / "bert.gguf"))
    assert not shape.has_kv_cache
    assert estimate(shape, ServerSettings(ctx_size=2048)).kv_cache == 0
    non_causal = read_shape(TinyModel(causal=False).write(tmp_path / "nc.gguf"))
    assert not non_causal.has_kv_cache


def test_attention_scores_without_flash_attention_grow_with_the_context(tmp_path: Path) -> None:
    model = TinyModel(vocab=32)
    shape = read_shape(model.write(tmp_path / "m.gguf"))
    tokens = 512
    for ctx in (8192, 32768):
        without = estimate(shape, ServerSettings(ctx_size=ctx)).compute
        scores = tokens * ctx * model.heads * 4
        residual = tokens * model.embedding * 4 * 4
        assert without == residual + scores
    with_flash = estimate(shape, ServerSettings(ctx_size=32768, flash_attn=True))
    assert with_flash.compute < tokens * 32768 * model.heads * 4


def test_the_logits_of_a_large_vocabulary_dominate_compute_with_flash_attention(
        tmp_path: Path) -> None:
    model = TinyModel(vocab=4000)
    shape = read_shape(model.write(tmp_path / "m.gguf"))
    result = estimate(shape, ServerSettings(ctx_size=8192, flash_attn=True, ubatch_size=256))
    assert result.compute == 256 * model.embedding * 4 * 4 + 256 * 4000 * 4


def test_the_suggested_quantity_covers_the_total() -> None:
    result = vram.VramEstimate(weights=7 * vram.GIB, kv_cache=1, compute=0, host_weights=0,
                               offloaded_layers=1, cache_type_k="f16", cache_type_v="f16")
    assert result.quantity() == "7424Mi"


def test_a_header_without_block_count_is_refused_by_name(tmp_path: Path) -> None:
    path = TinyModel(omit={"block_count"}).write(tmp_path / "m.gguf")
    with pytest.raises(vram.GgufError, match=r"llama\.block_count is missing"):
        read_shape(path)


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"not a gguf file at all, just bytes")
    with pytest.raises(vram.GgufError, match="not a readable GGUF file"):
        read_shape(path)


def test_the_vram_command_prints_the_breakdown(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    model = TinyModel(layers=8, kv_heads=4, embedding=128, heads=8)
    path = model.write(tmp_path / "m.gguf")
    assert cli.main(["vram", str(path), "--ctx", "8192", "--parallel", "2"]) == 0
    out = capsys.readouterr().out
    kv_gib = f16_kv_bytes(model, 8192) / vram.GIB
    assert "context 8192 tokens over 2 parallel sequences (4096 each)" in out
    assert f"KV cache  {kv_gib:>7.2f} GiB" in out, out
    assert "8 layers, 4 KV heads x 16+16" in out
    assert "spec.model.vram: " in out


def test_the_vram_command_refuses_a_bad_file(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF")
    assert cli.main(["vram", str(path)]) == 2
    assert "error:" in capsys.readouterr().err


def test_the_seed_models_land_near_the_seed_vram_column_or_say_why() -> None:
    rows = vram.seed_rows()
    assert [row.model.slot for row in rows] == ["fast", "quality", "quality-alt", "embed"]
    for row in rows:
        if row.model.architecture in vram.ENCODER_ARCHITECTURES:
            continue
        assert not row.off_by_more_than(vram.SEED_TOLERANCE), (
            f"{row.model.slot}: estimate {row.estimate.total / vram.GIB:.2f} GiB, seed "
            f"{row.model.seed_vram_gb} GB")
    for row in rows:
        if row.off_by_more_than(vram.SEED_TOLERANCE):
            assert row.model.gap_note, f"{row.model.slot} is off by more than 15% unexplained"


def test_the_8b_model_at_the_seed_settings_matches_its_published_shape() -> None:
    fast = next(row for row in vram.seed_rows() if row.model.slot == "fast")
    # Llama 3.1 8B: 32 layers x 8 KV heads x (128 + 128) x f16 at 8192 cells is 1 GiB.
    assert fast.estimate.kv_cache == 8192 * 32 * 8 * 256 * 2 == vram.GIB
    embeddings = 128256 * 4096 * 6.5625 / 8
    assert fast.estimate.host_weights == pytest.approx(embeddings, rel=1e-6)


def test_the_seed_table_prints_estimates_beside_the_seed_column(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["vram", "--seed-table"]) == 0
    out = capsys.readouterr().out
    for row in vram.seed_rows():
        line = next(line for line in out.splitlines() if line.startswith(row.model.slot + " "))
        assert f"{row.estimate.total / vram.GIB:.2f}" in line
        assert f"{row.model.seed_vram_gb:.1f} {row.ratio:.2f}" in line
    assert "embed: 0.46 of the seed's figure: the seed runs nomic-embed-text on CPU" in out
