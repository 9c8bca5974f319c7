// csp_bench — the scenarios of shared/bench/SCENARIOS.md on csp's thread face:
// one std::thread per party, blocking send/recv/select.
//
//   csp_bench [scale] [scenario,scenario,...]     (as every reference program)
//   csp_bench --list                              (the scenario names, one a line)
//
// The structure follows the Go reference (shared/bench/go/main.go) so that
// the numbers mean the same thing: each scenario runs once at a warm-up size,
// then once timed; the timed region is the whole call, creating the channels
// and threads included, as Go's includes creating its goroutines. Each run
// checks the count and the sum of what was received and the program exits 1
// on a mismatch, so a fast but wrong channel cannot post a number.
//
// The task-based scenarios (pipeline, pipeline_par, spawn, fanin_timeout)
// belong to the runtime's face (tasks, not threads); each becomes one more
// entry in `scenarios` below.

#include <channels/channels.hpp>

#include <fmt/core.h>

#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

using i64 = std::int64_t;

// What one run received, and the sum it should have received.
struct result {
    i64 count = 0;
    i64 sum = 0;
    i64 want = 0;
};

struct scenario {
    std::string_view name;
    i64 n;                // N at scale 1
    result (*run)(i64 n);
};

// 0 + 1 + ... + (n-1)
i64 sum_range(i64 n) { return n * (n - 1) / 2; }

// [lo, hi) of part p of k parts of 0..n; the first n % k parts get one more,
// so n need not divide evenly (the Go reference splits the same way).
struct range {
    i64 lo, hi;
};
range split(i64 n, i64 k, i64 p) {
    i64 base = n / k, rem = n % k;
    i64 lo = p * base + std::min(p, rem);
    return {lo, lo + base + (p < rem ? 1 : 0)};
}

// A sends i on c1, B receives it and sends it back on c2. One op = one round trip.
result pingpong(i64 n) {
    auto c1 = csp::make_chan<i64>();
    auto c2 = csp::make_chan<i64>();
    std::jthread b([in = c1.as_receiver(), out = c2.as_sender()] {
        for (i64 v : in) out.send(v);
        out.close();
    });
    result r{0, 0, sum_range(n)};
    for (i64 i = 0; i < n; ++i) {
        c1.send(i);
        // An empty optional here would be a library bug: count it as a
        // missing item so that the check reports it instead of crashing.
        if (auto v = c2.recv()) {
            r.sum += *v;
            ++r.count;
        }
    }
    c1.close();
    while (c2.recv()) ++r.count;  // waits for B to finish; anything extra is an error
    return r;
}

// 1 producer, 1 consumer; the producer closes, the consumer ranges until closed.
template <std::ptrdiff_t Capacity>
result spsc(i64 n) {
    auto ch = csp::make_chan<i64>(Capacity);
    std::jthread producer([tx = ch.as_sender(), n] {
        for (i64 i = 0; i < n; ++i) tx.send(i);
        tx.close();
    });
    result r{0, 0, sum_range(n)};
    for (i64 v : ch) {
        r.sum += v;
        ++r.count;
    }
    return r;
}

// 4 producers, 4 consumers, one channel of capacity 1024. Each producer
// holds a closing_sender, so the channel closes when the last producer is
// done: csp's answer to Go's WaitGroup + closing goroutine.
result buf_mpmc(i64 n) {
    constexpr int producers = 4, consumers = 4;
    auto ch = csp::make_chan<i64>(1024);
    std::array<result, consumers> part{};
    {
        std::vector<std::jthread> ts;
        ts.reserve(producers + consumers);
        for (int p = 0; p < producers; ++p)
            ts.emplace_back([tx = ch.as_closing_sender(), r = split(n, producers, p)] {
                for (i64 i = r.lo; i < r.hi; ++i) tx.send(i);
            });
        for (auto& mine : part)
            ts.emplace_back([rx = ch.as_receiver(), &mine] {
                // Local sums: the four results share a cache line.
                i64 count = 0, sum = 0;
                for (i64 v : rx) {
                    sum += v;
                    ++count;
                }
                mine.count = count;
                mine.sum = sum;
            });
    }  // joins all
    result r{0, 0, sum_range(n)};
    for (const auto& p : part) {
        r.count += p.count;
        r.sum += p.sum;
    }
    return r;
}

// 4 producers, each on its own channel (capacity 128), one consumer selecting
// over the 4 receive cases until all 4 are closed. A closed channel's handle
// is replaced by a null one, so its case is never ready again (Go: ch = nil).
result select4(i64 n) {
    constexpr int k = 4;
    std::array<csp::channel<i64>, k> chs;
    std::vector<std::jthread> ts;
    ts.reserve(k);
    for (int p = 0; p < k; ++p) {
        chs[p] = csp::make_chan<i64>(128);
        ts.emplace_back([tx = chs[p].as_sender(), r = split(n, k, p)] {
            for (i64 i = r.lo; i < r.hi; ++i) tx.send(i);
            tx.close();
        });
    }
    result r{0, 0, sum_range(n)};
    int open = k;
    auto on = [&](int p) {
        return csp::on_recv(chs[p], [&, p](std::optional<i64> v) {
            if (!v) {
                chs[p] = {};
                --open;
                return;
            }
            r.sum += *v;
            ++r.count;
        });
    };
    while (open > 0) csp::select(on(0), on(1), on(2), on(3));
    return r;
}

// Adding a scenario is one line here (task-based ones come with the runtime).
constexpr std::array scenarios{
    scenario{"pingpong", 200'000, pingpong},
    scenario{"unbuf_spsc", 1'000'000, spsc<0>},
    scenario{"buf_spsc", 10'000'000, spsc<1024>},
    scenario{"buf_mpmc", 10'000'000, buf_mpmc},
    scenario{"select4", 4'000'000, select4},
};

const scenario* find(std::string_view name) {
    for (const auto& s : scenarios)
        if (s.name == name) return &s;
    return nullptr;
}

bool check(std::string_view name, i64 n, const result& r) {
    if (r.count == n && r.sum == r.want) return true;
    fmt::print(stderr, "ERROR {}: n={} received count={} sum={}, want count={} sum={}\n", name,
               n, r.count, r.sum, n, r.want);
    return false;
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string_view> args(argv + 1, argv + argc);
    if (!args.empty() && args[0] == "--list") {
        for (const auto& s : scenarios) fmt::print("{}\n", s.name);
        return 0;
    }

    double scale = 1.0;
    if (!args.empty() && !args[0].empty()) {
        std::string text(args[0]);
        char* end = nullptr;
        scale = std::strtod(text.c_str(), &end);
        if (end == text.c_str() || *end != '\0' || !(scale > 0) || std::isinf(scale)) {
            fmt::print(stderr, "bad scale \"{}\"\n", text);
            return 2;
        }
    }

    std::vector<const scenario*> selected;
    if (args.size() > 1 && !args[1].empty() && args[1] != "all") {
        std::string_view list = args[1];
        while (!list.empty()) {
            auto comma = list.find(',');
            std::string_view name = list.substr(0, comma);
            list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
            while (!name.empty() && name.front() == ' ') name.remove_prefix(1);
            while (!name.empty() && name.back() == ' ') name.remove_suffix(1);
            if (name.empty()) continue;
            const scenario* s = find(name);
            if (!s) {
                fmt::print(stderr, "unknown scenario \"{}\"\n", name);
                return 2;
            }
            selected.push_back(s);
        }
    } else {
        for (const auto& s : scenarios) selected.push_back(&s);
    }

    for (const scenario* s : selected) {
        i64 n = std::max<i64>(1, std::llround(static_cast<double>(s->n) * scale));
        i64 warm = std::min(n, std::max<i64>(1000, n / 20));

        if (!check(fmt::format("{} (warm-up)", s->name), warm, s->run(warm))) return 1;

        auto start = std::chrono::steady_clock::now();
        result r = s->run(n);
        auto elapsed = std::chrono::steady_clock::now() - start;
        if (!check(s->name, n, r)) return 1;

        double ns = static_cast<double>(
                        std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed).count()) /
                    static_cast<double>(n);
        fmt::print("{} {:.1f} ns/op {:.0f} ops/s\n", s->name, ns, 1e9 / ns);
        std::fflush(stdout);  // a later hang or crash must not swallow finished lines
    }
    return 0;
}
