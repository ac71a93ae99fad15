// Per-sample cross-entropy, correct-count and negative-flip reduction into per-slot accumulators (no host sync).
#pragma once

#include <cstdint>

namespace fastnas {
namespace cpu {

// logits: (rows, classes) float32, row-major. Row r belongs to slot slot0 + r / rows_per_slot and has
// label labels[r % rows_per_slot]. Adds the row's cross-entropy (log-sum-exp minus the label's logit,
// in double) to loss_acc[slot] and 1 to correct_acc[slot] when the first maximal logit is the label.
// ref_correct (rows_per_slot bytes, nonzero: the reference model got sample i right) and flips_acc
// (int64 per slot) are both null or both set; when set, a row whose reference was right and whose first
// maximal logit is not the label adds 1 to flips_acc[slot] (a negative flip). Null: no extra work.
void loss_correct(const float* logits, const int64_t* labels, int64_t rows, int64_t classes,
                  int64_t rows_per_slot, int64_t slot0, double* loss_acc, int64_t* correct_acc,
                  const uint8_t* ref_correct = nullptr, int64_t* flips_acc = nullptr);

}  // namespace cpu
}  // namespace fastnas
