// The executor of a coroutine task (runtime/detail/task_executor.hpp): what
// is posted to a task runs one at a time and in order, whoever posts it;
// dispatch from inside the task runs inline and post never does; an
// executor kept after its task ended still works; and two tasks handing off
// to each other through the runnext slot do not starve a third.
#include <doctest/doctest.h>

#include <runtime/csp.hpp>

#include <asio/any_io_executor.hpp>
#include <asio/dispatch.hpp>
#include <asio/post.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include <atomic>
#include <cstdint>
#include <future>
#include <optional>
#include <thread>
#include <vector>

#include "tsan_suppressions.hpp"

namespace {

using asio::use_awaitable;

// Starts a task that hands out its executor and stays parked until `release`
// is closed.
asio::any_io_executor parked_task_executor(csp::runtime& rt, csp::channel<int>& release) {
    std::promise<asio::any_io_executor> ex;
    rt.go([&ex, release]() -> asio::awaitable<void> {
        ex.set_value(co_await asio::this_coro::executor);
        while (co_await release.async_recv(use_awaitable)) {
        }
    });
    return ex.get_future().get();
}

}  // namespace

TEST_CASE("task executor: handlers from many threads run one at a time, each once, in each poster's order") {
    constexpr int kPosters = 4;
    constexpr int kEach = 5000;
    csp::runtime rt(2);
    auto release = csp::make_chan<int>();
    asio::any_io_executor ex = parked_task_executor(rt, release);

    // Only handlers of the task touch these: no lock, so a handler running
    // concurrently with another is a data race (ThreadSanitizer) and shows as
    // in_flight > 1.
    int in_flight = 0, overlaps = 0, out_of_order = 0;
    std::vector<int> next(kPosters, 0);
    std::atomic<int> ran{0};
    std::vector<std::thread> posters;
    for (int p = 0; p < kPosters; ++p) {
        posters.emplace_back([&, p] {
            for (int i = 0; i < kEach; ++i) {
                asio::post(ex, [&, p, i] {
                    if (++in_flight != 1) ++overlaps;
                    if (next[p] != i) ++out_of_order;
                    next[p] = i + 1;
                    --in_flight;
                    ran.fetch_add(1, std::memory_order_release);
                });
            }
        });
    }
    for (auto& t : posters) t.join();
    // The last handler's effects are published by its own increment.
    std::promise<void> drained;
    asio::post(ex, [&] { drained.set_value(); });
    drained.get_future().get();
    CHECK(ran.load(std::memory_order_acquire) == kPosters * kEach);
    CHECK(overlaps == 0);
    CHECK(out_of_order == 0);
    for (int p = 0; p < kPosters; ++p) CHECK(next[p] == kEach);
    release.close();
    rt.wait();
}

TEST_CASE("task executor: dispatch inside the task runs inline, post queues behind what is queued") {
    csp::runtime rt(2);
    std::vector<int> order;
    bool dispatched_inline = false, posted_inline = false;
    rt.go([&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        asio::dispatch(ex, [&] { dispatched_inline = true; });
        bool posted = false;
        asio::post(ex, [&] { posted = true; });
        posted_inline = posted;
        // More than one turn's worth of handlers, then a yield queued behind them.
        for (int i = 0; i < 500; ++i) asio::post(ex, [&order, i] { order.push_back(i); });
        co_await asio::post(ex, use_awaitable);
        CHECK(posted);
    });
    rt.wait();
    CHECK(dispatched_inline);
    CHECK_FALSE(posted_inline);
    REQUIRE(order.size() == 500);
    for (int i = 0; i < 500; ++i) CHECK(order[static_cast<std::size_t>(i)] == i);
}

TEST_CASE("task executor: a copy kept after its task ended still runs what is posted to it") {
    csp::runtime rt(2);
    std::optional<asio::any_io_executor> kept;
    rt.go([&]() -> asio::awaitable<void> { kept.emplace(co_await asio::this_coro::executor); });
    rt.wait();
    REQUIRE(kept);
    std::promise<int> ran;
    asio::post(*kept, [&] { ran.set_value(42); });
    CHECK(ran.get_future().get() == 42);
    kept.reset();  // the last reference: the context goes with it
}

TEST_CASE("task executor: two tasks handing off to each other forever do not starve a third") {
    // One worker: the hand-off pair runs through the runnext slot; the third
    // task is queued behind it and is the only way the pair stops.
    csp::runtime rt(1);
    auto ping = csp::make_chan<std::int64_t>();
    auto pong = csp::make_chan<std::int64_t>();
    std::atomic<bool> stop{false};
    std::int64_t rounds = 0, echoed = 0;
    rt.go([&]() -> asio::awaitable<void> {
        std::int64_t i = 0;
        while (!stop.load(std::memory_order_relaxed)) {
            co_await ping.async_send(i, use_awaitable);
            auto back = co_await pong.async_recv(use_awaitable);
            CHECK(back == i);
            ++i;
        }
        rounds = i;
        ping.close();
    });
    rt.go([&]() -> asio::awaitable<void> {
        while (auto v = co_await ping.async_recv(use_awaitable)) {
            co_await pong.async_send(*v, use_awaitable);
            ++echoed;
        }
    });
    rt.go([&]() -> asio::awaitable<void> {
        stop.store(true, std::memory_order_relaxed);
        co_return;
    });
    rt.wait();
    CHECK(stop.load());
    CHECK(echoed == rounds);
}
