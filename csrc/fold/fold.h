// Folding eval-mode BatchNorm into the preceding convolution, for many (layer, candidate) pairs at once.
#pragma once

#include <cstdint>
#include <vector>

namespace fastnas {

// One (layer, candidate) pair. dst: (c_out, c_in, kd, kd) float32; bias: (c_out) float32.
// dst = embed(w, centred in kd x kd) * scale[o];  bias = beta[o] + (cb[o] - mean[o]) * scale[o];
// scale = gamma[o] / sqrt(var[o] + eps) computed in double, rounded once to float32.
// w == 0: zeros (the candidate does not use this layer). mean == 0: no BatchNorm (scale 1, bias 0).
// gamma/beta == 0: non-affine BatchNorm (gamma 1, beta 0). cb == 0: convolution without bias (cb 0).
struct FoldItem {
  uintptr_t dst, bias, w, mean, var, gamma, beta, cb;
  int64_t c_out, c_in;
  int ks;  // source kernel size (odd, <= kd)
  int kd;  // destination kernel size (odd)
  double eps;
};

namespace cpu {
void fold_conv_bn(const std::vector<FoldItem>& items, int threads);
}  // namespace cpu

#if defined(FASTNAS_WITH_CUDA)
namespace cuda {
void fold_conv_bn(const std::vector<FoldItem>& items, uintptr_t cuda_stream);
}  // namespace cuda
#endif

}  // namespace fastnas
