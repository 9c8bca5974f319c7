// csp::pipeline: sources (range, generator, channel), stages (map unordered
// and ordered, coroutine / plain / blocking functions, filter, flat_map,
// batch, merge, broadcast), sinks (for_each, collect, reduce, drain, wait),
// and how a pipeline ends: close flows downstream, errors flow downstream,
// cancellation flows upstream. Every test checks exact values (nothing lost,
// nothing duplicated), and that no task of the runtime is left once the
// pipeline is gone.
#include <doctest/doctest.h>

// async_select (used by pipeline::batch) declares a local that shadows a
// member under the project's -Wshadow -Werror (reported with runtime_test).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wshadow"
#include <runtime/csp.hpp>
#include <runtime/pipeline.hpp>
#pragma GCC diagnostic pop

#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <numeric>
#include <optional>
#include <ranges>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tsan_suppressions.hpp"

namespace {

using namespace std::chrono_literals;
using asio::use_awaitable;
using steady = std::chrono::steady_clock;

constexpr int kHuge = 1'000'000'000;  // an effectively infinite source

struct stage_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The pipeline's destructor waits for every task of its group; the runtime's
// own count drops right after each task's group has seen it end, so give it
// a moment rather than racing it.
bool no_task_left(csp::runtime& rt) {
    const auto deadline = steady::now() + 5s;
    while (rt.live_tasks() != 0 && steady::now() < deadline) std::this_thread::sleep_for(1ms);
    return rt.live_tasks() == 0;
}

std::vector<int> iota_vec(int from, int to) {
    std::vector<int> v(static_cast<std::size_t>(to - from));
    std::iota(v.begin(), v.end(), from);
    return v;
}

template <class T>
std::vector<T> sorted(std::vector<T> v) {
    std::sort(v.begin(), v.end());
    return v;
}

// A per-item cost, in microseconds, that varies from item to item.
int cost_us(int x) {
    const auto h = static_cast<std::uint32_t>(x) * 2654435761u;
    return static_cast<int>((h >> 13) % 8) * 60;
}

asio::awaitable<void> pause_us(long long us) {
    auto ex = co_await asio::this_coro::executor;
    asio::steady_timer t(ex);
    t.expires_after(std::chrono::microseconds(us));
    co_await t.async_wait(use_awaitable);
}

// ---------------------------------------------------------------------------
// Sources

TEST_CASE("pipeline: source from a range") {
    csp::runtime rt(2);
    {
        csp::pipeline p(rt);
        const std::vector<int> v = iota_vec(0, 1000);
        auto a = p.source(v);  // an lvalue range: copied
        CHECK(p.collect(a) == v);
    }
    {
        csp::pipeline p(rt);
        auto a = p.source(std::views::iota(0, 500), 3);
        CHECK(p.collect(a) == iota_vec(0, 500));
    }
    {
        csp::pipeline p(rt);
        std::vector<std::string> words{"a", "bb", "ccc", "dddd"};
        auto a = p.source(std::move(words), 0);  // an rvalue range, unbuffered output
        CHECK(p.collect(a) == std::vector<std::string>{"a", "bb", "ccc", "dddd"});
    }
    {
        csp::pipeline p(rt);
        auto a = p.source(std::vector<int>{});
        CHECK(p.collect(a).empty());
    }
    CHECK(no_task_left(rt));
}

TEST_CASE("pipeline: source from a generator") {
    csp::runtime rt(2);
    csp::pipeline p(rt);
    int calls = 0;
    auto a = p.source([&calls, i = 0]() mutable -> std::optional<int> {
        ++calls;
        if (i < 300) return i++ * 2;
        return std::nullopt;
    });
    CHECK(p.collect(a) == [] {
        std::vector<int> v;
        for (int i = 0; i < 300; ++i) v.push_back(i * 2);
        return v;
    }());
    CHECK(calls == 301);  // stops at the first nullopt
}

TEST_CASE("pipeline: source from an existing channel") {
    csp::runtime rt(2);
    csp::pipeline p(rt);
    auto ch = csp::make_chan<int>();
    std::thread producer([ch] {
        for (int i = 0; i < 400; ++i) ch.send(i);
        ch.close();
    });
    auto a = p.source(ch.as_receiver());
    CHECK(a == ch);  // as it is
    auto b = p.map(a, [](int x) { return x + 1; });
    CHECK(p.collect(b) == iota_vec(1, 401));
    producer.join();
}

// ---------------------------------------------------------------------------
// map

TEST_CASE("pipeline: map with 1 and 4 workers, plain and coroutine functions") {
    csp::runtime rt(2);
    const std::vector<long long> want = [] {
        std::vector<long long> v;
        for (long long i = 0; i < 2000; ++i) v.push_back(i * i);
        return v;
    }();
    auto square = [](int x) { return static_cast<long long>(x) * x; };
    auto square_co = [](int x) -> asio::awaitable<long long> { co_return static_cast<long long>(x) * x; };

    SUBCASE("1 worker, plain: input order") {
        csp::pipeline p(rt);
        auto out = p.map(p.source(std::views::iota(0, 2000)), square);
        CHECK(p.collect(out) == want);
    }
    SUBCASE("1 worker, coroutine: input order") {
        csp::pipeline p(rt);
        auto out = p.map(p.source(std::views::iota(0, 2000)), square_co, {.capacity = 1});
        CHECK(p.collect(out) == want);
    }
    SUBCASE("4 workers, plain") {
        csp::pipeline p(rt);
        auto out = p.map(p.source(std::views::iota(0, 2000)), square, {.workers = 4, .capacity = 8});
        CHECK(sorted(p.collect(out)) == want);
    }
    SUBCASE("4 workers, coroutine with per-item waits") {
        csp::pipeline p(rt);
        auto f = [](int x) -> asio::awaitable<long long> {
            if (x % 50 == 0) co_await pause_us(cost_us(x));
            co_return static_cast<long long>(x) * x;
        };
        auto out = p.map(p.source(std::views::iota(0, 2000)), f, {.workers = 4});
        CHECK(sorted(p.collect(out)) == want);
    }
    SUBCASE("4 workers, blocking") {
        csp::pipeline p(rt);
        auto f = [](int x) {
            if (x % 100 == 0) std::this_thread::sleep_for(std::chrono::microseconds(cost_us(x)));
            return static_cast<long long>(x) * x;
        };
        auto out = p.map(p.source(std::views::iota(0, 2000)), f, {.workers = 4, .capacity = 4, .blocking = true});
        CHECK(sorted(p.collect(out)) == want);
    }
    SUBCASE("0 workers means 1") {
        csp::pipeline p(rt);
        auto out = p.map(p.source(std::views::iota(0, 2000)), square, {.workers = 0});
        CHECK(p.collect(out) == want);
    }
    CHECK(no_task_left(rt));
}

TEST_CASE("pipeline: a blocking function can wait on something else without holding a coroutine worker") {
    csp::runtime rt(1);  // a single coroutine worker
    csp::pipeline p(rt);
    auto gate = csp::make_chan<int>();
    // The blocking stage waits on `gate`, which a coroutine stage feeds; with
    // one coroutine worker that only works if the blocking stage is off it.
    auto a = p.map(p.source(std::views::iota(0, 50)), [gate](int x) { return x + gate.recv().value(); },
                   {.workers = 2, .blocking = true});
    auto feeder = p.map(p.source(std::views::iota(0, 50)), [gate](int) -> asio::awaitable<int> {
        co_await gate.async_send(1000, use_awaitable);
        co_return 0;
    });
    CHECK(sorted(p.collect(a)) == iota_vec(1000, 1050));
    CHECK(p.collect(feeder) == std::vector<int>(50, 0));
}

TEST_CASE("pipeline: .blocking = true with a coroutine function is refused") {
    csp::runtime rt(2);
    {
        csp::pipeline p(rt);
        auto src = p.source(std::views::iota(0, 10));
        auto f = [](int x) -> asio::awaitable<int> { co_return x; };
        CHECK_THROWS_AS(p.map(src, f, {.blocking = true}), csp::error);
    }
    CHECK(no_task_left(rt));
}

TEST_CASE("pipeline: ordered map keeps input order with 4 workers and a small window") {
    csp::runtime rt(2);
    const auto want = [] {
        std::vector<int> v;
        for (int i = 0; i < 400; ++i) v.push_back(i * 3 + 1);
        return v;
    }();
    SUBCASE("plain function of varying cost") {
        csp::pipeline p(rt);
        auto f = [](int x) {
            std::this_thread::sleep_for(std::chrono::microseconds(cost_us(x)));
            return x * 3 + 1;
        };
        auto out = p.map(p.source(std::views::iota(0, 400)), f, {.workers = 4, .capacity = 2, .ordered = true});
        CHECK(p.collect(out) == want);
    }
    SUBCASE("coroutine function of varying cost") {
        csp::pipeline p(rt);
        auto f = [](int x) -> asio::awaitable<int> {
            co_await pause_us(cost_us(x));
            co_return x * 3 + 1;
        };
        auto out = p.map(p.source(std::views::iota(0, 400)), f, {.workers = 4, .capacity = 2, .ordered = true});
        CHECK(p.collect(out) == want);
    }
    SUBCASE("capacity 1") {
        csp::pipeline p(rt);
        auto f = [](int x) -> asio::awaitable<int> {
            co_await pause_us(cost_us(x) / 4);
            co_return x * 3 + 1;
        };
        auto out = p.map(p.source(std::views::iota(0, 400)), f, {.workers = 4, .capacity = 1, .ordered = true});
        CHECK(p.collect(out) == want);
    }
    SUBCASE("move-only values") {
        csp::pipeline p(rt);
        auto f = [](int x) -> asio::awaitable<std::unique_ptr<int>> {
            co_await pause_us(cost_us(x) / 2);
            co_return std::make_unique<int>(x * 3 + 1);
        };
        auto out = p.map(p.source(std::views::iota(0, 400)), f, {.workers = 4, .capacity = 3, .ordered = true});
        std::vector<int> got;
        p.for_each(out, [&](std::unique_ptr<int> v) { got.push_back(*v); });
        CHECK(got == want);
    }
    CHECK(no_task_left(rt));
}

// ---------------------------------------------------------------------------
// filter, flat_map

TEST_CASE("pipeline: filter") {
    csp::runtime rt(2);
    const auto want = [] {
        std::vector<int> v;
        for (int i = 0; i < 1000; ++i)
            if (i % 3 == 0) v.push_back(i);
        return v;
    }();
    SUBCASE("plain, 1 worker: order kept") {
        csp::pipeline p(rt);
        auto out = p.filter(p.source(std::views::iota(0, 1000)), [](const int& x) { return x % 3 == 0; });
        CHECK(p.collect(out) == want);
    }
    SUBCASE("coroutine, 3 workers") {
        csp::pipeline p(rt);
        auto out = p.filter(p.source(std::views::iota(0, 1000)),
                            [](const int& x) -> asio::awaitable<bool> { co_return x % 3 == 0; }, {.workers = 3});
        CHECK(sorted(p.collect(out)) == want);
    }
    SUBCASE("blocking, 2 workers") {
        csp::pipeline p(rt);
        auto out = p.filter(p.source(std::views::iota(0, 1000)), [](const int& x) { return x % 3 == 0; },
                            {.workers = 2, .capacity = 1, .blocking = true});
        CHECK(sorted(p.collect(out)) == want);
    }
    SUBCASE("nothing passes") {
        csp::pipeline p(rt);
        auto out = p.filter(p.source(std::views::iota(0, 1000)), [](const int&) { return false; });
        CHECK(p.collect(out).empty());
    }
    CHECK(no_task_left(rt));
}

TEST_CASE("pipeline: flat_map with 0, 1 and several outputs per input") {
    csp::runtime rt(2);
    // x % 3 == 0: nothing; 1: x; 2: x, x + 10000, x + 20000.
    auto expand = [](int x) {
        std::vector<int> r;
        if (x % 3 == 1) r.push_back(x);
        if (x % 3 == 2) r = {x, x + 10000, x + 20000};
        return r;
    };
    std::vector<int> want;
    for (int i = 0; i < 900; ++i)
        for (int v : expand(i)) want.push_back(v);
    REQUIRE(want.size() == 300 + 3 * 300);

    SUBCASE("plain, 1 worker: order kept") {
        csp::pipeline p(rt);
        auto out = p.flat_map(p.source(std::views::iota(0, 900)), expand, {.capacity = 2});
        CHECK(p.collect(out) == want);
    }
    SUBCASE("coroutine, 4 workers") {
        csp::pipeline p(rt);
        auto out = p.flat_map(p.source(std::views::iota(0, 900)),
                              [expand](int x) -> asio::awaitable<std::vector<int>> { co_return expand(x); },
                              {.workers = 4});
        CHECK(sorted(p.collect(out)) == sorted(want));
    }
    SUBCASE("blocking, 3 workers, a view as the range") {
        csp::pipeline p(rt);
        auto f = [](int x) { return std::views::iota(0, x % 3) | std::views::transform([x](int k) { return x + 10000 * k; }); };
        auto out = p.flat_map(p.source(std::views::iota(0, 900)), f, {.workers = 3, .capacity = 1, .blocking = true});
        std::vector<int> want2;
        for (int i = 0; i < 900; ++i)
            for (int k = 0; k < i % 3; ++k) want2.push_back(i + 10000 * k);
        CHECK(sorted(p.collect(out)) == sorted(want2));
    }
    CHECK(no_task_left(rt));
}

// ---------------------------------------------------------------------------
// batch

TEST_CASE("pipeline: batch in groups of k, the last one shorter") {
    csp::runtime rt(2);
    csp::pipeline p(rt);
    auto out = p.batch(p.source(std::views::iota(0, 25)), 10, 1h);
    const auto groups = p.collect(out);
    REQUIRE(groups.size() == 3);
    CHECK(groups[0] == iota_vec(0, 10));
    CHECK(groups[1] == iota_vec(10, 20));
    CHECK(groups[2] == iota_vec(20, 25));
}

TEST_CASE("pipeline: batch of exact multiples and of size 1; size 0 is refused") {
    csp::runtime rt(2);
    {
        csp::pipeline p(rt);
        const auto groups = p.collect(p.batch(p.source(std::views::iota(0, 30)), 10, 1h));
        REQUIRE(groups.size() == 3);
        CHECK(groups[2] == iota_vec(20, 30));
    }
    {
        csp::pipeline p(rt);
        const auto groups = p.collect(p.batch(p.source(std::views::iota(0, 5)), 1, 1h));
        CHECK(groups == std::vector<std::vector<int>>{{0}, {1}, {2}, {3}, {4}});
    }
    {
        csp::pipeline p(rt);
        CHECK(p.collect(p.batch(p.source(std::vector<int>{}), 4, 1h)).empty());
    }
    {
        csp::pipeline p(rt);
        CHECK_THROWS_AS(p.batch(p.source(std::views::iota(0, 5)), 0, 1h), csp::error);
    }
    CHECK(no_task_left(rt));
}

TEST_CASE("pipeline: batch sends a short group when its time is up") {
    csp::runtime rt(2);
    csp::pipeline p(rt);
    auto in = csp::make_chan<int>();
    constexpr auto max_wait = 200ms;
    auto out = p.batch(p.source(in.as_receiver()), 10, max_wait);

    const auto t0 = steady::now();
    in.send(1);
    in.send(2);
    // Nothing more is sent until the group arrives: only the deadline can send it.
    auto g = out.recv();
    const auto waited = steady::now() - t0;
    REQUIRE(g.has_value());
    CHECK(*g == std::vector<int>{1, 2});
    CHECK(waited >= max_wait);

    // A second time-limited group.
    in.send(3);
    g = out.recv();
    REQUIRE(g.has_value());
    CHECK(*g == std::vector<int>{3});

    // Then a full one, and a short one at close.
    for (int i = 10; i < 23; ++i) in.send(i);
    in.close();
    std::vector<int> rest;
    for (auto& group : p.drain(out)) {
        CHECK_FALSE(group.empty());
        CHECK(group.size() <= 10);
        rest.insert(rest.end(), group.begin(), group.end());
    }
    CHECK(rest == iota_vec(10, 23));
}

// ---------------------------------------------------------------------------
// merge, broadcast

TEST_CASE("pipeline: merge of N channels") {
    csp::runtime rt(2);
    SUBCASE("4 sources") {
        csp::pipeline p(rt);
        std::vector<csp::receiver<int>> ins;
        for (int i = 0; i < 4; ++i) ins.push_back(p.source(std::views::iota(i * 1000, i * 1000 + 250), 4));
        auto out = p.merge(ins, 2);
        const auto got = p.collect(out);
        std::vector<int> want;
        for (int i = 0; i < 4; ++i)
            for (int v : iota_vec(i * 1000, i * 1000 + 250)) want.push_back(v);
        CHECK(sorted(got) == want);
        // Each input's values keep their order.
        for (int i = 0; i < 4; ++i) {
            std::vector<int> mine;
            for (int v : got)
                if (v / 1000 == i) mine.push_back(v);
            CHECK(mine == iota_vec(i * 1000, i * 1000 + 250));
        }
    }
    SUBCASE("channels closing at different times") {
        csp::pipeline p(rt);
        auto a = csp::make_chan<int>(), b = csp::make_chan<int>(), c = csp::make_chan<int>();
        auto out = p.merge(std::vector<csp::receiver<int>>{a, b, c});
        a.send(1);
        CHECK(out.recv() == 1);
        a.close();
        b.send(2);
        CHECK(out.recv() == 2);
        CHECK_FALSE(out.closed());
        b.close();
        c.send(3);
        CHECK(out.recv() == 3);
        CHECK_FALSE(out.closed());
        c.close();
        CHECK(out.recv() == std::nullopt);
        p.wait();
    }
    SUBCASE("no input: closed at once") {
        csp::pipeline p(rt);
        CHECK(p.collect(p.merge(std::vector<csp::receiver<int>>{})).empty());
    }
    CHECK(no_task_left(rt));
}

TEST_CASE("pipeline: broadcast to N outputs, each gets every value") {
    csp::runtime rt(2);
    csp::pipeline p(rt);
    constexpr int n = 3;
    auto outs = p.broadcast(p.source(std::views::iota(0, 500)), n, 4);
    REQUIRE(outs.size() == n);
    // Tag each output's values, then merge them back (each output must be
    // consumed concurrently: the slowest sets the pace).
    std::vector<csp::receiver<std::pair<int, int>>> tagged;
    for (int i = 0; i < n; ++i) tagged.push_back(p.map(outs[static_cast<std::size_t>(i)], [i](int x) { return std::pair{i, x}; }));
    const auto got = p.collect(p.merge(tagged));
    CHECK(got.size() == n * 500);
    for (int i = 0; i < n; ++i) {
        std::vector<int> mine;
        for (auto [tag, x] : got)
            if (tag == i) mine.push_back(x);
        CHECK(mine == iota_vec(0, 500));
    }
}

// ---------------------------------------------------------------------------
// sinks, close

TEST_CASE("pipeline: sinks for_each, collect, reduce, drain") {
    csp::runtime rt(2);
    {
        csp::pipeline p(rt);
        std::vector<int> seen;
        p.for_each(p.source(std::views::iota(0, 777)), [&](int v) { seen.push_back(v); });
        CHECK(seen == iota_vec(0, 777));
    }
    {
        csp::pipeline p(rt);
        auto out = p.map(p.source(std::views::iota(1, 1001)), [](int x) { return x; }, {.workers = 4});
        CHECK(p.reduce(out, 0LL, [](long long acc, int v) { return acc + v; }) == 500500);
    }
    {
        csp::pipeline p(rt);
        const auto s = p.reduce(p.source(std::vector<std::string>{"a", "b", "c"}), std::string(">"),
                                [](std::string acc, std::string v) { return acc + v; });
        CHECK(s == ">abc");
    }
    {
        csp::pipeline p(rt);
        std::vector<int> seen;
        for (auto& v : p.drain(p.source(std::views::iota(0, 300)))) seen.push_back(v);
        CHECK(seen == iota_vec(0, 300));
        p.wait();  // already done
    }
    CHECK(no_task_left(rt));
}

TEST_CASE("pipeline: close flows downstream, after every value") {
    csp::runtime rt(2);
    csp::pipeline p(rt);
    auto in = csp::make_chan<int>(4);
    auto a = p.map(p.source(in.as_receiver()), [](int x) -> asio::awaitable<int> { co_return x * 2; }, {.workers = 3});
    auto b = p.filter(a, [](const int& x) { return x % 4 == 0; }, {.workers = 2, .blocking = true});
    auto c = p.flat_map(b, [](int x) { return std::vector<int>{x, -x}; }, {.workers = 2});

    for (int i = 0; i < 100; ++i) in.send(i);
    std::vector<int> got;
    for (int i = 0; i < 100; ++i) got.push_back(c.recv().value());
    // Every value is through, but the input is still open: so is the output.
    CHECK_FALSE(c.closed());
    CHECK(c.try_recv().state() == csp::status::would_block);

    for (int i = 100; i < 120; ++i) in.send(i);
    in.close();
    for (auto& v : p.drain(c)) got.push_back(v);  // ends: the output closed
    CHECK(c.closed());

    std::vector<int> want;
    for (int i = 0; i < 120; ++i)
        if (i % 2 == 0) {
            want.push_back(2 * i);
            want.push_back(-2 * i);
        }
    CHECK(sorted(got) == sorted(want));
    p.wait();
}

// ---------------------------------------------------------------------------
// Errors flow downstream

TEST_CASE("pipeline: an exception in a stage is rethrown by every sink and ends the pipeline") {
    csp::runtime rt(2);
    constexpr int k = 37;
    auto bad = [](int x) {
        if (x == k) throw stage_error("boom at " + std::to_string(x));
        return x * 10;
    };
    const auto prefix = [] {
        std::vector<int> v;
        for (int i = 0; i < k; ++i) v.push_back(i * 10);
        return v;
    }();

    SUBCASE("collect") {
        {
            csp::pipeline p(rt);
            auto out = p.map(p.source(std::views::iota(0, kHuge)), bad);
            CHECK_THROWS_WITH_AS(p.collect(out), "boom at 37", stage_error);
        }
        CHECK(no_task_left(rt));
    }
    SUBCASE("for_each: every value before the error, then the error") {
        std::vector<int> seen;
        {
            csp::pipeline p(rt);
            auto out = p.map(p.source(std::views::iota(0, kHuge)), bad);
            CHECK_THROWS_WITH_AS(p.for_each(out, [&](int v) { seen.push_back(v); }), "boom at 37", stage_error);
        }
        CHECK(seen == prefix);
        CHECK(no_task_left(rt));
    }
    SUBCASE("reduce") {
        {
            csp::pipeline p(rt);
            auto out = p.map(p.source(std::views::iota(0, kHuge)), bad, {.workers = 4});
            CHECK_THROWS_WITH_AS(p.reduce(out, 0LL, [](long long a, int v) { return a + v; }), "boom at 37",
                                 stage_error);
        }
        CHECK(no_task_left(rt));
    }
    SUBCASE("drain loop") {
        std::vector<int> seen;
        {
            csp::pipeline p(rt);
            auto out = p.map(p.source(std::views::iota(0, kHuge)), bad);
            auto loop = [&] {
                for (auto& v : p.drain(out)) seen.push_back(v);
            };
            CHECK_THROWS_WITH_AS(loop(), "boom at 37", stage_error);
        }
        CHECK(seen == prefix);
        CHECK(no_task_left(rt));
    }
    SUBCASE("wait, output never read") {
        {
            csp::pipeline p(rt);
            auto out = p.map(p.source(std::views::iota(0, kHuge)), bad);  // k values fit in the output
            CHECK_THROWS_WITH_AS(p.wait(), "boom at 37", stage_error);
            CHECK(p.stop_token().stop_requested());
        }
        CHECK(no_task_left(rt));
    }
    SUBCASE("a coroutine stage, downstream of others") {
        {
            csp::pipeline p(rt);
            auto a = p.map(p.source(std::views::iota(0, kHuge)), [](int x) { return x; }, {.workers = 2});
            auto b = p.map(a, [](int x) -> asio::awaitable<int> {
                if (x == k) throw stage_error("co boom");
                co_return x;
            }, {.workers = 3});
            auto c = p.filter(b, [](const int&) { return true; });
            CHECK_THROWS_WITH_AS(p.collect(c), "co boom", stage_error);
        }
        CHECK(no_task_left(rt));
    }
    SUBCASE("a blocking stage") {
        {
            csp::pipeline p(rt);
            auto a = p.map(p.source(std::views::iota(0, kHuge)), bad, {.workers = 2, .blocking = true});
            auto b = p.batch(a, 5, 1h);
            CHECK_THROWS_WITH_AS(p.collect(b), "boom at 37", stage_error);
        }
        CHECK(no_task_left(rt));
    }
    SUBCASE("an ordered map") {
        {
            csp::pipeline p(rt);
            auto out = p.map(p.source(std::views::iota(0, kHuge)), bad, {.workers = 4, .capacity = 2, .ordered = true});
            std::vector<int> seen;
            CHECK_THROWS_WITH_AS(p.for_each(out, [&](int v) { seen.push_back(v); }), "boom at 37", stage_error);
            // In order, and nothing at or after the failing item.
            CHECK(seen.size() <= prefix.size());
            CHECK(std::equal(seen.begin(), seen.end(), prefix.begin()));
        }
        CHECK(no_task_left(rt));
    }
    SUBCASE("filter and flat_map") {
        {
            csp::pipeline p(rt);
            auto a = p.filter(p.source(std::views::iota(0, kHuge)), [](const int& x) {
                if (x == k) throw stage_error("filter boom");
                return true;
            });
            CHECK_THROWS_WITH_AS(p.collect(a), "filter boom", stage_error);
        }
        {
            csp::pipeline p(rt);
            auto a = p.flat_map(p.source(std::views::iota(0, kHuge)), [](int x) -> asio::awaitable<std::vector<int>> {
                if (x == k) throw stage_error("flat_map boom");
                co_return std::vector<int>{x, x};
            }, {.workers = 2});
            CHECK_THROWS_WITH_AS(p.collect(a), "flat_map boom", stage_error);
        }
        CHECK(no_task_left(rt));
    }
    SUBCASE("a generator source") {
        {
            csp::pipeline p(rt);
            auto a = p.source([i = 0]() mutable -> std::optional<int> {
                if (i == k) throw stage_error("gen boom");
                return i++;
            });
            std::vector<int> seen;
            CHECK_THROWS_WITH_AS(p.for_each(a, [&](int v) { seen.push_back(v); }), "gen boom", stage_error);
            CHECK(seen == iota_vec(0, k));
        }
        CHECK(no_task_left(rt));
    }
    SUBCASE("the first of several errors") {
        {
            csp::pipeline p(rt);
            auto a = p.map(p.source(std::views::iota(0, kHuge)), [](int x) -> int {
                if (x >= k) throw stage_error("boom");
                return x;
            }, {.workers = 4});
            CHECK_THROWS_WITH_AS(p.collect(a), "boom", stage_error);
        }
        CHECK(no_task_left(rt));
    }
}

TEST_CASE("pipeline: an exception from the sink's own function ends the pipeline") {
    csp::runtime rt(2);
    {
        csp::pipeline p(rt);
        auto out = p.map(p.source(std::views::iota(0, kHuge)), [](int x) { return x; }, {.workers = 2, .blocking = true});
        int n = 0;
        CHECK_THROWS_AS(p.for_each(out, [&](int) {
            if (++n == 50) throw stage_error("sink");
        }), stage_error);
        CHECK(n == 50);
    }
    CHECK(no_task_left(rt));
}

// ---------------------------------------------------------------------------
// Cancellation flows upstream

TEST_CASE("pipeline: breaking out of a drain loop and destroying the pipeline ends every stage") {
    csp::runtime rt(2);
    auto take = [](csp::pipeline& p, auto out, int n) {
        using V = typename decltype(out)::value_type;
        std::vector<V> got;
        for (auto& v : p.drain(out)) {
            got.push_back(std::move(v));
            if (static_cast<int>(got.size()) == n) break;
        }
        return got;
    };

    SUBCASE("coroutine stages") {
        {
            csp::pipeline p(rt);
            auto a = p.map(p.source(std::views::iota(0, kHuge)), [](int x) { return x + 1; });
            auto b = p.filter(a, [](const int& x) -> asio::awaitable<bool> { co_return x % 2 == 0; }, {.workers = 3});
            auto c = p.flat_map(b, [](int x) { return std::vector<int>{x, x}; }, {.workers = 2});
            CHECK(take(p, c, 100).size() == 100);
        }
        CHECK(no_task_left(rt));
    }
    SUBCASE("1 worker: exact prefix") {
        {
            csp::pipeline p(rt);
            auto a = p.map(p.source(std::views::iota(0, kHuge)), [](int x) { return x * 2; });
            std::vector<int> want;
            for (int i = 0; i < 200; ++i) want.push_back(2 * i);
            CHECK(take(p, a, 200) == want);
        }
        CHECK(no_task_left(rt));
    }
    SUBCASE("blocking stages") {
        {
            csp::pipeline p(rt);
            auto a = p.map(p.source(std::views::iota(0, kHuge)), [](int x) { return x; },
                           {.workers = 3, .capacity = 1, .blocking = true});
            auto b = p.filter(a, [](const int& x) { return x % 3 != 0; }, {.workers = 2, .blocking = true});
            auto c = p.flat_map(b, [](int x) { return std::vector<int>{x, x, x}; }, {.blocking = true});
            CHECK(take(p, c, 500).size() == 500);
        }
        CHECK(no_task_left(rt));
    }
    SUBCASE("a batch stage, with a long deadline") {
        {
            csp::pipeline p(rt);
            auto b = p.batch(p.source(std::views::iota(0, kHuge)), 7, 1h, 2);
            const auto groups = take(p, b, 20);
            REQUIRE(groups.size() == 20);
            for (std::size_t i = 0; i < groups.size(); ++i)
                CHECK(groups[i] == iota_vec(static_cast<int>(7 * i), static_cast<int>(7 * i + 7)));
        }
        CHECK(no_task_left(rt));
    }
    SUBCASE("a batch stage parked in its deadline wait") {
        {
            csp::pipeline p(rt);
            auto in = csp::make_chan<int>();
            auto b = p.batch(p.source(in.as_receiver()), 100, 1h);
            in.send(1);  // the batch now waits for more, or for its deadline in an hour
        }
        CHECK(no_task_left(rt));
    }
    SUBCASE("an ordered map, merge and broadcast") {
        {
            csp::pipeline p(rt);
            auto a = p.map(p.source(std::views::iota(0, kHuge)), [](int x) -> asio::awaitable<int> {
                co_await pause_us(cost_us(x) / 8);
                co_return x;
            }, {.workers = 4, .capacity = 2, .ordered = true});
            auto outs = p.broadcast(a, 3, 1);
            auto m = p.merge(outs, 1);
            CHECK(take(p, m, 300).size() == 300);
        }
        CHECK(no_task_left(rt));
    }
    SUBCASE("stages parked on a channel nobody sends to") {
        {
            csp::pipeline p(rt);
            auto in = csp::make_chan<int>();
            auto a = p.map(p.source(in.as_receiver()), [](int x) { return x; }, {.workers = 2, .blocking = true});
            auto b = p.map(a, [](int x) -> asio::awaitable<int> { co_return x; }, {.workers = 2});
            auto c = p.map(b, [](int x) { return x; }, {.workers = 3, .ordered = true});
            // Nobody reads c either; destroying the pipeline must end all of them.
        }
        CHECK(no_task_left(rt));
    }
    SUBCASE("a coroutine stage parked in a long wait of its own") {
        {
            csp::pipeline p(rt);
            auto a = p.map(p.source(std::views::iota(0, kHuge)), [](int x) -> asio::awaitable<int> {
                if (x == 10) co_await pause_us(3'600'000'000LL);  // an hour
                co_return x;
            });
            CHECK(take(p, a, 10) == iota_vec(0, 10));
        }
        CHECK(no_task_left(rt));
    }
}

TEST_CASE("pipeline: cancel() from another thread") {
    csp::runtime rt(2);
    SUBCASE("coroutine stages, consumer in for_each") {
        {
            csp::pipeline p(rt);
            auto a = p.map(p.source(std::views::iota(0, kHuge)), [](int x) { return x; });
            std::atomic<int> n{0};
            std::thread canceller([&] {
                while (n.load() < 1000) std::this_thread::yield();
                p.cancel();
            });
            int expect = 0;
            bool in_order = true;
            p.for_each(a, [&](int v) {  // ends: cancelling is not an error
                in_order = in_order && v == expect++;
                n.fetch_add(1);
            });
            canceller.join();
            CHECK(in_order);
            CHECK(n.load() >= 1000);
            CHECK(p.stop_token().stop_requested());
            p.wait();
        }
        CHECK(no_task_left(rt));
    }
    SUBCASE("blocking and batch stages, nobody reading") {
        {
            csp::pipeline p(rt);
            auto a = p.map(p.source(std::views::iota(0, kHuge)), [](int x) { return x; }, {.workers = 2, .blocking = true});
            auto b = p.batch(a, 3, 1h);
            std::thread canceller([&] {
                std::this_thread::sleep_for(20ms);
                p.cancel();
            });
            p.wait();  // returns once cancelled, without an error
            canceller.join();
            CHECK(b.size() <= b.capacity());
        }
        CHECK(no_task_left(rt));
    }
}

}  // namespace
