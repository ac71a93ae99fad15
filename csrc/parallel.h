// A minimal fork-join parallel_for over an index range with std::thread. No torch headers.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

namespace fastnas {

// Calls fn(begin, end) on `threads` contiguous chunks of [0, n), each a multiple of `grain`
// (except the last). Runs inline when one chunk suffices. The calling thread takes chunk 0.
template <typename Fn>
void parallel_for(int64_t n, int64_t grain, int threads, Fn&& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t max_chunks = (n + grain - 1) / grain;
  const int chunks = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, max_chunks)));
  if (chunks == 1) {
    fn(int64_t{0}, n);
    return;
  }
  int64_t per = (n + chunks - 1) / chunks;
  per = (per + grain - 1) / grain * grain;
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(chunks);
  pool.reserve(chunks - 1);
  for (int c = 1; c < chunks; ++c) {
    const int64_t b = c * per, e = std::min<int64_t>(n, b + per);
    if (b >= e) break;
    pool.emplace_back([&, c, b, e] {
      try {
        fn(b, e);
      } catch (...) {
        errors[c] = std::current_exception();
      }
    });
  }
  try {
    fn(int64_t{0}, std::min<int64_t>(n, per));
  } catch (...) {
    errors[0] = std::current_exception();
  }
  for (auto& t : pool) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace fastnas
