// CPU loss/correct/negative-flip reduction: one pass over each row of logits (max, log-sum-exp, argmax).
// Traffic: read the logits once (plus a label and, with flips, a reference byte per row); a few
// numbers written per slot.
#include "reduce/reduce.h"

#include <cmath>
#include <stdexcept>

namespace fastnas {
namespace cpu {

namespace {

// kFlips is a template parameter so that the loop without flips is the same code as before.
template <bool kFlips>
void loss_correct_impl(const float* logits, const int64_t* labels, int64_t rows, int64_t classes,
                       int64_t rows_per_slot, int64_t slot0, double* loss_acc, int64_t* correct_acc,
                       const uint8_t* ref_correct, int64_t* flips_acc) {
  for (int64_t start = 0; start < rows; start += rows_per_slot) {
    const int64_t end = start + rows_per_slot < rows ? start + rows_per_slot : rows;
    double loss = 0.0;
    int64_t correct = 0;
    int64_t flips = 0;
    for (int64_t r = start; r < end; ++r) {
      const float* z = logits + r * classes;
      const int64_t y = labels[r - start];
      if (y < 0 || y >= classes) throw std::invalid_argument("loss_correct: label out of range");
      int64_t best = 0;
      float m = z[0];
      for (int64_t c = 1; c < classes; ++c)
        if (z[c] > m) {  // strict: the first maximum wins, as torch.argmax
          m = z[c];
          best = c;
        }
      double s = 0.0;
      for (int64_t c = 0; c < classes; ++c) s += std::exp(static_cast<double>(z[c]) - m);
      loss += std::log(s) + m - static_cast<double>(z[y]);
      correct += best == y;
      if (kFlips) flips += (ref_correct[r - start] != 0) & (best != y);
    }
    const int64_t slot = slot0 + start / rows_per_slot;
    loss_acc[slot] += loss;
    correct_acc[slot] += correct;
    if (kFlips) flips_acc[slot] += flips;
  }
}

}  // namespace

void loss_correct(const float* logits, const int64_t* labels, int64_t rows, int64_t classes,
                  int64_t rows_per_slot, int64_t slot0, double* loss_acc, int64_t* correct_acc,
                  const uint8_t* ref_correct, int64_t* flips_acc) {
  if (rows < 0 || classes <= 0 || rows_per_slot <= 0 || slot0 < 0)
    throw std::invalid_argument("loss_correct: bad sizes");
  if ((ref_correct == nullptr) != (flips_acc == nullptr))
    throw std::invalid_argument("loss_correct: ref_correct and flips_acc must both be set or both be null");
  if (flips_acc != nullptr)
    loss_correct_impl<true>(logits, labels, rows, classes, rows_per_slot, slot0, loss_acc, correct_acc,
                            ref_correct, flips_acc);
  else
    loss_correct_impl<false>(logits, labels, rows, classes, rows_per_slot, slot0, loss_acc, correct_acc,
                             nullptr, nullptr);
}

}  // namespace cpu
}  // namespace fastnas
