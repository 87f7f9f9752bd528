// SPDX-License-Identifier: MIT
// libFuzzer target for the safetensors parser: any input must either parse (and then every
// tensor view must lie inside the input) or throw safetensors_error; never crash.
#include <hlwq/io/safetensors.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    // A heap copy of exactly `size` bytes, so ASan flags any read past the end.
    std::vector<std::byte> bytes(size);
    for (std::size_t i = 0; i < size; ++i) bytes[i] = static_cast<std::byte>(data[i]);
    try {
        const hlwq::io::safetensors_buffer buf(bytes, "fuzz-input");
        unsigned sum = 0;
        for (std::string_view name : buf.names()) {
            const hlwq::io::tensor_view v = buf.view(name);
            if (v.numel() * hlwq::io::dtype_size(v.type) != v.data.size()) std::abort();
            std::size_t n = 1;
            for (std::int64_t d : v.shape) n *= static_cast<std::size_t>(d);
            if (n != v.numel() && v.data.size() != 0) std::abort();
            for (std::byte b : v.data) sum += std::to_integer<unsigned>(b);
            if (v.type == hlwq::io::dtype::boolean) {
                try {
                    (void)v.to_vector<bool>();
                } catch (const hlwq::io::safetensors_error&) {
                }
            }
        }
        for (const auto& [k, val] : buf.metadata()) sum += static_cast<unsigned>(k.size() + val.size());
        volatile unsigned sink = sum;
        (void)sink;
    } catch (const hlwq::io::safetensors_error&) {
    }
    return 0;
}
