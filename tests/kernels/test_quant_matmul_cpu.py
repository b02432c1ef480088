"""Our CPU quantized matmul (tritium_kernels/quant_matmul_cpu.cpp) against torch: the same
arithmetic written with torch ops in float64 (activations quantized per 32 columns as the
kernel does), against the float product of the dequantized weight, and inside
torch.compile. Skipped where the CPU lacks AVX-512 VNNI (the engine then runs torch's
kernels, tests/engine/test_quantization.py)."""

from __future__ import annotations

import pytest
import torch

from engine.quantization import QuantizedMatmul, QuantizedTensor, quantize_int4, quantize_int8
from tritium_kernels import quant_matmul_cpu

pytestmark = pytest.mark.skipif(not quant_matmul_cpu.available(), reason="needs a CPU with AVX-512 VNNI")


@pytest.fixture(autouse=True)
def poison_new_tensors() -> None:
    """Replaces the directory's poisoning of torch.empty: the kernel allocates its output
    in C++, out of the patch's reach, and the patch breaks torch.compile's tracing. Every
    output element is compared with the reference instead."""


def reference(x: torch.Tensor, tensor: QuantizedTensor, stored: torch.dtype = torch.float16) -> torch.Tensor:
    """The kernel's arithmetic in float64: x per 32 columns to int8 (scale max|x| / 127,
    rounded half to even), integer dot products, float scales, the zero term on the same
    quantized x; scales and zeros as the kernel stores them (`stored`)."""
    rows, columns = x.shape
    blocks = x.float().reshape(rows, columns // 32, 32)  # the scale and rounding in float32, as the kernel
    d = blocks.abs().amax(-1, keepdim=True) / 127
    inverse = torch.where(d > 0, 1 / torch.where(d > 0, d, 1), 0)
    xq = torch.round(blocks * inverse)
    dequantized_x = (xq.double() * d.double()).reshape(rows, columns)
    x = x.double()
    q = tensor.values().double() if tensor.bits == 4 else tensor.qweight.double()
    scales = tensor.scales.to(stored).double().repeat_interleave(tensor.group_size, 1)
    out = dequantized_x @ (q * scales).T
    if tensor.zeros is not None:
        out += dequantized_x @ tensor.zeros.to(stored).double().repeat_interleave(tensor.group_size, 1).T
    return out


def _int4(rows: int, columns: int, group: int) -> QuantizedTensor:
    return quantize_int4(torch.randn(rows, columns) * 0.05, group_size=group)


@pytest.mark.parametrize("rows", [1, 3, 4, 7, 33])
@pytest.mark.parametrize(
    "make",
    [
        lambda: _int4(40, 128, 32),  # 40 outputs: a partial tile of 16
        lambda: _int4(48, 192, 64),
        lambda: quantize_int8(torch.randn(24, 96) * 0.05),  # per channel: group = K
        lambda: QuantizedTensor(8, 32, torch.randint(-128, 128, (17, 64), dtype=torch.int8), torch.rand(17, 2) * 0.01, None),
    ],
    ids=["int4-g32", "int4-g64", "int8-per-channel", "int8-g32"],
)
def test_the_kernel_computes_its_arithmetic_exactly(rows: int, make) -> None:  # noqa: ANN001
    torch.manual_seed(rows)
    tensor = make()
    x = torch.randn(rows, tensor.shape[1])
    x[0, :32] = 0  # a block of zeros: scale 0, no division by it
    matmul = QuantizedMatmul(tensor, torch.float32, torch.device("cpu"), cpu_kernel="ours")
    assert matmul.packed is not None
    got = matmul(x)
    assert got.shape == (rows, tensor.shape[0]) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), reference(x, tensor, matmul.packed.scales.dtype), atol=1e-5, rtol=1e-5)


def test_scales_below_float16s_normal_range_are_kept_in_float32() -> None:
    # A row of tiny weights (int8 per channel: scale = max |w| / 127 = 1e-7) would lose
    # its precision in float16's subnormals: the kernel keeps float32 scales then.
    torch.manual_seed(0)
    weight = torch.randn(32, 64) * 0.05
    weight[5] *= 1e-4
    for tensor in (quantize_int8(weight), quantize_int4(weight)):
        matmul = QuantizedMatmul(tensor, torch.float32, torch.device("cpu"), cpu_kernel="ours")
        assert matmul.packed is not None and matmul.packed.scales.dtype == torch.float32
        x = torch.randn(3, 64)
        torch.testing.assert_close(matmul(x).double(), reference(x, tensor, torch.float32), atol=1e-6, rtol=1e-5)
    gguf_like = quantize_int4(torch.randn(32, 64) * 0.05)
    assert QuantizedMatmul(gguf_like, torch.float32, torch.device("cpu"), cpu_kernel="ours").packed.scales.dtype == torch.float16


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_the_kernel_is_as_close_to_the_float_product_as_int8_activations_allow(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    tensor = _int4(64, 576, 32)
    x = torch.randn(5, 576).to(dtype)
    exact = x.double() @ tensor.dequantize().double().T
    got = QuantizedMatmul(tensor, dtype, torch.device("cpu"), cpu_kernel="ours")(x)
    assert got.dtype == dtype
    relative = ((got.double() - exact).norm() / exact.norm()).item()
    # int8 activations per 32 columns (llama.cpp's Q8 x Q4): under 1% of the product
    assert relative < 0.01
    torch_kernel = QuantizedMatmul(tensor, dtype, torch.device("cpu"), cpu_kernel="torch")(x)
    assert ((torch_kernel.double() - exact).norm() / exact.norm()).item() < 0.02


def test_empty_inputs_and_unfit_shapes() -> None:
    tensor = _int4(16, 64, 32)
    matmul = QuantizedMatmul(tensor, torch.float32, torch.device("cpu"), cpu_kernel="ours")
    assert matmul(torch.zeros(0, 64)).shape == (0, 16)
    odd = quantize_int4(torch.randn(16, 48), group_size=16)  # K and group not in 32s
    from engine.quantization import QuantizationError

    with pytest.raises(QuantizationError, match="K or group size is not a multiple of 32"):
        QuantizedMatmul(odd, torch.float32, torch.device("cpu"), cpu_kernel="ours")
    with pytest.raises(QuantizationError, match="torch's CPU kernel takes"):  # auto: torch's, which names its own limit
        QuantizedMatmul(odd, torch.float32, torch.device("cpu"))
    with pytest.raises(ValueError, match="cpu_kernel must be"):
        QuantizedMatmul(tensor, torch.float32, torch.device("cpu"), cpu_kernel="fast")


def test_the_kernel_runs_inside_a_compiled_graph() -> None:
    torch.manual_seed(1)
    tensor = _int4(32, 64, 32)
    matmul = QuantizedMatmul(tensor, torch.float32, torch.device("cpu"), cpu_kernel="ours")

    def step(x: torch.Tensor) -> torch.Tensor:
        return torch.relu(matmul(x * 2)) + 1

    compiled = torch.compile(step, fullgraph=True, dynamic=True)
    for rows in (2, 5):
        x = torch.randn(rows, 64)
        torch.testing.assert_close(compiled(x), step(x), atol=1e-5, rtol=1e-5)
