// SPDX-License-Identifier: MIT
/// @file hlwq_format.hpp
/// @brief The HLWQ checkpoint format, version 1 (docs/format.md): writing its tensors and
/// `quantization_config`, and a loader that opens a model folder (original, HLWQ, or a
/// PolarQuant `polar_engine_v4`/`v5` folder) and hands out, by parameter name, dense tensor
/// views or quantized_view objects over the memory-mapped files.
///
/// ## Writing
/// A quantized parameter `<name>` of shape [rows, cols] (or [experts, rows, cols]) is stored as
/// two safetensors tensors, `<name>.codes` (U8 [.., rows, n_blocks, block_bytes]) and
/// `<name>.norms` (F16 [.., rows, n_blocks]); quantized_tensor_specs() declares them for a
/// safetensors_writer and write_quantized() writes them. The folder's `config.json` gains a
/// `quantization_config` object: to_json(const quantization_config&).
///
/// ## Reading
/// checkpoint::open() recognizes the folder: a `polar_config.json` makes it a PolarQuant
/// folder, a `quantization_config` with `quant_method: "hlwq"` in `config.json` an HLWQ folder,
/// anything else an original (dense) folder. Everything is validated at open; every problem
/// throws format_error naming the file and the tensor. Views of an HLWQ folder point straight
/// into the mapping (zero copy; the centroids are the static Lloyd-Max tables or a
/// `<name>.centroids` tensor). PolarQuant codes are repacked on first use (from_polar) and the
/// checkpoint owns the converted matrices.
///
/// This header knows the format, not models: which tensors to quantize is the caller's call.
#pragma once

#include "../codebook.hpp"
#include "../float16.hpp"
#include "../quantize.hpp"
#include "../rotation.hpp"
#include "polar_engine.hpp"
#include "safetensors.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace hlwq::io {

/// A malformed or unsupported HLWQ / PolarQuant checkpoint (or a misuse of one, like asking
/// for a tensor it does not hold); the message names the file and, where there is one, the
/// tensor. Derives from safetensors_error, so one handler catches every checkpoint problem.
class format_error : public safetensors_error {
public:
    using safetensors_error::safetensors_error;
};

/// The HLWQ checkpoint format version this header writes and the only one it reads.
inline constexpr int hlwq_format_version = 1;

/// How one quantized parameter is stored: its original shape and its bit width.
struct quantized_tensor_info {
    std::vector<std::int64_t> shape{};  ///< [rows, cols] or [experts, rows, cols]
    int bits = 0;                       ///< code width, 1..8
    std::string centroids{};            ///< F32 tensor of 2^bits own centroids; empty = Lloyd-Max
};

/// The `quantization_config` object of an HLWQ folder's config.json (docs/format.md).
struct quantization_config {
    int format_version = hlwq_format_version;               ///< always 1 when written here
    int bits = 4;                                           ///< default bit width
    std::size_t block_size = 128;                           ///< columns per block
    std::optional<std::uint64_t> sign_seed = std::nullopt;  ///< seed of D (rotation H·D), or none
    std::map<std::string, quantized_tensor_info, std::less<>> tensors{};  ///< every quantized parameter
};

/// Name of the codes tensor of quantized parameter `name`: `<name>.codes`.
inline std::string codes_name(std::string_view name) { return std::string(name) + ".codes"; }
/// Name of the norms tensor of quantized parameter `name`: `<name>.norms`.
inline std::string norms_name(std::string_view name) { return std::string(name) + ".norms"; }

/// The JSON object of `qc`, to store as `quantization_config` in config.json.
inline nlohmann::json to_json(const quantization_config& qc) {
    nlohmann::json t = nlohmann::json::object();
    for (const auto& [name, info] : qc.tensors) {
        nlohmann::json e = {{"bits", info.bits}, {"shape", info.shape}};
        if (!info.centroids.empty()) e["centroids"] = info.centroids;
        t[name] = std::move(e);
    }
    return {{"quant_method", "hlwq"},
            {"format_version", qc.format_version},
            {"bits", qc.bits},
            {"block_size", qc.block_size},
            {"codebook", "lloyd-max-gaussian"},
            {"packing", "planes-v1"},
            {"sign_seed", qc.sign_seed ? nlohmann::json(*qc.sign_seed) : nlohmann::json(nullptr)},
            {"tensors", std::move(t)}};
}

/// Parses and validates a `quantization_config` object; `where` (the config.json path) goes
/// into error messages.
/// @throws format_error for a quant_method other than "hlwq", an unknown format_version,
///   packing or codebook, bits outside 1..8, a block size that is not a power of two in
///   16..1024, a bad sign_seed, or a `tensors` entry without a 2-D / 3-D positive shape.
inline quantization_config parse_quantization_config(const nlohmann::json& j, const std::string& where) {
    const auto fail = [&](const std::string& what) -> void {
        throw format_error("hlwq: " + where + ": quantization_config: " + what);
    };
    if (!j.is_object()) fail("is not a JSON object");
    quantization_config qc;
    const auto method = j.find("quant_method");
    if (method == j.end() || !method->is_string() || method->get<std::string>() != "hlwq")
        fail("quant_method is " + (method == j.end() ? std::string("missing") : method->dump()) +
             ", not \"hlwq\"");
    const auto version = j.find("format_version");
    if (version == j.end() || !version->is_number_integer())
        fail("format_version is missing or not an integer");
    if (version->get<std::int64_t>() != hlwq_format_version)
        fail("unknown format_version " + version->dump() + " (this reader knows version " +
             std::to_string(hlwq_format_version) + ")");
    const auto get_bits = [&](const nlohmann::json& v, const std::string& what) {
        if (!v.is_number_integer() || v.get<std::int64_t>() < min_bits || v.get<std::int64_t>() > max_bits)
            fail(what + " " + v.dump() + " is outside 1..8");
        return static_cast<int>(v.get<std::int64_t>());
    };
    if (!j.contains("bits")) fail("bits is missing");
    qc.bits = get_bits(j["bits"], "bits");
    const auto block = j.find("block_size");
    if (block == j.end() || !block->is_number_integer() || block->get<std::int64_t>() <= 0 ||
        !is_rotation_size(static_cast<std::size_t>(block->get<std::int64_t>())))
        fail("block_size " + (block == j.end() ? std::string("missing") : block->dump()) +
             " is not a power of two in 16..1024");
    qc.block_size = static_cast<std::size_t>(block->get<std::int64_t>());
    if (const auto cb = j.find("codebook"); cb != j.end() && *cb != "lloyd-max-gaussian")
        fail("unknown codebook " + cb->dump() + " (this reader knows \"lloyd-max-gaussian\")");
    if (const auto p = j.find("packing"); p != j.end() && *p != "planes-v1")
        fail("unknown packing " + p->dump() + " (this reader knows \"planes-v1\")");
    if (const auto s = j.find("sign_seed"); s != j.end() && !s->is_null()) {
        if (!s->is_number_unsigned()) fail("sign_seed " + s->dump() + " is neither null nor a non-negative integer");
        qc.sign_seed = s->get<std::uint64_t>();
    }
    const auto tensors = j.find("tensors");
    if (tensors == j.end() || !tensors->is_object()) fail("tensors is missing or not an object");
    for (const auto& [name, e] : tensors->items()) {
        const std::string what = "tensor '" + name + "'";
        if (!e.is_object()) fail(what + ": entry is not an object");
        quantized_tensor_info info;
        info.bits = e.contains("bits") ? get_bits(e["bits"], what + ": bits") : qc.bits;
        const auto shape = e.find("shape");
        if (shape == e.end() || !shape->is_array() || (shape->size() != 2 && shape->size() != 3))
            fail(what + ": shape must be [rows, cols] or [experts, rows, cols]");
        for (const auto& d : *shape) {
            if (!d.is_number_integer() || d.get<std::int64_t>() <= 0 || d.get<std::int64_t>() > (std::int64_t{1} << 40))
                fail(what + ": shape " + shape->dump() + " has a dimension that is not a positive integer");
            info.shape.push_back(d.get<std::int64_t>());
        }
        if (const auto c = e.find("centroids"); c != e.end()) {
            if (!c->is_string() || c->get<std::string>().empty()) fail(what + ": centroids is not a tensor name");
            info.centroids = c->get<std::string>();
        }
        qc.tensors.emplace(name, std::move(info));
    }
    return qc;
}

/// Shape of the `.codes` tensor of a parameter of `shape` ([rows, cols] or
/// [experts, rows, cols]): [.., rows, n_blocks, block · bits / 8].
/// @throws std::invalid_argument for bits outside 1..8, a bad block size, or a shape that is not
///   2-D / 3-D with positive dimensions.
inline std::vector<std::int64_t> codes_shape(std::span<const std::int64_t> shape, int bits, std::size_t block) {
    check_bits(bits);
    check_rotation_size(block, "block size");
    if ((shape.size() != 2 && shape.size() != 3) ||
        std::any_of(shape.begin(), shape.end(), [](std::int64_t d) { return d <= 0; }))
        throw std::invalid_argument("hlwq::io: a quantized tensor must be 2-D or 3-D with positive dimensions");
    std::vector<std::int64_t> out(shape.begin(), shape.end() - 1);
    const auto b = static_cast<std::int64_t>(block);
    out.push_back((shape.back() + b - 1) / b);
    out.push_back(b * bits / 8);
    return out;
}

/// Shape of the `.norms` tensor of a parameter of `shape`: [.., rows, n_blocks].
/// @throws std::invalid_argument as codes_shape().
inline std::vector<std::int64_t> norms_shape(std::span<const std::int64_t> shape, std::size_t block) {
    std::vector<std::int64_t> out = codes_shape(shape, 1, block);
    out.pop_back();
    return out;
}

/// The two safetensors declarations (`<name>.codes` U8, `<name>.norms` F16) of a parameter of
/// `shape` quantized at `bits`, for a safetensors_writer.
/// @throws std::invalid_argument as codes_shape().
inline std::vector<tensor_spec> quantized_tensor_specs(std::string_view name, std::span<const std::int64_t> shape,
                                                       int bits, std::size_t block) {
    return {tensor_spec{codes_name(name), dtype::u8, codes_shape(shape, bits, block)},
            tensor_spec{norms_name(name), dtype::f16, norms_shape(shape, block)}};
}

/// Writes the codes and norms of `q` as `<name>.codes` and `<name>.norms` (declared with
/// quantized_tensor_specs()). A 3-D parameter [experts, rows, cols] is written as one q of
/// experts · rows rows: quantizing row by row makes the two byte-identical.
/// @throws std::invalid_argument if q is inconsistent or its sizes differ from the
///   declarations, safetensors_error on a write error.
inline void write_quantized(safetensors_writer& w, std::string_view name, const quantized_view& q) {
    check_quantized(q);
    w.write(codes_name(name), std::as_bytes(q.codes));
    w.write(norms_name(name), std::as_bytes(q.norms));
}

/// Returns `config` (the original config.json object) with `quantization_config` set to `qc`.
/// @throws std::invalid_argument if `config` is not a JSON object.
inline nlohmann::json with_quantization_config(nlohmann::json config, const quantization_config& qc) {
    if (!config.is_object()) throw std::invalid_argument("hlwq::io: config.json is not a JSON object");
    config["quantization_config"] = to_json(qc);
    return config;
}

/// What kind of folder a checkpoint was opened from.
enum class checkpoint_format {
    original,  ///< dense safetensors (bf16 / f16 / f32), no quantization
    hlwq,      ///< HLWQ format v1 (`quantization_config.quant_method == "hlwq"`)
    polar,     ///< a PolarQuant folder (`polar_config.json`, polar_engine_v4 / v5)
};

/// Options of checkpoint::open().
struct checkpoint_options {
    /// Bit order of `packed_q5` PolarQuant codes when polar_config.json does not say
    /// (`"q5_order": "lsb"` or `"msb"`, top level or per layer): q5_lsb or q5_msb.
    polar_layout polar_q5 = polar_layout::q5_lsb;
};

/// An opened model folder: parameters by name, as dense views or quantized views over the
/// mapped files. Move-only; views stay valid while it lives (also across moves).
/// quantized() may be called from several threads at once.
class checkpoint {
public:
    /// Nothing opened; open() makes a real one.
    checkpoint() = default;

    /// Opens the model folder `dir` (see the file comment for how its kind is recognized) and
    /// validates it.
    /// @throws format_error naming the file and tensor for an unreadable or invalid
    ///   config.json / polar_config.json / quantization_config, a quantized tensor whose
    ///   `.codes` / `.norms` / centroids are missing or of the wrong dtype or shape;
    ///   safetensors_error for malformed safetensors files or a missing weights file.
    static checkpoint open(const std::filesystem::path& dir, const checkpoint_options& options = {}) {
        namespace fs = std::filesystem;
        checkpoint c;
        c.dir_ = dir;
        c.convert_mutex_ = std::make_unique<std::mutex>();
        std::error_code ec;
        if (!fs::is_directory(dir, ec)) throw format_error("hlwq: " + dir.string() + ": not a folder");
        if (fs::exists(dir / "config.json", ec)) c.config_ = read_json(dir / "config.json");
        else c.config_ = nlohmann::json::object();
        if (!c.config_.is_object()) throw format_error("hlwq: " + (dir / "config.json").string() + ": not a JSON object");
        c.model_ = safetensors_model::open(dir);
        if (fs::exists(dir / "polar_config.json", ec)) {
            c.format_ = checkpoint_format::polar;
            c.load_polar(read_json(dir / "polar_config.json"), options);
        } else if (const auto q = c.config_.find("quantization_config"); q != c.config_.end()) {
            c.format_ = checkpoint_format::hlwq;
            c.load_hlwq(*q);
        } else {
            c.format_ = checkpoint_format::original;
        }
        for (std::string_view n : c.model_.names())
            if (!c.hidden_.count(std::string(n)) && !c.params_.count(n)) c.params_.emplace(std::string(n), param{});
        return c;
    }

    /// The kind of folder.
    checkpoint_format format() const noexcept { return format_; }
    /// The folder it was opened from.
    const std::filesystem::path& path() const noexcept { return dir_; }
    /// config.json (an empty object when the folder has none).
    const nlohmann::json& config() const noexcept { return config_; }
    /// The parsed quantization_config (HLWQ folders; defaults otherwise).
    const quantization_config& quantization() const noexcept { return qc_; }
    /// The underlying safetensors files (all stored tensors, by their stored names).
    const safetensors_model& tensors() const noexcept { return model_; }

    /// Parameter names, sorted: dense tensors by name, quantized parameters by their original
    /// name (not their `.codes` / `.norms` / centroids tensors).
    std::vector<std::string> names() const {
        std::vector<std::string> out;
        out.reserve(params_.size());
        for (const auto& [n, p] : params_) out.push_back(n);
        return out;
    }
    /// Whether a parameter called `name` exists.
    bool contains(std::string_view name) const noexcept { return params_.find(name) != params_.end(); }
    /// Whether parameter `name` is stored quantized.
    /// @throws format_error if there is no such parameter.
    bool is_quantized(std::string_view name) const { return get(name).quantized; }
    /// Code width of quantized parameter `name` (0 for a dense one).
    /// @throws format_error if there is no such parameter.
    int bits(std::string_view name) const { return get(name).bits; }
    /// The original shape of parameter `name` (also of a quantized one).
    /// @throws format_error if there is no such parameter.
    std::vector<std::int64_t> shape(std::string_view name) const {
        const param& p = get(name);
        if (p.quantized) return p.shape;
        const tensor_view v = model_.view(name);
        return {v.shape.begin(), v.shape.end()};
    }
    /// Number of experts of a quantized 3-D parameter [experts, rows, cols]; 0 for a 2-D one.
    /// @throws format_error if there is no such quantized parameter.
    std::size_t experts(std::string_view name) const {
        const param& p = get_quantized(name);
        return p.shape.size() == 3 ? static_cast<std::size_t>(p.shape[0]) : 0;
    }

    /// The dense tensor `name` (zero copy).
    /// @throws format_error if there is no such parameter or it is quantized.
    tensor_view dense(std::string_view name) const {
        const param& p = get(name);
        if (p.quantized)
            throw format_error("hlwq: " + dir_.string() + ": tensor '" + std::string(name) +
                               "' is quantized; use quantized()");
        return model_.view(name);
    }

    /// The quantized 2-D parameter `name`: zero copy for an HLWQ folder; for a PolarQuant
    /// folder, a view of the repacked copy the checkpoint keeps (until release()).
    /// @throws format_error if there is no such parameter, it is dense, or it is 3-D;
    ///   std::invalid_argument if PolarQuant codes do not fit their bit width.
    quantized_view quantized(std::string_view name) const {
        const param& p = get_quantized(name);
        if (p.shape.size() == 3)
            throw format_error("hlwq: " + dir_.string() + ": tensor '" + std::string(name) + "' holds " +
                               std::to_string(p.shape[0]) + " experts; use quantized(name, expert)");
        return view_of(name, p);
    }

    /// Expert `expert` of the quantized 3-D parameter `name` [experts, rows, cols]: a
    /// rows × cols view (zero copy).
    /// @throws format_error if there is no such 3-D parameter or expert >= experts(name).
    quantized_view quantized(std::string_view name, std::size_t expert) const {
        const param& p = get_quantized(name);
        if (p.shape.size() != 3)
            throw format_error("hlwq: " + dir_.string() + ": tensor '" + std::string(name) + "' is not a 3-D expert tensor");
        if (expert >= static_cast<std::size_t>(p.shape[0]))
            throw format_error("hlwq: " + dir_.string() + ": tensor '" + std::string(name) + "': expert " +
                               std::to_string(expert) + " of " + std::to_string(p.shape[0]));
        quantized_view v = view_of(name, p);
        v.rows = static_cast<std::size_t>(p.shape[1]);
        const std::size_t blocks = v.rows * v.blocks_per_row();
        v.codes = v.codes.subspan(expert * blocks * v.block_bytes(), blocks * v.block_bytes());
        v.norms = v.norms.subspan(expert * blocks, blocks);
        return v;
    }

    /// Drops the repacked copy of PolarQuant parameter `name` (views of it become invalid);
    /// nothing for other folders. Lets a converter stream a PolarQuant folder.
    void release(std::string_view name) {
        const std::lock_guard lock(*convert_mutex_);
        if (auto it = converted_.find(name); it != converted_.end()) converted_.erase(it);
    }

private:
    struct param {
        bool quantized = false;
        int bits = 0;
        std::vector<std::int64_t> shape{};
        std::span<const std::uint8_t> codes{};  // HLWQ: into the mapping
        std::span<const half> norms{};          // HLWQ: into the mapping
        std::span<const float> centroids{};     // HLWQ: static tables or the mapping
        std::optional<polar_weight> polar = std::nullopt;  // PolarQuant: views into the mapping
    };

    std::filesystem::path dir_{};
    checkpoint_format format_ = checkpoint_format::original;
    nlohmann::json config_{};
    quantization_config qc_{};
    safetensors_model model_{};
    std::map<std::string, param, std::less<>> params_{};
    std::set<std::string> hidden_{};  // stored tensors that belong to a quantized parameter
    std::unique_ptr<std::mutex> convert_mutex_{};
    mutable std::map<std::string, std::unique_ptr<quantized_matrix>, std::less<>> converted_{};

    static nlohmann::json read_json(const std::filesystem::path& p) {
        std::ifstream in(p, std::ios::binary);
        if (!in) throw format_error("hlwq: " + p.string() + ": cannot open");
        nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
        if (j.is_discarded()) throw format_error("hlwq: " + p.string() + ": not valid JSON");
        return j;
    }

    const param& get(std::string_view name) const {
        const auto it = params_.find(name);
        if (it == params_.end())
            throw format_error("hlwq: " + dir_.string() + ": no tensor '" + std::string(name) + "'");
        return it->second;
    }
    const param& get_quantized(std::string_view name) const {
        const param& p = get(name);
        if (!p.quantized)
            throw format_error("hlwq: " + dir_.string() + ": tensor '" + std::string(name) +
                               "' is not quantized; use dense()");
        return p;
    }

    /// The shard file holding stored tensor `stored` (for messages).
    std::string file_of(std::string_view stored) const {
        for (const safetensors_file& f : model_.shards())
            if (f.contains(stored)) return f.path().string();
        return dir_.string();
    }

    /// The stored tensor `stored` of quantized parameter `name`, checked for dtype and shape.
    tensor_view stored_tensor(const std::string& name, const std::string& stored, dtype type,
                              const std::vector<std::int64_t>& shape) const {
        const auto v = model_.find(stored);
        if (!v)
            throw format_error("hlwq: " + dir_.string() + ": quantized tensor '" + name + "': tensor '" + stored +
                               "' is missing");
        const std::string where = "hlwq: " + file_of(stored) + ": tensor '" + stored + "': ";
        if (v->type != type)
            throw format_error(where + "dtype is " + std::string(dtype_name(v->type)) + ", expected " +
                               std::string(dtype_name(type)));
        if (!std::equal(v->shape.begin(), v->shape.end(), shape.begin(), shape.end()))
            throw format_error(where + "shape " + nlohmann::json(std::vector<std::int64_t>(v->shape.begin(), v->shape.end())).dump() +
                               ", expected " + nlohmann::json(shape).dump());
        if (type != dtype::u8 && reinterpret_cast<std::uintptr_t>(v->data.data()) % dtype_size(type) != 0)
            throw format_error(where + "data is not aligned to its element size");
        return *v;
    }

    void load_hlwq(const nlohmann::json& j) {
        qc_ = parse_quantization_config(j, (dir_ / "config.json").string());
        for (const auto& [name, info] : qc_.tensors) {
            param p;
            p.quantized = true;
            p.bits = info.bits;
            p.shape = info.shape;
            const std::string cn = codes_name(name), nn = norms_name(name);
            const tensor_view codes = stored_tensor(name, cn, dtype::u8, codes_shape(info.shape, info.bits, qc_.block_size));
            const tensor_view norms = stored_tensor(name, nn, dtype::f16, norms_shape(info.shape, qc_.block_size));
            p.codes = {reinterpret_cast<const std::uint8_t*>(codes.data.data()), codes.data.size()};
            p.norms = norms.as<half>();
            hidden_.insert(cn);
            hidden_.insert(nn);
            if (info.centroids.empty()) {
                p.centroids = lloyd_max_view(info.bits).centroids;
            } else {
                const tensor_view c = stored_tensor(name, info.centroids, dtype::f32,
                                                    {std::int64_t{1} << info.bits});
                p.centroids = c.as<float>();
                if (!std::all_of(p.centroids.begin(), p.centroids.end(), [](float x) { return std::isfinite(x); }) ||
                    !std::is_sorted(p.centroids.begin(), p.centroids.end()))
                    throw format_error("hlwq: " + file_of(info.centroids) + ": tensor '" + info.centroids +
                                       "': centroids must be finite and ascending");
                hidden_.insert(info.centroids);
            }
            params_.emplace(name, std::move(p));
        }
    }

    void load_polar(const nlohmann::json& j, const checkpoint_options& options) {
        const std::string where = (dir_ / "polar_config.json").string();
        const auto fail = [&](const std::string& what) -> void { throw format_error("hlwq: " + where + ": " + what); };
        if (!j.is_object()) fail("not a JSON object");
        const auto fmt = j.find("format");
        if (fmt == j.end() || (*fmt != "polar_engine_v4" && *fmt != "polar_engine_v5"))
            fail("format is " + (fmt == j.end() ? std::string("missing") : fmt->dump()) +
                 ", expected \"polar_engine_v4\" or \"polar_engine_v5\"");
        const auto block = j.find("block_size");
        if (block == j.end() || !block->is_number_integer() || block->get<std::int64_t>() <= 0 ||
            !is_rotation_size(static_cast<std::size_t>(block->get<std::int64_t>())))
            fail("block_size is missing or not a power of two in 16..1024");
        const auto bs = static_cast<std::size_t>(block->get<std::int64_t>());
        polar_layout q5 = options.polar_q5;
        const auto q5_order = [&](const nlohmann::json& o, polar_layout dflt, const std::string& what) {
            const auto it = o.find("q5_order");
            if (it == o.end()) return dflt;
            if (*it == "lsb") return polar_layout::q5_lsb;
            if (*it == "msb") return polar_layout::q5_msb;
            fail(what + "q5_order is " + it->dump() + ", expected \"lsb\" or \"msb\"");
            return dflt;
        };
        q5 = q5_order(j, q5, "");
        // Layer entries: under "layers", or objects at the top level.
        const nlohmann::json* layers = &j;
        if (const auto l = j.find("layers"); l != j.end()) {
            if (!l->is_object()) fail("layers is not an object");
            layers = &*l;
        }
        for (const auto& item : layers->items()) {
            const std::string& prefix = item.key();
            const nlohmann::json& e = item.value();
            if (!e.is_object()) continue;  // top-level scalars (format, block_size, ...)
            const std::string what = "layer '" + prefix + "': ";
            const auto size = [&](const char* key) {
                const auto it = e.find(key);
                if (it == e.end() || !it->is_number_integer() || it->get<std::int64_t>() <= 0 ||
                    it->get<std::int64_t>() > (std::int64_t{1} << 40))
                    fail(what + key + " is missing or not a positive integer");
                return static_cast<std::size_t>(it->get<std::int64_t>());
            };
            polar_weight w;
            w.out_features = size("out_features");
            w.in_features = size("in_features");
            w.in_features_padded = size("in_features_padded");
            w.block = bs;
            const auto bits = e.find("bits");
            if (bits == e.end() || !bits->is_number_integer() || bits->get<std::int64_t>() < min_bits ||
                bits->get<std::int64_t>() > max_bits)
                fail(what + "bits " + (bits == e.end() ? std::string("missing") : bits->dump()) + " is outside 1..8");
            w.bits = static_cast<int>(bits->get<std::int64_t>());
            const std::size_t nb = (w.in_features + bs - 1) / bs;
            if (w.in_features_padded != nb * bs)
                fail(what + "in_features_padded " + std::to_string(w.in_features_padded) +
                     " is not in_features rounded up to the block");
            if (const auto n = e.find("n_blocks"); n != e.end() && (!n->is_number_integer() || n->get<std::int64_t>() != static_cast<std::int64_t>(nb)))
                fail(what + "n_blocks " + n->dump() + ", expected " + std::to_string(nb));
            const bool packed = e.value("packed", false), packed_q5 = e.value("packed_q5", false);
            if (packed && packed_q5) fail(what + "both packed and packed_q5");
            w.layout = packed ? polar_layout::nibbles : packed_q5 ? q5_order(e, q5, what) : polar_layout::int8;
            if (packed && w.bits > 4) fail(what + "packed needs bits <= 4, got " + std::to_string(w.bits));
            if (packed_q5 && w.bits != 5) fail(what + "packed_q5 needs bits = 5, got " + std::to_string(w.bits));
            const std::string name = prefix + ".weight";
            const std::string cn = prefix + ".codes", nn = prefix + ".norms", ct = prefix + ".ct_scaled";
            const auto rows = static_cast<std::int64_t>(w.out_features);
            const auto row_bytes = static_cast<std::int64_t>(polar_row_bytes(w.layout, w.in_features_padded));
            const auto c = model_.find(cn);
            if (!c) fail(what + "tensor '" + cn + "' is missing");
            const tensor_view codes =
                stored_tensor(name, cn, c->type == dtype::i8 ? dtype::i8 : dtype::u8, {rows, row_bytes});
            w.codes = {reinterpret_cast<const std::uint8_t*>(codes.data.data()), codes.data.size()};
            w.norms = stored_tensor(name, nn, dtype::f16, {rows, static_cast<std::int64_t>(nb)}).as<half>();
            const auto t = model_.find(ct);
            if (!t) fail(what + "tensor '" + ct + "' is missing");
            if (t->numel() != (std::size_t{1} << w.bits) || t->type != dtype::f32)
                throw format_error("hlwq: " + file_of(ct) + ": tensor '" + ct + "': expected " +
                                   std::to_string(std::size_t{1} << w.bits) + " F32 centroids");
            w.ct_scaled = t->as<float>();
            param p;
            p.quantized = true;
            p.bits = w.bits;
            p.shape = {rows, static_cast<std::int64_t>(w.in_features)};
            p.polar = w;
            hidden_.insert(cn);
            hidden_.insert(nn);
            hidden_.insert(ct);
            params_.emplace(name, std::move(p));
        }
    }

    quantized_view view_of(std::string_view name, const param& p) const {
        if (p.polar) {
            const std::lock_guard lock(*convert_mutex_);
            auto it = converted_.find(name);
            if (it == converted_.end())
                it = converted_.emplace(std::string(name), std::make_unique<quantized_matrix>(from_polar(*p.polar))).first;
            return it->second->view();
        }
        quantized_view v;
        v.rows = 1;
        for (std::size_t i = 0; i + 1 < p.shape.size(); ++i) v.rows *= static_cast<std::size_t>(p.shape[i]);
        v.cols = static_cast<std::size_t>(p.shape.back());
        v.bits = p.bits;
        v.block = qc_.block_size;
        v.sign_seed = qc_.sign_seed;
        v.centroids = p.centroids;
        v.codes = p.codes;
        v.norms = p.norms;
        return v;
    }
};

}  // namespace hlwq::io
