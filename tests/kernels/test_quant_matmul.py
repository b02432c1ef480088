"""Weight-only quantized matmul (int4 / int8 weights) against its float32 reference."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.kernel_testing import assert_close, fresh_generator
from tritium_kernels.quant_matmul import (
    dequantize_ref,
    pack_int4,
    quant_matmul,
    quant_matmul_ref,
    unpack_int4,
)


def random_quantized(
    bits: int,
    num_cols: int,
    in_features: int,
    group_size: int,
    param_dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(qweight, scales, zeros) whose weights have std ~1 / sqrt(K): outputs stay O(1)."""
    groups = in_features // group_size
    spread = 0.5 + torch.rand(num_cols, groups, generator=generator)
    if bits == 4:
        q = torch.randint(0, 16, (num_cols, in_features), generator=generator, dtype=torch.uint8)
        scales = spread / (4 * in_features**0.5)
        zeros = -8 * scales + 0.5 * scales * torch.randn(num_cols, groups, generator=generator)
        return (
            pack_int4(q).to(device),
            scales.to(device, param_dtype),
            zeros.to(device, param_dtype),
        )
    q = torch.randint(-128, 128, (num_cols, in_features), generator=generator, dtype=torch.int8)
    scales = spread / (64 * in_features**0.5)
    return q.to(device), scales.to(device, param_dtype), None


# (bits, M, N, K, group_size, scales in the activation dtype instead of fp32)
CASES = [
    (4, 1, 40, 96, 32, False),
    (4, 3, 130, 576, 64, True),
    (4, 17, 96, 1536, 64, False),
    (4, 33, 130, 160, 32, True),  # M > 32: the prefill tiles
    (4, 1, 130, 160, 160, False),  # one group per row
    (4, 3, 40, 80, 16, True),  # group 16: K steps of 32 straddle groups, K masked
    (4, 17, 40, 144, 48, False),  # group 48: ditto, groups cut mid-step
    (8, 1, 96, 1536, 1536, False),  # per-channel
    (8, 3, 130, 96, 96, True),
    (8, 17, 40, 576, 32, False),  # GGUF Q8_0 blocks
    (8, 33, 130, 160, 32, True),
    (8, 1, 40, 576, 64, True),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("bits", "num_rows", "num_cols", "in_features", "group_size", "params_in_x_dtype"), CASES
)
def test_quant_matmul_matches_reference(
    bits: int, num_rows: int, num_cols: int, in_features: int, group_size: int,
    params_in_x_dtype: bool, dtype: torch.dtype, device: torch.device,
) -> None:  # fmt: skip
    generator = fresh_generator()
    qweight, scales, zeros = random_quantized(
        bits, num_cols, in_features, group_size, dtype if params_in_x_dtype else torch.float32,
        device, generator,
    )  # fmt: skip
    x = torch.randn(num_rows, in_features, generator=generator).to(device, dtype)

    out = quant_matmul(x, qweight, scales, zeros, bits, group_size)
    expected = quant_matmul_ref(x, qweight, scales, zeros, bits, group_size)

    assert out.dtype == dtype and out.shape == (num_rows, num_cols)
    # bf16 also covers the interpreter's truncating fp32 -> bf16 casts (one ulp).
    assert_close(out, expected, dtype)


def test_quant_matmul_reads_strided_rows(device: torch.device) -> None:
    """Rows of a wider buffer and a weight slice of a fused projection need no copy."""
    generator = fresh_generator()
    qweight, scales, zeros = random_quantized(4, 80, 128, 32, torch.float32, device, generator)
    x = torch.randn(5, 192, generator=generator).to(device)[:, :128]
    qweight, scales, zeros = qweight[24:64], scales[24:64], zeros[24:64]
    out = quant_matmul(x, qweight, scales, zeros, 4, 32)
    assert_close(out, quant_matmul_ref(x, qweight, scales, zeros, 4, 32), torch.float32)


def test_quant_matmul_empty(device: torch.device) -> None:
    qweight, scales, zeros = random_quantized(
        8, 40, 64, 32, torch.float32, device, fresh_generator()
    )
    out = quant_matmul(torch.zeros(0, 64, device=device), qweight, scales, zeros, 8, 32)
    assert out.shape == (0, 40)


def test_pack_unpack_int4_round_trip() -> None:
    generator = fresh_generator()
    q = torch.randint(0, 16, (3, 5, 34), generator=generator)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 5, 17)
    assert torch.equal(unpack_int4(packed), q.to(torch.uint8))
    # Column 2j in the low nibble of byte j, column 2j + 1 in its high nibble.
    assert pack_int4(torch.tensor([[1, 2, 15, 0]])).tolist() == [[0x21, 0x0F]]
    every_byte = torch.arange(256, dtype=torch.uint8).reshape(4, 64)
    assert torch.equal(pack_int4(unpack_int4(every_byte)), every_byte)
    with pytest.raises(ValueError, match="0..15"):
        pack_int4(torch.tensor([[3, 16]]))
    with pytest.raises(ValueError, match="K even"):
        pack_int4(torch.zeros(2, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        unpack_int4(torch.zeros(2, 3, dtype=torch.int8))


def test_dequantize_ref_of_gguf_blocks_is_exact() -> None:
    """Q4_1 blocks (d, m as fp16, 32 values each) give q * d + m; Q4_0 (zero -8d) gives
    (q - 8) * d; Q8_0 gives q * d — the same float32 numbers, bit for bit."""
    generator = fresh_generator()
    num_cols, in_features, block = 6, 96, 32
    q = torch.randint(0, 16, (num_cols, in_features), generator=generator, dtype=torch.uint8)
    d = torch.randn(num_cols, in_features // block, generator=generator).half().float() / 64
    m = torch.randn(num_cols, in_features // block, generator=generator).half().float()
    expected = torch.empty(num_cols, in_features)
    for n in range(num_cols):
        for b in range(in_features // block):
            values = q[n, b * block : (b + 1) * block].float()
            expected[n, b * block : (b + 1) * block] = values * d[n, b] + m[n, b]
    assert torch.equal(dequantize_ref(pack_int4(q), d, m, 4, block), expected)
    q4_0 = dequantize_ref(pack_int4(q), d, -8 * d, 4, block)
    assert torch.equal(q4_0.double(), (q.double() - 8) * d.double().repeat_interleave(block, 1))
    q8 = torch.randint(-128, 128, (num_cols, in_features), generator=generator, dtype=torch.int8)
    assert torch.equal(dequantize_ref(q8, d, None, 8, block).double(),
                       q8.double() * d.double().repeat_interleave(block, 1))  # fmt: skip


def test_quant_matmul_rejects_bad_inputs(device: torch.device) -> None:
    generator = fresh_generator()
    qweight, scales, zeros = random_quantized(4, 40, 64, 32, torch.float32, device, generator)
    x = torch.randn(2, 64, device=device)
    with pytest.raises(ValueError, match="^x must"):
        quant_matmul(x.double(), qweight, scales, zeros, 4, 32)
    with pytest.raises(ValueError, match="^x must"):
        quant_matmul(x[0], qweight, scales, zeros, 4, 32)
    with pytest.raises(ValueError, match="^qweight"):
        quant_matmul(torch.randn(2, 96, device=device), qweight, scales, zeros, 4, 32)
    with pytest.raises(ValueError, match="^qweight"):
        quant_matmul(x, qweight.to(torch.int8), scales, zeros, 4, 32)
    with pytest.raises(ValueError, match="^qweight"):  # an int4 weight read as int8
        quant_matmul(x, qweight, scales, None, 8, 32)
    with pytest.raises(ValueError, match="^scales"):
        quant_matmul(x, qweight, scales[:, :1], zeros, 4, 32)
    with pytest.raises(ValueError, match="^scales"):
        quant_matmul(x, qweight, scales.half(), zeros, 4, 32)  # neither fp32 nor x's dtype
    with pytest.raises(ValueError, match="^zeros"):
        quant_matmul(x, qweight, scales, None, 4, 32)
    with pytest.raises(ValueError, match="^zeros"):
        quant_matmul(x, qweight, scales, zeros[:5], 4, 32)
    with pytest.raises(ValueError, match="^group_size"):
        quant_matmul(x, qweight, scales, zeros, 4, 24)
    with pytest.raises(ValueError, match="^group_size"):
        quant_matmul(torch.randn(2, 48, device=device), qweight[:, :24], scales, zeros, 4, 32)
    with pytest.raises(ValueError, match="^bits"):
        quant_matmul(x, qweight, scales, zeros, 3, 32)
    q8, scales8, _ = random_quantized(8, 40, 64, 32, torch.float32, device, generator)
    with pytest.raises(ValueError, match="^zeros"):
        quant_matmul(x, q8, scales8, scales8, 8, 32)
    with pytest.raises(ValueError, match="^qweight"):
        quant_matmul(x, q8.t().contiguous().t(), scales8, None, 8, 32)


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("num_rows", [1, 32, 300])
def test_quant_matmul_real_sizes(bits: int, num_rows: int, device: torch.device) -> None:
    generator = fresh_generator()
    qweight, scales, zeros = random_quantized(
        bits, 4096, 4096, 32, torch.bfloat16, device, generator
    )
    x = torch.randn(num_rows, 4096, generator=generator).to(device, torch.bfloat16)
    out = quant_matmul(x, qweight, scales, zeros, bits, 32)
    assert_close(out, quant_matmul_ref(x, qweight, scales, zeros, bits, 32), torch.bfloat16)
