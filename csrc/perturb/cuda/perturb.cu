// CUDA perturbation kernels. One thread per Philox group (4 consecutive global element indices) of a
// run (a whole tensor is one run; a slice's box is size0 * size1 runs, see perturb/perturb.h), one
// launch per batch of up to kMaxItems segments. Memory traffic with backup: read N, write 2N.
// Compiled with --fmad=false so the float arithmetic rounds like the torch reference.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "perturb/perturb.h"
#include "philox.h"

namespace fastnas {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxItems = 40;

struct DeviceItem {
  char* src;
  char* dst;
  char* backup;
  int64_t offset;
  int64_t run;             // elements per run
  int64_t size1;           // run r starts at src[(r / size1) * stride0 + (r % size1) * stride1]
  int64_t stride0;
  int64_t stride1;
  int64_t blocks_per_run;  // thread blocks covering the Philox groups of one run
  int dtype;
  int dst_packed;          // dst[r * run + j] (a contiguous copy) instead of the src position
};

struct Batch {
  DeviceItem items[kMaxItems];
  int64_t block_start[kMaxItems + 1];  // prefix sum of blocks per item
  int count;
};
// Kernel parameters must fit the classic 4 KiB limit (every toolkit and architecture).
static_assert(sizeof(Batch) + 64 <= 4096, "perturb Batch exceeds the kernel parameter limit");

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

// Element at src position j, packed position p (its place in the backup and in a packed dst).
__device__ __forceinline__ void apply(const DeviceItem& it, int64_t j, int64_t p, float z, float s32, double s64) {
  const int64_t d = it.dst_packed ? p : j;
  switch (it.dtype) {
    case kFloat64: {
      const double x = reinterpret_cast<const double*>(it.src)[j];
      if (it.backup) reinterpret_cast<double*>(it.backup)[p] = x;
      const double t = static_cast<double>(z) * s64;
      reinterpret_cast<double*>(it.dst)[d] = x + t;
      return;
    }
    case kFloat32: {
      const float x = reinterpret_cast<const float*>(it.src)[j];
      if (it.backup) reinterpret_cast<float*>(it.backup)[p] = x;
      const float t = z * s32;
      reinterpret_cast<float*>(it.dst)[d] = x + t;
      return;
    }
    default: {
      const uint16_t raw = reinterpret_cast<const uint16_t*>(it.src)[j];
      if (it.backup) reinterpret_cast<uint16_t*>(it.backup)[p] = raw;
      const float x = it.dtype == kFloat16 ? half_to_float(raw) : bf16_to_float(raw);
      const float t = z * s32;
      const float y = x + t;
      reinterpret_cast<uint16_t*>(it.dst)[d] = it.dtype == kFloat16 ? float_to_half(y) : float_to_bf16(y);
    }
  }
}

__global__ void perturb_kernel(const Batch batch, float s32, double s64, uint32_t k0, uint32_t k1) {
  const int64_t block = blockIdx.x;
  int i = 0;
  while (i + 1 < batch.count && batch.block_start[i + 1] <= block) ++i;
  const DeviceItem& it = batch.items[i];
  const int64_t local = block - batch.block_start[i];
  const int64_t run = local / it.blocks_per_run;
  const int64_t at = (run / it.size1) * it.stride0 + (run % it.size1) * it.stride1;  // src position of the run
  const int64_t begin = it.offset + at, end = begin + it.run;                       // its global indices
  const int64_t g = (begin >> 2) + (local - run * it.blocks_per_run) * kThreads + threadIdx.x;
  if (4 * g >= end) return;
  float z[4];
  normals4(static_cast<uint64_t>(g), k0, k1, z[0], z[1], z[2], z[3]);
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int64_t gi = 4 * g + r;
    if (gi >= begin && gi < end) apply(it, at + (gi - begin), run * it.run + (gi - begin), z[r], s32, s64);
  }
}

__global__ void normals_kernel(float* out, int64_t n, int64_t offset, uint32_t k0, uint32_t k1) {
  const int64_t g = (offset >> 2) + static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (4 * g >= offset + n) return;
  float z[4];
  normals4(static_cast<uint64_t>(g), k0, k1, z[0], z[1], z[2], z[3]);
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int64_t gi = 4 * g + r;
    if (gi >= offset && gi < offset + n) out[gi - offset] = z[r];
  }
}

__global__ void words_kernel(uint32_t* out, int64_t groups, int64_t group0, uint32_t k0, uint32_t k1) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= groups) return;
  const uint64_t g = static_cast<uint64_t>(group0 + j);
  const Words w = philox4x32_10(static_cast<uint32_t>(g), static_cast<uint32_t>(g >> 32), k0, k1);
  reinterpret_cast<uint4*>(out)[j] = make_uint4(w.w0, w.w1, w.w2, w.w3);
}

}  // namespace

void perturb(const std::vector<PerturbItem>& items, double sigma, uint32_t seed, uint32_t stream, uintptr_t cuda_stream) {
  validate_items(items, "perturb");
  constexpr int64_t kMaxBlocks = 0x7FFFFFFF;  // grid x limit
  // Plan every batch first, so that bad input is rejected before anything is launched (and written).
  std::vector<Batch> batches;
  Batch batch{};
  int64_t blocks = 0;
  int count = 0;
  auto close = [&] {
    if (count == 0) return;
    batch.block_start[count] = blocks;
    batch.count = count;
    batches.push_back(batch);
    batch = Batch{};
    blocks = 0;
    count = 0;
  };
  for (const PerturbItem& p : items) {
    if (p.numel == 0) continue;
    const int64_t len = p.run_length(), runs = p.numel / len;
    // Groups one run spans: all of them for a whole tensor; at most (len + 6) / 4 for any alignment.
    const int64_t groups = runs == 1 ? (p.offset + len + 3) / 4 - p.offset / 4 : (len + 6) / 4;
    const int64_t per_run = (groups + kThreads - 1) / kThreads;
    if (per_run > kMaxBlocks / runs)
      throw std::invalid_argument("perturb: a tensor of " + std::to_string(p.numel) +
                                  " elements needs more thread blocks than one launch allows");
    if (count == kMaxItems || blocks + runs * per_run > kMaxBlocks) close();
    batch.items[count] = DeviceItem{reinterpret_cast<char*>(p.src), reinterpret_cast<char*>(p.dst),
                                    reinterpret_cast<char*>(p.backup), p.offset, len, p.size1, p.stride0,
                                    p.stride1, per_run, p.dtype, p.dst_packed ? 1 : 0};
    batch.block_start[count] = blocks;
    blocks += runs * per_run;
    ++count;
  }
  close();
  auto st = reinterpret_cast<cudaStream_t>(cuda_stream);
  const float s32 = static_cast<float>(sigma);
  for (const Batch& b : batches) {
    const auto grid = static_cast<unsigned>(b.block_start[b.count]);
    perturb_kernel<<<grid, kThreads, 0, st>>>(b, s32, sigma, seed, stream);
    check(cudaGetLastError(), "perturb_kernel launch");
  }
}

void normals(float* out, int64_t n, int64_t offset, uint32_t seed, uint32_t stream, uintptr_t cuda_stream) {
  if (n <= 0) return;
  const int64_t groups = (offset + n + 3) / 4 - offset / 4;
  const int64_t blocks = (groups + kThreads - 1) / kThreads;
  normals_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, reinterpret_cast<cudaStream_t>(cuda_stream)>>>(
      out, n, offset, seed, stream);
  check(cudaGetLastError(), "normals_kernel launch");
}

void philox_words(uint32_t* out, int64_t groups, int64_t group0, uint32_t seed, uint32_t stream, uintptr_t cuda_stream) {
  if (groups <= 0) return;
  const int64_t blocks = (groups + kThreads - 1) / kThreads;
  words_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, reinterpret_cast<cudaStream_t>(cuda_stream)>>>(
      out, groups, group0, seed, stream);
  check(cudaGetLastError(), "words_kernel launch");
}

}  // namespace cuda
}  // namespace fastnas
