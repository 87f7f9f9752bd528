// SPDX-License-Identifier: MIT
/// @file backend/cuda/kernels.cuh
/// @brief The CUDA kernels on the packed HLWQ layout (`kernels<backend::cuda>`): dequantize,
/// quantize and the one-token matvec. Compile with nvcc (CUDA C++20).
///
/// ## Work split
/// One warp lane owns one packer group: 32 consecutive codes of a block, whose packed bits are
/// `Bits` 32-bit words (plane p of width w holds w of them, at block offset 16·shift_p + 4w·g
/// for group g), so four lanes hold a 128-column block and a warp 8 blocks. Each lane decodes
/// its 32 values into registers; the Walsh-Hadamard transform of a block runs its five first
/// stages (strides 1..16) inside the lane and the last two (32, 64) across lanes 4k..4k+3 with
/// shuffles, in the stage order of the scalar reference, so the rotated values are the CPU's
/// bit for bit (additions only; the one product before it is __fmul_rn, never contracted).
///
/// matvec: a warp works on one column slice of 32 groups (1024 columns) at a time and keeps
/// that slice of the rotated activation in registers (32 floats a lane, 1/B folded in). A
/// CTA's work is (slice, batch of R rows) items, slice-major, in one contiguous run per warp,
/// so a warp rotates a new slice only when its run crosses into it. The warp streams its rows'
/// codes with 16-byte loads (one group a lane: the 4-bit plane of 32 codes in one load),
/// software-pipelined: the next batch's loads are issued before this batch is computed. It
/// looks the centroids up in a shared-memory table (2^Bits floats: up to 32 entries, one bank
/// each, no conflicts) and sums code by code in fp32. The R row sums are reduced across the
/// warp by a reduce-scatter (R−1 + log2(32/R) shuffles), each warp's sums land in its own
/// column of a shared array, and the CTA adds the columns in warp order: deterministic. The
/// grid is one wave: as many CTAs as fit on the GPU at once, each a contiguous run of rows.
#pragma once

#include "../../codebook.hpp"
#include "../../packer.hpp"
#include "../../quantize.hpp"
#include "../../rotation.hpp"
#include "../backend.hpp"
#include "device_buffer.hpp"
#include "quantized_matrix.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <type_traits>

namespace hlwq {

namespace cuda::detail {

inline constexpr int group = 32;                                // codes per packer group = per lane
inline constexpr int block = static_cast<int>(supported_block);  // 128 columns = 4 lanes
inline constexpr unsigned full_mask = 0xffffffffu;

/// The sign diagonal D of one block as bits: bit t of word g set means D[32g + t] = −1.
struct sign_mask {
    std::uint32_t words[4] = {0, 0, 0, 0};
};

/// D of `seed` (hlwq::sign_diagonal) as a sign_mask; all signs positive without a seed.
inline sign_mask make_sign_mask(const std::optional<std::uint64_t>& seed) {
    sign_mask m;
    if (!seed) return m;
    const sign_diagonal d(*seed, supported_block);
    for (std::size_t i = 0; i < supported_block; ++i)
        if (d.signs()[i] < 0) m.words[i / 32] |= 1u << (i % 32);
    return m;
}

/// The planes of packer<Bits>, usable in device code: count, width and first code bit.
__host__ __device__ constexpr int plane_count(int bits) {
    return bits == 8 ? 1 : ((bits >> 2) & 1) + ((bits >> 1) & 1) + (bits & 1);
}
__host__ __device__ constexpr int plane_width(int bits, int p) {
    if (bits == 8) return 8;
    for (int w = 4; w >= 1; w /= 2)
        if (bits & w) {
            if (p == 0) return w;
            --p;
        }
    return 0;
}
__host__ __device__ constexpr int plane_shift(int bits, int p) {
    int s = 0;
    for (int i = 0; i < p; ++i) s += plane_width(bits, i);
    return s;
}
// The layout is packer.hpp's: check the device copy of it against packer<Bits>::planes.
template <int Bits>
constexpr bool planes_match() {
    if (plane_count(Bits) != static_cast<int>(packer<Bits>::planes.size())) return false;
    for (int p = 0; p < plane_count(Bits); ++p)
        if (plane_width(Bits, p) != packer<Bits>::planes[p].width || plane_shift(Bits, p) != packer<Bits>::planes[p].shift)
            return false;
    return true;
}
static_assert(planes_match<1>() && planes_match<2>() && planes_match<3>() && planes_match<4>() && planes_match<5>() &&
              planes_match<6>() && planes_match<7>() && planes_match<8>());

/// The packed bits of one group: word shift_p + k is word k of plane p.
template <int Bits>
struct group_words {
    std::uint32_t w[Bits];
};

/// Loads group g of the block at `blk` (block_bytes = 16·Bits bytes, 16-byte aligned).
template <int Bits>
__device__ __forceinline__ group_words<Bits> load_group(const std::uint8_t* blk, int g) {
    group_words<Bits> out;
#pragma unroll
    for (int p = 0; p < plane_count(Bits); ++p) {
        const int width = plane_width(Bits, p), shift = plane_shift(Bits, p);
        const std::uint8_t* src = blk + 16 * shift + 4 * width * g;
        if (width == 8) {
            const uint4 a = __ldg(reinterpret_cast<const uint4*>(src));
            const uint4 b = __ldg(reinterpret_cast<const uint4*>(src) + 1);
            out.w[shift + 0] = a.x, out.w[shift + 1] = a.y, out.w[shift + 2] = a.z, out.w[shift + 3] = a.w;
            out.w[shift + 4] = b.x, out.w[shift + 5] = b.y, out.w[shift + 6] = b.z, out.w[shift + 7] = b.w;
        } else if (width == 4) {
            const uint4 a = __ldg(reinterpret_cast<const uint4*>(src));
            out.w[shift + 0] = a.x, out.w[shift + 1] = a.y, out.w[shift + 2] = a.z, out.w[shift + 3] = a.w;
        } else if (width == 2) {
            const uint2 a = __ldg(reinterpret_cast<const uint2*>(src));
            out.w[shift + 0] = a.x, out.w[shift + 1] = a.y;
        } else {
            out.w[shift] = __ldg(reinterpret_cast<const std::uint32_t*>(src));
        }
    }
    return out;
}

/// Stores group g of the block at `blk` (the inverse of load_group).
template <int Bits>
__device__ __forceinline__ void store_group(std::uint8_t* blk, int g, const group_words<Bits>& in) {
#pragma unroll
    for (int p = 0; p < plane_count(Bits); ++p) {
        const int width = plane_width(Bits, p), shift = plane_shift(Bits, p);
        std::uint8_t* dst = blk + 16 * shift + 4 * width * g;
        if (width == 8) {
            reinterpret_cast<uint4*>(dst)[0] = make_uint4(in.w[shift], in.w[shift + 1], in.w[shift + 2], in.w[shift + 3]);
            reinterpret_cast<uint4*>(dst)[1] =
                make_uint4(in.w[shift + 4], in.w[shift + 5], in.w[shift + 6], in.w[shift + 7]);
        } else if (width == 4) {
            *reinterpret_cast<uint4*>(dst) = make_uint4(in.w[shift], in.w[shift + 1], in.w[shift + 2], in.w[shift + 3]);
        } else if (width == 2) {
            *reinterpret_cast<uint2*>(dst) = make_uint2(in.w[shift], in.w[shift + 1]);
        } else {
            *reinterpret_cast<std::uint32_t*>(dst) = in.w[shift];
        }
    }
}

/// Bits of plane (width, shift) for code t of the group (packer.hpp's byte layout).
__device__ __forceinline__ unsigned plane_bits(const std::uint32_t* w, int width, int shift, int t) {
    const std::uint32_t* P = w + shift;
    switch (width) {
        case 8: return (P[t / 4] >> (8 * (t % 4))) & 0xffu;
        case 4: return t < 16 ? (P[t / 4] >> (8 * (t % 4))) & 0xfu : (P[(t - 16) / 4] >> (8 * ((t - 16) % 4) + 4)) & 0xfu;
        case 2: return (P[(t % 8) / 4] >> (8 * (t % 4) + 2 * (t / 8))) & 3u;
        default: return (P[0] >> t) & 1u;
    }
}

/// Code t (0..31, a compile-time constant after unrolling) of a group.
template <int Bits>
__device__ __forceinline__ unsigned code_at(const group_words<Bits>& g, int t) {
    unsigned c = 0;
#pragma unroll
    for (int p = 0; p < plane_count(Bits); ++p)
        c |= plane_bits(g.w, plane_width(Bits, p), plane_shift(Bits, p), t) << plane_shift(Bits, p);
    return c;
}

/// Packs 32 codes into the group's words (packer.hpp's layout).
template <int Bits>
__device__ __forceinline__ group_words<Bits> pack_group(const std::uint8_t (&code)[group]) {
    group_words<Bits> out;
#pragma unroll
    for (int p = 0; p < plane_count(Bits); ++p) {
        const int width = plane_width(Bits, p), shift = plane_shift(Bits, p);
        const unsigned mask = (1u << width) - 1u;
#pragma unroll
        for (int k = 0; k < width; ++k) {
            std::uint32_t word = 0;
            if (width == 1) {
#pragma unroll
                for (int t = 0; t < group; ++t) word |= ((code[t] >> shift) & 1u) << t;
            } else {
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const int i = 4 * k + j;  // byte of the plane
                    unsigned byte = 0;
#pragma unroll
                    for (int m = 0; m < 8 / width; ++m) {
                        const int t = width == 8 ? i : width == 4 ? i + 16 * m : i + 8 * m;
                        byte |= ((code[t] >> shift) & mask) << (m * width);
                    }
                    word |= byte << (8 * j);
                }
            }
            out.w[shift + k] = word;
        }
    }
    return out;
}

/// The unnormalized Walsh-Hadamard transform of the 128-value block held by lanes 4k..4k+3
/// (32 values each, lane g = lane % 4 holding values 32g..32g+31): stages of stride 1..16 in
/// registers, 32 and 64 across lanes, the scalar reference's order. All 32 lanes must call it.
__device__ __forceinline__ void wht_block(float (&v)[group], int lane) {
#pragma unroll
    for (int stage = 0; stage < 5; ++stage) {
        const int h = 1 << stage;
#pragma unroll
        for (int k = 0; k < group / 2; ++k) {  // the 16 pairs (j, j + h), a constant trip count
            const int j = (k / h) * 2 * h + k % h;
            const float a = v[j], b = v[j + h];
            v[j] = a + b;
            v[j + h] = a - b;
        }
    }
#pragma unroll
    for (int stage = 0; stage < 2; ++stage) {
        const int lanes = 1 << stage;  // strides 32 and 64: partner lane ^ 1, ^ 2
        const bool upper = lane & lanes;
#pragma unroll
        for (int t = 0; t < group; ++t) {
            const float other = __shfl_xor_sync(full_mask, v[t], lanes);
            v[t] = upper ? other - v[t] : v[t] + other;  // lower keeps a + b, upper a − b
        }
    }
}

/// v[t] = −v[t] where bit t of `bits` is set (D of a seeded rotation; exact).
__device__ __forceinline__ void apply_signs(float (&v)[group], std::uint32_t bits) {
#pragma unroll
    for (int t = 0; t < group; ++t)
        if ((bits >> t) & 1u) v[t] = -v[t];
}

/// Sums R values of every lane across the warp: afterwards lane l with l % (32/R) == 0 holds
/// the total of value l / (32/R). Halving exchanges first (R−1 shuffles), then plain ones.
template <int R>
__device__ __forceinline__ float reduce_scatter(float (&v)[R], int lane) {
    static_assert(R >= 1 && R <= 32 && (R & (R - 1)) == 0);
    constexpr int halvings = R == 1 ? 0 : R == 2 ? 1 : R == 4 ? 2 : R == 8 ? 3 : R == 16 ? 4 : 5;
#pragma unroll
    for (int h = 0; h < halvings; ++h) {
        const int n = R >> h, offset = 16 >> h;
        const bool upper = lane & offset;
#pragma unroll
        for (int i = 0; i < n / 2; ++i) {
            const float send = upper ? v[i] : v[i + n / 2];
            const float keep = upper ? v[i + n / 2] : v[i];
            v[i] = keep + __shfl_xor_sync(full_mask, send, offset);
        }
    }
    float s = v[0];
#pragma unroll
    for (int h = halvings; h < 5; ++h) s += __shfl_xor_sync(full_mask, s, 16 >> h);
    return s;
}

/// Warps of a matvec CTA; rows of one CTA at most (its partial sums live in shared memory).
inline constexpr int matvec_warps = 8;
inline constexpr int max_rows_per_cta = 1024;

/// Rows a matvec warp streams at a time: R·Bits words of codes per lane in flight while the
/// R rows before them are computed (two batches in registers).
template <int Bits>
inline constexpr int matvec_rows = 4;

/// Sign word of group g (a kernel parameter indexed at run time would go to local memory).
__device__ __forceinline__ std::uint32_t sign_word(const sign_mask& s, int g) {
    return g == 0 ? s.words[0] : g == 1 ? s.words[1] : g == 2 ? s.words[2] : s.words[3];
}

/// This lane's 32 rotated activations of column slice `slice` (1/B folded in: exact).
__device__ __forceinline__ void rotate_slice(const float* __restrict__ x, int cols, int nb, int slice, int lane,
                                             const sign_mask& signs, float (&xr)[group]) {
    const int G = 32 * slice + lane, b = G / 4, g = G % 4, c0 = b * block + g * group;
    const bool valid = G < 4 * nb;
    if (valid && c0 + group <= cols && reinterpret_cast<std::uintptr_t>(x) % 16 == 0) {
#pragma unroll
        for (int t = 0; t < group; t += 4) {
            const float4 v = __ldg(reinterpret_cast<const float4*>(x + c0 + t));
            xr[t] = v.x, xr[t + 1] = v.y, xr[t + 2] = v.z, xr[t + 3] = v.w;
        }
    } else {
#pragma unroll
        for (int t = 0; t < group; ++t) xr[t] = valid && c0 + t < cols ? __ldg(x + c0 + t) : 0.0f;
    }
    apply_signs(xr, sign_word(signs, g));
    wht_block(xr, lane);
#pragma unroll
    for (int t = 0; t < group; ++t) xr[t] *= 1.0f / block;
}

/// y[r] = Σ_slices of row r's products for the CTA's rows; see the file comment. The CTA's
/// work items (column slice, batch of R rows), slice-major, are split into contiguous runs,
/// one per warp, so warps stay balanced to one batch; a warp re-rotates its activation slice
/// when its run enters a new slice. Each warp sums into its own column of `partial`, and the
/// CTA adds the columns in warp order at the end: the result does not depend on timing.
template <int Bits, int R>
__global__ void __launch_bounds__(matvec_warps * 32, 2) matvec_kernel(const std::uint8_t* __restrict__ codes,
                                                                      const std::uint16_t* __restrict__ norms,
                                                                      const float* __restrict__ centroids,
                                                                      const float* __restrict__ x,
                                                                      float* __restrict__ y, int rows, int cols, int nb,
                                                                      int rows_per_cta, sign_mask signs) {
    constexpr int levels = 1 << Bits;
    constexpr int block_bytes = block * Bits / 8;
    __shared__ float table[levels];
    extern __shared__ float partial[];  // [matvec_warps][rows_per_cta]
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int i = threadIdx.x; i < levels; i += blockDim.x) table[i] = centroids[i];
    const int r_begin = blockIdx.x * rows_per_cta;
    const int n = min(rows, r_begin + rows_per_cta) - r_begin;
    for (int i = threadIdx.x; i < matvec_warps * n; i += blockDim.x) partial[i] = 0.0f;
    __syncthreads();

    const int slices = (4 * nb + 31) / 32, batches = (n + R - 1) / R;
    const long long items = static_cast<long long>(slices) * batches;
    const long long first = items * warp / matvec_warps, last = items * (warp + 1) / matvec_warps;
    const std::size_t row_bytes = static_cast<std::size_t>(nb) * block_bytes;
    float* mine = partial + warp * n;

    // One batch: R rows' codes and scales of the lane's group (zeros past the end, idle lanes).
    struct batch {
        group_words<Bits> words[R];
        float scale[R];
    };
    auto load = [&](long long item, batch& bt) {
        const int s = static_cast<int>(item / batches), r0 = static_cast<int>(item % batches) * R;
        const int G = 32 * s + lane, b = G / 4, g = G % 4;
        const bool valid = G < 4 * nb;
#pragma unroll
        for (int i = 0; i < R; ++i) {
            const int r = r_begin + r0 + i;
            if (valid && r0 + i < n) {
                bt.words[i] = load_group<Bits>(codes + static_cast<std::size_t>(r) * row_bytes +
                                                   static_cast<std::size_t>(b) * block_bytes,
                                               g);
                bt.scale[i] = __half2float(__ushort_as_half(__ldg(norms + static_cast<std::size_t>(r) * nb + b)));
            } else {
#pragma unroll
                for (int k = 0; k < Bits; ++k) bt.words[i].w[k] = 0;
                bt.scale[i] = 0.0f;
            }
        }
    };
    // Software pipeline: the next batch's loads are issued before this batch is computed, so
    // every warp keeps R rows of codes in flight while it works.
    float xr[group];
    int slice = -1;
    batch cur, next;
    if (first < last) load(first, cur);
    for (long long item = first; item < last; ++item) {
        if (item + 1 < last) load(item + 1, next);
        const int s = static_cast<int>(item / batches), r0 = static_cast<int>(item % batches) * R;
        if (s != slice) {  // warp-uniform
            rotate_slice(x, cols, nb, s, lane, signs, xr);
            slice = s;
        }
        float sum[R];
#pragma unroll
        for (int i = 0; i < R; ++i) {
            float acc = 0.0f;
#pragma unroll
            for (int t = 0; t < group; ++t) acc = fmaf(table[code_at<Bits>(cur.words[i], t)], xr[t], acc);
            sum[i] = acc * cur.scale[i];
        }
        const float total = reduce_scatter<R>(sum, lane);
        const int i = lane / (32 / R);
        if (lane % (32 / R) == 0 && r0 + i < n) mine[r0 + i] += total;
        cur = next;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float s = 0.0f;
#pragma unroll
        for (int w = 0; w < matvec_warps; ++w) s += partial[w * n + i];
        y[r_begin + i] = s;
    }
}

/// out (rows × cols, row-major) = the dequantized matrix, as float or __nv_bfloat16.
template <int Bits, class Out>
__global__ void __launch_bounds__(256) dequantize_kernel(const std::uint8_t* __restrict__ codes,
                                                         const std::uint16_t* __restrict__ norms,
                                                         const float* __restrict__ centroids, Out* __restrict__ out,
                                                         int rows, int cols, int nb, sign_mask signs) {
    constexpr int levels = 1 << Bits;
    constexpr int block_bytes = block * Bits / 8;
    __shared__ float table[levels];
    for (int i = threadIdx.x; i < levels; i += blockDim.x) table[i] = centroids[i];
    __syncthreads();
    const int lane = threadIdx.x % 32;
    const long long groups = 4LL * rows * nb;
    const long long first = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) & ~31LL;
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long base = first; base < groups; base += stride) {  // whole warps: the shuffles need all lanes
        const long long G = base + lane;
        const bool valid = G < groups;
        const long long blk = valid ? G / 4 : 0;
        const int g = static_cast<int>(G % 4);
        float v[group];
        if (valid) {
            const group_words<Bits> words = load_group<Bits>(codes + blk * block_bytes, g);
            const float scale = __half2float(__ushort_as_half(norms[blk])) * (1.0f / block);
#pragma unroll
            for (int t = 0; t < group; ++t) v[t] = __fmul_rn(table[code_at<Bits>(words, t)], scale);
        } else {
#pragma unroll
            for (int t = 0; t < group; ++t) v[t] = 0.0f;
        }
        wht_block(v, lane);
        apply_signs(v, sign_word(signs, g));
        if (!valid) continue;
        const long long r = blk / nb;
        const int c0 = static_cast<int>(blk % nb) * block + g * group;
        Out* dst = out + r * cols + c0;
        if constexpr (std::is_same_v<Out, float>) {
            if (c0 + group <= cols && cols % 4 == 0) {
#pragma unroll
                for (int t = 0; t < group; t += 4)
                    *reinterpret_cast<float4*>(dst + t) = make_float4(v[t], v[t + 1], v[t + 2], v[t + 3]);
                continue;
            }
#pragma unroll
            for (int t = 0; t < group; ++t)
                if (c0 + t < cols) dst[t] = v[t];
        } else {
            if (c0 + group <= cols && cols % 8 == 0) {
#pragma unroll
                for (int t = 0; t < group; t += 8) {
                    std::uint32_t p[4];
#pragma unroll
                    for (int k = 0; k < 4; ++k)
                        p[k] = __bfloat16_as_ushort(__float2bfloat16_rn(v[t + 2 * k])) |
                               static_cast<std::uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(v[t + 2 * k + 1])))
                                   << 16;
                    *reinterpret_cast<uint4*>(dst + t) = make_uint4(p[0], p[1], p[2], p[3]);
                }
                continue;
            }
#pragma unroll
            for (int t = 0; t < group; ++t)
                if (c0 + t < cols) dst[t] = __float2bfloat16_rn(v[t]);
        }
    }
}

/// Widens one stored weight to float.
__device__ __forceinline__ float to_float_device(float v) { return v; }
__device__ __forceinline__ float to_float_device(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float_device(__nv_bfloat16 v) { return __bfloat162float(v); }

/// Where quantize_kernel reports bad input: the smallest linear index of a non-finite weight
/// and the smallest block index whose norm overflows fp16 (~0 = none).
struct quantize_status {
    unsigned long long bad_weight;
    unsigned long long bad_norm;
};

/// Quantizes the rows × cols matrix w (float, __half or __nv_bfloat16) into codes and fp16
/// norms, as hlwq::quantize does on the CPU: the block norm summed in double in column order
/// (lanes 4k..4k+3 take turns), the same rotation and the same boundary rule, so the codes and
/// norms are the CPU's.
template <int Bits, class In>
__global__ void __launch_bounds__(256) quantize_kernel(const In* __restrict__ w, std::uint8_t* __restrict__ codes,
                                                       std::uint16_t* __restrict__ norms,
                                                       const float* __restrict__ boundaries, int rows, int cols, int nb,
                                                       sign_mask signs, quantize_status* status) {
    constexpr int levels = 1 << Bits;
    constexpr int block_bytes = block * Bits / 8;
    __shared__ float bound[levels];
    for (int i = threadIdx.x; i < levels - 1; i += blockDim.x) bound[i] = boundaries[i];
    __syncthreads();
    const int lane = threadIdx.x % 32;
    const long long groups = 4LL * rows * nb;
    const long long first = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) & ~31LL;
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long base = first; base < groups; base += stride) {
        const long long G = base + lane;
        const bool valid = G < groups;
        const long long blk = valid ? G / 4 : 0;
        const int g = static_cast<int>(G % 4);
        const long long r = blk / nb;
        const int c0 = static_cast<int>(blk % nb) * block + g * group;
        float v[group];
        bool finite = true;
#pragma unroll
        for (int t = 0; t < group; ++t) {
            v[t] = valid && c0 + t < cols ? to_float_device(w[r * cols + c0 + t]) : 0.0f;
            if (!isfinite(v[t]) && finite) {
                finite = false;
                atomicMin(&status->bad_weight, static_cast<unsigned long long>(r * cols + c0 + t));
            }
        }
        // ||w_b||² in double, in column order: lane g adds its 32 squares to the running sum
        // of lanes 0..g-1 (products of floats are exact in double).
        double sum_sq = 0.0;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            if (g == k)
#pragma unroll
                for (int t = 0; t < group; ++t) sum_sq += static_cast<double>(v[t]) * v[t];
            sum_sq = __shfl_sync(full_mask, sum_sq, (lane & ~3) | k);
        }
        const double norm = sqrt(sum_sq);
        const __half norm16 = __float2half_rn(__double2float_rn(norm));
        if (valid && g == 0) {
            norms[blk] = __half_as_ushort(norm16);
            if (isinf(__half2float(norm16))) atomicMin(&status->bad_norm, static_cast<unsigned long long>(blk));
        }
        apply_signs(v, sign_word(signs, g));
        wht_block(v, lane);
        const float inv = norm > 0 ? __double2float_rn(1.0 / norm) : 0.0f;
        std::uint8_t code[group];
#pragma unroll
        for (int t = 0; t < group; ++t) {
            const float yv = __fmul_rn(v[t], inv);
            int k = 0;  // encode_value: the number of boundaries below yv, by binary search
#pragma unroll
            for (int level = Bits - 1; level >= 0; --level) {
                const int step = 1 << level;
                k += yv > bound[k + step - 1] ? step : 0;
            }
            code[t] = static_cast<std::uint8_t>(k);
        }
        if (valid) store_group<Bits>(codes + blk * block_bytes, g, pack_group<Bits>(code));
    }
}

/// Multiprocessors of the current device.
inline int multiprocessors() {
    int device = 0, sms = 0;
    check(cudaGetDevice(&device), "cudaGetDevice");
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
    return sms;
}

/// CTAs of matvec_kernel<Bits, R> resident per multiprocessor (asked once per process, with
/// the largest shared-memory size a CTA takes; one kind of GPU per process is assumed).
template <int Bits, int R>
int matvec_ctas_per_sm() {
    static const int ctas = [] {
        int n = 0;
        check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, matvec_kernel<Bits, R>, matvec_warps * 32,
                                                            sizeof(float) * matvec_warps * max_rows_per_cta),
              "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
        return n > 0 ? n : 1;
    }();
    return ctas;
}

/// Grid of a grid-stride kernel over `groups` lane-groups with 256-thread CTAs: enough CTAs
/// for 8 per multiprocessor, fewer when there is less work.
inline unsigned grid_for_groups(long long groups) {
    const long long needed = (groups + 255) / 256;
    const long long cap = 8LL * multiprocessors();
    return static_cast<unsigned>(needed < cap ? (needed > 0 ? needed : 1) : cap);
}

}  // namespace cuda::detail

/// CUDA kernel launchers on a cuda::quantized_matrix (see kernels.cuh). All are asynchronous
/// on `stream`; pointers are device pointers.
template <>
struct kernels<backend::cuda> {
    /// y[0..rows) = Ŵ x[0..cols) (fp32), launched on `stream`.
    template <int Bits, int R = cuda::detail::matvec_rows<Bits>>
    static void matvec(const cuda::quantized_matrix& q, const float* x, float* y, cudaStream_t stream) {
        using namespace cuda::detail;
        if (q.rows == 0) return;
        const int rows = static_cast<int>(q.rows), nb = static_cast<int>(q.blocks_per_row());
        const long long wave = static_cast<long long>(multiprocessors()) * matvec_ctas_per_sm<Bits, R>();
        const int rows_per_cta = static_cast<int>(std::min<long long>(max_rows_per_cta, (rows + wave - 1) / wave));
        const int ctas = (rows + rows_per_cta - 1) / rows_per_cta;
        const std::size_t shared = sizeof(float) * matvec_warps * static_cast<std::size_t>(rows_per_cta);
        matvec_kernel<Bits, R><<<ctas, matvec_warps * 32, shared, stream>>>(
            q.codes.data(), reinterpret_cast<const std::uint16_t*>(q.norms.data()), q.centroids.data(), x, y, rows,
            static_cast<int>(q.cols), nb, rows_per_cta, make_sign_mask(q.sign_seed));
        cuda::check(cudaGetLastError(), "matvec kernel launch");
    }

    /// out (rows × cols) = the dequantized matrix (float or __nv_bfloat16), launched on `stream`.
    template <int Bits, class Out>
    static void dequantize(const cuda::quantized_matrix& q, Out* out, cudaStream_t stream) {
        using namespace cuda::detail;
        const int nb = static_cast<int>(q.blocks_per_row());
        const long long groups = 4LL * static_cast<long long>(q.rows) * nb;
        if (groups == 0) return;
        dequantize_kernel<Bits, Out><<<grid_for_groups(groups), 256, 0, stream>>>(
            q.codes.data(), reinterpret_cast<const std::uint16_t*>(q.norms.data()), q.centroids.data(), out,
            static_cast<int>(q.rows), static_cast<int>(q.cols), nb, make_sign_mask(q.sign_seed));
        cuda::check(cudaGetLastError(), "dequantize kernel launch");
    }

    /// Codes and norms of q (shape, bits and block set, buffers allocated) from the device
    /// matrix w; bad input is reported in *status (see quantize_status), launched on `stream`.
    template <int Bits, class In>
    static void quantize(const In* w, const float* boundaries, cuda::quantized_matrix& q,
                         cuda::detail::quantize_status* status, cudaStream_t stream) {
        using namespace cuda::detail;
        const int nb = static_cast<int>(q.blocks_per_row());
        const long long groups = 4LL * static_cast<long long>(q.rows) * nb;
        if (groups == 0) return;
        quantize_kernel<Bits, In><<<grid_for_groups(groups), 256, 0, stream>>>(
            w, q.codes.data(), reinterpret_cast<std::uint16_t*>(q.norms.data()), boundaries, static_cast<int>(q.rows),
            static_cast<int>(q.cols), nb, make_sign_mask(q.sign_seed), status);
        cuda::check(cudaGetLastError(), "quantize kernel launch");
    }
};

}  // namespace hlwq
