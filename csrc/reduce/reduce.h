// Per-sample cross-entropy and correct-count reduction into per-slot accumulators (no host sync).
#pragma once

#include <cstdint>

namespace fastnas {
namespace cpu {

// logits: (rows, classes) float32, row-major. Row r belongs to slot slot0 + r / rows_per_slot and has
// label labels[r % rows_per_slot]. Adds the row's cross-entropy (log-sum-exp minus the label's logit,
// in double) to loss_acc[slot] and 1 to correct_acc[slot] when the first maximal logit is the label.
void loss_correct(const float* logits, const int64_t* labels, int64_t rows, int64_t classes,
                  int64_t rows_per_slot, int64_t slot0, double* loss_acc, int64_t* correct_acc);

}  // namespace cpu
}  // namespace fastnas
