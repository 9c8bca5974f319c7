// wordfreq — the K most frequent words of a set of files, counted in parallel.
//
//   files (walk) ──► read (2 blocking workers) ──► count (N tasks, one map each) ──► merge ──► top K
//
// A word is a maximal run of ASCII letters, lowercased: every byte that is
// not A-Z or a-z (digits, punctuation, '_', apostrophes, any byte >= 0x80
// such as UTF-8 letters) separates words, and A-Z become a-z. That is
// exactly `tr -cs 'A-Za-z' '\n' | tr 'A-Z' 'a-z'` in the C locale. Files
// are separate: a word never spans the end of one file and the start of the
// next.
//
// Each counting worker owns its own hash map, so counting takes no lock;
// the maps are merged once every worker has finished. Ties in the ranking
// are broken by the word, in byte order: count descending, then word
// ascending (as `sort -k1,1nr -k2,2` in the C locale).
//
// Output: `<count> <word>`, one per line, then a summary on stderr.
//
//   wordfreq [dir-or-file=/usr/share/common-licenses] [k=20] [workers=4]
#include <runtime/csp.hpp>
#include <runtime/pipeline.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace fs = std::filesystem;

namespace {

using counts = std::unordered_map<std::string, std::size_t>;

// Regular files under root (root itself if it is a file), sorted.
std::vector<std::string> list_files(const fs::path& root) {
    std::vector<std::string> files;
    std::error_code ec;
    if (fs::is_regular_file(root, ec)) {
        files.push_back(root.string());
        return files;
    }
    fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec), end;
    if (ec) fmt::print(stderr, "wordfreq: {}: {}\n", root.string(), ec.message());
    for (; it != end; it.increment(ec)) {
        if (ec) break;
        // Links are not followed (as `find -type f`): /usr/share/common-licenses
        // links GPL to GPL-3, which would otherwise be counted twice.
        if (it->symlink_status(ec).type() == fs::file_type::regular) files.push_back(it->path().string());
    }
    std::sort(files.begin(), files.end());
    return files;
}

struct text {
    std::string path;
    std::string bytes;
    bool ok = false;
};

text read_file(std::string path) {
    text t{std::move(path), {}, false};
    std::ifstream in(t.path, std::ios::binary);
    if (!in) return t;
    std::ostringstream ss;
    ss << in.rdbuf();
    t.bytes = std::move(ss).str();
    t.ok = !in.bad();
    return t;
}

constexpr bool is_letter(unsigned char c) noexcept { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
constexpr char lower(unsigned char c) noexcept { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : static_cast<char>(c); }

// Adds the words of s to m; returns how many words there were.
std::size_t count_words(std::string_view s, counts& m) {
    std::size_t words = 0;
    std::string w;
    for (std::size_t i = 0; i < s.size();) {
        if (!is_letter(static_cast<unsigned char>(s[i]))) {
            ++i;
            continue;
        }
        w.clear();
        while (i < s.size() && is_letter(static_cast<unsigned char>(s[i]))) w += lower(static_cast<unsigned char>(s[i++]));
        ++m[w];
        ++words;
    }
    return words;
}

}  // namespace

int main(int argc, char** argv) {
    const fs::path root = argc > 1 ? argv[1] : "/usr/share/common-licenses";
    const std::size_t k = argc > 2 ? static_cast<std::size_t>(std::max(0, std::atoi(argv[2]))) : 20;
    const unsigned workers = argc > 3 ? static_cast<unsigned>(std::max(1, std::atoi(argv[3]))) : 4;

    const auto start = std::chrono::steady_clock::now();
    std::vector<std::string> files = list_files(root);

    // One map, one word count and one list of unreadable files per counting
    // worker: nothing is shared while counting.
    struct tally {
        counts map;
        std::size_t words = 0;
        std::vector<std::string> unreadable;
    };
    std::vector<tally> tallies(workers);
    std::atomic<std::size_t> files_done{0};
    const std::size_t file_count = files.size();
    {
        csp::pipeline p;
        auto paths = p.source(std::move(files));
        auto texts = p.map(paths, read_file, {.workers = 2, .capacity = 8, .blocking = true});
        // The counting stage: N tasks, each ranging over the same channel
        // (each text goes to exactly one of them). A task_group, so a failure
        // in one cancels the others and wait() rethrows it. Each task holds
        // a closing_sender of `finished`: it closes when the last one ends.
        csp::task_group counters(p.rt());
        auto finished = csp::make_chan<int>();
        for (unsigned i = 0; i < workers; ++i) {
            counters.go([texts, done = finished.as_closing_sender(), &t = tallies[i], &files_done]() -> csp::task<> {
                while (auto txt = co_await texts.async_recv(csp::use_task)) {
                    if (txt->ok) t.words += count_words(txt->bytes, t.map);
                    else t.unreadable.push_back(std::move(txt->path));
                    files_done.fetch_add(1, std::memory_order_relaxed);
                }
            });
        }
        // Progress once a second until the counters are done.
        csp::ticker ticks = csp::tick(std::chrono::seconds(1), p.rt());
        for (bool running = true; running;) {
            csp::select(csp::on_recv(finished, [&](std::optional<int>) { running = false; }),
                        csp::on_recv(ticks.chan(), [&](std::optional<csp::clock_time>) {
                            fmt::print(stderr, "wordfreq: {}/{} files counted\n",
                                       files_done.load(std::memory_order_relaxed), file_count);
                        }));
        }
        ticks.stop();
        counters.wait();
        p.wait();  // rethrows a reading error, if any
    }

    std::size_t all_words = 0, unreadable = 0;
    std::vector<counts> maps;
    for (auto& t : tallies) {
        all_words += t.words;
        unreadable += t.unreadable.size();
        for (auto& f : t.unreadable) fmt::print(stderr, "wordfreq: {}: cannot read, skipped\n", f);
        maps.push_back(std::move(t.map));
    }

    // Merge: the largest map absorbs the others.
    auto biggest = std::max_element(maps.begin(), maps.end(),
                                    [](const counts& a, const counts& b) { return a.size() < b.size(); });
    counts total = std::move(*biggest);
    for (auto& m : maps)
        if (&m != &*biggest)
            for (auto& [w, c] : m) total[w] += c;

    std::vector<std::pair<std::string, std::size_t>> ranked(total.begin(), total.end());
    auto by_rank = [](const auto& a, const auto& b) { return a.second != b.second ? a.second > b.second : a.first < b.first; };
    const std::size_t shown = std::min(k, ranked.size());
    std::partial_sort(ranked.begin(), ranked.begin() + static_cast<std::ptrdiff_t>(shown), ranked.end(), by_rank);
    for (std::size_t i = 0; i < shown; ++i) fmt::print("{} {}\n", ranked[i].second, ranked[i].first);

    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    fmt::print(stderr, "wordfreq: {} words, {} distinct, {} files ({} unreadable), {} counting workers, {:.3f} s\n",
               all_words, total.size(), file_count, unreadable, workers, secs);
    return 0;
}
