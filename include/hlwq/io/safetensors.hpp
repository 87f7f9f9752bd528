// SPDX-License-Identifier: MIT
/// @file safetensors.hpp
/// @brief Read and write safetensors checkpoints (the format Hugging Face transformers writes).
///
/// ## Format
/// An 8-byte little-endian header length N, then N bytes of UTF-8 JSON, then the data
/// buffer. The JSON is an object mapping each tensor name to
/// `{"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}` (offsets relative to the
/// start of the data buffer, i.e. to byte 8 + N of the file), plus an optional
/// `"__metadata__"` object of string → string.
///
/// ## Reading
/// safetensors_file memory-maps a file read-only and hands out zero-copy tensor_view objects;
/// safetensors_buffer does the same over bytes already in memory (the parser entry point the
/// fuzzer uses). safetensors_model opens a model folder, either a single `model.safetensors` or
/// shards listed by `model.safetensors.index.json`.
///
/// Validation is strict; every problem throws safetensors_error with a message that names the
/// file (and the tensor, where there is one): header length beyond the file or above 100 MB,
/// invalid JSON, a non-object header, duplicate keys, missing / extra / mistyped fields,
/// unknown dtypes, negative or non-integer dimensions, an element count that overflows,
/// `shape × dtype size` different from `end − begin`, `begin > end`, offsets beyond the data,
/// tensors that overlap each other, metadata values that are not strings. Gaps between
/// tensors are accepted. Bad use of the API (unknown tensor name, wrong element type) throws
/// std::invalid_argument.
///
/// ## Writing
/// safetensors_writer takes the list of tensors (name, dtype, shape) up front, writes the
/// header, then accepts each tensor's bytes in any order, one at a time (nothing is buffered).
/// The header is padded with spaces to a multiple of 8 bytes and tensors are laid out by
/// decreasing element size, so every tensor starts at a multiple of its element size in the
/// file (as Hugging Face's writer does). The file is written as `path + ".tmp"` and renamed on
/// finish(), so a half-written file never has the final name.
///
/// Little-endian hosts only (as the format stores data little-endian); POSIX (mmap).
#pragma once

#include "../float16.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace hlwq::io {

static_assert(std::endian::native == std::endian::little,
              "hlwq safetensors support needs a little-endian host");

/// A malformed safetensors file or index, or an I/O failure; the message names the file.
class safetensors_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// Element types of safetensors tensors (those transformers writes).
enum class dtype : std::uint8_t { f32, f16, bf16, f64, i8, u8, i16, i32, i64, boolean };

/// Bytes per element of `t`.
constexpr std::size_t dtype_size(dtype t) noexcept {
    switch (t) {
        case dtype::f64:
        case dtype::i64: return 8;
        case dtype::f32:
        case dtype::i32: return 4;
        case dtype::f16:
        case dtype::bf16:
        case dtype::i16: return 2;
        case dtype::i8:
        case dtype::u8:
        case dtype::boolean: return 1;
    }
    return 0;
}

/// The name safetensors uses for `t` ("F32", "BF16", "BOOL", ...).
constexpr std::string_view dtype_name(dtype t) noexcept {
    switch (t) {
        case dtype::f32: return "F32";
        case dtype::f16: return "F16";
        case dtype::bf16: return "BF16";
        case dtype::f64: return "F64";
        case dtype::i8: return "I8";
        case dtype::u8: return "U8";
        case dtype::i16: return "I16";
        case dtype::i32: return "I32";
        case dtype::i64: return "I64";
        case dtype::boolean: return "BOOL";
    }
    return "?";
}

/// Parses a safetensors dtype name (case-sensitive, e.g. "F32"); empty if unknown.
constexpr std::optional<dtype> parse_dtype(std::string_view s) noexcept {
    for (dtype t : {dtype::f32, dtype::f16, dtype::bf16, dtype::f64, dtype::i8, dtype::u8,
                    dtype::i16, dtype::i32, dtype::i64, dtype::boolean})
        if (dtype_name(t) == s) return t;
    return std::nullopt;
}

/// C++ element types that map to a safetensors dtype: float, double, `hlwq::half`,
/// `hlwq::bfloat16`, the fixed-width integers of the format, and bool.
template <class T>
concept tensor_element =
    std::same_as<T, float> || std::same_as<T, double> || std::same_as<T, half> ||
    std::same_as<T, bfloat16> || std::same_as<T, std::int8_t> || std::same_as<T, std::uint8_t> ||
    std::same_as<T, std::int16_t> || std::same_as<T, std::int32_t> ||
    std::same_as<T, std::int64_t> || std::same_as<T, bool>;

/// The dtype stored for element type T.
template <tensor_element T>
constexpr dtype dtype_of() noexcept {
    if constexpr (std::same_as<T, float>) return dtype::f32;
    else if constexpr (std::same_as<T, double>) return dtype::f64;
    else if constexpr (std::same_as<T, half>) return dtype::f16;
    else if constexpr (std::same_as<T, bfloat16>) return dtype::bf16;
    else if constexpr (std::same_as<T, std::int8_t>) return dtype::i8;
    else if constexpr (std::same_as<T, std::uint8_t>) return dtype::u8;
    else if constexpr (std::same_as<T, std::int16_t>) return dtype::i16;
    else if constexpr (std::same_as<T, std::int32_t>) return dtype::i32;
    else if constexpr (std::same_as<T, std::int64_t>) return dtype::i64;
    else return dtype::boolean;
}

/// A zero-copy view of one tensor; valid while the file or buffer it came from lives.
struct tensor_view {
    std::string_view name{};                 ///< tensor name
    dtype type = dtype::f32;                 ///< element type
    std::span<const std::int64_t> shape{};   ///< dimensions (empty for a scalar)
    std::span<const std::byte> data{};       ///< the tensor's bytes, little-endian

    /// Number of elements (product of the shape; 1 for a scalar).
    std::size_t numel() const noexcept { return dtype_size(type) ? data.size() / dtype_size(type) : 0; }

    /// The elements as a typed span, without copying. Throws std::invalid_argument when T
    /// does not match the dtype or the data is not aligned for T (a file whose header length
    /// is not a multiple of 8 can misalign it; use copy_to() then). Not available for bool,
    /// since a byte other than 0 or 1 is not a valid bool: use copy_to() for BOOL tensors.
    template <tensor_element T>
    std::span<const T> as() const {
        static_assert(!std::same_as<T, bool>, "BOOL tensors: use copy_to, which validates 0/1");
        check_type<T>();
        if (reinterpret_cast<std::uintptr_t>(data.data()) % alignof(T) != 0)
            throw std::invalid_argument("safetensors: tensor '" + std::string(name) +
                                        "' is not aligned for a typed view; use copy_to");
        return {reinterpret_cast<const T*>(data.data()), data.size() / sizeof(T)};
    }

    /// Copies the elements into `out` (size must be numel()). Throws std::invalid_argument
    /// when T does not match the dtype or the size differs, and safetensors_error for a BOOL
    /// byte other than 0 or 1.
    template <tensor_element T>
    void copy_to(std::span<T> out) const {
        check_type<T>();
        if (out.size() != numel())
            throw std::invalid_argument("safetensors: copy_to of tensor '" + std::string(name) +
                                        "' needs " + std::to_string(numel()) +
                                        " elements, got " + std::to_string(out.size()));
        if constexpr (std::same_as<T, bool>) {
            for (std::size_t i = 0; i < out.size(); ++i) {
                const auto b = std::to_integer<unsigned>(data[i]);
                if (b > 1)
                    throw safetensors_error("safetensors: tensor '" + std::string(name) +
                                            "': BOOL element " + std::to_string(i) +
                                            " is neither 0 nor 1");
                out[i] = b != 0;
            }
        } else if (!data.empty()) {
            std::memcpy(out.data(), data.data(), data.size());
        }
    }

    /// The elements copied into a new vector (see copy_to()).
    template <tensor_element T>
    std::vector<T> to_vector() const {
        std::vector<T> v(numel());
        if constexpr (std::same_as<T, bool>) {
            auto tmp = std::make_unique<bool[]>(v.size());
            copy_to(std::span<bool>(tmp.get(), v.size()));
            std::copy(tmp.get(), tmp.get() + v.size(), v.begin());
        } else {
            copy_to(std::span<T>(v));
        }
        return v;
    }

private:
    template <class T>
    void check_type() const {
        if (dtype_of<T>() != type)
            throw std::invalid_argument("safetensors: tensor '" + std::string(name) + "' is " +
                                        std::string(dtype_name(type)) + ", not " +
                                        std::string(dtype_name(dtype_of<T>())));
    }
};

/// Largest header accepted (as Hugging Face's reader: 100 MB).
inline constexpr std::uint64_t max_header_bytes = 100'000'000;

/// A parsed safetensors image over bytes owned by someone else (e.g. a mapping or a buffer).
/// Construction validates the whole header against the buffer size; lookups never read
/// outside `bytes`.
class safetensors_buffer {
public:
    /// Where a tensor lies and what it holds (offsets relative to the data buffer).
    struct entry {
        std::string name{};                 ///< tensor name
        dtype type = dtype::f32;            ///< element type
        std::vector<std::int64_t> shape{};  ///< dimensions
        std::uint64_t begin = 0;            ///< first byte, relative to the data buffer
        std::uint64_t end = 0;              ///< one past the last byte
    };

    /// An empty buffer with no tensors.
    safetensors_buffer() = default;

    /// Parses and validates `bytes` (a whole safetensors file); `display_name` is used in
    /// error messages (e.g. the path). Throws safetensors_error when malformed.
    safetensors_buffer(std::span<const std::byte> bytes, std::string display_name)
        : bytes_(bytes), name_(std::move(display_name)) {
        parse();
    }

    /// The name used in messages.
    const std::string& display_name() const noexcept { return name_; }
    /// The `__metadata__` entries (empty if absent).
    const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
    /// All tensors, ordered by name.
    const std::vector<entry>& entries() const noexcept { return entries_; }
    /// Tensor names, in lexicographic order.
    std::vector<std::string_view> names() const {
        std::vector<std::string_view> out;
        out.reserve(entries_.size());
        for (const entry& e : entries_) out.emplace_back(e.name);
        return out;
    }
    /// Number of tensors.
    std::size_t size() const noexcept { return entries_.size(); }
    /// Whether a tensor called `name` exists.
    bool contains(std::string_view name) const noexcept { return lookup(name) != nullptr; }
    /// Offset of the data buffer in the file, 8 + N.
    std::size_t data_offset() const noexcept { return data_offset_; }

    /// The tensor called `name`, or nothing.
    std::optional<tensor_view> find(std::string_view name) const {
        const entry* e = lookup(name);
        if (!e) return std::nullopt;
        return make_view(*e);
    }
    /// The tensor called `name`; throws std::invalid_argument naming file and tensor if absent.
    tensor_view view(std::string_view name) const {
        const entry* e = lookup(name);
        if (!e)
            throw std::invalid_argument("safetensors: " + name_ + ": no tensor '" +
                                        std::string(name) + "'");
        return make_view(*e);
    }

private:
    std::span<const std::byte> bytes_{};
    std::string name_{};
    std::map<std::string, std::string> metadata_{};
    std::vector<entry> entries_{};
    std::size_t data_offset_ = 0;

    const entry* lookup(std::string_view name) const noexcept {
        auto it = std::lower_bound(entries_.begin(), entries_.end(), name,
                                   [](const entry& e, std::string_view n) { return e.name < n; });
        return it != entries_.end() && it->name == name ? &*it : nullptr;
    }

    tensor_view make_view(const entry& e) const {
        const auto* base = bytes_.data() + data_offset_;
        return tensor_view{.name = e.name,
                           .type = e.type,
                           .shape = std::span<const std::int64_t>(e.shape),
                           .data = std::span<const std::byte>(base + e.begin, e.end - e.begin)};
    }

    [[noreturn]] void fail(const std::string& what) const {
        throw safetensors_error("safetensors: " + name_ + ": " + what);
    }
    [[noreturn]] void fail_tensor(const std::string& tensor, const std::string& what) const {
        throw safetensors_error("safetensors: " + name_ + ": tensor '" + tensor + "': " + what);
    }

    void parse() {
        if (bytes_.size() < 8)
            fail("file too small for the 8-byte header length (" +
                 std::to_string(bytes_.size()) + " bytes)");
        std::uint64_t n = 0;
        for (int i = 7; i >= 0; --i) n = (n << 8) | std::to_integer<std::uint64_t>(bytes_[i]);
        if (n > max_header_bytes)
            fail("header length " + std::to_string(n) + " exceeds the limit of " +
                 std::to_string(max_header_bytes) + " bytes");
        if (n > bytes_.size() - 8)
            fail("header length " + std::to_string(n) + " is beyond the end of the file (" +
                 std::to_string(bytes_.size()) + " bytes)");
        data_offset_ = static_cast<std::size_t>(8 + n);
        const std::uint64_t data_size = bytes_.size() - data_offset_;

        // Parse with a callback that records duplicate keys (nlohmann keeps the last one).
        std::vector<std::set<std::string>> keys;
        std::optional<std::string> duplicate;
        const auto cb = [&](int, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
            using ev_t = nlohmann::json::parse_event_t;
            if (ev == ev_t::object_start) keys.emplace_back();
            else if (ev == ev_t::object_end && !keys.empty()) keys.pop_back();
            else if (ev == ev_t::key && !keys.empty() && parsed.is_string() && !duplicate) {
                if (!keys.back().insert(parsed.get_ref<const std::string&>()).second)
                    duplicate = parsed.get<std::string>();
            }
            return true;
        };
        const char* first = reinterpret_cast<const char*>(bytes_.data() + 8);
        nlohmann::json header = nlohmann::json::parse(first, first + n, cb, false);
        if (header.is_discarded()) fail("header is not valid JSON");
        if (duplicate) fail("duplicate key '" + *duplicate + "' in the header");
        if (!header.is_object()) fail("header is not a JSON object");

        for (auto& [key, value] : header.items()) {
            if (key == "__metadata__") {
                if (!value.is_object()) fail("__metadata__ is not an object");
                for (auto& [mk, mv] : value.items()) {
                    if (!mv.is_string()) fail("__metadata__ value of '" + mk + "' is not a string");
                    metadata_.emplace(mk, mv.get<std::string>());
                }
                continue;
            }
            entries_.push_back(parse_entry(key, value, data_size));
        }
        // nlohmann::json objects iterate in key order, so entries_ is sorted by name.
        std::vector<const entry*> by_offset;
        by_offset.reserve(entries_.size());
        for (const entry& e : entries_) by_offset.push_back(&e);
        std::sort(by_offset.begin(), by_offset.end(), [](const entry* a, const entry* b) {
            return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
        });
        for (std::size_t i = 1; i < by_offset.size(); ++i) {
            const entry& a = *by_offset[i - 1];
            const entry& b = *by_offset[i];
            if (b.begin < a.end)
                fail_tensor(b.name, "data_offsets [" + std::to_string(b.begin) + ", " +
                                        std::to_string(b.end) + "] overlap tensor '" + a.name +
                                        "' [" + std::to_string(a.begin) + ", " +
                                        std::to_string(a.end) + "]");
        }
    }

    entry parse_entry(const std::string& name, const nlohmann::json& v,
                      std::uint64_t data_size) const {
        if (!v.is_object()) fail_tensor(name, "entry is not an object");
        for (auto& [k, unused] : v.items()) {
            (void)unused;
            if (k != "dtype" && k != "shape" && k != "data_offsets")
                fail_tensor(name, "unexpected field '" + k + "'");
        }
        for (const char* k : {"dtype", "shape", "data_offsets"})
            if (!v.contains(k)) fail_tensor(name, std::string("missing field '") + k + "'");

        entry e;
        e.name = name;
        const auto& dt = v["dtype"];
        if (!dt.is_string()) fail_tensor(name, "dtype is not a string");
        const auto t = parse_dtype(dt.get_ref<const std::string&>());
        if (!t) fail_tensor(name, "unknown dtype '" + dt.get<std::string>() + "'");
        e.type = *t;

        const auto& shape = v["shape"];
        if (!shape.is_array()) fail_tensor(name, "shape is not an array");
        std::uint64_t count = 1;
        bool overflow = false;
        for (const auto& d : shape) {
            if (d.is_number_integer() && !d.is_number_unsigned())
                fail_tensor(name, "negative dimension in shape " + shape.dump());
            if (!d.is_number_unsigned())
                fail_tensor(name, "shape entry is not a non-negative integer: " + shape.dump());
            const auto x = d.get<std::uint64_t>();
            if (x > static_cast<std::uint64_t>(INT64_MAX))
                fail_tensor(name, "dimension too large in shape " + shape.dump());
            e.shape.push_back(static_cast<std::int64_t>(x));
            std::uint64_t next = 0;
            if (__builtin_mul_overflow(count, x, &next)) overflow = true;
            count = next;
        }
        std::uint64_t bytes = 0;
        if (!overflow && __builtin_mul_overflow(count, dtype_size(e.type), &bytes)) overflow = true;
        // A zero dimension makes the count 0 whatever the rest; only overflow without one fails.
        const bool has_zero = std::find(e.shape.begin(), e.shape.end(), 0) != e.shape.end();
        if (overflow && !has_zero) fail_tensor(name, "element count of shape " + shape.dump() + " overflows");
        if (has_zero) bytes = 0;

        const auto& off = v["data_offsets"];
        if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
            !off[1].is_number_unsigned())
            fail_tensor(name, "data_offsets is not an array of two non-negative integers");
        e.begin = off[0].get<std::uint64_t>();
        e.end = off[1].get<std::uint64_t>();
        const std::string range =
            "data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) + "]";
        if (e.begin > e.end) fail_tensor(name, range + " has begin > end");
        if (e.end > data_size)
            fail_tensor(name, range + " lie outside the data buffer (" +
                                  std::to_string(data_size) + " bytes)");
        if (e.end - e.begin != bytes)
            fail_tensor(name, "shape " + shape.dump() + " × " + std::string(dtype_name(e.type)) +
                                  " is " + std::to_string(bytes) + " bytes but " + range +
                                  " span " + std::to_string(e.end - e.begin));
        return e;
    }
};

/// A read-only, private memory mapping of a whole file. Move-only.
class mapped_file {
public:
    /// No mapping.
    mapped_file() = default;
    /// Maps `path`; throws safetensors_error naming the path on failure.
    explicit mapped_file(const std::filesystem::path& path) {
        const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) throw error(path, "cannot open");
        struct stat st {};
        if (::fstat(fd, &st) != 0) {
            const int e = errno;
            ::close(fd);
            errno = e;
            throw error(path, "cannot stat");
        }
        if (!S_ISREG(st.st_mode)) {
            ::close(fd);
            throw safetensors_error("safetensors: " + path.string() + ": not a regular file");
        }
        size_ = static_cast<std::size_t>(st.st_size);
        if (size_ != 0) {
            void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
            if (p == MAP_FAILED) {
                const int e = errno;
                ::close(fd);
                errno = e;
                throw error(path, "cannot mmap");
            }
            data_ = static_cast<const std::byte*>(p);
        }
        ::close(fd);
    }
    mapped_file(const mapped_file&) = delete;             ///< not copyable
    mapped_file& operator=(const mapped_file&) = delete;  ///< not copyable
    /// Takes over the mapping of `o`.
    mapped_file(mapped_file&& o) noexcept
        : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
    /// Takes over the mapping of `o`, unmapping the current one.
    mapped_file& operator=(mapped_file&& o) noexcept {
        if (this != &o) {
            reset();
            data_ = std::exchange(o.data_, nullptr);
            size_ = std::exchange(o.size_, 0);
        }
        return *this;
    }
    /// Unmaps.
    ~mapped_file() { reset(); }

    /// The mapped bytes.
    std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }

private:
    const std::byte* data_ = nullptr;
    std::size_t size_ = 0;

    void reset() noexcept {
        if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
        data_ = nullptr;
        size_ = 0;
    }
    static safetensors_error error(const std::filesystem::path& path, const char* what) {
        return safetensors_error("safetensors: " + path.string() + ": " + what + ": " +
                                 std::generic_category().message(errno));
    }
};

/// A memory-mapped safetensors file. Move-only; views stay valid while it lives (also
/// across moves).
class safetensors_file {
public:
    /// No file; open() makes a real one.
    safetensors_file() = default;

    /// Maps and validates `path`; throws safetensors_error naming the file when it cannot be
    /// read or is malformed.
    static safetensors_file open(const std::filesystem::path& path) {
        safetensors_file f;
        f.map_ = mapped_file(path);
        f.buf_ = safetensors_buffer(f.map_.bytes(), path.string());
        f.path_ = path;
        return f;
    }

    /// The path it was opened from.
    const std::filesystem::path& path() const noexcept { return path_; }
    /// The `__metadata__` entries.
    const std::map<std::string, std::string>& metadata() const noexcept { return buf_.metadata(); }
    /// Tensor names, in lexicographic order.
    std::vector<std::string_view> names() const { return buf_.names(); }
    /// Number of tensors.
    std::size_t size() const noexcept { return buf_.size(); }
    /// Whether a tensor called `name` exists.
    bool contains(std::string_view name) const noexcept { return buf_.contains(name); }
    /// The tensor called `name`, or nothing.
    std::optional<tensor_view> find(std::string_view name) const { return buf_.find(name); }
    /// The tensor called `name`; throws std::invalid_argument if absent.
    tensor_view view(std::string_view name) const { return buf_.view(name); }
    /// The parsed header and data.
    const safetensors_buffer& buffer() const noexcept { return buf_; }

private:
    std::filesystem::path path_{};
    mapped_file map_{};
    safetensors_buffer buf_{};
};

/// A model folder: `model.safetensors`, or shards listed by `model.safetensors.index.json`
/// (`{"metadata": {...}, "weight_map": {tensor: shard file}}`). Tensors are looked up by name
/// across shards.
class safetensors_model {
public:
    /// No model; open() makes a real one.
    safetensors_model() = default;

    /// Opens a folder (index preferred over a single file), an index file, or a single
    /// safetensors file. Throws safetensors_error naming the file on a malformed index, a
    /// missing shard, or a tensor the index maps to a shard that does not hold it.
    static safetensors_model open(const std::filesystem::path& path) {
        namespace fs = std::filesystem;
        safetensors_model m;
        std::error_code ec;
        if (fs::is_directory(path, ec)) {
            if (fs::exists(path / "model.safetensors.index.json", ec))
                m.open_index(path / "model.safetensors.index.json");
            else if (fs::exists(path / "model.safetensors", ec))
                m.add_single(path / "model.safetensors");
            else
                throw safetensors_error("safetensors: " + path.string() +
                                        ": neither model.safetensors nor "
                                        "model.safetensors.index.json found");
        } else if (path.extension() == ".json") {
            m.open_index(path);
        } else {
            m.add_single(path);
        }
        return m;
    }

    /// The shards (one for a single-file model).
    const std::vector<safetensors_file>& shards() const noexcept { return shards_; }
    /// The index's "metadata" object (null without an index).
    const nlohmann::json& index_metadata() const noexcept { return index_metadata_; }
    /// All tensor names, in lexicographic order.
    std::vector<std::string_view> names() const {
        std::vector<std::string_view> out;
        out.reserve(where_.size());
        for (const auto& [n, s] : where_) out.emplace_back(n);
        return out;
    }
    /// Number of tensors.
    std::size_t size() const noexcept { return where_.size(); }
    /// Whether a tensor called `name` exists.
    bool contains(std::string_view name) const { return where_.find(name) != where_.end(); }
    /// The tensor called `name`, or nothing.
    std::optional<tensor_view> find(std::string_view name) const {
        auto it = where_.find(name);
        if (it == where_.end()) return std::nullopt;
        return shards_[it->second].find(name);
    }
    /// The tensor called `name`; throws std::invalid_argument if absent.
    tensor_view view(std::string_view name) const {
        auto it = where_.find(name);
        if (it == where_.end())
            throw std::invalid_argument("safetensors: model has no tensor '" + std::string(name) + "'");
        return shards_[it->second].view(name);
    }

private:
    std::vector<safetensors_file> shards_{};
    std::map<std::string, std::size_t, std::less<>> where_{};
    nlohmann::json index_metadata_{};

    void add_single(const std::filesystem::path& p) {
        shards_.push_back(safetensors_file::open(p));
        for (std::string_view n : shards_.back().names()) where_.emplace(std::string(n), 0);
    }

    void open_index(const std::filesystem::path& index) {
        namespace fs = std::filesystem;
        const std::string iname = index.string();
        const auto fail = [&](const std::string& what) -> void {
            throw safetensors_error("safetensors: " + iname + ": " + what);
        };
        mapped_file map(index);
        const char* first = reinterpret_cast<const char*>(map.bytes().data());
        nlohmann::json j = nlohmann::json::parse(first, first + map.bytes().size(), nullptr, false);
        if (j.is_discarded()) fail("index is not valid JSON");
        if (!j.is_object()) fail("index is not a JSON object");
        if (j.contains("metadata")) index_metadata_ = j["metadata"];
        if (!j.contains("weight_map") || !j["weight_map"].is_object())
            fail("index has no \"weight_map\" object");
        std::map<std::string, std::size_t> shard_ids;
        std::vector<std::string> shard_names;
        for (auto& [tensor, file] : j["weight_map"].items()) {
            if (!file.is_string()) fail("weight_map entry of '" + tensor + "' is not a string");
            const std::string& f = file.get_ref<const std::string&>();
            const fs::path fp(f);
            if (f.empty() || fp.is_absolute() || fp.has_parent_path())
                fail("weight_map entry of '" + tensor + "' is not a file name in the folder: '" + f + "'");
            auto [it, added] = shard_ids.emplace(f, shard_names.size());
            if (added) shard_names.push_back(f);
            where_.emplace(tensor, it->second);
        }
        for (const std::string& s : shard_names) {
            const fs::path sp = index.parent_path() / s;
            std::error_code ec;
            if (!fs::exists(sp, ec))
                fail("shard '" + s + "' named in the index is missing (" + sp.string() + ")");
            shards_.push_back(safetensors_file::open(sp));
        }
        for (const auto& [tensor, id] : where_)
            if (!shards_[id].contains(tensor))
                fail("tensor '" + tensor + "' is mapped to shard '" + shard_names[id] +
                     "', which does not hold it");
    }
};

/// Declaration of one tensor to write.
struct tensor_spec {
    std::string name{};                 ///< tensor name (not "__metadata__", unique)
    dtype type = dtype::f32;            ///< element type
    std::vector<std::int64_t> shape{};  ///< dimensions (empty for a scalar)
};

/// Streaming safetensors writer. All tensors are declared in the constructor (the header
/// comes first in the file); then write() each one's bytes, in any order, and finish().
/// Only the tensor being written is in memory. Destroying the writer without finish()
/// removes the temporary file.
class safetensors_writer {
public:
    /// Creates `path + ".tmp"` and writes the header. Throws std::invalid_argument for bad
    /// specs (duplicate or reserved names, negative dimensions, sizes that overflow) and
    /// safetensors_error on I/O failure.
    safetensors_writer(std::filesystem::path path, std::vector<tensor_spec> tensors,
                       const std::map<std::string, std::string>& metadata = {})
        : path_(std::move(path)), tmp_(path_.string() + ".tmp") {
        // Layout: decreasing element size (stable), so each tensor is aligned to its element.
        std::vector<std::size_t> order(tensors.size());
        for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
        std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
            return dtype_size(tensors[a].type) > dtype_size(tensors[b].type);
        });
        nlohmann::json header = nlohmann::json::object();
        if (!metadata.empty()) header["__metadata__"] = metadata;
        std::uint64_t offset = 0;
        for (std::size_t i : order) {
            tensor_spec& s = tensors[i];
            if (s.name == "__metadata__")
                throw std::invalid_argument("safetensors_writer: '__metadata__' is not a tensor name");
            if (slots_.count(s.name))
                throw std::invalid_argument("safetensors_writer: duplicate tensor '" + s.name + "'");
            if (parse_dtype(dtype_name(s.type)) != s.type)
                throw std::invalid_argument("safetensors_writer: tensor '" + s.name + "': invalid dtype");
            std::uint64_t bytes = dtype_size(s.type);
            for (std::int64_t d : s.shape) {
                if (d < 0)
                    throw std::invalid_argument("safetensors_writer: tensor '" + s.name +
                                                "': negative dimension");
                if (__builtin_mul_overflow(bytes, static_cast<std::uint64_t>(d), &bytes))
                    throw std::invalid_argument("safetensors_writer: tensor '" + s.name +
                                                "': size overflows");
            }
            if (__builtin_add_overflow(offset, bytes, &bytes))
                throw std::invalid_argument("safetensors_writer: total size overflows");
            header[s.name] = {{"dtype", std::string(dtype_name(s.type))},
                              {"shape", s.shape},
                              {"data_offsets", {offset, bytes}}};
            slots_.emplace(s.name, slot{s.type, offset, bytes - offset, false});
            offset = bytes;
        }
        std::string text = header.dump();
        text.append((8 - text.size() % 8) % 8, ' ');
        data_start_ = 8 + text.size();
        total_ = data_start_ + offset;

        fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd_ < 0) throw io_error("cannot create");
        try {
            std::byte len[8];
            for (int i = 0; i < 8; ++i)
                len[i] = static_cast<std::byte>((static_cast<std::uint64_t>(text.size()) >> (8 * i)) & 0xff);
            pwrite_all(len, 8, 0);
            pwrite_all(reinterpret_cast<const std::byte*>(text.data()), text.size(), 8);
            if (::ftruncate(fd_, static_cast<off_t>(total_)) != 0) throw io_error("cannot resize");
        } catch (...) {
            abandon();
            throw;
        }
    }

    safetensors_writer(const safetensors_writer&) = delete;             ///< not copyable
    safetensors_writer& operator=(const safetensors_writer&) = delete;  ///< not copyable

    /// Removes the temporary file unless finish() succeeded.
    ~safetensors_writer() { abandon(); }

    /// Writes the bytes of tensor `name` (little-endian, exactly its size). Throws
    /// std::invalid_argument for an unknown or already written tensor or a wrong size.
    void write(std::string_view name, std::span<const std::byte> data) {
        if (fd_ < 0) throw std::invalid_argument("safetensors_writer: already finished or failed");
        auto it = slots_.find(name);
        if (it == slots_.end())
            throw std::invalid_argument("safetensors_writer: undeclared tensor '" + std::string(name) + "'");
        slot& s = it->second;
        if (s.written)
            throw std::invalid_argument("safetensors_writer: tensor '" + std::string(name) +
                                        "' written twice");
        if (data.size() != s.size)
            throw std::invalid_argument("safetensors_writer: tensor '" + std::string(name) +
                                        "' needs " + std::to_string(s.size) + " bytes, got " +
                                        std::to_string(data.size()));
        pwrite_all(data.data(), data.size(), data_start_ + s.begin);
        s.written = true;
    }

    /// Writes typed elements; T must match the declared dtype.
    template <tensor_element T>
    void write(std::string_view name, std::span<const T> data) {
        auto it = slots_.find(name);
        if (it != slots_.end() && it->second.type != dtype_of<T>())
            throw std::invalid_argument("safetensors_writer: tensor '" + std::string(name) +
                                        "' is declared " + std::string(dtype_name(it->second.type)) +
                                        ", not " + std::string(dtype_name(dtype_of<T>())));
        static_assert(sizeof(bool) == 1 || !std::same_as<T, bool>);
        write(name, std::as_bytes(data));
    }

    /// Checks every tensor was written, closes the file and renames it to the final path.
    void finish() {
        if (fd_ < 0) throw std::invalid_argument("safetensors_writer: already finished or failed");
        for (const auto& [n, s] : slots_)
            if (!s.written)
                throw std::invalid_argument("safetensors_writer: tensor '" + n + "' was not written");
        if (::close(std::exchange(fd_, -1)) != 0) {
            const auto e = io_error("cannot close");
            std::error_code ec;
            std::filesystem::remove(tmp_, ec);
            throw e;
        }
        std::error_code ec;
        std::filesystem::rename(tmp_, path_, ec);
        if (ec) {
            std::filesystem::remove(tmp_, ec);
            throw safetensors_error("safetensors: " + path_.string() + ": cannot rename from " +
                                    tmp_.string());
        }
    }

    /// Size the finished file will have.
    std::uint64_t file_size() const noexcept { return total_; }

private:
    struct slot {
        dtype type = dtype::f32;
        std::uint64_t begin = 0;
        std::uint64_t size = 0;
        bool written = false;
    };
    std::filesystem::path path_{};
    std::filesystem::path tmp_{};
    std::map<std::string, slot, std::less<>> slots_{};
    std::uint64_t data_start_ = 0;
    std::uint64_t total_ = 0;
    int fd_ = -1;

    void abandon() noexcept {
        if (fd_ >= 0) {
            ::close(fd_);
            fd_ = -1;
            std::error_code ec;
            std::filesystem::remove(tmp_, ec);
        }
    }
    safetensors_error io_error(const char* what) const {
        return safetensors_error("safetensors: " + tmp_.string() + ": " + what + ": " +
                                 std::generic_category().message(errno));
    }
    void pwrite_all(const std::byte* p, std::size_t n, std::uint64_t at) {
        while (n > 0) {
            const ssize_t w = ::pwrite(fd_, p, n, static_cast<off_t>(at));
            if (w < 0) {
                if (errno == EINTR) continue;
                throw io_error("write failed");
            }
            p += w;
            n -= static_cast<std::size_t>(w);
            at += static_cast<std::uint64_t>(w);
        }
    }
};

}  // namespace hlwq::io
