// SPDX-License-Identifier: MIT
// load_image (examples/runtime/image.hpp): PNG/BMP/JPEG/GIF files the test writes itself
// (stb_image_write, and GIF bytes by hand), grey/alpha conversion as PIL's convert("RGB"), EXIF
// orientation as PIL's exif_transpose, and clear errors for missing, truncated, corrupt and
// too-large files.
#include "image.hpp"

#include <doctest/doctest.h>
#include <stb/stb_image_write.h>

#include <algorithm>
#include <cstdlib>
#include <unistd.h>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using hlwq::rt::load_image;
using hlwq::rt::rgb_image;

namespace {

fs::path scratch() {
    const fs::path dir = fs::temp_directory_path() / ("hlwq_test_image_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    return dir;
}

void write_bytes(const fs::path& p, const std::vector<std::uint8_t>& b) {
    std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}
std::vector<std::uint8_t> read_bytes(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A w x h image with `comp` channels: smooth gradients plus a sharp rectangle.
std::vector<std::uint8_t> pattern(int w, int h, int comp) {
    std::vector<std::uint8_t> px(static_cast<std::size_t>(w * h * comp));
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x)
            for (int c = 0; c < comp; ++c) {
                int v = (x * 255 / (w - 1) + c * 60 + y * 3) % 256;
                if (x > w / 3 && x < w / 2 && y > h / 4 && y < h / 2) v = c == 0 ? 250 : 10;
                px[static_cast<std::size_t>((y * w + x) * comp + c)] = static_cast<std::uint8_t>(v);
            }
    return px;
}

template <class F>
std::string error_of(F&& f) {
    try {
        f();
    } catch (const std::runtime_error& e) {
        return e.what();
    }
    return "(no error)";
}

}  // namespace

TEST_CASE("PNG, BMP: RGB exact; grey replicated; alpha dropped as PIL's convert(\"RGB\")") {
    const fs::path dir = scratch();
    const int w = 37, h = 23;
    for (int comp = 1; comp <= 4; ++comp) {
        const auto src = pattern(w, h, comp);
        for (const char* ext : {"png", "bmp"}) {
            const fs::path p = dir / ("img" + std::to_string(comp) + "." + ext);
            const int ok = std::string(ext) == "png" ? stbi_write_png(p.c_str(), w, h, comp, src.data(), w * comp)
                                                     : stbi_write_bmp(p.c_str(), w, h, comp, src.data());
            REQUIRE(ok);
            const rgb_image img = load_image(p);
            CAPTURE(p);
            REQUIRE(img.width == std::size_t(w));
            REQUIRE(img.height == std::size_t(h));
            REQUIRE(img.pixels.size() == std::size_t(w * h * 3));
            // stb's BMP writer stores grey as RGB and drops alpha itself; either way the RGB we
            // read must be the source's colour channels (grey in all three).
            std::size_t bad = 0;
            for (int i = 0; i < w * h; ++i)
                for (int c = 0; c < 3; ++c) {
                    const int sc = comp >= 3 ? c : 0;  // grey (+alpha): the one grey channel
                    bad += img.pixels[std::size_t(i * 3 + c)] != src[std::size_t(i * comp + sc)];
                }
            CHECK(bad == 0);
        }
    }
    fs::remove_all(dir);
}

TEST_CASE("JPEG: decoded close to the source; EXIF orientations 1-8 as PIL's exif_transpose") {
    const fs::path dir = scratch();
    // 48 x 32 in four flat quadrants of 24 x 16 (multiples of the 8 x 8 JPEG blocks; quality 100
    // has no chroma subsampling), so the lossy decode is close to the source.
    const int W = 48, H = 32;
    std::vector<std::uint8_t> src(W * H * 3);
    const std::uint8_t colours[4][3] = {{220, 30, 30}, {30, 200, 40}, {30, 40, 210}, {230, 220, 40}};
    for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x)
            for (int c = 0; c < 3; ++c) src[std::size_t((y * W + x) * 3 + c)] = colours[(y >= H / 2) * 2 + (x >= W / 2)][c];
    const fs::path plain = dir / "plain.jpg";
    REQUIRE(stbi_write_jpg(plain.c_str(), W, H, 3, src.data(), 100));
    const rgb_image base = load_image(plain);
    REQUIRE(base.width == std::size_t(W));
    REQUIRE(base.height == std::size_t(H));
    int worst = 0;
    for (std::size_t i = 0; i < src.size(); ++i) worst = std::max(worst, std::abs(int(base.pixels[i]) - int(src[i])));
    MESSAGE("JPEG q100 max |decoded - source| = " << worst);
    CHECK(worst <= 8);

    const auto jpeg = read_bytes(plain);
    for (int orientation = 1; orientation <= 8; ++orientation) {
        for (const bool big_endian : {false, true}) {
            // APP1 "Exif\0\0" + TIFF header + IFD0 with one entry: 0x0112 SHORT 1 = orientation.
            std::vector<std::uint8_t> tiff = big_endian ? std::vector<std::uint8_t>{'M', 'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, std::uint8_t(orientation), 0, 0, 0, 0, 0, 0, 0, 0}
                                                        : std::vector<std::uint8_t>{'I', 'I', 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, std::uint8_t(orientation), 0, 0, 0, 0, 0, 0, 0};
            const std::size_t len = 2 + 6 + tiff.size();
            std::vector<std::uint8_t> file(4 + len + jpeg.size() - 2);
            const std::uint8_t head[10] = {0xFF, 0xD8, 0xFF, 0xE1, std::uint8_t(len >> 8), std::uint8_t(len & 0xFF), 'E', 'x', 'i', 'f'};
            std::copy(std::begin(head), std::end(head), file.begin());  // then "\0\0" (already zero)
            std::copy(tiff.begin(), tiff.end(), file.begin() + 12);
            std::copy(jpeg.begin() + 2, jpeg.end(), file.begin() + 12 + std::ptrdiff_t(tiff.size()));
            const fs::path p = dir / ("exif" + std::to_string(orientation) + ".jpg");
            write_bytes(p, file);
            const rgb_image img = load_image(p);
            CAPTURE(orientation);
            CAPTURE(big_endian);
            const bool swap = orientation >= 5;
            REQUIRE(img.width == std::size_t(swap ? H : W));
            REQUIRE(img.height == std::size_t(swap ? W : H));
            // Where PIL's transpose sends input pixel (x, y).
            std::size_t bad = 0;
            for (int y = 0; y < H; ++y)
                for (int x = 0; x < W; ++x) {
                    int ox = x, oy = y;
                    switch (orientation) {
                        case 2: ox = W - 1 - x; break;
                        case 3: ox = W - 1 - x, oy = H - 1 - y; break;
                        case 4: oy = H - 1 - y; break;
                        case 5: ox = y, oy = x; break;
                        case 6: ox = H - 1 - y, oy = x; break;  // 90° clockwise
                        case 7: ox = H - 1 - y, oy = W - 1 - x; break;
                        case 8: ox = y, oy = W - 1 - x; break;  // 90° counter-clockwise
                        default: break;
                    }
                    for (int c = 0; c < 3; ++c)
                        bad += img.pixels[(std::size_t(oy) * img.width + std::size_t(ox)) * 3 + std::size_t(c)] != base.pixels[std::size_t((y * W + x) * 3 + c)];
                }
            CHECK(bad == 0);
        }
    }
    // Orientation 6 shows the top-left (red) quadrant at the top right.
    const rgb_image six = load_image(dir / "exif6.jpg");
    CHECK(six.pixels[(2 * six.width + six.width - 3) * 3] > 180);
    fs::remove_all(dir);
}

TEST_CASE("GIF: the first frame") {
    const fs::path dir = scratch();
    // 1 x 1, global palette {red, black}; frame 1 = index 0 (red), frame 2 = index 1 (black).
    // LZW (min code size 2): clear(4), index, end(5) in 3-bit codes = 'D' 0x01 / 'L' 0x01.
    const std::string one = std::string("GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\x00\x00\x00\x00\x00", 19) +
                            std::string(",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00", 15);
    const std::string two = one + std::string(",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x4c\x01\x00", 15) + ";";
    const fs::path p = dir / "two.gif";
    write_bytes(p, std::vector<std::uint8_t>(two.begin(), two.end()));
    const rgb_image img = load_image(p);
    REQUIRE(img.width == 1);
    REQUIRE(img.height == 1);
    CHECK(img.pixels == std::vector<std::uint8_t>{255, 0, 0});
    fs::remove_all(dir);
}

TEST_CASE("errors name the file: missing, folder, empty, not an image, truncated, too large") {
    const fs::path dir = scratch();
    CHECK(error_of([&] { load_image(dir / "nope.png"); }).find("nope.png: no such file") != std::string::npos);
    CHECK(error_of([&] { load_image(dir); }).find("is a folder") != std::string::npos);
    write_bytes(dir / "empty.png", {});
    CHECK(error_of([&] { load_image(dir / "empty.png"); }).find("empty.png: empty file") != std::string::npos);
    write_bytes(dir / "text.png", {'h', 'e', 'l', 'l', 'o', ' ', 'w', 'o', 'r', 'l', 'd', '\n'});
    CHECK(error_of([&] { load_image(dir / "text.png"); }).find("text.png: not a readable image") != std::string::npos);

    const int w = 64, h = 48;
    const auto src = pattern(w, h, 3);
    REQUIRE(stbi_write_png((dir / "full.png").c_str(), w, h, 3, src.data(), w * 3));
    REQUIRE(stbi_write_bmp((dir / "full.bmp").c_str(), w, h, 3, src.data()));
    REQUIRE(stbi_write_jpg((dir / "full.jpg").c_str(), w, h, 3, src.data(), 90));
    for (const char* ext : {"png", "bmp", "jpg"}) {
        const auto full = read_bytes(dir / (std::string("full.") + ext));
        REQUIRE(full.size() > 100);
        // Cut after the header (the size is readable, the pixels are not), in the middle, and
        // in the last pixel data (a PNG's last 24 bytes: IEND, the IDAT CRC, the zlib checksum
        // and 4 bytes of deflate data; a PNG cut only in IEND still holds all its pixels).
        for (const std::size_t keep : {std::size_t{40}, full.size() / 2, full.size() - 24}) {
            const fs::path p = dir / ("cut_" + std::to_string(keep) + "." + ext);
            write_bytes(p, std::vector<std::uint8_t>(full.begin(), full.begin() + std::ptrdiff_t(keep)));
            const std::string e = error_of([&] { load_image(p); });
            CAPTURE(std::string(ext));
            CAPTURE(keep);
            CAPTURE(e);
            CHECK(e.find(p.string() + ": ") == 0);
        }
    }

    // Limits are checked from the header, before decoding.
    CHECK(load_image(dir / "full.png", {.max_pixels = w * h}).width == std::size_t(w));
    const std::string big = error_of([&] { load_image(dir / "full.png", {.max_pixels = w * h - 1}); });
    CHECK(big.find("full.png: image is 64x48 = 3072 pixels, more than the limit of 3071") != std::string::npos);
    // A header claiming 16384 x 16384 (a "decompression bomb") is refused without allocating.
    auto bomb = read_bytes(dir / "full.png");
    bomb[16] = 0, bomb[17] = 0, bomb[18] = 0x40, bomb[19] = 0;  // IHDR width, big-endian
    bomb[20] = 0, bomb[21] = 0, bomb[22] = 0x40, bomb[23] = 0;  // IHDR height
    write_bytes(dir / "bomb.png", bomb);
    CHECK(error_of([&] { load_image(dir / "bomb.png"); }).find("16384x16384 = 268435456 pixels, more than the limit") != std::string::npos);
    CHECK(error_of([&] { load_image(dir / "full.png", {.max_file_bytes = 10}); }).find("more than the limit of 10") != std::string::npos);
    fs::remove_all(dir);
}
