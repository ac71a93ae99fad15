// parallel_for over an index range on a small persistent thread pool. No torch headers.
//
// Workers are started on first use and reused (spawning threads per call costs tens of microseconds,
// as much as perturbing a small model). After a job a worker spins briefly before sleeping, since
// kernels come in quick succession (perturb, then restore). Calls from several host threads are
// serialised. A forked child starts a fresh pool (the parent's workers do not exist there).
#pragma once

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace fastnas {

class ThreadPool {
 public:
  static ThreadPool& instance() {
    static ThreadPool* pool = nullptr;
    static pid_t owner = 0;
    static std::mutex guard;
    std::lock_guard<std::mutex> lock(guard);
    if (pool == nullptr || owner != getpid()) {
      pool = new ThreadPool();  // after fork the old pool is leaked on purpose: its threads are gone
      owner = getpid();
    }
    return *pool;
  }

  // Runs fn(c) for every c in [0, chunks), the calling thread included; rethrows the first exception.
  void run(int chunks, const std::function<void(int)>& fn) {
    std::lock_guard<std::mutex> serial(call_mutex_);
    ensure_workers(chunks - 1);
    {
      std::lock_guard<std::mutex> lock(m_);
      job_ = &fn;
      chunks_ = chunks;
      next_.store(0);
      done_ = 0;
      error_ = nullptr;
      generation_.fetch_add(1);
    }
    start_.notify_all();
    work();
    std::unique_lock<std::mutex> lock(m_);
    finished_.wait(lock, [&] { return done_ == chunks_; });
    job_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  ThreadPool() = default;

  void ensure_workers(int n) {
    while (static_cast<int>(workers_.size()) < n) {
      workers_.emplace_back([this] { loop(); });
      workers_.back().detach();
    }
  }

  void work() {
    int done_here = 0;
    std::exception_ptr err;
    for (int c = next_.fetch_add(1); c < chunks_; c = next_.fetch_add(1)) {
      try {
        (*job_)(c);
      } catch (...) {
        if (!err) err = std::current_exception();
      }
      ++done_here;
    }
    if (done_here || err) {
      std::lock_guard<std::mutex> lock(m_);
      done_ += done_here;
      if (err && !error_) error_ = err;
      if (done_ == chunks_) finished_.notify_all();
    }
  }

  void loop() {
    uint64_t seen = 0;
    for (;;) {
      // Spin up to ~200 us for the next job, then sleep on the condition variable.
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
      for (int i = 0; generation_.load(std::memory_order_acquire) == seen; ++i) {
        if ((i & 63) == 0 && std::chrono::steady_clock::now() > until) break;
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
      }
      {
        std::unique_lock<std::mutex> lock(m_);
        start_.wait(lock, [&] { return generation_.load() != seen && job_ != nullptr; });
        seen = generation_.load();
      }
      work();
    }
  }

  std::mutex call_mutex_, m_;
  std::condition_variable start_, finished_;
  std::vector<std::thread> workers_;
  const std::function<void(int)>* job_ = nullptr;
  std::atomic<int> next_{0};
  int chunks_ = 0, done_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::exception_ptr error_;
};

// Calls fn(begin, end) on up to `threads` contiguous chunks of [0, n), each a multiple of `grain`
// (except the last). Runs inline when one chunk suffices.
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
  const std::function<void(int)> chunk = [&](int c) {
    const int64_t b = c * per, e = std::min<int64_t>(n, b + per);
    if (b < e) fn(b, e);
  };
  ThreadPool::instance().run(chunks, chunk);
}

}  // namespace fastnas
