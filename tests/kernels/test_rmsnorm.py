"""RMSNorm (+ residual) kernel against its float64 reference."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.kernel_testing import INTERPRETED, assert_close, fresh_generator
from tritium_kernels.rmsnorm import rms_norm, rms_norm_ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("num_tokens", "hidden_size"), [(1, 64), (7, 576), (3, 100)])
@pytest.mark.parametrize("with_residual", [True, False])
def test_rms_norm_matches_reference(
    num_tokens: int, hidden_size: int, dtype: torch.dtype, with_residual: bool, device: torch.device
) -> None:
    generator = fresh_generator()
    x = torch.randn(num_tokens, hidden_size, generator=generator).to(device, dtype)
    residual = torch.randn(num_tokens, hidden_size, generator=generator).to(device, dtype) if with_residual else None
    weight = (1 + 0.1 * torch.randn(hidden_size, generator=generator)).to(device, dtype)

    out, residual_out = rms_norm(x, weight, 1e-6, residual)
    expected_out, expected_residual = rms_norm_ref(x, weight, 1e-6, residual)

    assert out.dtype == dtype and out.shape == x.shape
    assert_close(out, expected_out, dtype)
    if INTERPRETED and dtype == torch.bfloat16:
        # The interpreter truncates float32 -> bfloat16; GPUs round to nearest even.
        assert_close(residual_out, expected_residual, dtype)
    else:
        torch.testing.assert_close(residual_out, expected_residual, atol=0, rtol=0)


def test_rms_norm_reads_strided_rows(device: torch.device) -> None:
    """Rows of a wider buffer (a slice of a fused projection) need no copy."""
    wide = torch.randn(5, 96, device=device)
    x = wide[:, :64]
    weight = torch.ones(64, device=device)
    out, _ = rms_norm(x, weight, 1e-5)
    assert_close(out, rms_norm_ref(x, weight, 1e-5)[0], torch.float32)


def test_rms_norm_rejects_bad_shapes(device: torch.device) -> None:
    with pytest.raises(ValueError, match="weight"):
        rms_norm(torch.randn(2, 8, device=device), torch.ones(4, device=device), 1e-6)
    with pytest.raises(ValueError, match="residual"):
        rms_norm(torch.randn(2, 8, device=device), torch.ones(8, device=device), 1e-6,
                 torch.randn(3, 8, device=device))  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rms_norm_real_sizes(dtype: torch.dtype, device: torch.device) -> None:
    x = torch.randn(4096, 4096, device=device, dtype=dtype)
    residual = torch.randn_like(x)
    weight = torch.randn(4096, device=device, dtype=dtype)
    out, residual_out = rms_norm(x, weight, 1e-5, residual)
    expected_out, expected_residual = rms_norm_ref(x, weight, 1e-5, residual)
    assert_close(out, expected_out, dtype)
    assert torch.equal(residual_out, expected_residual)
