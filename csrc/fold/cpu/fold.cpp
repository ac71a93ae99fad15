// CPU fold of BatchNorm into convolution weights: one parallel region over all (item, out-channel)
// rows. Memory traffic: read the source weights once, write the destination kernels once.
#include "fold/fold.h"

#include <cmath>
#include <cstring>
#include <stdexcept>

#include "parallel.h"

namespace fastnas {
namespace cpu {

void fold_conv_bn(const std::vector<FoldItem>& items, int threads) {
  std::vector<int64_t> row_start(items.size() + 1, 0);
  for (size_t i = 0; i < items.size(); ++i) {
    const FoldItem& it = items[i];
    if (it.c_out < 0 || it.c_in < 0 || it.ks < 1 || it.kd < it.ks || (it.ks % 2) == 0 || (it.kd % 2) == 0)
      throw std::invalid_argument("fold_conv_bn: bad sizes (need odd ks <= kd, non-negative channels)");
    if (it.dst == 0 || it.bias == 0) throw std::invalid_argument("fold_conv_bn: null destination");
    row_start[i + 1] = row_start[i] + it.c_out;
  }
  const int64_t rows = row_start.back();
  parallel_for(rows, 64, threads, [&](int64_t b, int64_t e) {
    size_t i = 0;
    for (int64_t r = b; r < e; ++r) {
      while (row_start[i + 1] <= r) ++i;
      const FoldItem& it = items[i];
      const int64_t o = r - row_start[i];
      const int64_t kk = static_cast<int64_t>(it.kd) * it.kd;
      float* dst = reinterpret_cast<float*>(it.dst) + o * it.c_in * kk;
      float* bias = reinterpret_cast<float*>(it.bias) + o;
      if (it.w == 0) {
        std::memset(dst, 0, sizeof(float) * it.c_in * kk);
        *bias = 0.0f;
        continue;
      }
      const float cb = it.cb ? reinterpret_cast<const float*>(it.cb)[o] : 0.0f;
      float scale = 1.0f, shift = cb;
      if (it.mean != 0) {
        const double g = it.gamma ? reinterpret_cast<const float*>(it.gamma)[o] : 1.0;
        const double v = reinterpret_cast<const float*>(it.var)[o];
        scale = static_cast<float>(g / std::sqrt(v + it.eps));
        const float beta = it.beta ? reinterpret_cast<const float*>(it.beta)[o] : 0.0f;
        const float m = reinterpret_cast<const float*>(it.mean)[o];
        const float d = cb - m;
        const float ds = d * scale;
        shift = beta + ds;
      }
      *bias = shift;
      const float* w = reinterpret_cast<const float*>(it.w) + o * it.c_in * it.ks * it.ks;
      const int pad = (it.kd - it.ks) / 2;
      if (pad == 0) {
        const int64_t n = it.c_in * kk;
        for (int64_t j = 0; j < n; ++j) dst[j] = w[j] * scale;
      } else {
        std::memset(dst, 0, sizeof(float) * it.c_in * kk);
        for (int64_t c = 0; c < it.c_in; ++c)
          for (int y = 0; y < it.ks; ++y)
            for (int x = 0; x < it.ks; ++x)
              dst[c * kk + (y + pad) * it.kd + (x + pad)] = w[(c * it.ks + y) * it.ks + x] * scale;
      }
    }
  });
}

}  // namespace cpu
}  // namespace fastnas
