// CUDA fold of BatchNorm into convolution weights: one block per (item, out-channel) row, up to
// kMaxItems items per launch passed by value. Traffic: read the source weights, write the kernels.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "fold/fold.h"

namespace fastnas {
namespace cuda {
namespace {

constexpr int kMaxItems = 32;
constexpr int kThreads = 128;

struct FoldBatch {
  FoldItem items[kMaxItems];
  int64_t row_start[kMaxItems + 1];
  int count;
};

__global__ void fold_kernel(const FoldBatch batch) {
  const int64_t row = blockIdx.x;
  int i = 0;
  while (i + 1 < batch.count && batch.row_start[i + 1] <= row) ++i;
  const FoldItem& it = batch.items[i];
  const int64_t o = row - batch.row_start[i];
  const int64_t kk = static_cast<int64_t>(it.kd) * it.kd;
  float* dst = reinterpret_cast<float*>(it.dst) + o * it.c_in * kk;
  const float cb = it.cb ? reinterpret_cast<const float*>(it.cb)[o] : 0.0f;
  float scale = 1.0f, shift = cb;
  if (it.w != 0 && it.mean != 0) {
    const double g = it.gamma ? reinterpret_cast<const float*>(it.gamma)[o] : 1.0;
    const double v = reinterpret_cast<const float*>(it.var)[o];
    scale = static_cast<float>(g / sqrt(v + it.eps));
    const float beta = it.beta ? reinterpret_cast<const float*>(it.beta)[o] : 0.0f;
    const float m = reinterpret_cast<const float*>(it.mean)[o];
    shift = __fadd_rn(beta, __fmul_rn(__fsub_rn(cb, m), scale));
  }
  if (threadIdx.x == 0) reinterpret_cast<float*>(it.bias)[o] = it.w ? shift : 0.0f;
  const float* w = reinterpret_cast<const float*>(it.w);
  const int pad = (it.kd - it.ks) / 2;
  for (int64_t j = threadIdx.x; j < it.c_in * kk; j += blockDim.x) {
    float value = 0.0f;
    if (w != nullptr) {
      const int64_t c = j / kk;
      const int y = static_cast<int>((j % kk) / it.kd) - pad;
      const int x = static_cast<int>(j % it.kd) - pad;
      if (y >= 0 && y < it.ks && x >= 0 && x < it.ks)
        value = __fmul_rn(w[((o * it.c_in + c) * it.ks + y) * it.ks + x], scale);
    }
    dst[j] = value;
  }
}

}  // namespace

void fold_conv_bn(const std::vector<FoldItem>& items, uintptr_t cuda_stream) {
  auto st = reinterpret_cast<cudaStream_t>(cuda_stream);
  size_t pos = 0;
  while (pos < items.size()) {
    FoldBatch batch{};
    int64_t rows = 0;
    int count = 0;
    for (; pos < items.size() && count < kMaxItems; ++pos) {
      const FoldItem& it = items[pos];
      if (it.c_out < 0 || it.c_in < 0 || it.ks < 1 || it.kd < it.ks || (it.ks % 2) == 0 || (it.kd % 2) == 0)
        throw std::invalid_argument("fold_conv_bn: bad sizes (need odd ks <= kd, non-negative channels)");
      if (it.c_out == 0) continue;
      batch.items[count] = it;
      batch.row_start[count] = rows;
      rows += it.c_out;
      ++count;
    }
    if (count == 0) continue;
    batch.row_start[count] = rows;
    batch.count = count;
    fold_kernel<<<static_cast<unsigned>(rows), kThreads, 0, st>>>(batch);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) throw std::runtime_error(std::string("fold_kernel launch: ") + cudaGetErrorString(err));
  }
}

}  // namespace cuda
}  // namespace fastnas
