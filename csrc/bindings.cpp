// The pybind11 module fastnas._C: thin bindings over raw pointers and sizes (no torch headers).
// The Python layer (fastnas/ops) validates every tensor before its address reaches this file.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "fold/fold.h"
#include "reduce/reduce.h"
#include "perturb/perturb.h"

namespace py = pybind11;
using fastnas::PerturbItem;

namespace {

using I64s = std::vector<int64_t>;

// geometry: empty (every item a whole tensor) or one (run, size1, stride0, stride1) per item.
std::vector<PerturbItem> make_items(const std::vector<uintptr_t>& src, const std::vector<uintptr_t>& dst,
                                    const std::vector<uintptr_t>& backup, const I64s& numel, const I64s& offset,
                                    const std::vector<int>& dtype, const std::vector<I64s>& geometry,
                                    bool dst_packed) {
  const size_t n = src.size();
  if (dst.size() != n || numel.size() != n || offset.size() != n || dtype.size() != n ||
      (!backup.empty() && backup.size() != n) || (!geometry.empty() && geometry.size() != n))
    throw std::invalid_argument("perturb: argument lists differ in length");
  std::vector<PerturbItem> items(n);
  for (size_t i = 0; i < n; ++i) {
    PerturbItem& it = items[i];
    it.src = src[i];
    it.dst = dst[i];
    it.backup = backup.empty() ? 0 : backup[i];
    it.numel = numel[i];
    it.offset = offset[i];
    it.dtype = dtype[i];
    it.dst_packed = dst_packed;
    if (!geometry.empty()) {
      if (geometry[i].size() != 4) throw std::invalid_argument("perturb: geometry needs (run, size1, stride0, stride1)");
      it.run = geometry[i][0];
      it.size1 = geometry[i][1];
      it.stride0 = geometry[i][2];
      it.stride1 = geometry[i][3];
    }
  }
  return items;
}

// ptrs[i] = (dst, bias, w, mean, var, gamma, beta, conv_bias); sizes[i] = (c_out, c_in, ks, kd)
std::vector<fastnas::FoldItem> make_fold_items(const std::vector<std::vector<uintptr_t>>& ptrs,
                                               const std::vector<std::vector<int64_t>>& sizes,
                                               const std::vector<double>& eps) {
  if (ptrs.size() != sizes.size() || ptrs.size() != eps.size())
    throw std::invalid_argument("fold_conv_bn: argument lists differ in length");
  std::vector<fastnas::FoldItem> items(ptrs.size());
  for (size_t i = 0; i < ptrs.size(); ++i) {
    if (ptrs[i].size() != 8 || sizes[i].size() != 4)
      throw std::invalid_argument("fold_conv_bn: each item needs 8 pointers and 4 sizes");
    items[i] = fastnas::FoldItem{ptrs[i][0], ptrs[i][1], ptrs[i][2], ptrs[i][3], ptrs[i][4], ptrs[i][5], ptrs[i][6],
                                 ptrs[i][7],
                                 sizes[i][0], sizes[i][1], static_cast<int>(sizes[i][2]),
                                 static_cast<int>(sizes[i][3]), eps[i]};
  }
  return items;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastnas native kernels (C++ CPU, optional CUDA) over raw buffers";

  m.def(
      "perturb_cpu",
      [](const std::vector<uintptr_t>& src, const std::vector<uintptr_t>& dst, const std::vector<uintptr_t>& backup,
         const I64s& numel, const I64s& offset, const std::vector<int>& dtype, double sigma, uint32_t seed,
         uint32_t stream, int threads, const std::vector<I64s>& geometry, bool dst_packed) {
        auto items = make_items(src, dst, backup, numel, offset, dtype, geometry, dst_packed);
        py::gil_scoped_release nogil;
        fastnas::cpu::perturb(items, sigma, seed, stream, threads);
      },
      py::arg("src"), py::arg("dst"), py::arg("backup"), py::arg("numel"), py::arg("offset"), py::arg("dtype"),
      py::arg("sigma"), py::arg("seed"), py::arg("stream"), py::arg("threads"), py::arg("geometry") = std::vector<I64s>{},
      py::arg("dst_packed") = false,
      "dst = src + sigma * z over segments (see csrc/perturb/perturb.h); geometry: [] or (run, size1, stride0, "
      "stride1) per item.");

  m.def(
      "restore_cpu",
      [](const std::vector<uintptr_t>& dst, const std::vector<uintptr_t>& backup, const I64s& numel,
         const std::vector<int>& dtype, const std::vector<I64s>& geometry, int threads) {
        const I64s zeros(dst.size(), 0);
        auto items = make_items(dst, dst, backup, numel, zeros, dtype, geometry, false);
        py::gil_scoped_release nogil;
        fastnas::cpu::restore(items, threads);
      },
      py::arg("dst"), py::arg("backup"), py::arg("numel"), py::arg("dtype"), py::arg("geometry"), py::arg("threads"),
      "Copies packed backups back into segments (the inverse of perturb_cpu's backup).");

  m.def(
      "normals_cpu",
      [](uintptr_t out, int64_t n, int64_t offset, uint32_t seed, uint32_t stream, int threads) {
        py::gil_scoped_release nogil;
        fastnas::cpu::normals(reinterpret_cast<float*>(out), n, offset, seed, stream, threads);
      },
      py::arg("out"), py::arg("n"), py::arg("offset"), py::arg("seed"), py::arg("stream"), py::arg("threads"));

  m.def(
      "philox_words_cpu",
      [](uintptr_t out, int64_t groups, int64_t group0, uint32_t seed, uint32_t stream, int threads) {
        py::gil_scoped_release nogil;
        fastnas::cpu::philox_words(reinterpret_cast<uint32_t*>(out), groups, group0, seed, stream, threads);
      },
      py::arg("out"), py::arg("groups"), py::arg("group0"), py::arg("seed"), py::arg("stream"), py::arg("threads"));

  m.def(
      "copy_many_cpu",
      [](const std::vector<uintptr_t>& dst, const std::vector<uintptr_t>& src, const std::vector<int64_t>& nbytes,
         int threads) {
        if (dst.size() != src.size() || dst.size() != nbytes.size())
          throw std::invalid_argument("copy_many: argument lists differ in length");
        py::gil_scoped_release nogil;
        fastnas::cpu::copy_many(dst, src, nbytes, threads);
      },
      py::arg("dst"), py::arg("src"), py::arg("nbytes"), py::arg("threads"));

  m.def(
      "loss_correct_cpu",
      [](uintptr_t logits, uintptr_t labels, int64_t rows, int64_t classes, int64_t rows_per_slot, int64_t slot0,
         uintptr_t loss_acc, uintptr_t correct_acc, uintptr_t ref_correct, uintptr_t flips_acc) {
        py::gil_scoped_release nogil;
        fastnas::cpu::loss_correct(reinterpret_cast<const float*>(logits), reinterpret_cast<const int64_t*>(labels),
                                   rows, classes, rows_per_slot, slot0, reinterpret_cast<double*>(loss_acc),
                                   reinterpret_cast<int64_t*>(correct_acc),
                                   reinterpret_cast<const uint8_t*>(ref_correct),
                                   reinterpret_cast<int64_t*>(flips_acc));
      },
      py::arg("logits"), py::arg("labels"), py::arg("rows"), py::arg("classes"), py::arg("rows_per_slot"),
      py::arg("slot0"), py::arg("loss_acc"), py::arg("correct_acc"), py::arg("ref_correct"), py::arg("flips_acc"),
      "ref_correct and flips_acc: both 0 (no negative flips counted) or both addresses.");

  m.def("simd_variant", &fastnas::cpu::simd_variant);
  m.def("set_simd", &fastnas::cpu::set_simd, py::arg("hand_written"),
        "Tests: select the hand-written AVX-512 noise loop (True, if the CPU has it) or the portable one.");

  m.def(
      "fold_conv_bn_cpu",
      [](const std::vector<std::vector<uintptr_t>>& ptrs, const std::vector<std::vector<int64_t>>& sizes,
         const std::vector<double>& eps, int threads) {
        auto items = make_fold_items(ptrs, sizes, eps);
        py::gil_scoped_release nogil;
        fastnas::cpu::fold_conv_bn(items, threads);
      },
      py::arg("ptrs"), py::arg("sizes"), py::arg("eps"), py::arg("threads"));

#if defined(FASTNAS_WITH_CUDA)
  m.attr("has_cuda") = true;
  m.def(
      "perturb_cuda",
      [](const std::vector<uintptr_t>& src, const std::vector<uintptr_t>& dst, const std::vector<uintptr_t>& backup,
         const I64s& numel, const I64s& offset, const std::vector<int>& dtype, double sigma, uint32_t seed,
         uint32_t stream, uintptr_t cuda_stream, const std::vector<I64s>& geometry, bool dst_packed) {
        auto items = make_items(src, dst, backup, numel, offset, dtype, geometry, dst_packed);
        py::gil_scoped_release nogil;
        fastnas::cuda::perturb(items, sigma, seed, stream, cuda_stream);
      },
      py::arg("src"), py::arg("dst"), py::arg("backup"), py::arg("numel"), py::arg("offset"), py::arg("dtype"),
      py::arg("sigma"), py::arg("seed"), py::arg("stream"), py::arg("cuda_stream"),
      py::arg("geometry") = std::vector<I64s>{}, py::arg("dst_packed") = false);
  m.def(
      "normals_cuda",
      [](uintptr_t out, int64_t n, int64_t offset, uint32_t seed, uint32_t stream, uintptr_t cuda_stream) {
        py::gil_scoped_release nogil;
        fastnas::cuda::normals(reinterpret_cast<float*>(out), n, offset, seed, stream, cuda_stream);
      },
      py::arg("out"), py::arg("n"), py::arg("offset"), py::arg("seed"), py::arg("stream"), py::arg("cuda_stream"));
  m.def(
      "philox_words_cuda",
      [](uintptr_t out, int64_t groups, int64_t group0, uint32_t seed, uint32_t stream, uintptr_t cuda_stream) {
        py::gil_scoped_release nogil;
        fastnas::cuda::philox_words(reinterpret_cast<uint32_t*>(out), groups, group0, seed, stream, cuda_stream);
      },
      py::arg("out"), py::arg("groups"), py::arg("group0"), py::arg("seed"), py::arg("stream"),
      py::arg("cuda_stream"));
  m.def(
      "fold_conv_bn_cuda",
      [](const std::vector<std::vector<uintptr_t>>& ptrs, const std::vector<std::vector<int64_t>>& sizes,
         const std::vector<double>& eps, uintptr_t cuda_stream) {
        auto items = make_fold_items(ptrs, sizes, eps);
        py::gil_scoped_release nogil;
        fastnas::cuda::fold_conv_bn(items, cuda_stream);
      },
      py::arg("ptrs"), py::arg("sizes"), py::arg("eps"), py::arg("cuda_stream"));
#else
  m.attr("has_cuda") = false;
#endif
#if defined(FASTNAS_VERSION)
  m.attr("__version__") = FASTNAS_VERSION;
#endif
}
