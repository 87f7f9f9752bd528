// The CUDA dequantize against the CPU's: bit for bit, fp32 and bf16.
#include <hlwq/backend/cuda/dequantize.cuh>
#include <hlwq/quantize.hpp>

#include <doctest/doctest.h>

#include "../test_data.hpp"
#include "cuda_test_util.hpp"

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

using hlwq_test::gaussian;
using hlwq_test::shape;

TEST_CASE("cuda dequantize is bit-identical to the CPU's, fp32 and bf16") {
    for (const shape s : {shape{5, 128}, shape{33, 640}, shape{7, 301}, shape{64, 2048}}) {
        CAPTURE(s.rows);
        CAPTURE(s.cols);
        const auto w = gaussian(s.rows * s.cols, static_cast<unsigned>(s.cols));
        for (int bits = 1; bits <= 8; ++bits) {
            for (const bool seeded : {false, true}) {
                CAPTURE(bits);
                CAPTURE(seeded);
                hlwq::quantize_options o;
                if (seeded) o.sign_seed = 42;
                const auto q = hlwq::quantize(w, s.rows, s.cols, bits, o);
                const auto cpu = hlwq::dequantize(q);
                const auto dq = hlwq::cuda::quantized_matrix::upload(q);
                hlwq::cuda::device_buffer<float> out(s.rows * s.cols);
                hlwq::cuda::dequantize(dq, out);
                std::vector<float> gpu(out.size());
                out.download(gpu);
                CHECK(std::memcmp(gpu.data(), cpu.data(), cpu.size() * sizeof(float)) == 0);

                hlwq::cuda::device_buffer<__nv_bfloat16> out16(s.rows * s.cols);
                hlwq::cuda::dequantize(dq, out16);
                std::vector<std::uint16_t> gpu16(out16.size());
                static_assert(sizeof(__nv_bfloat16) == sizeof(std::uint16_t));
                CHECK(cudaMemcpy(gpu16.data(), out16.data(), out16.bytes(), cudaMemcpyDeviceToHost) == cudaSuccess);
                std::size_t differ = 0;
                for (std::size_t i = 0; i < cpu.size(); ++i) differ += gpu16[i] != hlwq::bfloat16(cpu[i]).bits;
                CHECK(differ == 0);
            }
        }
    }
}

