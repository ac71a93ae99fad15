// The fastnas noise stream: Philox4x32-10 words and Box-Muller normals. See docs/noise.md.
// The one definition used by the C++ CPU and the CUDA kernels. Plain C++17, no torch headers.
//
// All float arithmetic is IEEE float32 written one operation at a time; the build disables
// floating-point contraction (-ffp-contract=off, nvcc --fmad=false) so every backend rounds the
// same way as the torch reference.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define FASTNAS_HD __host__ __device__ __forceinline__
#else
#define FASTNAS_HD inline
#endif

namespace fastnas {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;  // Triton's PHILOX_ROUND_A
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;  // PHILOX_ROUND_B
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // PHILOX_KEY_A
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;  // PHILOX_KEY_B

FASTNAS_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

FASTNAS_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

struct Words {
  uint32_t w0, w1, w2, w3;
};

// Philox4x32-10 on counter (c0, c1, 0, 0) with key (k0, k1): Triton's randint4x(k0 + 2^32 k1, c).
FASTNAS_HD Words philox4x32_10(uint32_t c0, uint32_t c1, uint32_t k0, uint32_t k1) {
  uint32_t c2 = 0u, c3 = 0u;
#if defined(__CUDACC__) || defined(__clang__)
#pragma unroll
#elif defined(__GNUC__)
#pragma GCC unroll 10
#endif
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;  // A * old c0
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;  // B * old c2
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return Words{c0, c1, c2, c3};
}

// u(w) = float(w >> 9) * 2^-23 + 2^-24: exact in float32 (at most 24 significant bits), in (0, 1).
FASTNAS_HD float word_to_open_unit(uint32_t w) {
  const float a = static_cast<float>(static_cast<int32_t>(w >> 9)) * 1.1920928955078125e-07f;  // 2^-23
  return a + 5.9604644775390625e-08f;                                     // 2^-24
}

// Cephes logf for positive normal x, evaluated in the order of docs/noise.md.
FASTNAS_HD float noise_log(float x) {
  const uint32_t b = float_bits(x);
  int32_t e = static_cast<int32_t>(b >> 23) - 127;
  float m = bits_float((b & 0x007FFFFFu) | 0x3F800000u);  // [1, 2)
  const bool big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1 : e;
  const float f = m - 1.0f;
  const float z = f * f;
  float p = 7.0376836292e-2f;
  p = p * f; p = p + -1.1514610310e-1f;
  p = p * f; p = p + 1.1676998740e-1f;
  p = p * f; p = p + -1.2420140846e-1f;
  p = p * f; p = p + 1.4249322787e-1f;
  p = p * f; p = p + -1.6668057665e-1f;
  p = p * f; p = p + 2.0000714765e-1f;
  p = p * f; p = p + -2.4999993993e-1f;
  p = p * f; p = p + 3.3333331174e-1f;
  const float ef = static_cast<float>(e);
  float y = f * z;
  y = y * p;
  y = y + ef * -2.12194440e-4f;
  y = y + z * -0.5f;
  float r = f + y;
  r = r + ef * 0.693359375f;
  return r;
}

// cos and sin of 2*pi*u for u in (0, 1) with exact quadrant reduction.
FASTNAS_HD void noise_cos_sin(float u, float& cos_out, float& sin_out) {
  const float t = u * 4.0f;                  // exact
  const float qf = static_cast<float>(static_cast<int32_t>(t));  // floor (t >= 0)
  float r = t - qf;                          // exact, [0, 1)
  const bool flip = r > 0.5f;
  r = flip ? 1.0f - r : r;                   // exact, [0, 0.5]
  const float a = r * 1.57079637f;           // float32(pi / 2); a in [0, pi/4]
  const float z = a * a;
  float s = -1.9515295891e-4f * z;
  s = s + 8.3321608736e-3f;
  s = s * z; s = s + -1.6666654611e-1f;
  s = s * z; s = s * a; s = s + a;
  float c = 2.443315711809948e-5f * z;
  c = c + -1.388731625493765e-3f;
  c = c * z; c = c + 4.166664568298827e-2f;
  c = c * z; c = c * z;
  c = c - 0.5f * z;
  c = c + 1.0f;
  const float cb = flip ? s : c;             // cos, sin of the angle within the quadrant
  const float sb = flip ? c : s;
  const int q = static_cast<int>(qf);
  // Rotation by q quarter turns: an odd q swaps (cos, sin) -> (-sin, cos); q >= 2 negates both.
  const bool odd = (q & 1) != 0;
  const float c1 = odd ? -sb : cb;
  const float s1 = odd ? cb : sb;
  const bool neg = q >= 2;
  cos_out = neg ? -c1 : c1;
  sin_out = neg ? -s1 : s1;
}

// Two normals from a word pair (Box-Muller, both outputs).
FASTNAS_HD void box_muller(uint32_t w_even, uint32_t w_odd, float& n_even, float& n_odd) {
  const float u1 = word_to_open_unit(w_even);
  const float u2 = word_to_open_unit(w_odd);
  float l = noise_log(u1);
  l = l * -2.0f;
#if defined(__CUDA_ARCH__)
  const float r = __fsqrt_rn(l);
#else
  const float r = __builtin_sqrtf(l);
#endif
  float c, s;
  noise_cos_sin(u2, c, s);
  n_even = r * c;
  n_odd = r * s;
}

// The four normals of group g (elements 4g .. 4g+3).
FASTNAS_HD void normals4(uint64_t g, uint32_t k0, uint32_t k1, float& n0, float& n1, float& n2, float& n3) {
  const Words w = philox4x32_10(static_cast<uint32_t>(g), static_cast<uint32_t>(g >> 32), k0, k1);
  box_muller(w.w0, w.w1, n0, n1);
  box_muller(w.w2, w.w3, n2, n3);
}

// ---- storage dtypes --------------------------------------------------------------------------

enum DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

FASTNAS_HD float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t mant = h & 0x3FFu;
  if (exp == 0x1Fu) return bits_float(sign | 0x7F800000u | (mant << 13));  // inf / nan
  if (exp == 0u) {
    // subnormal (or zero): mant * 2^-24, exact in float32
    const float v = static_cast<float>(mant) * 5.9604644775390625e-08f;
    return bits_float(sign | float_bits(v));
  }
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

// Round-to-nearest-even float32 -> float16, as torch's c10::Half.
FASTNAS_HD uint16_t float_to_half(float f) {
  const uint32_t x = float_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7FFFFFFFu;
  if (ax > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00u);  // nan
  if (ax >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds to inf
  if (ax < 0x38800000u) {
    // Below the smallest normal half: adding 0.5 rounds to a multiple of 2^-24 (RNE).
    const float t = bits_float(ax) + 0.5f;
    return static_cast<uint16_t>(sign | (float_bits(t) - 0x3F000000u));
  }
  const uint32_t odd = (ax >> 13) & 1u;
  ax += 0xC8000000u + 0xFFFu + odd;  // rebias exponent (-112 << 23) and round at bit 13
  return static_cast<uint16_t>(sign | (ax >> 13));
}

FASTNAS_HD float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

FASTNAS_HD uint16_t float_to_bf16(float f) {
  uint32_t x = float_bits(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  x += 0x7FFFu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

}  // namespace fastnas
