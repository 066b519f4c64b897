// The torch binding of the embedding-bag launchers: checks tensors, allocates outputs, launches on
// torch's current stream. Built with torch.utils.cpp_extension.load by kernels/cuda_bag.py.
// Narrow includes rather than <torch/extension.h>: a third of the compile time, same bindings.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/utils/pybind.h>  // pybind11 with torch's Tensor casters, and `namespace py`

#include <optional>
#include <tuple>

#include "embedding_bag.h"

namespace {

using dlrmbench::BagShape;

void check_tensor(const at::Tensor& t, const char* name, const at::Tensor& like, int64_t dims) {
  TORCH_CHECK(t.is_cuda(), "cuda embedding-bag: ", name, " must be a CUDA tensor, got ", t.device());
  TORCH_CHECK(t.device() == like.device(), "cuda embedding-bag: ", name, " is on ", t.device(), ", expected ",
              like.device());
  TORCH_CHECK(t.is_contiguous(), "cuda embedding-bag: ", name, " must be contiguous");
  TORCH_CHECK(t.dim() == dims, "cuda embedding-bag: ", name, " must be ", dims, "-D, got shape ", t.sizes());
}

void check_bags(const at::Tensor& values, const at::Tensor& indices, const at::Tensor& offsets,
                const std::optional<at::Tensor>& psw) {
  check_tensor(indices, "indices", values, 1);
  check_tensor(offsets, "offsets", values, 1);
  TORCH_CHECK(indices.scalar_type() == offsets.scalar_type(), "cuda embedding-bag: indices (",
              indices.scalar_type(), ") and offsets (", offsets.scalar_type(), ") must share a dtype");
  TORCH_CHECK(offsets.numel() >= 1, "cuda embedding-bag: offsets needs B + 1 >= 1 entries");
  if (psw.has_value()) {
    check_tensor(*psw, "per_sample_weights", values, 1);
    TORCH_CHECK(psw->scalar_type() == values.scalar_type(), "cuda embedding-bag: per_sample_weights must be ",
                values.scalar_type());
    TORCH_CHECK(psw->numel() == indices.numel(), "cuda embedding-bag: per_sample_weights has ", psw->numel(),
                " entries for ", indices.numel(), " indices");
  }
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "cuda embedding-bag ", what, ": ", cudaGetErrorString(err));
}

BagShape shape_of(const at::Tensor& offsets, int64_t num_indices, int64_t dim, int64_t warps_per_bag) {
  TORCH_CHECK(warps_per_bag == 0 || warps_per_bag == 1 || warps_per_bag == 2 || warps_per_bag == 4 ||
                  warps_per_bag == 8,
              "cuda embedding-bag: warps_per_bag must be 0 (choose), 1, 2, 4 or 8, got ", warps_per_bag);
  return BagShape{offsets.numel() - 1, num_indices, dim, static_cast<int>(warps_per_bag)};
}

template <typename T>
const T* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

at::Tensor forward(const at::Tensor& weight, const at::Tensor& indices, const at::Tensor& offsets,
                   const std::optional<at::Tensor>& psw, int64_t warps_per_bag) {
  check_tensor(weight, "weight", weight, 2);
  check_bags(weight, indices, offsets, psw);
  const c10::cuda::CUDAGuard guard(weight.device());
  const BagShape shape = shape_of(offsets, indices.numel(), weight.size(1), warps_per_bag);
  at::Tensor out = at::empty({shape.num_bags, shape.dim}, weight.options());  // every row is written
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "dlrmbench_bag_forward", [&] {
    AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "dlrmbench_bag_forward", [&] {
      check_launch(dlrmbench::launch_forward<scalar_t, index_t>(
                       weight.data_ptr<scalar_t>(), indices.data_ptr<index_t>(), offsets.data_ptr<index_t>(),
                       ptr_or_null<scalar_t>(psw), out.data_ptr<scalar_t>(), shape, stream),
                   "forward");
    });
  });
  return out;
}

at::Tensor backward_values(const at::Tensor& grad_out, const at::Tensor& offsets,
                           const std::optional<at::Tensor>& psw, int64_t num_indices, int64_t warps_per_bag) {
  check_tensor(grad_out, "grad_out", grad_out, 2);
  check_tensor(offsets, "offsets", grad_out, 1);
  TORCH_CHECK(grad_out.size(0) == offsets.numel() - 1, "cuda embedding-bag: grad_out has ", grad_out.size(0),
              " rows for ", offsets.numel() - 1, " bags");
  if (psw.has_value()) {
    check_tensor(*psw, "per_sample_weights", grad_out, 1);
    TORCH_CHECK(psw->scalar_type() == grad_out.scalar_type() && psw->numel() == num_indices,
                "cuda embedding-bag: per_sample_weights must be ", grad_out.scalar_type(), " with ", num_indices,
                " entries");
  }
  const c10::cuda::CUDAGuard guard(grad_out.device());
  const BagShape shape = shape_of(offsets, num_indices, grad_out.size(1), warps_per_bag);
  at::Tensor values = at::empty({num_indices, shape.dim}, grad_out.options());  // every row is written
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "dlrmbench_bag_backward", [&] {
    AT_DISPATCH_INDEX_TYPES(offsets.scalar_type(), "dlrmbench_bag_backward", [&] {
      check_launch(dlrmbench::launch_backward_values<scalar_t, index_t>(
                       grad_out.data_ptr<scalar_t>(), offsets.data_ptr<index_t>(), ptr_or_null<scalar_t>(psw),
                       values.data_ptr<scalar_t>(), shape, stream),
                   "backward");
    });
  });
  return values;
}

at::Tensor psw_grad(const at::Tensor& weight, const at::Tensor& indices, const at::Tensor& offsets,
                    const at::Tensor& grad_out, int64_t warps_per_bag) {
  check_tensor(weight, "weight", weight, 2);
  check_bags(weight, indices, offsets, std::nullopt);
  check_tensor(grad_out, "grad_out", weight, 2);
  TORCH_CHECK(grad_out.scalar_type() == weight.scalar_type() && grad_out.size(0) == offsets.numel() - 1 &&
                  grad_out.size(1) == weight.size(1),
              "cuda embedding-bag: grad_out ", grad_out.sizes(), " does not match ", offsets.numel() - 1,
              " bags of dim ", weight.size(1));
  const c10::cuda::CUDAGuard guard(weight.device());
  const BagShape shape = shape_of(offsets, indices.numel(), weight.size(1), warps_per_bag);
  at::Tensor grad = at::empty({indices.numel()}, weight.options());  // every entry is written
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "dlrmbench_bag_psw_grad", [&] {
    AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "dlrmbench_bag_psw_grad", [&] {
      check_launch(dlrmbench::launch_psw_grad<scalar_t, index_t>(
                       weight.data_ptr<scalar_t>(), indices.data_ptr<index_t>(), offsets.data_ptr<index_t>(),
                       grad_out.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), shape, stream),
                   "psw_grad");
    });
  });
  return grad;
}

void sgd(const at::Tensor& weight, const at::Tensor& indices, const at::Tensor& offsets, const at::Tensor& grad_out,
         const std::optional<at::Tensor>& psw, double lr, int64_t warps_per_bag) {
  check_tensor(weight, "weight", weight, 2);
  check_bags(weight, indices, offsets, psw);
  check_tensor(grad_out, "grad_out", weight, 2);
  TORCH_CHECK(grad_out.scalar_type() == weight.scalar_type() && grad_out.size(0) == offsets.numel() - 1 &&
                  grad_out.size(1) == weight.size(1),
              "cuda embedding-bag: grad_out ", grad_out.sizes(), " does not match ", offsets.numel() - 1,
              " bags of dim ", weight.size(1));
  const c10::cuda::CUDAGuard guard(weight.device());
  const BagShape shape = shape_of(offsets, indices.numel(), weight.size(1), warps_per_bag);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "dlrmbench_bag_sgd", [&] {
    AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "dlrmbench_bag_sgd", [&] {
      check_launch(dlrmbench::launch_sgd<scalar_t, index_t>(
                       weight.data_ptr<scalar_t>(), indices.data_ptr<index_t>(), offsets.data_ptr<index_t>(),
                       ptr_or_null<scalar_t>(psw), grad_out.data_ptr<scalar_t>(), lr, shape, stream),
                   "sgd");
    });
  });
}

std::tuple<int64_t, int64_t, int64_t> plan(int64_t num_bags, int64_t num_indices, int64_t dim, int64_t element_size,
                                           int64_t warps_per_bag) {
  const auto p = dlrmbench::describe_plan(BagShape{num_bags, num_indices, dim, static_cast<int>(warps_per_bag)},
                                          static_cast<int>(element_size));
  return {p.vec, p.lanes, p.warps_per_bag};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "dlrmbench's hand-written CUDA embedding-bag (sum pooling)";
  m.def("forward", &forward, "pooled (B, D) output", py::arg("weight"), py::arg("indices"), py::arg("offsets"),
        py::arg("per_sample_weights"), py::arg("warps_per_bag") = 0);
  m.def("backward_values", &backward_values, "per-lookup weight gradient (N, D)", py::arg("grad_out"),
        py::arg("offsets"), py::arg("per_sample_weights"), py::arg("num_indices"), py::arg("warps_per_bag") = 0);
  m.def("psw_grad", &psw_grad, "gradient of the per-sample weights (N,)", py::arg("weight"), py::arg("indices"),
        py::arg("offsets"), py::arg("grad_out"), py::arg("warps_per_bag") = 0);
  m.def("sgd", &sgd, "fused SGD backward, in place", py::arg("weight"), py::arg("indices"), py::arg("offsets"),
        py::arg("grad_out"), py::arg("per_sample_weights"), py::arg("lr"), py::arg("warps_per_bag") = 0);
  m.def("plan", &plan, "(vec, lanes, warps_per_bag) the launchers pick", py::arg("num_bags"),
        py::arg("num_indices"), py::arg("dim"), py::arg("element_size"), py::arg("warps_per_bag") = 0);
}
