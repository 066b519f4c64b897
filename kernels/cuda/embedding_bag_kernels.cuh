// Embedding-bag (sum pooling) device kernels: forward, per-lookup backward, per-sample-weight
// gradient and a fused SGD backward. Device code only, no torch headers, so `nvcc --ptx` compiles it
// anywhere; host launchers are in embedding_bag.cu, the torch binding in binding.cpp.
//
// Layout: weight (R, D) row-major; indices (N,); offsets (B + 1,) CSR, bag b = [offsets[b], offsets[b+1]).
// Inputs are trusted: the Python side validates indices and offsets before any kernel runs.
//
// Thread mapping, shared by all kernels:
//   block  = kWarpsPerBlock warps; a bag gets `warps_per_bag` of them (1, 2, 4 or 8), so one block
//            holds kWarpsPerBlock / warps_per_bag bags.
//   warp   = splits into groups of `lanes` lanes (a power of two <= 32). A group covers one row
//            with lanes * VEC elements per step; the 32 / lanes groups of a warp take different
//            lookups of the same bag. E.g. D=128, float4: 32 lanes x 4 = one row per warp step;
//            D=64: two groups of 16 lanes read two rows at once; D=16: eight groups of 4.
//   lookups: a bag's lookups are cut into warps_per_bag contiguous slices, one per warp; a warp
//            reads 32 indices at once (one per lane, coalesced) and broadcasts them by shuffle.
#pragma once

#include <cstdint>

namespace dlrmbench {

constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = 8;
constexpr int kBlockThreads = kWarpSize * kWarpsPerBlock;
constexpr int kUnroll = 4;  // row loads in flight per group before the first is summed
constexpr unsigned kFullMask = 0xffffffffu;

// N elements loaded or stored as one instruction (ld.global.v4.f32 for float x 4) when aligned.
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Vec<T, N> vec_zero() {
  Vec<T, N> r;
#pragma unroll
  for (int k = 0; k < N; ++k) r.v[k] = T(0);
  return r;
}

// One row segment through the read-only cache as the matching builtin vector type (float4 ->
// ld.global.nc.v4.f32); specialised for every (T, N) the launchers use.
template <typename T, int N>
__device__ __forceinline__ Vec<T, N> vec_load(const T* p);

template <>
__device__ __forceinline__ Vec<float, 4> vec_load<float, 4>(const float* p) {
  const float4 x = __ldg(reinterpret_cast<const float4*>(p));
  return Vec<float, 4>{{x.x, x.y, x.z, x.w}};
}
template <>
__device__ __forceinline__ Vec<float, 2> vec_load<float, 2>(const float* p) {
  const float2 x = __ldg(reinterpret_cast<const float2*>(p));
  return Vec<float, 2>{{x.x, x.y}};
}
template <>
__device__ __forceinline__ Vec<float, 1> vec_load<float, 1>(const float* p) {
  return Vec<float, 1>{{__ldg(p)}};
}
template <>
__device__ __forceinline__ Vec<double, 2> vec_load<double, 2>(const double* p) {
  const double2 x = __ldg(reinterpret_cast<const double2*>(p));
  return Vec<double, 2>{{x.x, x.y}};
}
template <>
__device__ __forceinline__ Vec<double, 1> vec_load<double, 1>(const double* p) {
  return Vec<double, 1>{{__ldg(p)}};
}

template <typename T, int N>
__device__ __forceinline__ void vec_store(T* p, const Vec<T, N>& x) {
  *reinterpret_cast<Vec<T, N>*>(p) = x;
}

// Sum `x` over the lanes that hold the same columns (lanes, 2 * lanes, ... apart): afterwards
// every group holds the warp's total.
template <typename T, int N>
__device__ __forceinline__ void reduce_groups(Vec<T, N>& x, int lanes) {
  for (int s = lanes; s < kWarpSize; s <<= 1) {
#pragma unroll
    for (int k = 0; k < N; ++k) x.v[k] += __shfl_xor_sync(kFullMask, x.v[k], s);
  }
}

// Where this warp works: its bag and its slice [lo, hi) of that bag's lookups. `bag` may be past the
// last bag (a partial last block); then the slice is empty but the warp still reaches every barrier.
struct WarpSlice {
  int64_t bag;
  int64_t lo, hi;
  int warp_in_bag;  // 0 .. warps_per_bag - 1
  int bag_in_block;
  bool valid;
};

template <typename index_t>
__device__ __forceinline__ WarpSlice warp_slice(const index_t* __restrict__ offsets, int64_t num_bags,
                                                int warps_per_bag) {
  const int warp = threadIdx.x / kWarpSize;
  WarpSlice s;
  s.bag_in_block = warp / warps_per_bag;
  s.warp_in_bag = warp % warps_per_bag;
  s.bag = static_cast<int64_t>(blockIdx.x) * (kWarpsPerBlock / warps_per_bag) + s.bag_in_block;
  s.valid = s.bag < num_bags;
  s.lo = s.hi = 0;
  if (s.valid) {
    const int64_t start = static_cast<int64_t>(offsets[s.bag]);
    const int64_t len = static_cast<int64_t>(offsets[s.bag + 1]) - start;
    s.lo = start + len * s.warp_in_bag / warps_per_bag;
    s.hi = start + len * (s.warp_in_bag + 1) / warps_per_bag;
  }
  return s;
}

// out[b] = sum_{i in bag b} psw[i] * weight[indices[i]], psw = 1 when not WEIGHTED. No atomics: a bag's
// warps meet in shared memory and the bag's first warp writes the row.
template <typename scalar_t, typename index_t, int VEC, bool WEIGHTED>
__global__ void __launch_bounds__(kBlockThreads)
    bag_forward_kernel(const scalar_t* __restrict__ weight, const index_t* __restrict__ indices,
                       const index_t* __restrict__ offsets, const scalar_t* __restrict__ psw,
                       scalar_t* __restrict__ out, int64_t num_bags, int64_t dim, int lanes, int warps_per_bag) {
  using V = Vec<scalar_t, VEC>;
  __shared__ V partial[kWarpsPerBlock][kWarpSize];  // (warp, lane) partial sums when warps_per_bag > 1

  const int lane = threadIdx.x % kWarpSize;
  const int group = lane / lanes, lane_in_group = lane % lanes;
  const int groups = kWarpSize / lanes;
  const int warp = threadIdx.x / kWarpSize;
  const WarpSlice s = warp_slice(offsets, num_bags, warps_per_bag);
  const int64_t dim_vec = dim / VEC;  // row length in vectors

  for (int64_t c0 = 0; c0 < dim_vec; c0 += lanes) {
    const int64_t c = c0 + lane_in_group;  // this lane's vector column
    const bool active = c < dim_vec;
    V acc = vec_zero<scalar_t, VEC>();
    for (int64_t base = s.lo; base < s.hi; base += kWarpSize) {
      const int n = static_cast<int>(s.hi - base < kWarpSize ? s.hi - base : kWarpSize);
      const index_t my_row = lane < n ? indices[base + lane] : index_t(0);  // coalesced: one index per lane
      scalar_t my_w = scalar_t(1);
      if (WEIGHTED) my_w = lane < n ? psw[base + lane] : scalar_t(0);
      for (int j0 = 0; j0 < n; j0 += groups * kUnroll) {  // uniform over the warp: shuffles stay converged
        V rows[kUnroll];
        scalar_t ws[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int j = j0 + u * groups + group;
          const int64_t r = static_cast<int64_t>(__shfl_sync(kFullMask, my_row, j & (kWarpSize - 1)));
          ws[u] = WEIGHTED ? __shfl_sync(kFullMask, my_w, j & (kWarpSize - 1)) : scalar_t(1);
          rows[u] = (j < n && active) ? vec_load<scalar_t, VEC>(weight + r * dim + c * VEC)
                                      : vec_zero<scalar_t, VEC>();
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
          for (int k = 0; k < VEC; ++k) acc.v[k] += WEIGHTED ? ws[u] * rows[u].v[k] : rows[u].v[k];
        }
      }
    }
    reduce_groups(acc, lanes);
    if (warps_per_bag > 1) {  // uniform over the block
      if (group == 0) partial[warp][lane_in_group] = acc;
      __syncthreads();
      if (s.valid && s.warp_in_bag == 0 && group == 0) {
        for (int w = 1; w < warps_per_bag; ++w) {
          const V p = partial[warp + w][lane_in_group];
#pragma unroll
          for (int k = 0; k < VEC; ++k) acc.v[k] += p.v[k];
        }
      }
      __syncthreads();  // `partial` is reused by the next column chunk
    }
    if (s.valid && s.warp_in_bag == 0 && group == 0 && active) vec_store(out + s.bag * dim + c * VEC, acc);
  }
}

// values[i] = psw[i] * grad_out[bag(i)]: the per-lookup weight gradient, (N, D). Only writes; each bag's
// grad_out row is read once per column chunk and kept in registers.
template <typename scalar_t, typename index_t, int VEC, bool WEIGHTED>
__global__ void __launch_bounds__(kBlockThreads)
    bag_backward_values_kernel(const scalar_t* __restrict__ grad_out, const index_t* __restrict__ offsets,
                               const scalar_t* __restrict__ psw, scalar_t* __restrict__ values, int64_t num_bags,
                               int64_t dim, int lanes, int warps_per_bag) {
  using V = Vec<scalar_t, VEC>;
  const int lane = threadIdx.x % kWarpSize;
  const int group = lane / lanes, lane_in_group = lane % lanes;
  const int groups = kWarpSize / lanes;
  const WarpSlice s = warp_slice(offsets, num_bags, warps_per_bag);
  if (!s.valid) return;  // no barriers below
  const int64_t dim_vec = dim / VEC;
  for (int64_t c = lane_in_group; c < dim_vec; c += lanes) {
    const V g = vec_load<scalar_t, VEC>(grad_out + s.bag * dim + c * VEC);
    for (int64_t i = s.lo + group; i < s.hi; i += groups) {
      V v = g;
      if (WEIGHTED) {
        const scalar_t w = psw[i];
#pragma unroll
        for (int k = 0; k < VEC; ++k) v.v[k] *= w;
      }
      vec_store(values + i * dim + c * VEC, v);
    }
  }
}

// grad_psw[i] = <weight[indices[i]], grad_out[bag(i)]>: one group per lookup, a shuffle sum per row.
template <typename scalar_t, typename index_t, int VEC>
__global__ void __launch_bounds__(kBlockThreads)
    bag_psw_grad_kernel(const scalar_t* __restrict__ weight, const index_t* __restrict__ indices,
                        const index_t* __restrict__ offsets, const scalar_t* __restrict__ grad_out,
                        scalar_t* __restrict__ grad_psw, int64_t num_bags, int64_t dim, int lanes,
                        int warps_per_bag) {
  const int lane = threadIdx.x % kWarpSize;
  const int group = lane / lanes, lane_in_group = lane % lanes;
  const int groups = kWarpSize / lanes;
  const WarpSlice s = warp_slice(offsets, num_bags, warps_per_bag);
  if (!s.valid) return;  // the whole warp leaves together: no shuffle is left half-attended
  const int64_t dim_vec = dim / VEC;
  for (int64_t base = s.lo; base < s.hi; base += kWarpSize) {
    const int n = static_cast<int>(s.hi - base < kWarpSize ? s.hi - base : kWarpSize);
    const index_t my_row = lane < n ? indices[base + lane] : index_t(0);
    for (int j0 = 0; j0 < n; j0 += groups) {
      const int j = j0 + group;
      const int64_t r = static_cast<int64_t>(__shfl_sync(kFullMask, my_row, j & (kWarpSize - 1)));
      scalar_t dot = scalar_t(0);
      if (j < n) {
        for (int64_t c = lane_in_group; c < dim_vec; c += lanes) {
          const Vec<scalar_t, VEC> w = vec_load<scalar_t, VEC>(weight + r * dim + c * VEC);
          const Vec<scalar_t, VEC> g = vec_load<scalar_t, VEC>(grad_out + s.bag * dim + c * VEC);
#pragma unroll
          for (int k = 0; k < VEC; ++k) dot += w.v[k] * g.v[k];
        }
      }
      for (int m = lanes / 2; m > 0; m >>= 1) dot += __shfl_xor_sync(kFullMask, dot, m);  // within the group
      if (j < n && lane_in_group == 0) grad_psw[base + j] = dot;
    }
  }
}

// Fused SGD backward: weight[indices[i]] -= lr * psw[i] * grad_out[bag(i)], no (N, D) gradient built.
//
// Accumulation by atomicAdd rather than a sorted segment reduction, because:
//  - SGD is linear, so updates to a repeated row commute: nothing needs the row's summed gradient
//    first (row-wise Adagrad would, and would take the sort). The result equals applying the
//    coalesced sparse gradient, up to float rounding order.
//  - A sort of N keys (radix, several passes over N) plus segment bookkeeping costs more than it
//    saves when rows rarely repeat: with uniform indices into 1e6 rows, a batch of 160k lookups
//    repeats few rows. The atomics compile to fire-and-forget `red.global.add`, resolved in L2.
//  - The price: summation order for a repeated row is not fixed (not bit-reproducible run to run),
//    and very hot rows (a Zipf head) serialise in L2. A segment reduction is the alternative to add
//    as its own registry entry if those matter.
template <typename scalar_t, typename index_t, int VEC, bool WEIGHTED>
__global__ void __launch_bounds__(kBlockThreads)
    bag_sgd_kernel(scalar_t* __restrict__ weight, const index_t* __restrict__ indices,
                   const index_t* __restrict__ offsets, const scalar_t* __restrict__ psw,
                   const scalar_t* __restrict__ grad_out, scalar_t lr, int64_t num_bags, int64_t dim, int lanes,
                   int warps_per_bag) {
  using V = Vec<scalar_t, VEC>;
  const int lane = threadIdx.x % kWarpSize;
  const int group = lane / lanes, lane_in_group = lane % lanes;
  const int groups = kWarpSize / lanes;
  const WarpSlice s = warp_slice(offsets, num_bags, warps_per_bag);
  if (!s.valid) return;
  const int64_t dim_vec = dim / VEC;
  for (int64_t c0 = 0; c0 < dim_vec; c0 += lanes) {
    const int64_t c = c0 + lane_in_group;
    const bool active = c < dim_vec;
    V g = active ? vec_load<scalar_t, VEC>(grad_out + s.bag * dim + c * VEC) : vec_zero<scalar_t, VEC>();
    for (int64_t base = s.lo; base < s.hi; base += kWarpSize) {
      const int n = static_cast<int>(s.hi - base < kWarpSize ? s.hi - base : kWarpSize);
      const index_t my_row = lane < n ? indices[base + lane] : index_t(0);
      scalar_t my_w = scalar_t(1);
      if (WEIGHTED) my_w = lane < n ? psw[base + lane] : scalar_t(0);
      for (int j0 = 0; j0 < n; j0 += groups) {
        const int j = j0 + group;
        const int64_t r = static_cast<int64_t>(__shfl_sync(kFullMask, my_row, j & (kWarpSize - 1)));
        const scalar_t w = WEIGHTED ? __shfl_sync(kFullMask, my_w, j & (kWarpSize - 1)) : scalar_t(1);
        if (j < n && active) {
          scalar_t* dst = weight + r * dim + c * VEC;
#pragma unroll
          for (int k = 0; k < VEC; ++k) atomicAdd(dst + k, -lr * w * g.v[k]);
        }
      }
    }
  }
}

}  // namespace dlrmbench
