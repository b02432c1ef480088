// Weight-only quantized matmul on x86 CPUs with AVX-512 VNNI: out[M, N] = x[M, K] @ W^T.
//
// The arithmetic is llama.cpp's for its Q4/Q8 x Q8 dot products: each row of x is
// quantized per 32 columns to int8 (scale max|x| / 127), the weight's integers are
// multiplied with it in int32 by VPDPBUSD (64 byte products per instruction), and the
// int32 sums are scaled in float per 32 columns. The weight format is the engine's
// (engine/quantization.py): w[n, k] = q[n, k] * scale[n, g] + zero[n, g], g = k / group;
// so per row m and output n
//
//   out[m, n] = sum_b dx[m, b] * scale[n, g(b)] * (sum_{k in b} xq[m, k] q[n, k])
//             + sum_g zero[n, g] * (sum_{k in g} dx[m, b(k)] xq[m, k])
//
// that is, x's quantized values stand in for x everywhere, so their error multiplies the
// weight itself (q * scale + zero), not the larger uncentred q * scale (llama.cpp's Q8_1
// carries the same sum for the same reason).
// VPDPBUSD multiplies unsigned by signed bytes: int4 values are 0..15 already; int8 ones
// are stored + 128 as unsigned bytes and 128 * sum(xq) is taken off each block's integer
// sum, which is exact (int8 has no zeros).
//
// Layout (`pack`, done once at load): output rows in tiles of 16, one 32-bit lane per row,
// four consecutive columns of a row per lane, so one 64-byte vector is 16 rows x 4
// columns and one VPDPBUSD against x's 4 columns broadcast advances 16 dot products.
//   int4: [N/16, K/8, 64] bytes, lane r byte j: low nibble q[16t+r, 8c+j],
//         high nibble q[16t+r, 8c+4+j]
//   int8: [N/16, K/4, 64] bytes, lane r byte j: q[16t+r, 4c+j] + 128
//   scales, zeros: [N/16, K/group, 16] float16 where they fit it without loss of range
//   (GGUF's own scales are float16: Q4_0, Q4_1 and Q8_0 keep theirs exactly, at a quarter
//   of the bytes the int4 integers take at group 32), else float32; int8: no zeros.
// x may be float32, bfloat16 or float16; the output has its dtype.
// Tiles are split between threads by at::parallel_for (torch's own OpenMP pool: the
// extension is built with -fopenmp and links the libgomp torch has already loaded).

#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace {

constexpr int64_t kTile = 16;    // output rows per tile (one per 32-bit lane)
constexpr int64_t kBlock = 32;   // columns per activation scale
constexpr int kRowsPerPass = 8;  // rows of x sharing one pass over a weight tile
#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

bool supported() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512vnni");
}

// 16 values of x's dtype as floats, and back (bf16: round to nearest even, as torch does).
TARGET inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
TARGET inline __m512 load16(const at::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
TARGET inline __m512 load16(const at::BFloat16* p) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
TARGET inline void store16(float* p, __m512 v, __mmask16 mask) { _mm512_mask_storeu_ps(p, mask, v); }
TARGET inline void store16(at::Half* p, __m512 v, __mmask16 mask) {
  _mm256_mask_storeu_epi16(p, mask, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
TARGET inline void store16(at::BFloat16* p, __m512 v, __mmask16 mask) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);  // NaN stays NaN (quiet)
  rounded = _mm512_mask_or_epi32(rounded, nan, _mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
  _mm256_mask_storeu_epi16(p, mask, _mm512_cvtepi32_epi16(rounded));
}

// x rows quantized: xq [M, K] int8, dx [M, K/32], xsum [M, K/group] the quantized x's
// sum (int4's zero term), qsum [M, K/32] the integers' sum (int8's offset).
struct QuantizedRows {
  std::vector<int8_t> xq;
  std::vector<float> dx;
  std::vector<float> xsum;
  std::vector<int32_t> qsum;
};

template <typename T>
TARGET void quantize_row(const T* x, int64_t k_cols, int64_t group, int8_t* xq, float* dx, float* xsum,
                         int32_t* qsum) {
  const int64_t blocks = k_cols / kBlock, groups = k_cols / group;
  for (int64_t g = 0; g < groups; ++g) xsum[g] = 0.0f;
  for (int64_t b = 0; b < blocks; ++b) {
    const __m512 lo = load16(x + b * kBlock), hi = load16(x + b * kBlock + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
    const float d = amax / 127.0f, inv = d > 0.0f ? 1.0f / d : 0.0f;
    // cvtps_epi32 rounds half to even (the default rounding mode)
    const __m512i qlo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, _mm512_set1_ps(inv)));
    const __m512i qhi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, _mm512_set1_ps(inv)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + b * kBlock), _mm512_cvtsepi32_epi8(qlo));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + b * kBlock + 16), _mm512_cvtsepi32_epi8(qhi));
    dx[b] = d;
    qsum[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(qlo, qhi));
    xsum[(b * kBlock) / group] += d * static_cast<float>(qsum[b]);
  }
}

template <typename T>
QuantizedRows quantize_rows(const T* x, int64_t m_rows, int64_t k_cols, int64_t group) {
  QuantizedRows r;
  const int64_t blocks = k_cols / kBlock, groups = k_cols / group;
  r.xq.resize(m_rows * k_cols);
  r.dx.resize(m_rows * blocks);
  r.xsum.resize(m_rows * groups);
  r.qsum.resize(m_rows * blocks);
  at::parallel_for(0, m_rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m)
      quantize_row(x + m * k_cols, k_cols, group, r.xq.data() + m * k_cols, r.dx.data() + m * blocks,
                   r.xsum.data() + m * groups, r.qsum.data() + m * blocks);
  });
  return r;
}

// One tile of 16 output rows for kRows rows of x from m0; S: the scales' type.
template <int kBits, int kRows, typename S, typename T>
TARGET inline void tile_pass(const uint8_t* w, const S* scales, const S* zeros, const QuantizedRows& q, int64_t m0,
                             int64_t k_cols, int64_t group, T* out, int64_t n_cols, int64_t n0) {
  const int64_t blocks = k_cols / kBlock, groups = k_cols / group;
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  __m512 acc[kRows];
  for (int r = 0; r < kRows; ++r) acc[r] = _mm512_setzero_ps();
  // A VPDPBUSD waits for the one before on its accumulator: with few rows, each row's
  // block sum is split over kChains accumulators so that their chains overlap.
  constexpr int kChains = kRows >= 4 ? 1 : (kRows == 1 ? 4 : 2);
  for (int64_t b = 0; b < blocks; ++b) {
    __m512i dot[kRows], part[kChains][kRows];
    const int32_t* xb[kRows];
    for (int r = 0; r < kRows; ++r) {
      xb[r] = reinterpret_cast<const int32_t*>(q.xq.data() + (m0 + r) * k_cols + b * kBlock);
      for (int i = 0; i < kChains; ++i) part[i][r] = _mm512_setzero_si512();
    }
    if constexpr (kBits == 4) {
      const uint8_t* wb = w + b * (kBlock / 8) * 64;
#pragma GCC unroll 4
      for (int c = 0; c < kBlock / 8; ++c) {
        const __m512i packed = _mm512_loadu_si512(wb + c * 64);
        const __m512i lo = _mm512_and_si512(packed, nibble);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(packed, 4), nibble);
        const int i = (2 * c) % kChains, j = (2 * c + 1) % kChains;
        for (int r = 0; r < kRows; ++r) {
          part[i][r] = _mm512_dpbusd_epi32(part[i][r], lo, _mm512_set1_epi32(xb[r][2 * c]));
          part[j][r] = _mm512_dpbusd_epi32(part[j][r], hi, _mm512_set1_epi32(xb[r][2 * c + 1]));
        }
      }
    } else {
      const uint8_t* wb = w + b * (kBlock / 4) * 64;
#pragma GCC unroll 8
      for (int c = 0; c < kBlock / 4; ++c) {
        const __m512i u = _mm512_loadu_si512(wb + c * 64);
        for (int r = 0; r < kRows; ++r)
          part[c % kChains][r] = _mm512_dpbusd_epi32(part[c % kChains][r], u, _mm512_set1_epi32(xb[r][c]));
      }
    }
    for (int r = 0; r < kRows; ++r) {
      dot[r] = part[0][r];
      for (int i = 1; i < kChains; ++i) dot[r] = _mm512_add_epi32(dot[r], part[i][r]);
      // int8: the +128 of every stored byte
      if constexpr (kBits == 8) dot[r] = _mm512_sub_epi32(dot[r], _mm512_set1_epi32(128 * q.qsum[(m0 + r) * blocks + b]));
    }
    const __m512 scale = load16(scales + ((b * kBlock) / group) * kTile);
    for (int r = 0; r < kRows; ++r) {
      const __m512 ds = _mm512_mul_ps(scale, _mm512_set1_ps(q.dx[(m0 + r) * blocks + b]));
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[r]), ds, acc[r]);
    }
  }
  if constexpr (kBits == 4) {
    for (int64_t g = 0; g < groups; ++g) {
      const __m512 zero = load16(zeros + g * kTile);
      for (int r = 0; r < kRows; ++r)
        acc[r] = _mm512_fmadd_ps(zero, _mm512_set1_ps(q.xsum[(m0 + r) * groups + g]), acc[r]);
    }
  }
  const __mmask16 mask = n0 + kTile <= n_cols ? 0xFFFF : static_cast<__mmask16>((1u << (n_cols - n0)) - 1);
  for (int r = 0; r < kRows; ++r) store16(out + (m0 + r) * n_cols + n0, acc[r], mask);
}

// Every row of x against one tile: passes of kRowsPerPass rows, then the rest.
template <int kBits, typename S, typename T, int kRows = kRowsPerPass>
void tile(const uint8_t* w, const S* scales, const S* zeros, const QuantizedRows& q, int64_t m0, int64_t m_rows,
          int64_t k_cols, int64_t group, T* out, int64_t n_cols, int64_t n0) {
  if constexpr (kRows > 0) {
    for (; m0 + kRows <= m_rows; m0 += kRows)
      tile_pass<kBits, kRows>(w, scales, zeros, q, m0, k_cols, group, out, n_cols, n0);
    if (m0 < m_rows) tile<kBits, S, T, kRows - 1>(w, scales, zeros, q, m0, m_rows, k_cols, group, out, n_cols, n0);
  }
}

template <typename S, typename T>
void run(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales, const at::Tensor& zeros,
         int64_t bits, int64_t group, at::Tensor& out) {
  const int64_t m_rows = x.size(0), k_cols = x.size(1), n_cols = out.size(1), tiles = weight.size(0);
  const QuantizedRows q = quantize_rows(x.data_ptr<T>(), m_rows, k_cols, group);
  const uint8_t* w = weight.data_ptr<uint8_t>();
  const S* s = scales.data_ptr<S>();
  const S* z = bits == 4 ? zeros.data_ptr<S>() : nullptr;
  T* o = out.data_ptr<T>();
  const int64_t tile_bytes = k_cols * kTile * bits / 8, tile_params = (k_cols / group) * kTile;
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      if (bits == 4)
        tile<4>(w + t * tile_bytes, s + t * tile_params, z + t * tile_params, q, 0, m_rows, k_cols, group, o, n_cols,
                t * kTile);
      else
        tile<8>(w + t * tile_bytes, s + t * tile_params, s, q, 0, m_rows, k_cols, group, o, n_cols, t * kTile);
    }
  });
}

at::Tensor quant_mm(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& scales,
                    const at::Tensor& zeros, int64_t bits, int64_t group_size, int64_t n_cols) {
  TORCH_CHECK(supported(), "tritium_cpu::quant_mm needs AVX-512 VNNI");
  TORCH_CHECK(x_in.dim() == 2, "x must be [M, K]");
  TORCH_CHECK(bits == 4 || bits == 8, "bits must be 4 or 8");
  const at::Tensor x = x_in.contiguous();
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "x must be float32, bfloat16 or float16");
  const int64_t m_rows = x.size(0), k_cols = x.size(1), tiles = weight.size(0);
  TORCH_CHECK(k_cols % kBlock == 0 && group_size % kBlock == 0 && k_cols % group_size == 0,
              "K and the group size must be multiples of 32, K of the group size");
  TORCH_CHECK(weight.scalar_type() == at::kByte && weight.is_contiguous() && weight.dim() == 3 &&
                  weight.size(1) * weight.size(2) == k_cols * kTile * bits / 8,
              "weight is not packed for K = ", k_cols);
  TORCH_CHECK(tiles * kTile >= n_cols && tiles * kTile < n_cols + kTile, "weight has the wrong number of tiles");
  const auto stype = scales.scalar_type();
  TORCH_CHECK((stype == at::kHalf || stype == at::kFloat) && scales.is_contiguous() &&
                  scales.numel() == tiles * (k_cols / group_size) * kTile,
              "scales must be float16 or float32 [N/16, K/group, 16]");
  TORCH_CHECK(bits == 8 || (zeros.scalar_type() == stype && zeros.is_contiguous() && zeros.numel() == scales.numel()),
              "int4 zeros must be like the scales");
  at::Tensor out = at::empty({m_rows, n_cols}, x.options());
  if (m_rows == 0 || n_cols == 0) return out;
#define TRITIUM_RUN(T)                                                     \
  if (stype == at::kHalf) run<at::Half, T>(x, weight, scales, zeros, bits, group_size, out); \
  else run<float, T>(x, weight, scales, zeros, bits, group_size, out);
  if (dtype == at::kFloat) { TRITIUM_RUN(float) }
  else if (dtype == at::kBFloat16) { TRITIUM_RUN(at::BFloat16) }
  else { TRITIUM_RUN(at::Half) }
#undef TRITIUM_RUN
  return out;
}

}  // namespace

TORCH_LIBRARY(tritium_cpu, m) {
  m.def("quant_mm(Tensor x, Tensor weight, Tensor scales, Tensor zeros, int bits, int group_size, int n) -> Tensor");
  m.def("supported() -> bool", &supported);
}

TORCH_LIBRARY_IMPL(tritium_cpu, CPU, m) { m.impl("quant_mm", &quant_mm); }
