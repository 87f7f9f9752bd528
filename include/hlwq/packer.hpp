// SPDX-License-Identifier: MIT
/// @file packer.hpp
/// @brief Bit packing of quantization codes: `hlwq::packer<Bits>` and its byte layout.
///
/// ## Layout (format version 1)
/// A run of `n` codes of `Bits` bits packs into exactly `ceil(n * Bits / 8)` bytes.
///
/// The codes are split into *groups* of 32. Each code is split into *bit planes* of width
/// 8, 4, 2 or 1, widest plane first, holding the lowest bits:
///
/// | Bits | planes (low bits first) | bytes per group |
/// |------|-------------------------|-----------------|
/// | 1    | 1                       | 4               |
/// | 2    | 2                       | 8               |
/// | 3    | 2 + 1                   | 12              |
/// | 4    | 4                       | 16              |
/// | 5    | 4 + 1                   | 20              |
/// | 6    | 4 + 2                   | 24              |
/// | 7    | 4 + 2 + 1               | 28              |
/// | 8    | 8                       | 32              |
///
/// Inside one group (codes c0..c31, plane value p(t) = the plane's bits of code t):
/// - 8-bit plane, 32 bytes: byte i = p(i).
/// - 4-bit plane, 16 bytes: byte i = p(i) | p(i+16) << 4 (ggml's Q4_0 order: one 128-bit
///   register holds a group; `& 0xF` gives codes 0..15, `>> 4` codes 16..31).
/// - 2-bit plane, 8 bytes: byte i = p(i) | p(i+8) << 2 | p(i+16) << 4 | p(i+24) << 6
///   (`(v >> 2j) & 3` gives 8 consecutive codes).
/// - 1-bit plane, 4 bytes: the little-endian 32-bit word whose bit t is p(t) (directly an
///   AVX-512 lane mask, like ggml's Q5_0 high bits).
///
/// A run stores the planes one after another (plane-major): first the widest plane of every
/// full group (group g at offset g * its size), then the next plane of every full group, and
/// so on. The `n % 32` codes after the last full group (the tail) follow as a plain
/// little-endian bit stream, code t in bits [t*Bits, (t+1)*Bits).
///
/// The unpacked form is one code per byte (uint8, or int8 read as its unsigned bit pattern),
/// which is what the published HLWQ checkpoints store.
#pragma once

#include "bits.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace hlwq {

/// Packs and unpacks `Bits`-bit codes in the layout described in packer.hpp.
template <int Bits>
    requires valid_bits<Bits>
struct packer {
    /// Code width.
    static constexpr int bits = Bits;
    /// Codes per group.
    static constexpr std::size_t group = 32;
    /// Bytes of one full group.
    static constexpr std::size_t group_bytes = group * Bits / 8;

    /// One bit plane: its width and the code bit it starts at.
    struct plane {
        int width;  ///< 8, 4, 2 or 1 bits
        int shift;  ///< lowest code bit held by the plane
    };
    /// The planes of a code, widest (lowest bits) first.
    static constexpr auto planes = [] {
        constexpr int count = Bits == 8 ? 1 : (Bits & 4 ? 1 : 0) + (Bits & 2 ? 1 : 0) + (Bits & 1);
        std::array<plane, count> p{};
        int shift = 0;
        std::size_t k = 0;
        for (int w : {8, 4, 2, 1}) {
            if ((Bits == 8) != (w == 8)) continue;
            if (Bits != 8 && !(Bits & w)) continue;
            p[k++] = {w, shift};
            shift += w;
        }
        return p;
    }();

    /// Exact packed size of `n` codes: ceil(n * Bits / 8).
    static constexpr std::size_t packed_bytes(std::size_t n) noexcept { return (n * Bits + 7) / 8; }

    /// Index, inside a group, of the code held in slot `j` of byte `i` of a `width`-bit plane.
    static constexpr std::size_t code_index(int width, std::size_t i, std::size_t j) noexcept {
        if (width == 1) return 8 * i + j;
        return i + j * (group * static_cast<std::size_t>(width) / 8);
    }

    /// Packs `codes` (one per byte) into `out`, which must be exactly packed_bytes(codes.size()).
    /// @throws std::invalid_argument on a size mismatch or a code >= 2^Bits.
    static void pack(std::span<const std::uint8_t> codes, std::span<std::uint8_t> out) {
        pack_impl(codes, out);
    }
    /// @copydoc pack
    static void pack(std::span<const std::int8_t> codes, std::span<std::uint8_t> out) {
        pack_impl(codes, out);
    }

    /// Unpacks `packed` into `codes` (one per byte); packed.size() must be
    /// packed_bytes(codes.size()).
    /// @throws std::invalid_argument on a size mismatch.
    static void unpack(std::span<const std::uint8_t> packed, std::span<std::uint8_t> codes) {
        unpack_impl(packed, codes);
    }
    /// @copydoc unpack
    static void unpack(std::span<const std::uint8_t> packed, std::span<std::int8_t> codes) {
        unpack_impl(packed, codes);
    }

private:
    template <class Code>
    static void pack_impl(std::span<const Code> codes, std::span<std::uint8_t> out) {
        check_sizes(codes.size(), out.size(), "pack");
        unsigned all = 0;
        for (Code c : codes) all |= static_cast<std::uint8_t>(c);
        if (all >> Bits) {
            for (std::size_t t = 0; t < codes.size(); ++t)
                if (static_cast<std::uint8_t>(codes[t]) >> Bits)
                    throw std::invalid_argument(
                        "hlwq::packer<" + std::to_string(Bits) + ">::pack: code " +
                        std::to_string(static_cast<std::uint8_t>(codes[t])) + " at index " +
                        std::to_string(t) + " does not fit in " + std::to_string(Bits) + " bits");
        }
        const std::size_t full = codes.size() / group;
        std::uint8_t* dst = out.data();
        for (const plane& p : planes) {
            const std::size_t bytes = group * static_cast<std::size_t>(p.width) / 8;
            const unsigned mask = (1u << p.width) - 1u;
            for (std::size_t g = 0; g < full; ++g, dst += bytes) {
                const auto* c = codes.data() + g * group;
                for (std::size_t i = 0; i < bytes; ++i) {
                    unsigned v = 0;
                    for (int j = 0; j < 8 / p.width; ++j)
                        v |= ((static_cast<std::uint8_t>(c[code_index(p.width, i, j)]) >> p.shift) &
                              mask)
                             << (j * p.width);
                    dst[i] = static_cast<std::uint8_t>(v);
                }
            }
        }
        pack_tail(codes.subspan(full * group), dst);
    }

    template <class Code>
    static void unpack_impl(std::span<const std::uint8_t> packed, std::span<Code> codes) {
        check_sizes(codes.size(), packed.size(), "unpack");
        const std::size_t full = codes.size() / group;
        const std::uint8_t* src = packed.data();
        for (std::size_t t = 0; t < full * group; ++t) codes[t] = 0;
        for (const plane& p : planes) {
            const std::size_t bytes = group * static_cast<std::size_t>(p.width) / 8;
            const unsigned mask = (1u << p.width) - 1u;
            for (std::size_t g = 0; g < full; ++g, src += bytes) {
                auto* c = codes.data() + g * group;
                for (std::size_t i = 0; i < bytes; ++i)
                    for (int j = 0; j < 8 / p.width; ++j) {
                        auto& code = c[code_index(p.width, i, j)];
                        code = static_cast<Code>(static_cast<std::uint8_t>(code) |
                                                 (((src[i] >> (j * p.width)) & mask) << p.shift));
                    }
            }
        }
        unpack_tail(src, codes.subspan(full * group));
    }

    static void check_sizes(std::size_t n, std::size_t bytes, const char* what) {
        if (bytes != packed_bytes(n))
            throw std::invalid_argument("hlwq::packer<" + std::to_string(Bits) + ">::" + what +
                                        ": " + std::to_string(n) + " codes need " +
                                        std::to_string(packed_bytes(n)) + " bytes, buffer has " +
                                        std::to_string(bytes));
    }
    template <class Code>
    static void pack_tail(std::span<const Code> codes, std::uint8_t* dst) {
        for (std::size_t b = 0; b < packed_bytes(codes.size()); ++b) dst[b] = 0;
        for (std::size_t t = 0; t < codes.size(); ++t) {
            const std::size_t bit = t * Bits;
            const unsigned v = static_cast<unsigned>(static_cast<std::uint8_t>(codes[t])) << (bit % 8);
            dst[bit / 8] = static_cast<std::uint8_t>(dst[bit / 8] | v);
            if (bit % 8 + Bits > 8) dst[bit / 8 + 1] = static_cast<std::uint8_t>(dst[bit / 8 + 1] | (v >> 8));
        }
    }
    template <class Code>
    static void unpack_tail(const std::uint8_t* src, std::span<Code> codes) {
        for (std::size_t t = 0; t < codes.size(); ++t) {
            const std::size_t bit = t * Bits;
            unsigned v = src[bit / 8];
            if (bit % 8 + Bits > 8) v |= static_cast<unsigned>(src[bit / 8 + 1]) << 8;
            codes[t] = static_cast<Code>((v >> (bit % 8)) & ((1u << Bits) - 1u));
        }
    }
};

/// Run-time bit width version of packer<Bits>::pack.
/// @throws std::invalid_argument for bits outside 1..8, a size mismatch or a code >= 2^bits.
inline void pack_codes(int bits, std::span<const std::uint8_t> codes, std::span<std::uint8_t> out) {
    with_bits(bits, [&]<int B>() { packer<B>::pack(codes, out); });
}

/// Run-time bit width version of packer<Bits>::unpack.
/// @throws std::invalid_argument for bits outside 1..8 or a size mismatch.
inline void unpack_codes(int bits, std::span<const std::uint8_t> packed,
                         std::span<std::uint8_t> codes) {
    with_bits(bits, [&]<int B>() { packer<B>::unpack(packed, codes); });
}

/// Packed size of `n` codes of `bits` bits: ceil(n * bits / 8).
/// @throws std::invalid_argument for bits outside 1..8.
inline std::size_t packed_bytes(int bits, std::size_t n) {
    check_bits(bits);
    return (n * static_cast<std::size_t>(bits) + 7) / 8;
}

}  // namespace hlwq
