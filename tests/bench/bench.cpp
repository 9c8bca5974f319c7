// csp_bench — the scenarios of shared/bench/SCENARIOS.md on csp's two faces:
// threads (one std::thread per party, blocking send/recv/select) and tasks
// (coroutine tasks on a csp::runtime: csp::task with co_await
// async_send/async_recv/async_select(csp::use_task), or asio::awaitable).
//
//   csp_bench [--face=F] [scale] [scenario,scenario,...]   (as every reference program)
//   csp_bench [--face=F] --list                            (the scenario names, one a line)
//   CSP_BENCH_WORKERS=N csp_bench ...                      (the task face on N workers)
//
//   --face=thread     the thread face under the reference programs' names (default;
//                     it has no spawn or fanin_timeout)
//   --face=task       the task face under the reference programs' names: csp::task
//                     tasks, the pipelines through the stage API; plus
//                     pipeline_hand and pipeline_par_hand (written with go()),
//                     and pipeline_par_cpu (busy parallel workers: see there)
//   --face=awaitable  the same scenarios with asio::awaitable tasks (the
//                     pipelines written by hand)
//   --face=hand       the hand-written csp::task pipelines under the names
//                     pipeline and pipeline_par, to pair them with
//                     --face=task (tests/bench/run: stage/hand)
//   --face=all        both faces in one run; a task scenario that the thread
//                     face also has is printed with the suffix _task
//
// The structure follows the Go reference (shared/bench/go/main.go) so that
// the numbers mean the same thing: each scenario runs once at a warm-up size,
// then once timed; the timed region is the whole call, creating the channels
// and threads (or tasks) included, as Go's includes creating its goroutines.
// Each run checks the count and the sum of what was received and the
// program exits 1 on a mismatch, so a fast but wrong channel cannot post a
// number.

#include <channels/channels.hpp>
#include <runtime/csp.hpp>
#include <runtime/pipeline.hpp>

#include <asio/use_awaitable.hpp>

#include <fmt/core.h>

#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <optional>
#include <ranges>
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
    void (*prepare)(i64 n) = nullptr;  // outside the timed region (pipeline_par's expected sum)
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

// ---- the task face: the same scenarios as coroutine tasks on a csp::runtime ----
//
// Every party is a coroutine task (asio::awaitable<void>) on one process-wide
// runtime with the default number of workers, built before the first
// timed run; channel operations are co_await async_send / async_recv /
// csp::async_select. Each run ends with rt().wait(), so the timed region
// covers every task's end, as the thread face's joins do.
//
// g++ 12: no aggregate temporary and no nested co_await inside the
// arguments of a co_await'ed call (double destruction); values are bound to
// locals first.

// Each scenario is written once for both kinds of coroutine task: S is
// task_style (csp::task with csp::use_task, the default task face) or
// awaitable_style (asio::awaitable with asio::use_awaitable).
struct task_style {
    template <class T>
    using co = csp::task<T>;
    static constexpr const csp::use_task_t& token = csp::use_task;
};
struct awaitable_style {
    template <class T>
    using co = asio::awaitable<T>;
    static constexpr const asio::use_awaitable_t<>& token = asio::use_awaitable;
};
template <class S>
using co = typename S::template co<void>;

// One worker per core, or CSP_BENCH_WORKERS of them (to see how a scenario
// does on one worker, or on more than the cores).
csp::runtime& rt() {
    static csp::runtime r([] {
        const char* w = std::getenv("CSP_BENCH_WORKERS");
        return w ? static_cast<unsigned>(std::atoi(w)) : 0u;
    }());
    return r;
}

template <class S>
result pingpong_task(i64 n) {
    auto c1 = csp::make_chan<i64>();
    auto c2 = csp::make_chan<i64>();
    result r{0, 0, sum_range(n)};
    rt().go([in = c1.as_receiver(), out = c2.as_sender()]() -> co<S> {
        while (auto v = co_await in.async_recv(S::token)) {
            i64 x = *v;
            co_await out.async_send(x, S::token);
        }
        out.close();
    });
    rt().go([c1, c2, n, &r]() -> co<S> {
        for (i64 i = 0; i < n; ++i) {
            i64 x = i;
            co_await c1.async_send(x, S::token);
            if (auto v = co_await c2.async_recv(S::token)) {
                r.sum += *v;
                ++r.count;
            }
        }
        c1.close();
        while (co_await c2.async_recv(S::token)) ++r.count;  // anything extra is an error
    });
    rt().wait();
    return r;
}

// Producer task (closes at the end) and consumer task.
template <class S>
co<S> produce(csp::sender<i64> tx, i64 lo, i64 hi) {
    for (i64 i = lo; i < hi; ++i) {
        i64 x = i;
        co_await tx.async_send(x, S::token);
    }
    tx.close();
}

template <class S, std::ptrdiff_t Capacity>
result spsc_task(i64 n) {
    auto ch = csp::make_chan<i64>(Capacity);
    result r{0, 0, sum_range(n)};
    rt().go([tx = ch.as_sender(), n] { return produce<S>(tx, 0, n); });
    rt().go([rx = ch.as_receiver(), &r]() -> co<S> {
        i64 count = 0, sum = 0;
        while (auto v = co_await rx.async_recv(S::token)) {
            sum += *v;
            ++count;
        }
        r.count = count;
        r.sum = sum;
    });
    rt().wait();
    return r;
}

template <class S>
result buf_mpmc_task(i64 n) {
    constexpr int producers = 4, consumers = 4;
    auto ch = csp::make_chan<i64>(1024);
    std::array<result, consumers> part{};
    {
        const auto closer = ch.as_closing_sender();  // held until every producer started
        for (int p = 0; p < producers; ++p)
            rt().go([tx = closer, rg = split(n, producers, p)]() -> co<S> {
                for (i64 i = rg.lo; i < rg.hi; ++i) {
                    i64 x = i;
                    co_await tx.async_send(x, S::token);
                }
            });
    }
    for (auto& mine : part)
        rt().go([rx = ch.as_receiver(), &mine]() -> co<S> {
            i64 count = 0, sum = 0;
            while (auto v = co_await rx.async_recv(S::token)) {
                sum += *v;
                ++count;
            }
            mine.count = count;
            mine.sum = sum;
        });
    rt().wait();
    result r{0, 0, sum_range(n)};
    for (const auto& p : part) {
        r.count += p.count;
        r.sum += p.sum;
    }
    return r;
}

template <class S>
result select4_task(i64 n) {
    constexpr int k = 4;
    std::array<csp::channel<i64>, k> chs;
    for (int p = 0; p < k; ++p) {
        chs[p] = csp::make_chan<i64>(128);
        auto rg = split(n, k, p);
        rt().go([tx = chs[p].as_sender(), rg] { return produce<S>(tx, rg.lo, rg.hi); });
    }
    result r{0, 0, sum_range(n)};
    rt().go([&chs, &r]() -> co<S> {
        int open = k;
        i64 count = 0, sum = 0;
        auto on = [&](int p) {
            return csp::on_recv(chs[p], [&, p](std::optional<i64> v) {
                if (!v) {
                    chs[p] = {};
                    --open;
                    return;
                }
                sum += *v;
                ++count;
            });
        };
        while (open > 0) {
            auto a = on(0), b = on(1), c = on(2), d = on(3);
            co_await csp::async_select(S::token, std::move(a), std::move(b), std::move(c),
                                       std::move(d));
        }
        r.count = count;
        r.sum = sum;
    });
    rt().wait();
    return r;
}

// N tasks, each sends one value on a shared capacity-1024 channel; a
// spawner task starts them while main receives (the Go reference's shape).
template <class S>
result spawn(i64 n) {
    auto ch = csp::make_chan<i64>(1024);
    rt().go([tx = ch.as_sender(), n]() -> co<S> {
        for (i64 i = 0; i < n; ++i)
            rt().go([tx, i]() -> co<S> {
                i64 x = i;
                co_await tx.async_send(x, S::token);
            });
        co_return;
    });
    result r{0, 0, sum_range(n)};
    for (i64 i = 0; i < n; ++i)
        if (auto v = ch.recv()) {
            r.sum += *v;
            ++r.count;
        }
    rt().wait();
    if (ch.try_recv()) ++r.count;  // nothing extra may be there
    return r;
}

// One producer task (capacity 128, closes at the end); a consumer task
// selects over the data channel and a fresh 1 ms timeout per item.
i64 fanin_timeouts = 0;

template <class S>
result fanin_timeout(i64 n) {
    auto data = csp::make_chan<i64>(128);
    result r{0, 0, sum_range(n)};
    i64 timeouts = 0;
    rt().go([tx = data.as_sender(), n] { return produce<S>(tx, 0, n); });
    rt().go([rx = data.as_receiver(), &r, &timeouts]() -> co<S> {
        bool open = true;
        i64 count = 0, sum = 0, late = 0;
        while (open) {
            auto on_data = csp::on_recv(rx, [&](std::optional<i64> v) {
                if (!v) {
                    open = false;
                    return;
                }
                sum += *v;
                ++count;
            });
            auto on_late = csp::on_timeout(std::chrono::milliseconds(1), [&] { ++late; });
            co_await csp::async_select(S::token, std::move(on_data), std::move(on_late));
        }
        r.count = count;
        r.sum = sum;
        timeouts = late;
    });
    rt().wait();
    fanin_timeouts = timeouts;
    return r;
}

// ---- pipelines: the stage API (runtime/pipeline.hpp) and the same by hand ----

constexpr i64 par_mod = 1000003;
std::map<i64, i64> want_par_cache;  // filled outside the timed region

void prepare_par(i64 n) {
    if (want_par_cache.count(n)) return;
    i64 s = 0;
    for (i64 i = 0; i < n; ++i) s += i * i % par_mod;
    want_par_cache[n] = s;
}

// pipeline_par_cpu: pipeline_par with work worth parallel workers, a few
// microseconds of dependent multiplies per value. Not a reference scenario:
// it shows whether the runtime spreads a stage's busy workers over its
// threads (on two workers, about half one worker's ns/op), which a
// scheduler that keeps cheap tasks together must not lose.
i64 cpu_work(i64 x) {
    auto u = static_cast<std::uint64_t>(x);
    for (int i = 0; i < 4000; ++i) u = u * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<i64>(u % par_mod);
}
std::map<i64, i64> want_cpu_cache;  // filled outside the timed region

void prepare_cpu(i64 n) {
    if (want_cpu_cache.count(n)) return;
    i64 s = 0;
    for (i64 i = 0; i < n; ++i) s += cpu_work(i);
    want_cpu_cache[n] = s;
}

result pipeline_par_cpu(i64 n) {
    csp::pipeline p(rt());
    auto src = p.source(std::views::iota(i64{0}, n), 128);
    auto out = p.map(src, cpu_work, {.workers = 4, .capacity = 128});
    result r{0, 0, want_cpu_cache.at(n)};
    p.for_each(out, [&r](i64 v) {
        r.sum += v;
        ++r.count;
    });
    return r;
}

// source -> (x+1) -> (x*2) -> (x-1) -> sink; sum of 2(i+1)-1 over i = n^2.
result pipeline(i64 n) {
    csp::pipeline p(rt());
    const csp::stage_options o{.workers = 1, .capacity = 128};
    auto src = p.source(std::views::iota(i64{0}, n), 128);
    auto s1 = p.map(src, [](i64 x) { return x + 1; }, o);
    auto s2 = p.map(s1, [](i64 x) { return x * 2; }, o);
    auto s3 = p.map(s2, [](i64 x) { return x - 1; }, o);
    result r{0, 0, n * n};
    p.for_each(s3, [&r](i64 v) {
        r.sum += v;
        ++r.count;
    });
    return r;
}

result pipeline_par(i64 n) {
    csp::pipeline p(rt());
    auto src = p.source(std::views::iota(i64{0}, n), 128);
    auto out = p.map(src, [](i64 x) { return x * x % par_mod; }, {.workers = 4, .capacity = 128});
    result r{0, 0, want_par_cache.at(n)};
    p.for_each(out, [&r](i64 v) {
        r.sum += v;
        ++r.count;
    });
    return r;
}

// By hand: the same tasks and channels, written with rt().go; the sink is a
// task too, as with the stage API's for_each().
template <class S, class F>
csp::receiver<i64> hand_stage(csp::receiver<i64> in, F f, unsigned workers = 1) {
    auto out = csp::make_chan<i64>(128);
    const auto closer = out.as_closing_sender();  // closes when the last worker ends
    for (unsigned w = 0; w < workers; ++w)
        rt().go([in, tx = closer, f]() -> co<S> {
            while (auto v = co_await in.async_recv(S::token)) {
                i64 y = f(*v);
                co_await tx.async_send(y, S::token);
            }
        });
    return out;
}

template <class S>
csp::receiver<i64> hand_source(i64 n) {
    auto src = csp::make_chan<i64>(128);
    rt().go([tx = src.as_sender(), n] { return produce<S>(tx, 0, n); });
    return src;
}

// Receives everything in a task; returns once every task has ended.
template <class S>
void hand_sink(csp::receiver<i64> in, result& r) {
    rt().go([in, &r]() -> co<S> {
        while (auto v = co_await in.async_recv(S::token)) {
            r.sum += *v;
            ++r.count;
        }
    });
    rt().wait();
}

template <class S>
result pipeline_hand(i64 n) {
    auto s1 = hand_stage<S>(hand_source<S>(n), [](i64 x) { return x + 1; });
    auto s2 = hand_stage<S>(s1, [](i64 x) { return x * 2; });
    auto s3 = hand_stage<S>(s2, [](i64 x) { return x - 1; });
    result r{0, 0, n * n};
    hand_sink<S>(s3, r);
    return r;
}

template <class S>
result pipeline_par_hand(i64 n) {
    auto out = hand_stage<S>(hand_source<S>(n), [](i64 x) { return x * x % par_mod; }, 4);
    result r{0, 0, want_par_cache.at(n)};
    hand_sink<S>(out, r);
    return r;
}

// The pipelines on the thread face: a std::thread per stage worker with
// blocking send and range-for receives, the sink on the calling thread.
template <class F>
csp::receiver<i64> thread_stage(std::vector<std::jthread>& ts, csp::receiver<i64> in, F f,
                                unsigned workers = 1) {
    auto out = csp::make_chan<i64>(128);
    const auto closer = out.as_closing_sender();  // closes when the last worker ends
    for (unsigned w = 0; w < workers; ++w)
        ts.emplace_back([in, tx = closer, f] {
            for (i64 v : in) tx.send(f(v));
        });
    return out;
}

csp::receiver<i64> thread_source(std::vector<std::jthread>& ts, i64 n) {
    auto src = csp::make_chan<i64>(128);
    ts.emplace_back([tx = src.as_sender(), n] {
        for (i64 i = 0; i < n; ++i) tx.send(i);
        tx.close();
    });
    return src;
}

result pipeline_threads(i64 n) {
    std::vector<std::jthread> ts;
    auto s1 = thread_stage(ts, thread_source(ts, n), [](i64 x) { return x + 1; });
    auto s2 = thread_stage(ts, s1, [](i64 x) { return x * 2; });
    auto s3 = thread_stage(ts, s2, [](i64 x) { return x - 1; });
    result r{0, 0, n * n};
    for (i64 v : s3) {
        r.sum += v;
        ++r.count;
    }
    return r;
}

result pipeline_par_threads(i64 n) {
    std::vector<std::jthread> ts;
    auto out = thread_stage(ts, thread_source(ts, n), [](i64 x) { return x * x % par_mod; }, 4);
    result r{0, 0, want_par_cache.at(n)};
    for (i64 v : out) {
        r.sum += v;
        ++r.count;
    }
    return r;
}

// The thread face. Adding a scenario is one line here.
constexpr std::array thread_scenarios{
    scenario{"pingpong", 200'000, pingpong},
    scenario{"unbuf_spsc", 1'000'000, spsc<0>},
    scenario{"buf_spsc", 10'000'000, spsc<1024>},
    scenario{"buf_mpmc", 10'000'000, buf_mpmc},
    scenario{"select4", 4'000'000, select4},
    scenario{"pipeline", 2'000'000, pipeline_threads},
    scenario{"pipeline_par", 2'000'000, pipeline_par_threads, prepare_par},
};

// The task face, under the reference programs' names: csp::task tasks; the
// pipelines through the stage API (runtime/pipeline.hpp), whose plain
// stages run csp::task workers.
constexpr std::array task_scenarios{
    scenario{"pingpong", 200'000, pingpong_task<task_style>},
    scenario{"unbuf_spsc", 1'000'000, spsc_task<task_style, 0>},
    scenario{"buf_spsc", 10'000'000, spsc_task<task_style, 1024>},
    scenario{"buf_mpmc", 10'000'000, buf_mpmc_task<task_style>},
    scenario{"select4", 4'000'000, select4_task<task_style>},
    scenario{"pipeline", 2'000'000, pipeline},
    scenario{"pipeline_par", 2'000'000, pipeline_par, prepare_par},
    scenario{"spawn", 200'000, spawn<task_style>},
    scenario{"fanin_timeout", 1'000'000, fanin_timeout<task_style>},
    scenario{"pipeline_hand", 2'000'000, pipeline_hand<task_style>},
    scenario{"pipeline_par_hand", 2'000'000, pipeline_par_hand<task_style>, prepare_par},
    scenario{"pipeline_par_cpu", 20'000, pipeline_par_cpu, prepare_cpu},
};

// --face=awaitable: the same with asio::awaitable tasks, the pipelines
// written by hand.
constexpr std::array awaitable_scenarios{
    scenario{"pingpong", 200'000, pingpong_task<awaitable_style>},
    scenario{"unbuf_spsc", 1'000'000, spsc_task<awaitable_style, 0>},
    scenario{"buf_spsc", 10'000'000, spsc_task<awaitable_style, 1024>},
    scenario{"buf_mpmc", 10'000'000, buf_mpmc_task<awaitable_style>},
    scenario{"select4", 4'000'000, select4_task<awaitable_style>},
    scenario{"pipeline", 2'000'000, pipeline_hand<awaitable_style>},
    scenario{"pipeline_par", 2'000'000, pipeline_par_hand<awaitable_style>, prepare_par},
    scenario{"spawn", 200'000, spawn<awaitable_style>},
    scenario{"fanin_timeout", 1'000'000, fanin_timeout<awaitable_style>},
};

// --face=hand: the hand-written csp::task pipelines under the stage API's
// names, so that tests/bench/run pairs them with --face=task (and the
// shared `compare 'csp_bench --face=task' 'csp_bench --face=hand'` does).
constexpr std::array hand_scenarios{
    scenario{"pipeline", 2'000'000, pipeline_hand<task_style>},
    scenario{"pipeline_par", 2'000'000, pipeline_par_hand<task_style>, prepare_par},
};

struct entry {
    std::string name;  // as printed
    const scenario* s;
};

// thread: the thread face under the plain names (the default);
// task: the task face under the plain names; awaitable: see awaitable_scenarios;
// all: both faces, a task scenario that the thread face also has getting
// the suffix _task (pingpong_task, ...).
std::optional<std::vector<entry>> face_entries(std::string_view face) {
    std::vector<entry> out;
    auto has_thread = [](std::string_view name) {
        for (const auto& t : thread_scenarios)
            if (t.name == name) return true;
        return false;
    };
    if (face == "thread" || face == "all")
        for (const auto& s : thread_scenarios) out.push_back({std::string(s.name), &s});
    if (face == "task")
        for (const auto& s : task_scenarios) out.push_back({std::string(s.name), &s});
    if (face == "all")
        for (const auto& s : task_scenarios)
            out.push_back({has_thread(s.name) ? std::string(s.name) + "_task" : std::string(s.name), &s});
    if (face == "awaitable")
        for (const auto& s : awaitable_scenarios) out.push_back({std::string(s.name), &s});
    if (face == "hand")
        for (const auto& s : hand_scenarios) out.push_back({std::string(s.name), &s});
    if (out.empty()) return std::nullopt;
    return out;
}

bool check(std::string_view name, i64 n, const result& r) {
    if (r.count == n && r.sum == r.want) return true;
    fmt::print(stderr, "ERROR {}: n={} received count={} sum={}, want count={} sum={}\n", name,
               n, r.count, r.sum, n, r.want);
    return false;
}

}  // namespace

int main(int argc, char** argv) {
    // Options first (anywhere), then the positional [scale] [scenarios].
    std::string face = "thread";
    bool list = false;
    std::vector<std::string_view> args;
    for (std::string_view a : std::vector<std::string_view>(argv + 1, argv + argc)) {
        if (a == "--list") list = true;
        else if (a.starts_with("--face=")) face = std::string(a.substr(7));
        else if (a == "-h" || a == "--help") {
            fmt::print("usage: csp_bench [--face=thread|task|awaitable|hand|all] [--list] [scale] [scenario,...]\n");
            return 0;
        } else args.push_back(a);
    }
    auto entries = face_entries(face);
    if (!entries) {
        fmt::print(stderr, "unknown face \"{}\" (thread, task, awaitable, hand, all)\n", face);
        return 2;
    }
    if (list) {
        for (const auto& e : *entries) fmt::print("{}\n", e.name);
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

    std::vector<const entry*> selected;
    if (args.size() > 1 && !args[1].empty() && args[1] != "all") {
        std::string_view names = args[1];
        while (!names.empty()) {
            auto comma = names.find(',');
            std::string_view name = names.substr(0, comma);
            names = comma == std::string_view::npos ? std::string_view{} : names.substr(comma + 1);
            while (!name.empty() && name.front() == ' ') name.remove_prefix(1);
            while (!name.empty() && name.back() == ' ') name.remove_suffix(1);
            if (name.empty()) continue;
            const entry* found = nullptr;
            for (const auto& e : *entries)
                if (e.name == name) found = &e;
            if (!found) {
                fmt::print(stderr, "unknown scenario \"{}\" (face {})\n", name, face);
                return 2;
            }
            selected.push_back(found);
        }
    } else {
        for (const auto& e : *entries) selected.push_back(&e);
    }

    try {
        if (face != "thread") (void)rt();  // its threads start outside the timed region

        for (const entry* e : selected) {
            const scenario* s = e->s;
            i64 n = std::max<i64>(1, std::llround(static_cast<double>(s->n) * scale));
            i64 warm = std::min(n, std::max<i64>(1000, n / 20));
            if (s->prepare) {
                s->prepare(warm);
                s->prepare(n);
            }

            if (!check(fmt::format("{} (warm-up)", e->name), warm, s->run(warm))) return 1;

            fanin_timeouts = 0;
            auto start = std::chrono::steady_clock::now();
            result r = s->run(n);
            auto elapsed = std::chrono::steady_clock::now() - start;
            if (!check(e->name, n, r)) return 1;

            double ns = static_cast<double>(
                            std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed).count()) /
                        static_cast<double>(n);
            fmt::print("{} {:.1f} ns/op {:.0f} ops/s\n", e->name, ns, 1e9 / ns);
            std::fflush(stdout);  // a later hang or crash must not swallow finished lines
            if (fanin_timeouts > 0)
                fmt::print(stderr, "note: {}: {} timeouts fired\n", e->name, fanin_timeouts);
        }
    } catch (const std::exception& ex) {
        fmt::print(stderr, "ERROR: {}\n", ex.what());
        return 1;
    }
    return 0;
}
