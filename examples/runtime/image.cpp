// SPDX-License-Identifier: MIT
// Image files through Debian's stb_image (libstb), plus what stb_image leaves out: a size check
// before decoding, EXIF orientation, and truncation checks for the formats it pads silently.
// WebP through Debian's libwebp (libwebp-dev), the library Pillow decodes WebP with.
#include "image.hpp"

#include <stb/stb_image.h>
#include <webp/decode.h>
#include <webp/demux.h>

#include <cstring>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>

namespace hlwq::rt {
namespace {

[[noreturn]] void fail(const std::string& name, const std::string& what) {
    throw std::runtime_error(name + ": " + what);
}

bool starts_with(std::span<const std::uint8_t> b, std::string_view magic) {
    return b.size() >= magic.size() && std::memcmp(b.data(), magic.data(), magic.size()) == 0;
}

std::uint32_t read_u16(const std::uint8_t* p, bool big) {
    return big ? (std::uint32_t{p[0]} << 8) | p[1] : (std::uint32_t{p[1]} << 8) | p[0];
}
std::uint32_t read_u32(const std::uint8_t* p, bool big) {
    return big ? (read_u16(p, true) << 16) | read_u16(p + 2, true) : (read_u16(p + 2, false) << 16) | read_u16(p, false);
}

// The orientation (1..8) in EXIF data, a TIFF header and IFD0 (after an optional "Exif\0\0"):
// tag 0x0112; 1 when absent or malformed (PIL ignores a broken EXIF block too).
int exif_orientation(const std::uint8_t* tiff, std::size_t tn) {
    if (tn >= 6 && std::memcmp(tiff, "Exif\0\0", 6) == 0) tiff += 6, tn -= 6;
    if (tn < 8) return 1;
    const bool big = tiff[0] == 'M';
    if (!(tiff[0] == tiff[1] && (tiff[0] == 'M' || tiff[0] == 'I')) || read_u16(tiff + 2, big) != 42) return 1;
    const std::size_t ifd = read_u32(tiff + 4, big);
    if (ifd > tn || tn - ifd < 2) return 1;
    const std::size_t count = read_u16(tiff + ifd, big);
    for (std::size_t e = 0; e < count && ifd + 2 + 12 * (e + 1) <= tn; ++e) {
        const std::uint8_t* entry = tiff + ifd + 2 + 12 * e;
        if (read_u16(entry, big) == 0x0112) {
            const int v = static_cast<int>(read_u16(entry + 8, big));  // SHORT, left-justified
            return v >= 1 && v <= 8 ? v : 1;
        }
    }
    return 1;
}

// The EXIF orientation (1..8) of a JPEG: the APP1 "Exif" segment's; 1 when absent.
int jpeg_orientation(std::span<const std::uint8_t> b) {
    std::size_t i = 2;  // after SOI
    while (i + 4 <= b.size() && b[i] == 0xFF) {
        const std::uint8_t marker = b[i + 1];
        if (marker == 0xDA || marker == 0xD9) break;  // start of scan / end of image: no more headers
        const std::size_t len = read_u16(&b[i + 2], true);
        if (len < 2 || i + 2 + len > b.size()) break;
        const std::uint8_t* seg = &b[i + 4];
        const std::size_t n = len - 2;
        if (marker == 0xE1 && n >= 14 && std::memcmp(seg, "Exif\0\0", 6) == 0) return exif_orientation(seg, n);
        i += 2 + len;
    }
    return 1;
}

// PIL's ImageOps.exif_transpose: the transpose that shows the image upright.
rgb_image orient(rgb_image in, int orientation) {
    if (orientation <= 1) return in;
    const std::size_t W = in.width, H = in.height;
    const bool swap = orientation >= 5;  // 5..8 exchange width and height
    rgb_image out{swap ? H : W, swap ? W : H, std::vector<std::uint8_t>(in.pixels.size())};
    for (std::size_t oy = 0; oy < out.height; ++oy)
        for (std::size_t ox = 0; ox < out.width; ++ox) {
            std::size_t ix = 0, iy = 0;
            switch (orientation) {
                case 2: ix = W - 1 - ox, iy = oy; break;           // FLIP_LEFT_RIGHT
                case 3: ix = W - 1 - ox, iy = H - 1 - oy; break;   // ROTATE_180
                case 4: ix = ox, iy = H - 1 - oy; break;           // FLIP_TOP_BOTTOM
                case 5: ix = oy, iy = ox; break;                   // TRANSPOSE
                case 6: ix = oy, iy = H - 1 - ox; break;           // ROTATE_270 (90° clockwise)
                case 7: ix = W - 1 - oy, iy = H - 1 - ox; break;   // TRANSVERSE
                default: ix = W - 1 - oy, iy = ox; break;          // 8: ROTATE_90 (counter-clockwise)
            }
            std::memcpy(&out.pixels[(oy * out.width + ox) * 3], &in.pixels[(iy * W + ix) * 3], 3);
        }
    return out;
}

// stb_image reads past the end of a BMP as zeros and accepts a JPEG cut before its end; PIL
// refuses both ("image file is truncated"). Checked here from the headers.
void check_complete(std::span<const std::uint8_t> b, const std::string& name) {
    if (starts_with(b, "BM") && b.size() >= 30) {
        const std::size_t offset = read_u32(&b[10], false);
        const std::size_t header = read_u32(&b[14], false);
        if (header >= 40 && b.size() >= 34) {
            const std::size_t w = read_u32(&b[18], false);
            const auto h = static_cast<std::int32_t>(read_u32(&b[22], false));
            const std::size_t bpp = read_u16(&b[28], false);
            const std::size_t compression = read_u32(&b[30], false);
            const std::size_t rows = h < 0 ? static_cast<std::size_t>(-static_cast<std::int64_t>(h)) : static_cast<std::size_t>(h);
            if ((compression == 0 || compression == 3) && bpp > 0) {  // uncompressed: the size is known
                const std::size_t stride = (w * bpp + 31) / 32 * 4;
                if (b.size() < offset + stride * rows) fail(name, "truncated BMP file (" + std::to_string(b.size()) + " bytes, the header needs " + std::to_string(offset + stride * rows) + ")");
            }
        }
    } else if (starts_with(b, "\xFF\xD8")) {
        // A complete JPEG ends with EOI (FF D9), possibly followed by padding.
        std::size_t end = b.size();
        while (end > 2 && b[end - 1] == 0) --end;
        if (end < 4 || b[end - 2] != 0xFF || b[end - 1] != 0xD9) fail(name, "truncated JPEG file (no end-of-image marker)");
    }
}

bool is_webp(std::span<const std::uint8_t> b) {
    return b.size() >= 12 && starts_with(b, "RIFF") && std::memcmp(b.data() + 8, "WEBP", 4) == 0;
}

std::string webp_status(VP8StatusCode s) {
    switch (s) {
        case VP8_STATUS_OUT_OF_MEMORY: return "out of memory";
        case VP8_STATUS_INVALID_PARAM: return "invalid parameter";
        case VP8_STATUS_BITSTREAM_ERROR: return "bitstream error";
        case VP8_STATUS_UNSUPPORTED_FEATURE: return "unsupported feature";
        case VP8_STATUS_SUSPENDED: return "suspended";
        case VP8_STATUS_USER_ABORT: return "aborted";
        case VP8_STATUS_NOT_ENOUGH_DATA: return "not enough data";
        default: return "status " + std::to_string(static_cast<int>(s));
    }
}

// A WebP file as Pillow reads it: WebPAnimDecoder (also for still images) in non-premultiplied
// RGBA, the first frame (an animation's frame 0, composed on its transparent canvas), then
// convert("RGB") drops alpha. The canvas size is checked from the header before decoding.
rgb_image decode_webp(std::span<const std::uint8_t> b, const std::string& name, const image_limits& limits) {
    // The RIFF size covers the rest of the file; libwebp would report a cut file only as
    // "not enough data" or not at all when the cut falls after the header.
    const std::size_t riff = read_u32(&b[4], false);
    if (b.size() - 8 < riff)
        fail(name, "truncated WebP file (" + std::to_string(b.size()) + " bytes, its RIFF header says " + std::to_string(riff + 8) + ")");
    WebPBitstreamFeatures f;
    if (const VP8StatusCode s = WebPGetFeatures(b.data(), b.size(), &f); s != VP8_STATUS_OK)
        fail(name, "not a readable WebP image (" + webp_status(s) + ")");
    if (f.width <= 0 || f.height <= 0) fail(name, "image has no pixels");
    const std::size_t pixels = static_cast<std::size_t>(f.width) * static_cast<std::size_t>(f.height);
    if (pixels > limits.max_pixels)
        fail(name, "image is " + std::to_string(f.width) + "x" + std::to_string(f.height) + " = " + std::to_string(pixels) + " pixels, more than the limit of " + std::to_string(limits.max_pixels));

    WebPAnimDecoderOptions opts;
    if (!WebPAnimDecoderOptionsInit(&opts)) fail(name, "libwebp: cannot initialize the decoder (version mismatch?)");
    opts.color_mode = MODE_RGBA;
    opts.use_threads = 0;
    const WebPData data{b.data(), b.size()};
    std::unique_ptr<WebPAnimDecoder, void (*)(WebPAnimDecoder*)> dec(WebPAnimDecoderNew(&data, &opts), WebPAnimDecoderDelete);
    WebPAnimInfo info;
    if (!dec || !WebPAnimDecoderGetInfo(dec.get(), &info)) fail(name, "cannot decode the WebP image (truncated or corrupt?)");
    if (static_cast<std::size_t>(info.canvas_width) * info.canvas_height > limits.max_pixels)
        fail(name, "WebP canvas is " + std::to_string(info.canvas_width) + "x" + std::to_string(info.canvas_height) + ", more than the limit of " + std::to_string(limits.max_pixels) + " pixels");
    std::uint8_t* rgba = nullptr;
    int timestamp = 0;
    if (!WebPAnimDecoderGetNext(dec.get(), &rgba, &timestamp) || rgba == nullptr)
        fail(name, "cannot decode the WebP image's first frame (truncated or corrupt?)");
    rgb_image img{info.canvas_width, info.canvas_height, {}};
    img.pixels.resize(img.width * img.height * 3);
    for (std::size_t i = 0; i < img.width * img.height; ++i) std::memcpy(&img.pixels[i * 3], rgba + i * 4, 3);
    // An EXIF chunk's orientation, as PIL's exif_transpose applies it.
    WebPChunkIterator exif;
    if (WebPDemuxGetChunk(WebPAnimDecoderGetDemuxer(dec.get()), "EXIF", 1, &exif)) {
        const int orientation = exif_orientation(exif.chunk.bytes, exif.chunk.size);
        WebPDemuxReleaseChunkIterator(&exif);
        img = orient(std::move(img), orientation);
    }
    return img;
}

}  // namespace

rgb_image decode_image(std::span<const std::uint8_t> bytes, const std::string& name, const image_limits& limits) {
    if (bytes.empty()) fail(name, "empty file, not an image");
    if (is_webp(bytes)) return decode_webp(bytes, name, limits);
    if (bytes.size() > static_cast<std::size_t>(INT32_MAX)) fail(name, "file too large for the image decoder");
    const auto* data = reinterpret_cast<const stbi_uc*>(bytes.data());
    const int len = static_cast<int>(bytes.size());
    int w = 0, h = 0, channels = 0;
    if (!stbi_info_from_memory(data, len, &w, &h, &channels))
        fail(name, std::string("not a readable image (") + stbi_failure_reason() + "); PNG, JPEG, BMP, GIF and WebP are supported");
    if (stbi_is_hdr_from_memory(data, len)) fail(name, "HDR images are not supported");
    if (w <= 0 || h <= 0) fail(name, "image has no pixels");
    const std::size_t pixels = static_cast<std::size_t>(w) * static_cast<std::size_t>(h);
    if (pixels > limits.max_pixels)
        fail(name, "image is " + std::to_string(w) + "x" + std::to_string(h) + " = " + std::to_string(pixels) + " pixels, more than the limit of " + std::to_string(limits.max_pixels));
    check_complete(bytes, name);

    std::unique_ptr<stbi_uc, void (*)(void*)> decoded(stbi_load_from_memory(data, len, &w, &h, &channels, 3), stbi_image_free);
    if (!decoded) fail(name, std::string("cannot decode the image (") + stbi_failure_reason() + "; truncated or corrupt?)");
    rgb_image img{static_cast<std::size_t>(w), static_cast<std::size_t>(h), {}};
    img.pixels.assign(decoded.get(), decoded.get() + img.width * img.height * 3);
    if (starts_with(bytes, "\xFF\xD8")) img = orient(std::move(img), jpeg_orientation(bytes));
    return img;
}

rgb_image load_image(const std::filesystem::path& path, const image_limits& limits) {
    const std::string name = path.string();
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) fail(name, "no such file");
    if (std::filesystem::is_directory(path, ec)) fail(name, "is a folder, not an image file");
    const auto size = std::filesystem::file_size(path, ec);
    if (ec) fail(name, "cannot read: " + ec.message());
    if (size > limits.max_file_bytes)
        fail(name, "file is " + std::to_string(size) + " bytes, more than the limit of " + std::to_string(limits.max_file_bytes));
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(name, "cannot open");
    std::vector<std::uint8_t> bytes(static_cast<std::size_t>(size));
    if (!in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()))) fail(name, "cannot read");
    return decode_image(bytes, name, limits);
}

}  // namespace hlwq::rt
