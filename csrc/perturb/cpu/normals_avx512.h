// Hand-vectorised AVX-512F Philox4x32-10 + Box-Muller for 16 counter groups (64 normals).
// The same IEEE float32 operations, in the same order, as csrc/philox.h (bit-identical results);
// the 32x32->64-bit Philox multiplies use two vpmuludq per 16 lanes instead of widening to 64-bit lanes.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#include <cstdint>

#include "philox.h"

#define FASTNAS_HAVE_AVX512_PATH 1

namespace fastnas {
namespace cpu {
namespace avx512 {

#define FASTNAS_AVX512 __attribute__((target("avx512f"), always_inline)) inline

// High and low 32 bits of x * m for 16 uint32 lanes.
FASTNAS_AVX512 void mulhilo(__m512i x, __m512i m, __m512i& hi, __m512i& lo) {
  const __m512i pe = _mm512_mul_epu32(x, m);                         // even lanes, 64-bit products
  const __m512i po = _mm512_mul_epu32(_mm512_srli_epi64(x, 32), m);  // odd lanes
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(pe, 32), po);
  lo = _mm512_mask_blend_epi32(0xAAAA, pe, _mm512_slli_epi64(po, 32));
}

FASTNAS_AVX512 __m512 unit(__m512i w) {
  const __m512 a = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(w, 9)), _mm512_set1_ps(1.1920928955078125e-07f));
  return _mm512_add_ps(a, _mm512_set1_ps(5.9604644775390625e-08f));
}

FASTNAS_AVX512 __m512 horner(__m512 p, __m512 f, float c) {
  return _mm512_add_ps(_mm512_mul_ps(p, f), _mm512_set1_ps(c));
}

FASTNAS_AVX512 __m512 log(__m512 x) {
  const __m512i b = _mm512_castps_si512(x);
  __m512i e = _mm512_sub_epi32(_mm512_srli_epi32(b, 23), _mm512_set1_epi32(127));
  __m512 m = _mm512_castsi512_ps(
      _mm512_or_si512(_mm512_and_si512(b, _mm512_set1_epi32(0x007FFFFF)), _mm512_set1_epi32(0x3F800000)));
  const __mmask16 big = _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.41421356f), _CMP_GT_OQ);
  m = _mm512_mask_mul_ps(m, big, m, _mm512_set1_ps(0.5f));
  e = _mm512_mask_add_epi32(e, big, e, _mm512_set1_epi32(1));
  const __m512 f = _mm512_sub_ps(m, _mm512_set1_ps(1.0f));
  const __m512 z = _mm512_mul_ps(f, f);
  __m512 p = _mm512_set1_ps(7.0376836292e-2f);
  p = horner(p, f, -1.1514610310e-1f);
  p = horner(p, f, 1.1676998740e-1f);
  p = horner(p, f, -1.2420140846e-1f);
  p = horner(p, f, 1.4249322787e-1f);
  p = horner(p, f, -1.6668057665e-1f);
  p = horner(p, f, 2.0000714765e-1f);
  p = horner(p, f, -2.4999993993e-1f);
  p = horner(p, f, 3.3333331174e-1f);
  const __m512 ef = _mm512_cvtepi32_ps(e);
  __m512 y = _mm512_mul_ps(_mm512_mul_ps(f, z), p);
  y = _mm512_add_ps(y, _mm512_mul_ps(ef, _mm512_set1_ps(-2.12194440e-4f)));
  y = _mm512_add_ps(y, _mm512_mul_ps(z, _mm512_set1_ps(-0.5f)));
  const __m512 r = _mm512_add_ps(f, y);
  return _mm512_add_ps(r, _mm512_mul_ps(ef, _mm512_set1_ps(0.693359375f)));
}

FASTNAS_AVX512 void cos_sin(__m512 u, __m512& cos_out, __m512& sin_out) {
  const __m512 t = _mm512_mul_ps(u, _mm512_set1_ps(4.0f));
  const __m512i q = _mm512_cvttps_epi32(t);
  __m512 r = _mm512_sub_ps(t, _mm512_cvtepi32_ps(q));
  const __m512 one = _mm512_set1_ps(1.0f);
  const __mmask16 flip = _mm512_cmp_ps_mask(r, _mm512_set1_ps(0.5f), _CMP_GT_OQ);
  r = _mm512_mask_sub_ps(r, flip, one, r);
  const __m512 a = _mm512_mul_ps(r, _mm512_set1_ps(1.57079637f));
  const __m512 z = _mm512_mul_ps(a, a);
  __m512 s = _mm512_mul_ps(_mm512_set1_ps(-1.9515295891e-4f), z);
  s = _mm512_add_ps(s, _mm512_set1_ps(8.3321608736e-3f));
  s = _mm512_mul_ps(s, z);
  s = _mm512_add_ps(s, _mm512_set1_ps(-1.6666654611e-1f));
  s = _mm512_mul_ps(s, z);
  s = _mm512_mul_ps(s, a);
  s = _mm512_add_ps(s, a);
  __m512 c = _mm512_mul_ps(_mm512_set1_ps(2.443315711809948e-5f), z);
  c = _mm512_add_ps(c, _mm512_set1_ps(-1.388731625493765e-3f));
  c = _mm512_mul_ps(c, z);
  c = _mm512_add_ps(c, _mm512_set1_ps(4.166664568298827e-2f));
  c = _mm512_mul_ps(c, z);
  c = _mm512_mul_ps(c, z);
  c = _mm512_sub_ps(c, _mm512_mul_ps(_mm512_set1_ps(0.5f), z));
  c = _mm512_add_ps(c, one);
  const __m512 cb = _mm512_mask_blend_ps(flip, c, s);  // flip ? s : c
  const __m512 sb = _mm512_mask_blend_ps(flip, s, c);  // flip ? c : s
  const __m512 sign = _mm512_castsi512_ps(_mm512_set1_epi32(static_cast<int>(0x80000000u)));
  const __mmask16 odd = _mm512_test_epi32_mask(q, _mm512_set1_epi32(1));
  const __m512 c1 = _mm512_mask_blend_ps(odd, cb, _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(sb),
                                                                                       _mm512_castps_si512(sign))));
  const __m512 s1 = _mm512_mask_blend_ps(odd, sb, cb);
  const __mmask16 neg = _mm512_cmpge_epi32_mask(q, _mm512_set1_epi32(2));
  cos_out = _mm512_castsi512_ps(_mm512_mask_xor_epi32(_mm512_castps_si512(c1), neg, _mm512_castps_si512(c1),
                                                      _mm512_castps_si512(sign)));
  sin_out = _mm512_castsi512_ps(_mm512_mask_xor_epi32(_mm512_castps_si512(s1), neg, _mm512_castps_si512(s1),
                                                      _mm512_castps_si512(sign)));
}

FASTNAS_AVX512 void box_muller(__m512i w_even, __m512i w_odd, __m512& n_even, __m512& n_odd) {
  const __m512 l = _mm512_mul_ps(log(unit(w_even)), _mm512_set1_ps(-2.0f));
  const __m512 r = _mm512_sqrt_ps(l);
  __m512 c, s;
  cos_sin(unit(w_odd), c, s);
  n_even = _mm512_mul_ps(r, c);
  n_odd = _mm512_mul_ps(r, s);
}

// out[4j + r] = normal r of group g0 + j, j < 16.
__attribute__((target("avx512f"), noinline)) inline void normals_block(uint64_t g0, uint32_t k0, uint32_t k1,
                                                                      float* out) {
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i lo0 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(g0)));
  __m512i c0 = _mm512_add_epi32(lo0, iota);
  const __mmask16 carry = _mm512_cmplt_epu32_mask(c0, lo0);  // lo wrapped: carry into the high word
  const __m512i hi0 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(g0 >> 32)));
  __m512i c1 = _mm512_mask_add_epi32(hi0, carry, hi0, _mm512_set1_epi32(1));
  __m512i c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
  const __m512i ma = _mm512_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m512i mb = _mm512_set1_epi32(static_cast<int>(kPhiloxM1));
  uint32_t ka = k0, kb = k1;
  for (int round = 0; round < 10; ++round) {
    __m512i hi_a, lo_a, hi_b, lo_b;
    mulhilo(c0, ma, hi_a, lo_a);
    mulhilo(c2, mb, hi_b, lo_b);
    c0 = _mm512_ternarylogic_epi32(hi_b, c1, _mm512_set1_epi32(static_cast<int>(ka)), 0x96);  // a ^ b ^ c
    c2 = _mm512_ternarylogic_epi32(hi_a, c3, _mm512_set1_epi32(static_cast<int>(kb)), 0x96);
    c1 = lo_b;
    c3 = lo_a;
    ka += kPhiloxW0;
    kb += kPhiloxW1;
  }
  __m512 n0, n1, n2, n3;
  box_muller(c0, c1, n0, n1);
  box_muller(c2, c3, n2, n3);
  // 4 x 16 -> interleaved 64: per 128-bit block, then a 4x4 transpose of blocks.
  const __m512 a = _mm512_unpacklo_ps(n0, n1), b = _mm512_unpackhi_ps(n0, n1);
  const __m512 c = _mm512_unpacklo_ps(n2, n3), d = _mm512_unpackhi_ps(n2, n3);
  const __m512 e = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(c)));
  const __m512 f = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(c)));
  const __m512 g = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(b), _mm512_castps_pd(d)));
  const __m512 h = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(b), _mm512_castps_pd(d)));
  const __m512 t0 = _mm512_shuffle_f32x4(e, f, 0x44), t1 = _mm512_shuffle_f32x4(g, h, 0x44);
  const __m512 t2 = _mm512_shuffle_f32x4(e, f, 0xEE), t3 = _mm512_shuffle_f32x4(g, h, 0xEE);
  _mm512_storeu_ps(out, _mm512_shuffle_f32x4(t0, t1, 0x88));
  _mm512_storeu_ps(out + 16, _mm512_shuffle_f32x4(t0, t1, 0xDD));
  _mm512_storeu_ps(out + 32, _mm512_shuffle_f32x4(t2, t3, 0x88));
  _mm512_storeu_ps(out + 48, _mm512_shuffle_f32x4(t2, t3, 0xDD));
}

#undef FASTNAS_AVX512

}  // namespace avx512
}  // namespace cpu
}  // namespace fastnas
#endif
