// Host launchers of embedding_bag_kernels.cuh: pick the vector width and the thread mapping, launch
// on the caller's stream. No torch headers here, so this file compiles standalone with nvcc.
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "embedding_bag.h"
#include "embedding_bag_kernels.cuh"

namespace dlrmbench {
namespace {

// Largest width (16 bytes at most) that divides D and to which every row pointer is aligned; rows of
// a contiguous (., D) tensor then all start aligned too.
template <typename scalar_t>
int pick_vec(int64_t dim, std::initializer_list<const void*> ptrs) {
  for (int vec = static_cast<int>(16 / sizeof(scalar_t)); vec > 1; vec /= 2) {
    bool ok = dim % vec == 0;
    for (const void* p : ptrs) ok = ok && reinterpret_cast<uintptr_t>(p) % (vec * sizeof(scalar_t)) == 0;
    if (ok) return vec;
  }
  return 1;
}

struct Plan {
  int lanes;          // lanes per row group: a power of two covering D / vec, at most 32
  int warps_per_bag;  // 1, 2, 4 or 8
  unsigned blocks;
};

int lanes_for(int64_t dim_vec) {
  int lanes = 1;
  while (lanes < kWarpSize && lanes < dim_vec) lanes *= 2;
  return lanes;
}

int device_sms() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    cudaGetLastError();  // clear it: the launch reports real errors
    return 1;
  }
  return sms;
}

// More warps per bag keep more rows in flight when bags are long and few; each doubling still leaves
// every row group at least one full unrolled step of lookups, and stops once the bags alone fill the GPU.
int choose_warps_per_bag(const BagShape& shape, int lanes) {
  if (shape.warps_per_bag > 0) return shape.warps_per_bag;
  const int64_t groups = kWarpSize / lanes;
  const int64_t mean_len = shape.num_bags > 0 ? shape.num_indices / shape.num_bags : 0;
  const int64_t target_warps = static_cast<int64_t>(device_sms()) * 64;  // 2048 threads per SM
  int wpb = 1;
  while (wpb < kWarpsPerBlock && mean_len >= 2 * wpb * groups * kUnroll && shape.num_bags * wpb < target_warps) {
    wpb *= 2;
  }
  return wpb;
}

Plan make_plan(const BagShape& shape, int vec) {
  Plan p;
  p.lanes = lanes_for(shape.dim / vec);
  p.warps_per_bag = choose_warps_per_bag(shape, p.lanes);
  const int64_t bags_per_block = kWarpsPerBlock / p.warps_per_bag;
  p.blocks = static_cast<unsigned>((shape.num_bags + bags_per_block - 1) / bags_per_block);
  return p;
}

// Calls f(integral_constant<VEC>, bool_constant<WEIGHTED>) for the runtime (vec, weighted); a width of
// 4 is only instantiated for 4-byte scalars (16-byte loads at most).
template <typename scalar_t, bool W, typename F>
cudaError_t dispatch_vec(int vec, F& f) {
  if constexpr (sizeof(scalar_t) <= 4) {
    if (vec == 4) {
      f(std::integral_constant<int, 4>{}, std::bool_constant<W>{});
      return cudaGetLastError();
    }
  }
  if (vec == 2) {
    f(std::integral_constant<int, 2>{}, std::bool_constant<W>{});
  } else {
    f(std::integral_constant<int, 1>{}, std::bool_constant<W>{});
  }
  return cudaGetLastError();
}

template <typename scalar_t, typename F>
cudaError_t dispatch(int vec, bool weighted, F&& f) {
  return weighted ? dispatch_vec<scalar_t, true>(vec, f) : dispatch_vec<scalar_t, false>(vec, f);
}

}  // namespace

LaunchPlan describe_plan(const BagShape& shape, int element_size) {
  LaunchPlan plan;
  plan.vec = element_size > 0 && element_size <= 16 ? 16 / element_size : 1;
  while (plan.vec > 1 && shape.dim % plan.vec != 0) plan.vec /= 2;
  plan.lanes = lanes_for(shape.dim / plan.vec);
  plan.warps_per_bag = choose_warps_per_bag(shape, plan.lanes);
  return plan;
}

template <typename scalar_t, typename index_t>
cudaError_t launch_forward(const scalar_t* weight, const index_t* indices, const index_t* offsets,
                           const scalar_t* psw, scalar_t* out, BagShape shape, cudaStream_t stream) {
  if (shape.num_bags == 0 || shape.dim == 0) return cudaSuccess;
  const int vec = pick_vec<scalar_t>(shape.dim, {weight, out});
  const Plan p = make_plan(shape, vec);
  return dispatch<scalar_t>(vec, psw != nullptr, [&](auto v, auto w) {
    bag_forward_kernel<scalar_t, index_t, decltype(v)::value, decltype(w)::value>
        <<<p.blocks, kBlockThreads, 0, stream>>>(weight, indices, offsets, psw, out, shape.num_bags, shape.dim,
                                                 p.lanes, p.warps_per_bag);
  });
}

template <typename scalar_t, typename index_t>
cudaError_t launch_backward_values(const scalar_t* grad_out, const index_t* offsets, const scalar_t* psw,
                                   scalar_t* values, BagShape shape, cudaStream_t stream) {
  if (shape.num_bags == 0 || shape.num_indices == 0 || shape.dim == 0) return cudaSuccess;
  const int vec = pick_vec<scalar_t>(shape.dim, {grad_out, values});
  const Plan p = make_plan(shape, vec);
  return dispatch<scalar_t>(vec, psw != nullptr, [&](auto v, auto w) {
    bag_backward_values_kernel<scalar_t, index_t, decltype(v)::value, decltype(w)::value>
        <<<p.blocks, kBlockThreads, 0, stream>>>(grad_out, offsets, psw, values, shape.num_bags, shape.dim, p.lanes,
                                                 p.warps_per_bag);
  });
}

template <typename scalar_t, typename index_t>
cudaError_t launch_psw_grad(const scalar_t* weight, const index_t* indices, const index_t* offsets,
                            const scalar_t* grad_out, scalar_t* grad_psw, BagShape shape, cudaStream_t stream) {
  if (shape.num_bags == 0 || shape.num_indices == 0) return cudaSuccess;
  if (shape.dim == 0) return cudaMemsetAsync(grad_psw, 0, shape.num_indices * sizeof(scalar_t), stream);
  const int vec = pick_vec<scalar_t>(shape.dim, {weight, grad_out});
  const Plan p = make_plan(shape, vec);
  return dispatch<scalar_t>(vec, false, [&](auto v, auto) {
    bag_psw_grad_kernel<scalar_t, index_t, decltype(v)::value><<<p.blocks, kBlockThreads, 0, stream>>>(
        weight, indices, offsets, grad_out, grad_psw, shape.num_bags, shape.dim, p.lanes, p.warps_per_bag);
  });
}

template <typename scalar_t, typename index_t>
cudaError_t launch_sgd(scalar_t* weight, const index_t* indices, const index_t* offsets, const scalar_t* psw,
                       const scalar_t* grad_out, double lr, BagShape shape, cudaStream_t stream) {
  if (shape.num_bags == 0 || shape.num_indices == 0 || shape.dim == 0) return cudaSuccess;
  const int vec = pick_vec<scalar_t>(shape.dim, {weight, grad_out});
  const Plan p = make_plan(shape, vec);
  return dispatch<scalar_t>(vec, psw != nullptr, [&](auto v, auto w) {
    bag_sgd_kernel<scalar_t, index_t, decltype(v)::value, decltype(w)::value><<<p.blocks, kBlockThreads, 0, stream>>>(
        weight, indices, offsets, psw, grad_out, static_cast<scalar_t>(lr), shape.num_bags, shape.dim, p.lanes,
        p.warps_per_bag);
  });
}

#define DLRMBENCH_INSTANTIATE(S, I)                                                                            \
  template cudaError_t launch_forward<S, I>(const S*, const I*, const I*, const S*, S*, BagShape, cudaStream_t); \
  template cudaError_t launch_backward_values<S, I>(const S*, const I*, const S*, S*, BagShape, cudaStream_t);    \
  template cudaError_t launch_psw_grad<S, I>(const S*, const I*, const I*, const S*, S*, BagShape, cudaStream_t); \
  template cudaError_t launch_sgd<S, I>(S*, const I*, const I*, const S*, const S*, double, BagShape, cudaStream_t);

DLRMBENCH_INSTANTIATE(float, int32_t)
DLRMBENCH_INSTANTIATE(float, int64_t)
DLRMBENCH_INSTANTIATE(double, int32_t)
DLRMBENCH_INSTANTIATE(double, int64_t)

#undef DLRMBENCH_INSTANTIATE

}  // namespace dlrmbench
