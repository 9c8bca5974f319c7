// digest — sha256sum over a directory tree, hashed by parallel workers.
//
//   walk (std::filesystem) ──► read + SHA-256 (N workers) ──► sort by path ──► print
//
// The walk is a generator source: it yields one regular file at a time, so
// a huge tree is never held in memory before hashing starts. Hashing reads
// files with blocking I/O, so that stage runs with `.blocking = true` on the
// runtime's elastic thread pool instead of holding coroutine workers. The
// channels between stages are bounded: the walk waits when the hashers fall
// behind. Output is sha256sum's: `<hex>  <path>`, sorted by path (byte
// order, as `LC_ALL=C sort`), so that `sha256sum -c` accepts it.
//
// Files that cannot be opened or read are skipped (counted, named on stderr);
// symbolic links are not followed (as `find -type f`).
//
//   digest [dir=/usr/share/doc] [workers=8]
#include <runtime/csp.hpp>
#include <runtime/pipeline.hpp>

#include <fmt/core.h>
#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

namespace fs = std::filesystem;

namespace {

struct file_digest {
    std::string path;
    std::string hex;        // empty: the file could not be read
    std::uintmax_t bytes = 0;
};

// Yields the regular files under root, one per call, then nullopt.
// Directories it may not enter are skipped, as are entries that vanish.
class walker {
public:
    explicit walker(const fs::path& root) {
        std::error_code ec;
        it_ = fs::recursive_directory_iterator(root, fs::directory_options::skip_permission_denied, ec);
        if (ec) fmt::print(stderr, "digest: {}: {}\n", root.string(), ec.message());
    }

    std::optional<std::string> operator()() {
        std::error_code ec;
        while (it_ != fs::recursive_directory_iterator()) {
            const fs::directory_entry& e = *it_;
            const bool regular = e.symlink_status(ec).type() == fs::file_type::regular;
            std::string path = e.path().string();
            it_.increment(ec);
            if (ec) {  // an entry vanished or a directory became unreadable: skip it
                fmt::print(stderr, "digest: {}: {}\n", path, ec.message());
                ec.clear();
            }
            if (regular) return path;
        }
        return std::nullopt;
    }

private:
    fs::recursive_directory_iterator it_;
};

// sha256sum escapes names that contain a backslash or a newline and marks
// such lines with a leading backslash; do the same.
std::string escaped(const std::string& name, bool& marked) {
    marked = false;
    std::string out;
    out.reserve(name.size());
    for (char c : name) {
        if (c == '\\') out += "\\\\", marked = true;
        else if (c == '\n') out += "\\n", marked = true;
        else out += c;
    }
    return out;
}

// Reads and hashes one file on a blocking-pool thread.
file_digest sha256_file(std::string path) {
    file_digest d{std::move(path), {}, 0};
    std::FILE* f = std::fopen(d.path.c_str(), "rb");
    if (!f) return d;
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> closer(f, &std::fclose);
    std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
    if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) return d;
    std::vector<unsigned char> buf(1 << 16);
    for (;;) {
        const std::size_t n = std::fread(buf.data(), 1, buf.size(), f);
        if (n > 0) {
            EVP_DigestUpdate(ctx.get(), buf.data(), n);
            d.bytes += n;
        }
        if (n < buf.size()) {
            if (std::ferror(f)) return d;  // unreadable (EISDIR, EIO...): skipped
            break;
        }
    }
    std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
    unsigned len = 0;
    if (EVP_DigestFinal_ex(ctx.get(), md.data(), &len) != 1) return d;
    static constexpr char digits[] = "0123456789abcdef";
    d.hex.reserve(2 * len);
    for (unsigned i = 0; i < len; ++i) {
        d.hex += digits[md[i] >> 4];
        d.hex += digits[md[i] & 0xf];
    }
    return d;
}

}  // namespace

int main(int argc, char** argv) {
    const fs::path root = argc > 1 ? argv[1] : "/usr/share/doc";
    const unsigned workers = argc > 2 ? static_cast<unsigned>(std::max(1, std::atoi(argv[2]))) : 8;

    using clock = std::chrono::steady_clock;
    const auto start = clock::now();
    auto last_report = start;

    std::vector<file_digest> done;
    std::size_t skipped = 0;
    std::uintmax_t bytes = 0;
    {
        // A runtime of main's own, not the default one: its destructor joins
        // the hashing threads before main returns, so OpenSSL frees their
        // thread-local state (after its own atexit cleanup, it no longer can).
        csp::runtime rt;
        csp::pipeline p(rt);
        auto files = p.source(walker(root));
        auto digests = p.map(files, sha256_file, {.workers = workers, .capacity = 256, .blocking = true});
        for (auto& d : p.drain(digests)) {
            if (d.hex.empty()) {
                fmt::print(stderr, "digest: {}: cannot read, skipped\n", d.path);
                ++skipped;
                continue;
            }
            bytes += d.bytes;
            done.push_back(std::move(d));
            if (const auto now = clock::now(); now - last_report >= std::chrono::seconds(1)) {
                last_report = now;
                fmt::print(stderr, "digest: {} files, {:.1f} MB so far\n", done.size(), bytes / 1e6);
            }
        }
    }

    std::sort(done.begin(), done.end(), [](const auto& a, const auto& b) { return a.path < b.path; });
    std::string out;
    for (const auto& d : done) {
        bool marked = false;
        std::string name = escaped(d.path, marked);
        out += fmt::format("{}{}  {}\n", marked ? "\\" : "", d.hex, name);
        if (out.size() > (1 << 16)) {
            std::fwrite(out.data(), 1, out.size(), stdout);
            out.clear();
        }
    }
    std::fwrite(out.data(), 1, out.size(), stdout);
    std::fflush(stdout);

    const double secs = std::chrono::duration<double>(clock::now() - start).count();
    fmt::print(stderr, "digest: {} files ({} skipped), {:.1f} MB in {:.3f} s with {} workers: {:.0f} files/s, {:.1f} MB/s\n",
               done.size(), skipped, bytes / 1e6, secs, workers, done.size() / secs, bytes / 1e6 / secs);
    return 0;
}
