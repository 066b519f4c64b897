// Host launchers of the embedding-bag kernels: raw pointers and a stream, no torch types, so
// binding.cpp (host compiler) and embedding_bag.cu (nvcc) share only this header.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace dlrmbench {

// Sizes of one call. warps_per_bag: 1, 2, 4 or 8, or 0 to let the launcher choose from the mean
// pooling factor num_indices / num_bags.
struct BagShape {
  int64_t num_bags;     // B
  int64_t num_indices;  // N
  int64_t dim;          // D
  int warps_per_bag;
};

// The thread mapping the launchers pick for `shape` with rows of `element_size`-byte scalars at
// 16-byte aligned addresses (torch's allocations are); exposed so benchmarks can report it.
struct LaunchPlan {
  int vec;            // elements per load: 4 = float4
  int lanes;          // lanes per row group
  int warps_per_bag;  // warps_per_bag resolved when 0
};
LaunchPlan describe_plan(const BagShape& shape, int element_size);

// out (B, D) = sum pooling of weight rows, scaled by psw when psw != nullptr.
template <typename scalar_t, typename index_t>
cudaError_t launch_forward(const scalar_t* weight, const index_t* indices, const index_t* offsets,
                           const scalar_t* psw, scalar_t* out, BagShape shape, cudaStream_t stream);

// values (N, D): values[i] = psw[i] * grad_out[bag(i)] (psw may be nullptr).
template <typename scalar_t, typename index_t>
cudaError_t launch_backward_values(const scalar_t* grad_out, const index_t* offsets, const scalar_t* psw,
                                   scalar_t* values, BagShape shape, cudaStream_t stream);

// grad_psw (N,): grad_psw[i] = <weight[indices[i]], grad_out[bag(i)]>.
template <typename scalar_t, typename index_t>
cudaError_t launch_psw_grad(const scalar_t* weight, const index_t* indices, const index_t* offsets,
                            const scalar_t* grad_out, scalar_t* grad_psw, BagShape shape, cudaStream_t stream);

// In place: weight[indices[i]] -= lr * psw[i] * grad_out[bag(i)] (psw may be nullptr).
template <typename scalar_t, typename index_t>
cudaError_t launch_sgd(scalar_t* weight, const index_t* indices, const index_t* offsets, const scalar_t* psw,
                       const scalar_t* grad_out, double lr, BagShape shape, cudaStream_t stream);

}  // namespace dlrmbench
