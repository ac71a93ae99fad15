// Perturbation kernels over many tensors at once. See docs/noise.md.
#pragma once

#include <cstdint>
#include <vector>

namespace fastnas {

// One segment of a multi-tensor call (a whole tensor, or the box of a slice): raw pointers and sizes
// handed over by the Python layer.
//
// The segment's elements are size0 * size1 runs of `run` contiguous elements. Packed element
// e = r * run + j (run r = i0 * size1 + i1) lies at src[i0 * stride0 + i1 * stride1 + j] and gets the
// noise of global index offset + i0 * stride0 + i1 * stride1 + j. A whole tensor is one run
// (run = numel, size0 = size1 = 1). backup[e] receives the original; dst is written at the src position
// (in place) or, with dst_packed, at dst[e] (a contiguous copy of the box).
struct PerturbItem {
  uintptr_t src;     // element 0 of the segment (theta)
  uintptr_t dst;     // values written (theta + sigma * z); may equal src
  uintptr_t backup;  // where the original bytes go, packed (0: no backup)
  int64_t numel;     // size0 * size1 * run
  int64_t offset;    // global element index of element 0 in the noise stream
  int dtype;         // fastnas::DType
  int64_t run = 0;   // 0: the same as numel (a whole tensor)
  int64_t size1 = 1;
  int64_t stride0 = 0;
  int64_t stride1 = 0;
  bool dst_packed = false;

  int64_t run_length() const { return run > 0 ? run : numel; }
  // Flat position in src of the first element of run r.
  int64_t run_start(int64_t r) const { return (r / size1) * stride0 + (r % size1) * stride1; }
};

// Checks what would corrupt memory (negative sizes, null pointers, inconsistent run geometry).
void validate_items(const std::vector<PerturbItem>& items, const char* what);

namespace cpu {

// dst[j] = src[j] + sigma * z(seed, stream, offset + j) for every item; backup[j] = src[j] first.
void perturb(const std::vector<PerturbItem>& items, double sigma, uint32_t seed, uint32_t stream, int threads);

// out[j] = z(seed, stream, offset + j), float32.
void normals(float* out, int64_t n, int64_t offset, uint32_t seed, uint32_t stream, int threads);

// out[4 * j + r] = Philox word r of group (group0 + j).
void philox_words(uint32_t* out, int64_t groups, int64_t group0, uint32_t seed, uint32_t stream, int threads);

// src[...] = backup[e] for every element of every item (restore of a perturb_ call), in parallel.
void restore(const std::vector<PerturbItem>& items, int threads);

// Bytewise copy of many buffers, in parallel.
void copy_many(const std::vector<uintptr_t>& dst, const std::vector<uintptr_t>& src,
               const std::vector<int64_t>& nbytes, int threads);

// Name of the SIMD variant the noise loop runs on this CPU.
const char* simd_variant();

// Tests: true selects the hand-written AVX-512 noise loop when the CPU has it, false the portable one.
void set_simd(bool hand_written);

}  // namespace cpu

#if defined(FASTNAS_WITH_CUDA)
namespace cuda {
void perturb(const std::vector<PerturbItem>& items, double sigma, uint32_t seed, uint32_t stream, uintptr_t cuda_stream);
void normals(float* out, int64_t n, int64_t offset, uint32_t seed, uint32_t stream, uintptr_t cuda_stream);
void philox_words(uint32_t* out, int64_t groups, int64_t group0, uint32_t seed, uint32_t stream, uintptr_t cuda_stream);
}  // namespace cuda
#endif

}  // namespace fastnas
