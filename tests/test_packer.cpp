#include <hlwq/backend/kernels.hpp>
#include <hlwq/packer.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <random>
#include <stdexcept>
#include <vector>

namespace {

const std::size_t counts[] = {0, 1, 2, 7, 8, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129, 1000, 4096};

std::vector<std::uint8_t> random_codes(std::size_t n, int bits, unsigned seed) {
    std::mt19937 rng(seed);
    std::vector<std::uint8_t> c(n);
    for (auto& v : c) v = static_cast<std::uint8_t>(rng() & ((1u << bits) - 1));
    return c;
}

template <int B>
void check_round_trip() {
    CAPTURE(B);
    using P = hlwq::packer<B>;
    for (std::size_t n : counts) {
        CAPTURE(n);
        const auto codes = random_codes(n, B, static_cast<unsigned>(n * 10 + B));
        REQUIRE(P::packed_bytes(n) == (n * B + 7) / 8);
        std::vector<std::uint8_t> packed(P::packed_bytes(n), 0xAA), back(n, 0xEE), fast(n, 0xEE);
        P::pack(codes, packed);
        std::vector<std::uint8_t> fast_packed(P::packed_bytes(n), 0x55);
        hlwq::kernels<hlwq::default_backend>::pack<B>(codes.data(), n, fast_packed.data());
        CHECK(fast_packed == packed);
        P::unpack(packed, std::span<std::uint8_t>(back));
        CHECK(back == codes);
        hlwq::kernels<hlwq::default_backend>::unpack<B>(packed.data(), n, fast.data());
        CHECK(fast == codes);
        hlwq::kernels<hlwq::backend::scalar>::unpack<B>(packed.data(), n, fast.data());
        CHECK(fast == codes);
#if XSIMD_WITH_AVX2
        hlwq::kernels<hlwq::backend::cpu<xsimd::avx2>>::unpack<B>(packed.data(), n, fast.data());
        CHECK(fast == codes);
#endif
        // int8 storage (one code per signed byte, as published checkpoints keep them).
        std::vector<std::int8_t> signed_codes(n);
        for (std::size_t i = 0; i < n; ++i) signed_codes[i] = static_cast<std::int8_t>(codes[i]);
        std::vector<std::uint8_t> packed8(P::packed_bytes(n));
        P::pack(std::span<const std::int8_t>(signed_codes), packed8);
        CHECK(packed8 == packed);
        std::vector<std::int8_t> back8(n);
        P::unpack(packed, std::span<std::int8_t>(back8));
        CHECK(back8 == signed_codes);
    }
}

}  // namespace

TEST_CASE("packer: round trip, exact size, all widths and counts; SIMD pack/unpack agree") {
    check_round_trip<1>();
    check_round_trip<2>();
    check_round_trip<3>();
    check_round_trip<4>();
    check_round_trip<5>();
    check_round_trip<6>();
    check_round_trip<7>();
    check_round_trip<8>();
}

TEST_CASE("packer: documented layout of one group") {
    std::vector<std::uint8_t> c(32);
    for (std::size_t t = 0; t < 32; ++t) c[t] = static_cast<std::uint8_t>(t);

    SUBCASE("4 bits: byte i = c[i] | c[i+16] << 4") {
        std::vector<std::uint8_t> v(32), p(16);
        for (std::size_t t = 0; t < 32; ++t) v[t] = c[t] & 15;
        hlwq::packer<4>::pack(v, p);
        for (std::size_t i = 0; i < 16; ++i) CHECK(p[i] == (v[i] | v[i + 16] << 4));
    }
    SUBCASE("2 bits: byte i = c[i] | c[i+8] << 2 | c[i+16] << 4 | c[i+24] << 6") {
        std::vector<std::uint8_t> v(32), p(8);
        for (std::size_t t = 0; t < 32; ++t) v[t] = (t * 7 + 1) & 3;
        hlwq::packer<2>::pack(v, p);
        for (std::size_t i = 0; i < 8; ++i)
            CHECK(p[i] == (v[i] | v[i + 8] << 2 | v[i + 16] << 4 | v[i + 24] << 6));
    }
    SUBCASE("1 bit: little-endian word, bit t = c[t]") {
        std::vector<std::uint8_t> v(32), p(4);
        for (std::size_t t = 0; t < 32; ++t) v[t] = (t % 3) == 0;
        hlwq::packer<1>::pack(v, p);
        for (std::size_t t = 0; t < 32; ++t) CHECK(((p[t / 8] >> (t % 8)) & 1) == v[t]);
    }
    SUBCASE("3 bits: 2-bit plane of the low bits, then 1-bit plane of bit 2") {
        std::vector<std::uint8_t> v(32), p(12);
        for (std::size_t t = 0; t < 32; ++t) v[t] = c[t] & 7;
        hlwq::packer<3>::pack(v, p);
        for (std::size_t i = 0; i < 8; ++i)
            CHECK(p[i] == ((v[i] & 3) | (v[i + 8] & 3) << 2 | (v[i + 16] & 3) << 4 | (v[i + 24] & 3) << 6));
        for (std::size_t t = 0; t < 32; ++t) CHECK(((p[8 + t / 8] >> (t % 8)) & 1) == (v[t] >> 2));
    }
    SUBCASE("5 bits, two groups: planes are stored plane-major") {
        std::vector<std::uint8_t> v(64), p(40);
        for (std::size_t t = 0; t < 64; ++t) v[t] = static_cast<std::uint8_t>((t * 11) & 31);
        hlwq::packer<5>::pack(v, p);
        for (std::size_t g = 0; g < 2; ++g) {
            for (std::size_t i = 0; i < 16; ++i)  // 4-bit planes of both groups first
                CHECK(p[16 * g + i] == ((v[32 * g + i] & 15) | (v[32 * g + i + 16] & 15) << 4));
            for (std::size_t t = 0; t < 32; ++t)  // then the 1-bit planes
                CHECK(((p[32 + 4 * g + t / 8] >> (t % 8)) & 1) == (v[32 * g + t] >> 4));
        }
    }
    SUBCASE("tail: a little-endian bit stream after the full groups") {
        std::vector<std::uint8_t> v(35), p(hlwq::packer<3>::packed_bytes(35));
        for (std::size_t t = 0; t < 35; ++t) v[t] = static_cast<std::uint8_t>(t & 7);
        hlwq::packer<3>::pack(v, p);
        REQUIRE(p.size() == 14);  // 12 for the group, 9 bits → 2 bytes
        const unsigned tail = p[12] | p[13] << 8;
        for (std::size_t t = 0; t < 3; ++t) CHECK(((tail >> (3 * t)) & 7) == v[32 + t]);
    }
}

TEST_CASE("packer: bad input") {
    std::vector<std::uint8_t> codes(10, 1), out(5);
    CHECK_THROWS_WITH_AS(hlwq::packer<4>::pack(codes, std::span<std::uint8_t>(out.data(), 4)),
                         doctest::Contains("need 5 bytes"), std::invalid_argument);
    codes[7] = 16;
    CHECK_THROWS_WITH_AS(hlwq::packer<4>::pack(codes, out), doctest::Contains("index 7"), std::invalid_argument);
    std::vector<std::int8_t> neg(10, 0);
    neg[3] = -1;  // 0xFF does not fit 4 bits
    CHECK_THROWS_AS(hlwq::packer<4>::pack(std::span<const std::int8_t>(neg), out), std::invalid_argument);
    std::vector<std::uint8_t> small(8);  // 8 codes pack into 4 bytes, not 5
    CHECK_THROWS_AS(hlwq::packer<4>::unpack(out, std::span<std::uint8_t>(small)), std::invalid_argument);
    CHECK_THROWS_AS(hlwq::pack_codes(9, codes, out), std::invalid_argument);
    CHECK_THROWS_AS(hlwq::packed_bytes(0, 10), std::invalid_argument);
    CHECK(hlwq::packed_bytes(3, 10) == 4);
}

TEST_CASE("packer: run-time width functions agree with the templates") {
    for (int bits = 1; bits <= 8; ++bits) {
        const auto codes = random_codes(100, bits, static_cast<unsigned>(bits));
        std::vector<std::uint8_t> a(hlwq::packed_bytes(bits, 100)), back(100);
        hlwq::pack_codes(bits, codes, a);
        hlwq::unpack_codes(bits, a, back);
        CHECK(back == codes);
    }
}
