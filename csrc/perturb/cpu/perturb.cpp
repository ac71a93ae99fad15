// CPU perturbation kernels: Philox + Box-Muller in SIMD blocks of 64 normals, threads over the
// concatenation of all tensors of a call. Memory traffic of perturb with backup: read N, write 2N.
#include "perturb/perturb.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "parallel.h"
#include "perturb/cpu/normals_avx512.h"
#include "philox.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(FASTNAS_NO_CLONES)
// One build runs the best SIMD width the CPU has (ifunc resolved at load time).
#define FASTNAS_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FASTNAS_SIMD_CLONES
#endif

namespace fastnas {

namespace {

int64_t element_size(int dtype) {
  switch (dtype) {
    case kFloat32: return 4;
    case kFloat64: return 8;
    case kFloat16:
    case kBFloat16: return 2;
    default: throw std::invalid_argument("perturb: unknown dtype code " + std::to_string(dtype));
  }
}

}  // namespace

void validate_items(const std::vector<PerturbItem>& items, const char* what) {
  const std::string name(what);
  for (const PerturbItem& it : items) {
    element_size(it.dtype);
    if (it.numel < 0 || it.offset < 0 || it.run < 0 || it.size1 < 1 || it.stride0 < 0 || it.stride1 < 0)
      throw std::invalid_argument(name + ": negative size, offset or stride");
    if (it.numel > 0 && (it.src == 0 || it.dst == 0)) throw std::invalid_argument(name + ": null data pointer");
    const int64_t len = it.run_length();
    if (it.numel > 0 && (len == 0 || it.numel % (len * it.size1) != 0))
      throw std::invalid_argument(name + ": numel is not a whole number of runs");
  }
}

namespace cpu {
namespace {

constexpr int kGroups = 16;             // Philox calls per block
constexpr int kBlock = 4 * kGroups;     // normals per block
constexpr int64_t kGrain = 16 * 1024;   // elements per thread chunk, at least

// Portable variant: the compiler vectorises it for AVX2 / SSE (and AVX-512 if the hand-written path is off).
FASTNAS_SIMD_CLONES __attribute__((noinline)) void normals_block_generic(uint64_t g0, uint32_t k0, uint32_t k1,
                                                                         float* __restrict out) {
  float n0[kGroups], n1[kGroups], n2[kGroups], n3[kGroups];
#pragma omp simd
  for (int j = 0; j < kGroups; ++j) {
    float a0, a1, a2, a3;
    normals4(g0 + static_cast<uint64_t>(j), k0, k1, a0, a1, a2, a3);
    n0[j] = a0;
    n1[j] = a1;
    n2[j] = a2;
    n3[j] = a3;
  }
  for (int j = 0; j < kGroups; ++j) {
    out[4 * j + 0] = n0[j];
    out[4 * j + 1] = n1[j];
    out[4 * j + 2] = n2[j];
    out[4 * j + 3] = n3[j];
  }
}

// Which normals_block runs: 1 = hand-written AVX-512 (when the CPU has it), 0 = the portable variant.
int g_use_avx512 = -1;

bool use_avx512() {
#if defined(FASTNAS_HAVE_AVX512_PATH)
  if (g_use_avx512 < 0) {
    __builtin_cpu_init();
    g_use_avx512 = __builtin_cpu_supports("avx512f") ? 1 : 0;
  }
  return g_use_avx512 == 1;
#else
  return false;
#endif
}

// Normals of groups [g0, g0 + 16) into out[0..64): out[4j + r] is element 4(g0 + j) + r.
inline void normals_block(uint64_t g0, uint32_t k0, uint32_t k1, float* __restrict out) {
#if defined(FASTNAS_HAVE_AVX512_PATH)
  if (use_avx512()) return avx512::normals_block(g0, k0, k1, out);
#endif
  normals_block_generic(g0, k0, k1, out);
}

FASTNAS_SIMD_CLONES __attribute__((noinline)) void words_block(uint64_t g0, uint32_t k0, uint32_t k1,
                                                               uint32_t* __restrict out) {
  uint32_t a[kGroups], b[kGroups], c[kGroups], d[kGroups];
#pragma omp simd
  for (int j = 0; j < kGroups; ++j) {
    const uint64_t g = g0 + static_cast<uint64_t>(j);
    const Words w = philox4x32_10(static_cast<uint32_t>(g), static_cast<uint32_t>(g >> 32), k0, k1);
    a[j] = w.w0;
    b[j] = w.w1;
    c[j] = w.w2;
    d[j] = w.w3;
  }
  for (int j = 0; j < kGroups; ++j) {
    out[4 * j + 0] = a[j];
    out[4 * j + 1] = b[j];
    out[4 * j + 2] = c[j];
    out[4 * j + 3] = d[j];
  }
}

// Storage <-> float32 conversion per dtype; float64 adds in double (see docs/noise.md).
template <typename T> struct Storage;
template <> struct Storage<float> {
  static void apply(const float* src, float* dst, float* backup, const float* z, int n, double sigma) {
    const float s = static_cast<float>(sigma);
    for (int i = 0; i < n; ++i) {
      const float x = src[i];
      if (backup) backup[i] = x;
      const float t = z[i] * s;
      dst[i] = x + t;
    }
  }
};
template <> struct Storage<double> {
  static void apply(const double* src, double* dst, double* backup, const float* z, int n, double sigma) {
    for (int i = 0; i < n; ++i) {
      const double x = src[i];
      if (backup) backup[i] = x;
      const double t = static_cast<double>(z[i]) * sigma;
      dst[i] = x + t;
    }
  }
};
// 16-bit storage: widen to float32, add, one rounding back.
template <float (*ToFloat)(uint16_t), uint16_t (*FromFloat)(float)>
struct Storage16 {
  static void apply(const uint16_t* src, uint16_t* dst, uint16_t* backup, const float* z, int n, double sigma) {
    const float s = static_cast<float>(sigma);
    for (int i = 0; i < n; ++i) {
      const uint16_t x = src[i];
      if (backup) backup[i] = x;
      const float t = z[i] * s;
      dst[i] = FromFloat(ToFloat(x) + t);
    }
  }
};
struct Half {};
struct BFloat {};
template <> struct Storage<Half> : Storage16<half_to_float, float_to_half> {};
template <> struct Storage<BFloat> : Storage16<bf16_to_float, float_to_bf16> {};

template <typename Tag> struct Elem { using type = Tag; };
template <> struct Elem<Half> { using type = uint16_t; };
template <> struct Elem<BFloat> { using type = uint16_t; };

// Normals of global elements [first, first + kBlock), kept while consecutive runs of a slice fall in it
// (a slice's runs can be shorter than a block).
struct NoiseBlock {
  int64_t first = -1;
  alignas(64) float z[kBlock];

  // Normals from global element gi on; `avail` of them are in the block.
  const float* at(int64_t gi, uint32_t k0, uint32_t k1, int& avail) {
    if (first < 0 || gi < first || gi >= first + kBlock) {
      first = gi & ~int64_t{3};
      normals_block(static_cast<uint64_t>(gi) >> 2, k0, k1, z);
    }
    avail = static_cast<int>(first + kBlock - gi);
    return z + (gi - first);
  }
};

// n contiguous elements whose first one has global noise index goff.
template <typename Tag, typename T>
void perturb_contiguous(const T* src, T* dst, T* backup, int64_t n, int64_t goff, double sigma, uint32_t k0,
                        uint32_t k1, NoiseBlock& noise) {
  int64_t j = 0;
  while (j < n) {
    int avail = 0;
    const float* z = noise.at(goff + j, k0, k1, avail);
    const int take = static_cast<int>(std::min<int64_t>(avail, n - j));
    Storage<Tag>::apply(src + j, dst + j, backup ? backup + j : nullptr, z, take, sigma);
    j += take;
  }
}

// Packed elements [b, e) of one item, run by run.
template <typename Tag>
void perturb_range(const PerturbItem& it, int64_t b, int64_t e, double sigma, uint32_t k0, uint32_t k1) {
  using T = typename Elem<Tag>::type;
  const T* src = reinterpret_cast<const T*>(it.src);
  T* dst = reinterpret_cast<T*>(it.dst);
  T* backup = reinterpret_cast<T*>(it.backup);
  const int64_t len = it.run_length();
  NoiseBlock noise;
  for (int64_t p = b; p < e;) {
    const int64_t r = p / len, j = p - r * len;
    const int64_t n = std::min<int64_t>(len - j, e - p);
    const int64_t at = it.run_start(r) + j;
    perturb_contiguous<Tag>(src + at, dst + (it.dst_packed ? p : at), backup ? backup + p : nullptr, n,
                            it.offset + at, sigma, k0, k1, noise);
    p += n;
  }
}

void perturb_item_range(const PerturbItem& it, int64_t b, int64_t e, double sigma, uint32_t k0, uint32_t k1) {
  switch (it.dtype) {
    case kFloat32: return perturb_range<float>(it, b, e, sigma, k0, k1);
    case kFloat64: return perturb_range<double>(it, b, e, sigma, k0, k1);
    case kFloat16: return perturb_range<Half>(it, b, e, sigma, k0, k1);
    case kBFloat16: return perturb_range<BFloat>(it, b, e, sigma, k0, k1);
    default: throw std::invalid_argument("perturb: unknown dtype code " + std::to_string(it.dtype));
  }
}

// Calls fn(item index, begin, end) for the parts of the concatenation [B, E) that fall in each item.
template <typename Fn>
void for_each_part(const std::vector<int64_t>& starts, const std::vector<int64_t>& numels, int64_t B, int64_t E,
                   Fn&& fn) {
  size_t i = static_cast<size_t>(std::upper_bound(starts.begin(), starts.end(), B) - starts.begin()) - 1;
  for (; i < numels.size() && starts[i] < E; ++i) {
    const int64_t b = std::max<int64_t>(B - starts[i], 0);
    const int64_t e = std::min<int64_t>(E - starts[i], numels[i]);
    if (b < e) fn(i, b, e);
  }
}

}  // namespace

void perturb(const std::vector<PerturbItem>& items, double sigma, uint32_t seed, uint32_t stream, int threads) {
  validate_items(items, "perturb");
  std::vector<int64_t> starts(items.size()), numels(items.size());
  int64_t total = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    starts[i] = total;
    numels[i] = items[i].numel;
    total += items[i].numel;
  }
  parallel_for(total, kGrain, threads, [&](int64_t B, int64_t E) {
    for_each_part(starts, numels, B, E, [&](size_t i, int64_t b, int64_t e) {
      perturb_item_range(items[i], b, e, sigma, seed, stream);
    });
  });
}

void restore(const std::vector<PerturbItem>& items, int threads) {
  validate_items(items, "restore");
  std::vector<int64_t> starts(items.size()), nbytes(items.size());
  int64_t total = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i].numel > 0 && items[i].backup == 0) throw std::invalid_argument("restore: null backup pointer");
    starts[i] = total;
    nbytes[i] = items[i].numel * element_size(items[i].dtype);
    total += nbytes[i];
  }
  parallel_for(total, 256 * 1024, threads, [&](int64_t B, int64_t E) {
    for_each_part(starts, nbytes, B, E, [&](size_t i, int64_t b, int64_t e) {
      const PerturbItem& it = items[i];
      const int64_t es = element_size(it.dtype), len = it.run_length() * es;
      char* dst = reinterpret_cast<char*>(it.src);
      const char* src = reinterpret_cast<const char*>(it.backup);
      for (int64_t p = b; p < e;) {  // byte positions in the packed backup
        const int64_t r = p / len, j = p - r * len;
        const int64_t n = std::min<int64_t>(len - j, e - p);
        std::memcpy(dst + it.run_start(r) * es + j, src + p, static_cast<size_t>(n));
        p += n;
      }
    });
  });
}

void normals(float* out, int64_t n, int64_t offset, uint32_t seed, uint32_t stream, int threads) {
  if (n < 0 || offset < 0) throw std::invalid_argument("normals: negative size or offset");
  parallel_for(n, kGrain, threads, [&](int64_t b, int64_t e) {
    alignas(64) float z[kBlock];
    int64_t j = b;
    while (j < e) {
      const uint64_t gi = static_cast<uint64_t>(offset + j);
      const int start = static_cast<int>(gi & 3u);
      normals_block(gi >> 2, seed, stream, z);
      const int take = static_cast<int>(std::min<int64_t>(kBlock - start, e - j));
      std::memcpy(out + j, z + start, sizeof(float) * take);
      j += take;
    }
  });
}

void philox_words(uint32_t* out, int64_t groups, int64_t group0, uint32_t seed, uint32_t stream, int threads) {
  if (groups < 0 || group0 < 0) throw std::invalid_argument("philox_words: negative size or offset");
  parallel_for(groups, kGrain / 4, threads, [&](int64_t b, int64_t e) {
    alignas(64) uint32_t w[kBlock];
    for (int64_t j = b; j < e; j += kGroups) {
      words_block(static_cast<uint64_t>(group0 + j), seed, stream, w);
      const int64_t take = std::min<int64_t>(kGroups, e - j);
      std::memcpy(out + 4 * j, w, sizeof(uint32_t) * 4 * take);
    }
  });
}

void copy_many(const std::vector<uintptr_t>& dst, const std::vector<uintptr_t>& src, const std::vector<int64_t>& nbytes,
               int threads) {
  std::vector<int64_t> starts(nbytes.size());
  int64_t total = 0;
  for (size_t i = 0; i < nbytes.size(); ++i) {
    if (nbytes[i] < 0) throw std::invalid_argument("copy_many: negative size");
    starts[i] = total;
    total += nbytes[i];
  }
  parallel_for(total, 256 * 1024, threads, [&](int64_t B, int64_t E) {
    for_each_part(starts, nbytes, B, E, [&](size_t i, int64_t b, int64_t e) {
      std::memcpy(reinterpret_cast<char*>(dst[i]) + b, reinterpret_cast<const char*>(src[i]) + b,
                  static_cast<size_t>(e - b));
    });
  });
}

void set_simd(bool hand_written) {
#if defined(FASTNAS_HAVE_AVX512_PATH)
  __builtin_cpu_init();
  g_use_avx512 = (hand_written && __builtin_cpu_supports("avx512f")) ? 1 : 0;
#else
  (void)hand_written;
#endif
}

const char* simd_variant() {
  if (use_avx512()) return "avx512f (hand-written)";
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(FASTNAS_NO_CLONES)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return "avx512f";
  if (__builtin_cpu_supports("avx2")) return "avx2";
#endif
  return "default";
}

}  // namespace cpu
}  // namespace fastnas
