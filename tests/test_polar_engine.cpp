#include <hlwq/io/polar_engine.hpp>

#include <doctest/doctest.h>

#include "test_data.hpp"

#include <cmath>
#include <stdexcept>
#include <vector>

using hlwq::io::polar_layout;

namespace {

using bytes = std::vector<std::uint8_t>;

// Encoders written from the byte formulas of the published layouts (not from the decoder).
bytes encode(polar_layout layout, const bytes& c, std::size_t block) {
    bytes out;
    switch (layout) {
        case polar_layout::int8:
            return c;
        case polar_layout::nibbles:
            for (std::size_t b = 0; b < c.size(); b += block)
                for (std::size_t i = 0; i < block / 2; ++i)
                    out.push_back(static_cast<std::uint8_t>(c[b + i] | c[b + i + block / 2] << 4));
            return out;
        case polar_layout::q5_lsb:
            for (std::size_t t = 0; t < c.size(); t += 8) {
                unsigned x[8];
                for (int k = 0; k < 8; ++k) x[k] = c[t + k];
                for (unsigned b : {x[0] | x[1] << 5, x[1] >> 3 | x[2] << 2 | x[3] << 7, x[3] >> 1 | x[4] << 4,
                                   x[4] >> 4 | x[5] << 1 | x[6] << 6, x[6] >> 2 | x[7] << 3})
                    out.push_back(static_cast<std::uint8_t>(b & 0xFF));
            }
            return out;
        case polar_layout::q5_msb:
            for (std::size_t t = 0; t < c.size(); t += 8) {
                unsigned x[8];
                for (int k = 0; k < 8; ++k) x[k] = c[t + k];
                for (unsigned b : {x[0] << 3 | x[1] >> 2, (x[1] & 3) << 6 | x[2] << 1 | x[3] >> 4,
                                   (x[3] & 15) << 4 | x[4] >> 1, (x[4] & 1) << 7 | x[5] << 2 | x[6] >> 3,
                                   (x[6] & 7) << 5 | x[7]})
                    out.push_back(static_cast<std::uint8_t>(b & 0xFF));
            }
            return out;
    }
    return out;
}

// A PolarQuant-style checkpoint of q: codes in `layout` over padded rows, norms, ct_scaled.
struct polar_fixture {
    bytes codes;
    std::vector<hlwq::half> norms;
    std::vector<float> ct_scaled;
};
polar_fixture to_polar(const hlwq::quantized_matrix& q, polar_layout layout) {
    polar_fixture f;
    const std::size_t nb = q.blocks_per_row();
    for (std::size_t r = 0; r < q.rows; ++r) {
        bytes row(nb * q.block);
        for (std::size_t b = 0; b < nb; ++b)
            hlwq::unpack_codes(q.bits, q.block_codes(r, b), std::span(row).subspan(b * q.block, q.block));
        const bytes packed = encode(layout, row, q.block);
        f.codes.insert(f.codes.end(), packed.begin(), packed.end());
    }
    f.norms = q.norms;
    for (float c : q.centroids) f.ct_scaled.push_back(c / std::sqrt(static_cast<float>(q.block)));
    return f;
}

}  // namespace

TEST_CASE("PolarQuant layouts convert to the same codes and weights, without re-quantizing") {
    const std::size_t rows = 6, cols = 300, block = 128;  // in_features padded to 384
    const auto w = hlwq_test::gaussian(rows * cols, 5);
    struct variant {
        polar_layout layout;
        int bits;
    };
    for (const variant v : {variant{polar_layout::int8, 2}, variant{polar_layout::int8, 5}, variant{polar_layout::int8, 8},
                            variant{polar_layout::nibbles, 2}, variant{polar_layout::nibbles, 3},
                            variant{polar_layout::nibbles, 4}, variant{polar_layout::q5_lsb, 5},
                            variant{polar_layout::q5_msb, 5}}) {
        CAPTURE(static_cast<int>(v.layout));
        CAPTURE(v.bits);
        const auto q = hlwq::quantize(w, rows, cols, v.bits, {.block = block});
        const auto f = to_polar(q, v.layout);
        const hlwq::io::polar_weight pw{.out_features = rows, .in_features = cols, .in_features_padded = 384,
                                        .block = block, .bits = v.bits, .layout = v.layout, .codes = f.codes,
                                        .norms = f.norms, .ct_scaled = f.ct_scaled};
        const auto back = hlwq::io::from_polar(pw);
        CHECK(back.codes == q.codes);
        CHECK(back.rows == rows);
        CHECK(back.cols == cols);
        // Centroids come back as ct_scaled · √block: within two float roundings of ours, so
        // the weights agree to a few ulps of their size.
        const auto a = hlwq::dequantize(back), b = hlwq::dequantize(q);
        double err = 0, ref = 0;
        for (std::size_t i = 0; i < a.size(); ++i) {
            err += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
            ref += double(b[i]) * b[i];
        }
        CHECK(std::sqrt(err / ref) < 1e-6);
    }
}

TEST_CASE("the 5-bit layouts decode the byte formulas of the published description") {
    const bytes c{1, 2, 3, 4, 5, 6, 7, 31, 0, 30, 17, 8, 9, 10, 11, 12};
    for (polar_layout layout : {polar_layout::q5_lsb, polar_layout::q5_msb}) {
        bytes got(c.size());
        hlwq::io::polar_unpack_row(layout, 5, 16, encode(layout, c, 16), got);
        CHECK(got == c);
    }
    // They really differ: the same bytes read the other way give other codes.
    bytes other(c.size());
    hlwq::io::polar_unpack_row(polar_layout::q5_msb, 5, 16, encode(polar_layout::q5_lsb, c, 16), other);
    CHECK(other != c);
}

TEST_CASE("PolarQuant conversion rejects what does not fit") {
    using doctest::Contains;
    bytes codes(16, 0), out(32);
    CHECK_THROWS_WITH_AS(hlwq::io::polar_unpack_row(polar_layout::nibbles, 5, 32, codes, out), Contains("bits <= 4"),
                         std::invalid_argument);
    CHECK_THROWS_WITH_AS(hlwq::io::polar_unpack_row(polar_layout::q5_lsb, 4, 32, codes, out), Contains("bits = 5"),
                         std::invalid_argument);
    CHECK_THROWS_WITH_AS(hlwq::io::polar_unpack_row(polar_layout::int8, 4, 32, codes, out), Contains("need 32 bytes"),
                         std::invalid_argument);
    bytes big(32, 0);
    big[9] = 200;
    CHECK_THROWS_WITH_AS(hlwq::io::polar_unpack_row(polar_layout::int8, 4, 32, big, out), Contains("index 9"),
                         std::invalid_argument);

    const auto q = hlwq::quantize(hlwq_test::gaussian(2 * 128, 1), 2, 128, 4);
    auto f = to_polar(q, polar_layout::nibbles);
    hlwq::io::polar_weight pw{.out_features = 2, .in_features = 128, .in_features_padded = 128, .block = 128,
                              .bits = 4, .layout = polar_layout::nibbles, .codes = f.codes, .norms = f.norms,
                              .ct_scaled = f.ct_scaled};
    CHECK_NOTHROW(hlwq::io::from_polar(pw));
    auto bad = pw;
    bad.in_features_padded = 256;
    CHECK_THROWS_WITH_AS(hlwq::io::from_polar(bad), Contains("in_features_padded"), std::invalid_argument);
    bad = pw;
    bad.codes = bad.codes.first(bad.codes.size() - 1);
    CHECK_THROWS_WITH_AS(hlwq::io::from_polar(bad), Contains("codes hold"), std::invalid_argument);
    bad = pw;
    bad.norms = bad.norms.first(1);
    CHECK_THROWS_WITH_AS(hlwq::io::from_polar(bad), Contains("norms hold"), std::invalid_argument);
    bad = pw;
    bad.ct_scaled = bad.ct_scaled.first(8);
    CHECK_THROWS_WITH_AS(hlwq::io::from_polar(bad), Contains("ct_scaled"), std::invalid_argument);
}
