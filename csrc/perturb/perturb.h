// Perturbation kernels over many tensors at once. See docs/noise.md.
#pragma once

#include <cstdint>
#include <vector>

namespace fastnas {

// One tensor of a multi-tensor call: raw pointers and sizes handed over by the Python layer.
struct PerturbItem {
  uintptr_t src;     // values read (theta)
  uintptr_t dst;     // values written (theta + sigma * z); may equal src
  uintptr_t backup;  // where the original bytes go (0: no backup)
  int64_t numel;
  int64_t offset;    // global element index of element 0 in the noise stream
  int dtype;         // fastnas::DType
};

namespace cpu {

// dst[j] = src[j] + sigma * z(seed, stream, offset + j) for every item; backup[j] = src[j] first.
void perturb(const std::vector<PerturbItem>& items, double sigma, uint32_t seed, uint32_t stream, int threads);

// out[j] = z(seed, stream, offset + j), float32.
void normals(float* out, int64_t n, int64_t offset, uint32_t seed, uint32_t stream, int threads);

// out[4 * j + r] = Philox word r of group (group0 + j).
void philox_words(uint32_t* out, int64_t groups, int64_t group0, uint32_t seed, uint32_t stream, int threads);

// Bytewise copy of many buffers (restore from a backup), in parallel.
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
