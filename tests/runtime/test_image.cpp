// SPDX-License-Identifier: MIT
// load_image (examples/runtime/image.hpp): PNG/BMP/JPEG/GIF/WebP files the test writes itself
// (stb_image_write, libwebp's encoders and muxer, and GIF bytes by hand), grey/alpha conversion
// as PIL's convert("RGB"), EXIF orientation as PIL's exif_transpose, and clear errors for
// missing, truncated, corrupt and too-large files.
#include "image.hpp"

#include <doctest/doctest.h>
#include <stb/stb_image_write.h>
#include <webp/decode.h>
#include <webp/encode.h>
#include <webp/mux.h>

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

namespace {

/// Bytes libwebp's encoders wrote (freed with WebPFree).
std::vector<std::uint8_t> take_webp(std::uint8_t* out, std::size_t size) {
    REQUIRE(size > 0);
    std::vector<std::uint8_t> b(out, out + size);
    WebPFree(out);
    return b;
}

std::vector<std::uint8_t> webp_lossless(const std::vector<std::uint8_t>& px, int w, int h, int comp) {
    std::uint8_t* out = nullptr;
    const std::size_t n = comp == 4 ? WebPEncodeLosslessRGBA(px.data(), w, h, w * 4, &out) : WebPEncodeLosslessRGB(px.data(), w, h, w * 3, &out);
    return take_webp(out, n);
}

/// What libwebp's simple decoder gives for the file (RGBA, non-premultiplied), for comparison.
std::vector<std::uint8_t> libwebp_rgba(const std::vector<std::uint8_t>& file, int& w, int& h) {
    std::uint8_t* d = WebPDecodeRGBA(file.data(), file.size(), &w, &h);
    REQUIRE(d != nullptr);
    std::vector<std::uint8_t> out(d, d + std::size_t(w) * std::size_t(h) * 4);
    WebPFree(d);
    return out;
}

}  // namespace

TEST_CASE("WebP lossless: RGB exact; RGBA's alpha dropped, not blended (PIL's convert(\"RGB\"))") {
    const fs::path dir = scratch();
    const int w = 37, h = 23;
    for (const int comp : {3, 4}) {
        CAPTURE(comp);
        auto src = pattern(w, h, comp);
        std::size_t transparent = 0, partial = 0;
        if (comp == 4)
            for (std::size_t i = 3; i < src.size(); i += 4) {
                // The simple lossless API may rewrite the colour under alpha 0 ('exact' off);
                // keep a few fully transparent pixels, compared with libwebp's own decode only.
                if (src[i] < 8) src[i] = (i / 4) % 7 == 0 ? 0 : 8;
                transparent += src[i] == 0;
                partial += src[i] > 0 && src[i] < 255;
            }
        const auto file = webp_lossless(src, w, h, comp);
        write_bytes(dir / "img.webp", file);
        const rgb_image img = load_image(dir / "img.webp");
        REQUIRE(img.width == std::size_t(w));
        REQUIRE(img.height == std::size_t(h));
        int dw = 0, dh = 0;
        const auto lib = libwebp_rgba(file, dw, dh);
        std::size_t bad_src = 0, bad_lib = 0;
        for (std::size_t i = 0; i < std::size_t(w * h); ++i)
            for (std::size_t c = 0; c < 3; ++c) {
                bad_lib += img.pixels[i * 3 + c] != lib[i * 4 + c];
                if (comp == 3 || src[i * 4 + 3] != 0) bad_src += img.pixels[i * 3 + c] != src[i * std::size_t(comp) + c];
            }
        CHECK(bad_src == 0);
        CHECK(bad_lib == 0);
        if (comp == 4) {
            CHECK(transparent > 0);
            CHECK(partial > 0);  // semi-transparent pixels keep their colour (not blended on black)
        }
    }
    fs::remove_all(dir);
}

// Lossy WebP (VP8) at quality 100 on flat 16 x 16 blocks (the macroblock size): inside a block
// (4 pixels from its edges: past the loop filter and the chroma upsampling's 2 x 2 neighbours)
// only the colour conversion rounds. libwebp converts RGB to 8-bit BT.601 Y'CbCr and back:
// ±0.5 on Y and on Cb/Cr moves B by up to 0.5 · (1.164 + 2.018) = 1.6 (R and G less), once on
// the way in and once on the way out: 3.2; plus the DC quantizer's half step at quality 100
// (2 of Y at most, 2.3 of RGB): 6 in all. And the decode equals libwebp's own exactly.
TEST_CASE("WebP lossy: libwebp's own decode exactly, within the colour conversion's rounding of the source") {
    const fs::path dir = scratch();
    const int W = 64, H = 48;
    std::vector<std::uint8_t> src(std::size_t(W * H * 3));
    for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x)
            for (int c = 0; c < 3; ++c) {
                const int block = (y / 16) * (W / 16) + x / 16;
                src[std::size_t((y * W + x) * 3 + c)] = static_cast<std::uint8_t>((block * 53 + c * 97 + 20) % 216 + 20);
            }
    std::uint8_t* out = nullptr;
    const std::size_t size = WebPEncodeRGB(src.data(), W, H, W * 3, 100.0f, &out);
    const auto file = take_webp(out, size);
    write_bytes(dir / "lossy.webp", file);
    const rgb_image img = load_image(dir / "lossy.webp");
    REQUIRE(img.width == std::size_t(W));
    REQUIRE(img.height == std::size_t(H));
    int dw = 0, dh = 0;
    const auto lib = libwebp_rgba(file, dw, dh);
    std::size_t bad_lib = 0;
    int worst = 0;
    for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x)
            for (int c = 0; c < 3; ++c) {
                const std::size_t i = std::size_t(y * W + x);
                bad_lib += img.pixels[i * 3 + std::size_t(c)] != lib[i * 4 + std::size_t(c)];
                if (x % 16 >= 4 && x % 16 < 12 && y % 16 >= 4 && y % 16 < 12)
                    worst = std::max(worst, std::abs(int(img.pixels[i * 3 + std::size_t(c)]) - int(src[i * 3 + std::size_t(c)])));
            }
    MESSAGE("lossy WebP q100, inside flat blocks: max |decoded - source| = " << worst);
    CHECK(bad_lib == 0);
    CHECK(worst <= 6);
    fs::remove_all(dir);
}

TEST_CASE("WebP animation: the first frame; EXIF orientation as PIL's exif_transpose") {
    const fs::path dir = scratch();
    const int w = 9, h = 5;
    const auto first = pattern(w, h, 3);
    std::vector<std::uint8_t> second(first.size());
    for (std::size_t i = 0; i < second.size(); ++i) second[i] = static_cast<std::uint8_t>(255 - first[i]);

    WebPAnimEncoderOptions eo;
    REQUIRE(WebPAnimEncoderOptionsInit(&eo));
    WebPAnimEncoder* enc = WebPAnimEncoderNew(w, h, &eo);
    REQUIRE(enc != nullptr);
    WebPConfig cfg;
    REQUIRE(WebPConfigInit(&cfg));
    cfg.lossless = 1;
    cfg.exact = 1;
    int timestamp = 0;
    for (const std::vector<std::uint8_t>* frame : {&first, static_cast<const std::vector<std::uint8_t>*>(&second)}) {
        WebPPicture pic;
        REQUIRE(WebPPictureInit(&pic));
        pic.use_argb = 1;
        pic.width = w;
        pic.height = h;
        REQUIRE(WebPPictureImportRGB(&pic, frame->data(), w * 3));
        CHECK(WebPAnimEncoderAdd(enc, &pic, timestamp, &cfg));
        WebPPictureFree(&pic);
        timestamp += 100;
    }
    REQUIRE(WebPAnimEncoderAdd(enc, nullptr, timestamp, nullptr));
    WebPData anim;
    WebPDataInit(&anim);
    REQUIRE(WebPAnimEncoderAssemble(enc, &anim));
    WebPAnimEncoderDelete(enc);
    write_bytes(dir / "anim.webp", std::vector<std::uint8_t>(anim.bytes, anim.bytes + anim.size));
    WebPDataClear(&anim);
    const rgb_image img = load_image(dir / "anim.webp");
    REQUIRE(img.width == std::size_t(w));
    REQUIRE(img.height == std::size_t(h));
    CHECK(img.pixels == first);

    // A still image with an EXIF chunk (VP8X + EXIF, the TIFF data as the WebP container holds
    // it) of orientation 6: shown turned 90° clockwise.
    const auto still = webp_lossless(first, w, h, 3);
    const WebPData image{still.data(), still.size()};
    WebPMux* mux = WebPMuxCreate(&image, 1);
    REQUIRE(mux != nullptr);
    const std::uint8_t tiff[] = {'I', 'I', 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0};
    const WebPData exif{tiff, sizeof tiff};
    REQUIRE(WebPMuxSetChunk(mux, "EXIF", &exif, 1) == WEBP_MUX_OK);
    WebPData with_exif;
    WebPDataInit(&with_exif);
    REQUIRE(WebPMuxAssemble(mux, &with_exif) == WEBP_MUX_OK);
    WebPMuxDelete(mux);
    write_bytes(dir / "exif6.webp", std::vector<std::uint8_t>(with_exif.bytes, with_exif.bytes + with_exif.size));
    WebPDataClear(&with_exif);
    const rgb_image turned = load_image(dir / "exif6.webp");
    REQUIRE(turned.width == std::size_t(h));
    REQUIRE(turned.height == std::size_t(w));
    std::size_t bad = 0;
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x)
            for (int c = 0; c < 3; ++c)  // input (x, y) -> output (h - 1 - y, x)
                bad += turned.pixels[(std::size_t(x) * turned.width + std::size_t(h - 1 - y)) * 3 + std::size_t(c)] != first[std::size_t((y * w + x) * 3 + c)];
    CHECK(bad == 0);
    fs::remove_all(dir);
}

TEST_CASE("WebP errors name the file: truncated, corrupt, too large (checked from the header)") {
    const fs::path dir = scratch();
    const int w = 64, h = 48;
    const auto full = webp_lossless(pattern(w, h, 3), w, h, 3);
    REQUIRE(full.size() > 100);
    REQUIRE(std::string(full.begin() + 12, full.begin() + 16) == "VP8L");  // simple lossless layout
    write_bytes(dir / "full.webp", full);
    CHECK(load_image(dir / "full.webp").width == std::size_t(w));
    const auto set_u32 = [](std::vector<std::uint8_t>& b, std::size_t at, std::uint32_t v) {
        for (std::size_t i = 0; i < 4; ++i) b[at + i] = static_cast<std::uint8_t>(v >> (8 * i));
    };
    for (const std::size_t keep : {std::size_t{16}, std::size_t{30}, full.size() / 2, full.size() - 4}) {
        CAPTURE(keep);
        // Cut as it is (the RIFF size then says more), and with the RIFF size rewritten to the
        // cut length (the image chunk's own size then says more).
        std::vector<std::uint8_t> cut(full.begin(), full.begin() + std::ptrdiff_t(keep));
        const fs::path p = dir / ("cut_" + std::to_string(keep) + ".webp");
        write_bytes(p, cut);
        const std::string e = error_of([&] { load_image(p); });
        CAPTURE(e);
        CHECK(e.find(p.string() + ": truncated WebP file") == 0);
        set_u32(cut, 4, static_cast<std::uint32_t>(keep - 8));
        write_bytes(p, cut);
        const std::string e2 = error_of([&] { load_image(p); });
        CAPTURE(e2);
        CHECK(e2.find(p.string() + ": ") == 0);
        CHECK(e2 != "(no error)");
    }
    // A RIFF/WEBP file whose chunk is not an image.
    std::vector<std::uint8_t> junk = full;
    std::copy_n("JUNK", 4, junk.begin() + 12);
    write_bytes(dir / "junk.webp", junk);
    CHECK(error_of([&] { load_image(dir / "junk.webp"); }).find((dir / "junk.webp").string() + ": not a readable WebP image") == 0);

    // Limits from the header, before decoding: the exact size passes, one pixel less refuses.
    CHECK(load_image(dir / "full.webp", {.max_pixels = w * h}).height == std::size_t(h));
    CHECK(error_of([&] { load_image(dir / "full.webp", {.max_pixels = w * h - 1}); }).find((dir / "full.webp").string() + ": image is 64x48 = 3072 pixels, more than the limit of 3071") == 0);
    // A VP8L header claiming 16384 x 16384 (14 bits each of width - 1 and height - 1 after the
    // 0x2f signature byte) is refused without decoding.
    auto bomb = full;
    REQUIRE(bomb[20] == 0x2f);
    const std::uint32_t bits = std::uint32_t{bomb[21]} | std::uint32_t{bomb[22]} << 8 | std::uint32_t{bomb[23]} << 16 | std::uint32_t{bomb[24]} << 24;
    set_u32(bomb, 21, (bits & ~0x0FFFFFFFu) | 0x3FFFu | (0x3FFFu << 14));
    write_bytes(dir / "bomb.webp", bomb);
    CHECK(error_of([&] { load_image(dir / "bomb.webp"); }).find((dir / "bomb.webp").string() + ": image is 16384x16384 = 268435456 pixels, more than the limit") == 0);
    fs::remove_all(dir);
}
