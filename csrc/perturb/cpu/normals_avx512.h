// Hand-vectorised AVX-512F Philox4x32-10 + Box-Muller for 16 counter groups (64 normals).
// The same IEEE float32 operations, in the same order, as csrc/philox.h (bit-identical results);
// what differs is only how the exact steps (integer bit work, exact conversions and scalings) are done.
//
// Layout. Every 64-bit lane holds one counter group, one Philox word per vector (c0..c3) in the low
// 32-bit half; vpmuludq reads only low halves, so the high halves may hold anything. A round then costs
// per 8 groups two multiplies, a shift (port 0 on Intel), a shuffle (port 5) and two three-way xors
// (vpternlog): 12 vector instructions per 16 groups, where one word per 32-bit lane needs 18 plus
// register-to-vector broadcasts of the round keys (the version before, 1.3 ns/normal on a Xeon with AMX).
// After ten rounds one shuffle each packs (w0, w2) and (w1, w3) side by side; one Box-Muller on them
// gives (n0, n2) and (n1, n3) of 8 groups, and the groups sit in the lanes in the order 0 4 1 5 2 6 3 7,
// so that one unpacklo / unpackhi of the two results is out[0..16) / out[16..32) (no 4x4 transpose).
// The code is latency-bound (ten dependent multiply rounds, then a 9-step Horner chain), so each step is
// written for both halves of the block in turn, and the log's Horner steps alternate with the sin / cos
// polynomials: independent chains side by side in the instruction stream.
//
// Exact steps (each gives the very float32 value of philox.h):
//  * u(w) = float(w >> 9) * 2^-23 + 2^-24 = v * 2^-24 with v = (w >> 8) | 1 (odd, < 2^24: exact).
//    log reads exponent and mantissa of u from float(v) with vgetexpps / vgetmantps.
//  * t = 4u = v * 2^-22: q = floor(t) = w >> 30, r = t - q = (v mod 2^22) * 2^-22, r > 0.5 exactly
//    when bit 29 of w is set, and then 1 - r = (2^22 - v mod 2^22) * 2^-22. a = r * float(pi/2) is
//    computed as float(v') * (float(pi/2) * 2^-22): scaling by a power of two commutes with rounding.
//  * The quadrant rotation is a select on (bit 29 xor bit 30) and sign flips by bit 30 xor bit 31
//    (cos) and bit 31 (sin) of w.
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

#define FASTNAS_SETS _Pragma("GCC unroll 8") for (int s = 0; s < N; ++s)

// Philox4x32-10 on N sets of 8 groups, one word per 64-bit lane: in c0 = g (low half g mod 2^32), out
// w0..w3 in the low halves. High halves are don't-care throughout (vpmuludq reads only the low halves).
// Every step is done for all sets before the next: independent chains next to each other in the
// instruction stream, so that the out-of-order core overlaps their latencies.
template <int N>
FASTNAS_AVX512 void philox(const __m512i* g, const uint32_t* ka, const uint32_t* kb, __m512i* c0, __m512i* c1,
                           __m512i* c2, __m512i* c3) {
  const __m512i ma = _mm512_set1_epi64(kPhiloxM0), mb = _mm512_set1_epi64(kPhiloxM1);
  // Round 0 with c2 = c3 = 0.
  FASTNAS_SETS {
    c3[s] = _mm512_mul_epu32(g[s], ma);
    c0[s] = _mm512_xor_si512(_mm512_srli_epi64(g[s], 32), _mm512_set1_epi32(static_cast<int>(ka[0])));
    c2[s] = _mm512_xor_si512(_mm512_srli_epi64(c3[s], 32), _mm512_set1_epi32(static_cast<int>(kb[0])));
    c1[s] = _mm512_setzero_si512();
  }
#pragma GCC unroll 9
  for (int round = 1; round < 10; ++round) {
    FASTNAS_SETS {
      const __m512i p0 = _mm512_mul_epu32(c0[s], ma);
      const __m512i p1 = _mm512_mul_epu32(c2[s], mb);
      // hi(p1) by a shuffle (port 5 on Intel), hi(p0) by a shift (port 0): halves swapped, not cleared.
      c0[s] = _mm512_ternarylogic_epi32(_mm512_shuffle_epi32(p1, _MM_PERM_CDAB), c1[s],
                                        _mm512_set1_epi32(static_cast<int>(ka[round])), 0x96);
      c2[s] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p0, 32), c3[s],
                                        _mm512_set1_epi32(static_cast<int>(kb[round])), 0x96);
      c1[s] = p1;
      c3[s] = p0;
    }
  }
}

// Box-Muller on N sets of 16 word pairs: n_even = r cos, n_odd = r sin, with r = sqrt(-2 log u(w_even)),
// the angle 2 pi u(w_odd); the operations and their order of philox.h's box_muller.
template <int N>
FASTNAS_AVX512 void box_muller(const __m512i* w_even, const __m512i* w_odd, __m512* n_even, __m512* n_odd) {
  // ---- log(u(w_even)) ----
  __m512 f[N], z[N], p[N], ef[N], y[N];
  FASTNAS_SETS {
    const __m512 v =
        _mm512_cvtepi32_ps(_mm512_or_si512(_mm512_srli_epi32(w_even[s], 8), _mm512_set1_epi32(1)));  // u * 2^24
    __m512 m = _mm512_getmant_ps(v, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);  // mantissa of u, [1, 2)
    ef[s] = _mm512_sub_ps(_mm512_getexp_ps(v), _mm512_set1_ps(24.0f));    // exponent of u (exact)
    const __mmask16 big = _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.41421356f), _CMP_GT_OQ);
    m = _mm512_mask_mul_ps(m, big, m, _mm512_set1_ps(0.5f));
    ef[s] = _mm512_mask_add_ps(ef[s], big, ef[s], _mm512_set1_ps(1.0f));
    f[s] = _mm512_sub_ps(m, _mm512_set1_ps(1.0f));
    z[s] = _mm512_mul_ps(f[s], f[s]);
    p[s] = _mm512_set1_ps(7.0376836292e-2f);
  }
  // ---- angle: a = r * float(pi/2) in [0, pi/4] and the polynomials' argument ----
  __m512 a[N], za[N], sn[N], cs[N];
  FASTNAS_SETS {
    const __m512i w = w_odd[s];
    // v mod 2^22 (v = (w >> 8) | 1), reflected to 2^22 - it where r > 0.5 (bit 29 of w).
    __m512i x = _mm512_ternarylogic_epi32(_mm512_srli_epi32(w, 8), _mm512_set1_epi32(1),
                                          _mm512_set1_epi32(0x3FFFFF), 0xA8);  // (a | b) & c
    const __mmask16 flip = _mm512_test_epi32_mask(w, _mm512_set1_epi32(1 << 29));
    x = _mm512_mask_sub_epi32(x, flip, _mm512_set1_epi32(1 << 22), x);
    a[s] = _mm512_mul_ps(_mm512_cvtepi32_ps(x), _mm512_set1_ps(1.57079637f * 2.384185791015625e-07f));
    za[s] = _mm512_mul_ps(a[s], a[s]);
  }
  // Horner steps of the log interleaved with the sin and cos polynomials (independent chains).
  constexpr float kLog[8] = {-1.1514610310e-1f, 1.1676998740e-1f, -1.2420140846e-1f, 1.4249322787e-1f,
                             -1.6668057665e-1f, 2.0000714765e-1f, -2.4999993993e-1f, 3.3333331174e-1f};
#define FASTNAS_HORNER(i) FASTNAS_SETS p[s] = _mm512_add_ps(_mm512_mul_ps(p[s], f[s]), _mm512_set1_ps(kLog[i]))
  FASTNAS_HORNER(0);
  FASTNAS_SETS {
    sn[s] = _mm512_mul_ps(_mm512_set1_ps(-1.9515295891e-4f), za[s]);
    cs[s] = _mm512_mul_ps(_mm512_set1_ps(2.443315711809948e-5f), za[s]);
  }
  FASTNAS_HORNER(1);
  FASTNAS_SETS {
    sn[s] = _mm512_add_ps(sn[s], _mm512_set1_ps(8.3321608736e-3f));
    cs[s] = _mm512_add_ps(cs[s], _mm512_set1_ps(-1.388731625493765e-3f));
  }
  FASTNAS_HORNER(2);
  FASTNAS_SETS {
    sn[s] = _mm512_mul_ps(sn[s], za[s]);
    cs[s] = _mm512_mul_ps(cs[s], za[s]);
  }
  FASTNAS_HORNER(3);
  FASTNAS_SETS {
    sn[s] = _mm512_add_ps(sn[s], _mm512_set1_ps(-1.6666654611e-1f));
    cs[s] = _mm512_add_ps(cs[s], _mm512_set1_ps(4.166664568298827e-2f));
  }
  FASTNAS_HORNER(4);
  FASTNAS_SETS {
    sn[s] = _mm512_mul_ps(sn[s], za[s]);
    cs[s] = _mm512_mul_ps(cs[s], za[s]);
  }
  FASTNAS_HORNER(5);
  FASTNAS_SETS {
    sn[s] = _mm512_mul_ps(sn[s], a[s]);
    cs[s] = _mm512_mul_ps(cs[s], za[s]);
  }
  FASTNAS_HORNER(6);
  FASTNAS_SETS {
    sn[s] = _mm512_add_ps(sn[s], a[s]);
    cs[s] = _mm512_sub_ps(cs[s], _mm512_mul_ps(_mm512_set1_ps(0.5f), za[s]));
  }
  FASTNAS_HORNER(7);
#undef FASTNAS_HORNER
  FASTNAS_SETS {
    cs[s] = _mm512_add_ps(cs[s], _mm512_set1_ps(1.0f));
    y[s] = _mm512_mul_ps(_mm512_mul_ps(f[s], z[s]), p[s]);
    y[s] = _mm512_add_ps(y[s], _mm512_mul_ps(ef[s], _mm512_set1_ps(-2.12194440e-4f)));
    y[s] = _mm512_add_ps(y[s], _mm512_mul_ps(z[s], _mm512_set1_ps(-0.5f)));
    const __m512 lg = _mm512_add_ps(_mm512_add_ps(f[s], y[s]), _mm512_mul_ps(ef[s], _mm512_set1_ps(0.693359375f)));
    const __m512 r = _mm512_sqrt_ps(_mm512_mul_ps(lg, _mm512_set1_ps(-2.0f)));
    // Quadrant q = w >> 30. Bit 30 of d is flip ^ (q odd): swap cos and sin; bit 31 of d is
    // (q odd) ^ (q >= 2): negate cos; bit 31 of w is q >= 2: negate sin.
    const __m512i w = w_odd[s];
    const __m512i d = _mm512_xor_si512(w, _mm512_slli_epi32(w, 1));
    const __mmask16 swap = _mm512_test_epi32_mask(d, _mm512_set1_epi32(1 << 30));
    const __m512i cb = _mm512_castps_si512(_mm512_mask_blend_ps(swap, cs[s], sn[s]));  // swap ? sin : cos
    const __m512i sb = _mm512_castps_si512(_mm512_mask_blend_ps(swap, sn[s], cs[s]));
    const __m512i sign = _mm512_set1_epi32(static_cast<int>(0x80000000u));
    const __m512 c = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(cb, d, sign, 0x78));  // a ^ (b & c)
    const __m512 sv = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(sb, w, sign, 0x78));
    n_even[s] = _mm512_mul_ps(r, c);
    n_odd[s] = _mm512_mul_ps(r, sv);
  }
}

// Normals of N sets of 8 groups g0 + 8t + {0, 4, 1, 5, 2, 6, 3, 7}, t < N, to out[0 .. 32 N).
template <int N>
FASTNAS_AVX512 void normals_sets(uint64_t g0, uint32_t k0, uint32_t k1, float* out) {
  // Round keys, read by the xors as broadcasts from memory.
  alignas(64) uint32_t ka[10], kb[10];
  for (int round = 0; round < 10; ++round) {
    ka[round] = k0;
    kb[round] = k1;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  // Hide the values from the compiler: it would rebuild every key in a register and broadcast it on
  // the vector shuffle port (vpbroadcastd zmm, r32) instead of loading it with a broadcast.
  const uint32_t* pka = ka;
  const uint32_t* pkb = kb;
  asm("" : "+r"(pka), "+r"(pkb) : : "memory");
  __m512i g[N], c0[N], c1[N], c2[N], c3[N], x[N], y[N];
  const __m512i first = _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(g0)),
                                         _mm512_setr_epi64(0, 4, 1, 5, 2, 6, 3, 7));
  FASTNAS_SETS g[s] = _mm512_add_epi64(first, _mm512_set1_epi64(8 * s));
  philox<N>(g, pka, pkb, c0, c1, c2, c3);
  // (w0, w2) and (w1, w3) side by side in each 64-bit lane.
  FASTNAS_SETS {
    x[s] = _mm512_mask_shuffle_epi32(c0[s], 0xAAAA, c2[s], _MM_PERM_CDAB);
    y[s] = _mm512_mask_shuffle_epi32(c1[s], 0xAAAA, c3[s], _MM_PERM_CDAB);
  }
  __m512 c[N], sn[N];
  box_muller<N>(x, y, c, sn);  // c = (n0, n2), sn = (n1, n3) of each group
  FASTNAS_SETS {
    _mm512_storeu_ps(out + 32 * s, _mm512_unpacklo_ps(c[s], sn[s]));  // groups 0 1 2 3: n0 n1 n2 n3 each
    _mm512_storeu_ps(out + 32 * s + 16, _mm512_unpackhi_ps(c[s], sn[s]));  // groups 4 5 6 7
  }
}

#undef FASTNAS_SETS

// out[4j + r] = normal r of group g0 + j, j < 16.
__attribute__((target("avx512f"), noinline)) inline void normals_block(uint64_t g0, uint32_t k0, uint32_t k1,
                                                                      float* out) {
  normals_sets<2>(g0, k0, k1, out);
}

#undef FASTNAS_AVX512

}  // namespace avx512
}  // namespace cpu
}  // namespace fastnas
#endif
