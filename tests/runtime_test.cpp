// csp::runtime: tasks (coroutines and plain callables) on a pool of Asio
// workers, task groups with error propagation and cancellation, wait groups,
// timers as channels, the deadlock report, and destruction with tasks still
// parked. Every test checks exact values and counts; every task has ended and
// every thread is joined before its test case returns.
#include <doctest/doctest.h>

#include <runtime/csp.hpp>

#include <asio/bind_allocator.hpp>
#include <asio/bind_cancellation_slot.hpp>
#include <asio/bind_executor.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <future>
#include <latch>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <variant>
#include <system_error>
#include <thread>
#include <vector>

#include "tsan_suppressions.hpp"

namespace {

using namespace std::chrono_literals;
using asio::use_awaitable;
using steady = std::chrono::steady_clock;

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif

// Counts, in its destructor, that a task's body is gone (its coroutine frame
// destroyed, or its plain function returned or unwound).
struct end_guard {
    std::atomic<int>& n;
    ~end_guard() { n.fetch_add(1); }
};

// Resident set size in bytes, from /proc/self/statm.
long rss_bytes() {
    std::ifstream f("/proc/self/statm");
    long size = 0, resident = 0;
    f >> size >> resident;
    return resident * sysconf(_SC_PAGESIZE);
}

// ---------------------------------------------------------------------------
// go() with every kind of task

asio::awaitable<void> add_to(std::atomic<int>& n, int k) {
    n.fetch_add(k);
    co_return;
}

TEST_CASE("runtime: go() runs coroutine lambdas, awaitables, stop_token callables and plain callables") {
    for (unsigned workers : {1u, 2u, 4u}) {
        CAPTURE(workers);
        csp::runtime rt(workers);
        CHECK(rt.workers() == workers);
        std::atomic<int> sum{0};
        auto ch = csp::make_chan<int>();
        rt.go([&]() -> asio::awaitable<void> {  // a coroutine lambda
            sum.fetch_add(1);
            co_await ch.async_send(10, use_awaitable);
        });
        rt.go(add_to(sum, 100));  // an asio::awaitable<void>
        rt.go([&](std::stop_token st) {  // a plain callable taking a stop token
            CHECK_FALSE(st.stop_requested());
            auto r = ch.recv(st);
            CHECK(r.ok());
            sum.fetch_add(r.ok() ? *r : -1000);
        });
        rt.go([&](std::stop_token st) -> asio::awaitable<void> {  // a coroutine taking one
            CHECK_FALSE(st.stop_requested());
            sum.fetch_add(1000);
            co_return;
        });
        rt.go([&] { sum.fetch_add(10000); });  // a plain callable
        // A plain callable that is a mutable function object, moved in.
        struct counter {
            std::atomic<int>* s;
            int k = 0;
            void operator()() {
                ++k;
                s->fetch_add(100000 * k);
            }
        };
        rt.go(counter{&sum});
        rt.wait();
        CHECK(sum.load() == 1 + 10 + 100 + 1000 + 10000 + 100000);
        CHECK(rt.live_tasks() == 0);
    }
}

TEST_CASE("runtime: tasks started from inside tasks") {
    csp::runtime rt(2);
    std::atomic<int> n{0};
    rt.go([&]() -> asio::awaitable<void> {
        for (int i = 0; i < 100; ++i)
            rt.go([&]() -> asio::awaitable<void> {
                n.fetch_add(1);
                co_return;
            });
        rt.go([&] {
            for (int i = 0; i < 10; ++i) rt.go([&] { n.fetch_add(1000); });
        });
        co_return;
    });
    rt.wait();
    CHECK(n.load() == 100 + 10 * 1000);
}

// ---------------------------------------------------------------------------
// Daisy chain, ping-pong, many parked tasks

TEST_CASE("runtime: a daisy chain of 10 000 coroutine tasks passes a value down") {
    constexpr int n = 10'000;
    for (unsigned workers : {1u, 2u, 4u}) {
        CAPTURE(workers);
        csp::runtime rt(workers);
        std::vector<csp::channel<long>> links;
        links.reserve(n + 1);
        for (int i = 0; i <= n; ++i) links.push_back(csp::make_chan<long>());
        auto t0 = steady::now();
        for (int i = 0; i < n; ++i)
            rt.go([from = links[static_cast<std::size_t>(i)],
                   to = links[static_cast<std::size_t>(i) + 1]]() -> asio::awaitable<void> {
                auto v = co_await from.async_recv(use_awaitable);
                co_await to.async_send(v.value_or(-1'000'000'000) + 1, use_awaitable);
            });
        links.front().send(1);
        auto last = links.back().recv();
        auto took = steady::now() - t0;
        rt.wait();
        CHECK(last == 1L + n);
        CHECK(rt.live_tasks() == 0);
        MESSAGE("daisy chain of " << n << " tasks on " << workers << " workers: "
                                  << std::chrono::duration<double, std::milli>(took).count() << " ms");
    }
}

TEST_CASE("runtime: ping-pong between a plain thread and a coroutine task") {
    for (unsigned workers : {1u, 2u}) {
        for (int cap : {0, 1}) {
            CAPTURE(workers);
            CAPTURE(cap);
            constexpr int rounds = 5000;
            csp::runtime rt(workers);
            auto ping = csp::make_chan<int>(cap);
            auto pong = csp::make_chan<long>(cap);
            std::atomic<int> served{0};
            rt.go([&]() -> asio::awaitable<void> {
                while (auto v = co_await ping.async_recv(use_awaitable)) {
                    served.fetch_add(1);
                    co_await pong.async_send(2L * *v + 1, use_awaitable);
                }
                pong.close();
            });
            long sum = 0;
            int count = 0, wrong = 0;
            for (int i = 0; i < rounds; ++i) {
                ping.send(i);
                auto r = pong.recv();
                if (r != 2L * i + 1) ++wrong;
                sum += r.value_or(0);
                ++count;
            }
            ping.close();
            CHECK_FALSE(pong.recv().has_value());
            rt.wait();
            CHECK(wrong == 0);
            CHECK(count == rounds);
            CHECK(served.load() == rounds);
            CHECK(sum == 2L * rounds * (rounds - 1) / 2 + rounds);
        }
    }
}

TEST_CASE("runtime: 100 000 coroutine tasks parked on channels at once, then released") {
    constexpr int n = 100'000;
    csp::runtime rt(2);
    auto ch = csp::make_chan<int>();
    std::atomic<long> sum{0};
    std::atomic<int> done{0};
    std::latch parked(n);
    const long rss0 = rss_bytes();
    auto t0 = steady::now();
    for (int i = 0; i < n; ++i)
        rt.go([&]() -> asio::awaitable<void> {
            parked.count_down();  // the receive below starts before this worker runs anything else
            auto v = co_await ch.async_recv(use_awaitable);
            sum.fetch_add(v.value_or(-1'000'000));
            done.fetch_add(1);
        });
    auto t1 = steady::now();
    parked.wait();
    // Each worker runs one more handler after its last task parked.
    for (unsigned w = 0; w < rt.workers() * 2; ++w) {
        std::promise<void> p;
        asio::post(rt.executor(), [&] { p.set_value(); });
        p.get_future().wait();
    }
    auto t2 = steady::now();
    const long rss1 = rss_bytes();
    CHECK(rt.live_tasks() == static_cast<std::size_t>(n));
    CHECK(done.load() == 0);
    const double per_task = double(rss1 - rss0) / n;
    MESSAGE("parked " << n << " coroutine tasks: RSS +" << (rss1 - rss0) / 1024 << " KiB, "
                      << per_task << " bytes per parked task; go() "
                      << std::chrono::duration<double, std::nano>(t1 - t0).count() / n
                      << " ns per task, spawn to parked "
                      << std::chrono::duration<double, std::nano>(t2 - t0).count() / n
                      << " ns per task" << std::string(kSanitized ? " (sanitizer build)" : ""));
    CHECK(per_task < 16 * 1024.0);
    for (int i = 0; i < n; ++i) ch.send(i);
    rt.wait();
    CHECK(done.load() == n);
    CHECK(sum.load() == long(n) * (n - 1) / 2);
    CHECK(rt.live_tasks() == 0);
    CHECK(ch.try_send(1) == csp::status::would_block);  // nobody left waiting
}

TEST_CASE("runtime: the cost of go(), from outside the runtime and from inside a task") {
    const int n = kSanitized ? 20'000 : 100'000;
    csp::runtime rt(2);
    std::atomic<int> ran{0};
    auto t0 = steady::now();
    for (int i = 0; i < n; ++i)
        rt.go([&]() -> asio::awaitable<void> {
            ran.fetch_add(1, std::memory_order_relaxed);
            co_return;
        });
    rt.wait();
    auto outside = steady::now() - t0;
    CHECK(ran.load() == n);

    ran = 0;
    auto t1 = steady::now();
    rt.go([&]() -> asio::awaitable<void> {
        for (int i = 0; i < n; ++i)
            rt.go([&]() -> asio::awaitable<void> {
                ran.fetch_add(1, std::memory_order_relaxed);
                co_return;
            });
        co_return;
    });
    rt.wait();
    auto inside = steady::now() - t1;
    CHECK(ran.load() == n);
    MESSAGE("go() + run + end of a trivial coroutine task, 2 workers: "
            << std::chrono::duration<double, std::nano>(outside).count() / n << " ns from the main thread, "
            << std::chrono::duration<double, std::nano>(inside).count() / n << " ns from inside a task"
            << std::string(kSanitized ? " (sanitizer build)" : ""));
}

// ---------------------------------------------------------------------------
// task_group

TEST_CASE("runtime: a task_group rethrows the first error, cancels the parked tasks, and leaves nothing running") {
    for (unsigned workers : {1u, 2u, 4u}) {
        CAPTURE(workers);
        csp::runtime rt(workers);
        auto never = csp::make_chan<int>();     // nobody sends
        auto nobody = csp::make_chan<int>();    // nobody receives
        auto go_ahead = csp::make_chan<int>();  // lets the failing task fail
        std::atomic<int> ended{0}, saw_aborted{0}, saw_stop{0};
        constexpr int kCoro = 6, kPlain = 3;
        std::latch parked(kCoro + kPlain);
        {
            csp::task_group g(rt);
            for (int k = 0; k < kCoro; ++k)
                g.go([&, k]() -> asio::awaitable<void> {
                    end_guard eg{ended};
                    parked.count_down();
                    try {
                        if (k % 3 == 0) (void)co_await never.async_recv(use_awaitable);
                        else if (k % 3 == 1) co_await nobody.async_send(k, use_awaitable);
                        else
                            (void)co_await csp::async_select(use_awaitable, csp::on_recv(never, [](std::optional<int>) {}),
                                                             csp::on_send(nobody, k));
                    } catch (const std::system_error& e) {
                        if (e.code() == asio::error::operation_aborted) saw_aborted.fetch_add(1);
                        throw;
                    }
                });
            for (int k = 0; k < kPlain; ++k)
                g.go([&, k](std::stop_token st) {
                    end_guard eg{ended};
                    parked.count_down();
                    csp::status s = k == 0   ? never.recv(st).state()
                                    : k == 1 ? nobody.send(int(k), st)
                                             : (csp::select(csp::on_recv(never, [](std::optional<int>) {}),
                                                            csp::on_stop(st, [] {})) == 1
                                                    ? csp::status::cancelled
                                                    : csp::status::ok);
                    if (s == csp::status::cancelled) saw_stop.fetch_add(1);
                });
            g.go([&]() -> asio::awaitable<void> {
                end_guard eg{ended};
                (void)co_await go_ahead.async_recv(use_awaitable);
                throw std::runtime_error("the first error");
            });
            parked.wait();
            go_ahead.send(1);
            try {
                g.wait();
                FAIL_CHECK("task_group::wait() did not rethrow");
            } catch (const std::runtime_error& e) {
                CHECK(std::string(e.what()) == "the first error");
            } catch (const std::exception& e) {
                FAIL_CHECK("task_group::wait() rethrew another exception: " << e.what());
            }
            CHECK(ended.load() == kCoro + kPlain + 1);
            CHECK(saw_aborted.load() == kCoro);
            CHECK(saw_stop.load() == kPlain);
            // The error is handed out once.
            CHECK_NOTHROW(g.wait());
        }
        rt.wait();  // the group's error is not the root's
        CHECK(rt.live_tasks() == 0);
        // Nothing was taken from or given to the channels by the cancelled tasks.
        CHECK(never.try_send(1) == csp::status::would_block);
        CHECK(nobody.try_recv().state() == csp::status::would_block);
    }
}

// Regression: task_group::wait() returned as soon as the group's own count
// reached zero, and the runtime's live count dropped only afterwards (95 of
// 3000 rounds saw the group's last task still counted).
TEST_CASE("runtime: after task_group::wait() returns, the runtime counts none of the group's tasks") {
    csp::runtime rt(2);
    const int rounds = kSanitized ? 300 : 3000;
    int lagging = 0;
    for (int r = 0; r < rounds; ++r) {
        csp::task_group g(rt);
        g.go([] {});
        g.go([]() -> asio::awaitable<void> { co_return; });
        g.wait();
        if (rt.live_tasks() != 0) ++lagging;
    }
    CHECK_MESSAGE(lagging == 0, lagging << " of " << rounds
                                        << " rounds saw live_tasks() > 0 right after task_group::wait()");
    rt.wait();
}

TEST_CASE("runtime: a task_group destroyed without wait() cancels its tasks and waits for them") {
    for (unsigned workers : {1u, 2u}) {
        CAPTURE(workers);
        csp::runtime rt(workers);
        auto never = csp::make_chan<int>();
        std::atomic<int> ended{0};
        constexpr int kCoro = 20, kPlain = 4;
        std::latch parked(kCoro + kPlain);
        {
            csp::task_group g(rt);
            for (int k = 0; k < kCoro; ++k)
                g.go([&]() -> asio::awaitable<void> {
                    end_guard eg{ended};
                    parked.count_down();
                    (void)co_await never.async_recv(use_awaitable);
                });
            for (int k = 0; k < kPlain; ++k)
                g.go([&](std::stop_token st) {
                    end_guard eg{ended};
                    parked.count_down();
                    CHECK(never.recv(st).state() == csp::status::cancelled);
                });
            parked.wait();
        }
        CHECK(ended.load() == kCoro + kPlain);
        rt.wait();
        CHECK(rt.live_tasks() == 0);
        CHECK(never.try_send(1) == csp::status::would_block);
    }
}

TEST_CASE("runtime: task_group::cancel() stops the group; cancellation endings are not errors") {
    csp::runtime rt(2);
    auto never = csp::make_chan<int>();
    std::atomic<int> ended{0};
    std::latch parked(4);
    csp::task_group g(rt);
    for (int k = 0; k < 2; ++k)
        g.go([&]() -> asio::awaitable<void> {
            end_guard eg{ended};
            parked.count_down();
            (void)co_await never.async_recv(use_awaitable);
        });
    for (int k = 0; k < 2; ++k)
        g.go([&](std::stop_token st) {
            end_guard eg{ended};
            parked.count_down();
            (void)never.recv(st);
        });
    parked.wait();
    g.cancel();
    CHECK(g.stop_token().stop_requested());
    CHECK_NOTHROW(g.wait());
    CHECK(ended.load() == 4);
}

// ---------------------------------------------------------------------------
// Plain tasks that block

TEST_CASE("runtime: more blocking plain tasks than workers, each waiting for a later one, all complete") {
    for (unsigned workers : {1u, 2u}) {
        CAPTURE(workers);
        constexpr int n = 24;
        csp::runtime rt(workers);
        std::vector<csp::channel<int>> link;
        for (int i = 0; i < n; ++i) link.push_back(csp::make_chan<int>());
        std::vector<int> got(n, -1);
        // Task i first hands its number to task i-1 (started earlier), then
        // blocks until task i+1 (started later) hands it one.
        for (int i = 0; i < n; ++i)
            rt.go([&, i] {
                if (i > 0) link[static_cast<std::size_t>(i) - 1].send(int(i));
                if (i < n - 1) got[static_cast<std::size_t>(i)] = link[static_cast<std::size_t>(i)].recv().value_or(-2);
            });
        rt.wait();
        for (int i = 0; i < n - 1; ++i) CHECK(got[static_cast<std::size_t>(i)] == i + 1);
        CHECK(rt.live_tasks() == 0);
    }
}

TEST_CASE("runtime: coroutine and plain tasks mixed, feeding each other") {
    for (unsigned workers : {1u, 2u, 4u}) {
        CAPTURE(workers);
        csp::runtime rt(workers);
        constexpr int kStages = 6, n = 500;
        std::vector<csp::channel<int>> c;
        for (int i = 0; i <= kStages; ++i) c.push_back(csp::make_chan<int>(i % 2));
        // Even stages are coroutines, odd stages plain (blocking) tasks; each adds 1.
        for (int s = 0; s < kStages; ++s) {
            auto in = c[static_cast<std::size_t>(s)], out = c[static_cast<std::size_t>(s) + 1];
            if (s % 2 == 0)
                rt.go([in, out]() -> asio::awaitable<void> {
                    while (auto v = co_await in.async_recv(use_awaitable)) co_await out.async_send(*v + 1, use_awaitable);
                    out.close();
                });
            else
                rt.go([in, out] {
                    for (int v : in) out.send(v + 1);
                    out.close();
                });
        }
        rt.go([&]() -> asio::awaitable<void> {
            for (int i = 0; i < n; ++i) co_await c.front().async_send(i, use_awaitable);
            c.front().close();
        });
        long sum = 0;
        int count = 0, out_of_order = 0, last = -1;
        for (int v : c.back()) {
            sum += v;
            ++count;
            if (v <= last) ++out_of_order;
            last = v;
        }
        rt.wait();
        CHECK(count == n);
        CHECK(out_of_order == 0);
        CHECK(sum == long(n) * (n - 1) / 2 + long(n) * kStages);
    }
}

// ---------------------------------------------------------------------------
// Errors and the deadlock report

TEST_CASE("runtime: an exception escaping a root task is rethrown by wait(), once") {
    {
        csp::runtime rt(2);
        std::atomic<int> others{0};
        rt.go([]() -> asio::awaitable<void> {
            co_await asio::post(asio::use_awaitable);
            throw std::runtime_error("coroutine failed");
        });
        for (int i = 0; i < 10; ++i) rt.go([&] { others.fetch_add(1); });  // not cancelled by it
        CHECK_THROWS_WITH_AS(rt.wait(), "coroutine failed", std::runtime_error);
        CHECK(others.load() == 10);
        CHECK_NOTHROW(rt.wait());
    }
    {
        csp::runtime rt(1);
        rt.go([] { throw std::logic_error("plain failed"); });
        CHECK_THROWS_WITH_AS(rt.wait(), "plain failed", std::logic_error);
        CHECK(rt.live_tasks() == 0);
    }
}

// Runs f with the process's stderr (fd 2) going to a temporary file; returns
// what was written there.
template <class F>
std::string capture_stderr(F&& f) {
    std::fflush(stderr);
    std::FILE* tmp = std::tmpfile();
    REQUIRE(tmp != nullptr);
    const int saved = dup(2);
    dup2(fileno(tmp), 2);
    f();
    std::fflush(stderr);
    dup2(saved, 2);
    close(saved);
    std::string out;
    std::rewind(tmp);
    char buf[512];
    while (std::size_t k = std::fread(buf, 1, sizeof buf, tmp)) out.append(buf, k);
    std::fclose(tmp);
    return out;
}

TEST_CASE("runtime: an exception nobody collected is printed when the runtime is destroyed") {
    std::string err = capture_stderr([] {
        csp::runtime rt(1);
        auto done = csp::make_chan<int>(1);
        // By value: `done` is destroyed before `rt`, while the task may
        // still be inside send() after the value was taken.
        rt.go([done] {
            done.send(1);
            throw std::runtime_error("uncollected root failure");
        });
        CHECK(done.recv() == 1);
    });  // no wait(): the destructor waits for the task, then reports
    CHECK(err.find("uncollected root failure") != std::string::npos);
}

// Regression: the first error of a task_group destroyed without wait() was
// dropped with the group, printed nowhere.
TEST_CASE("runtime: the error of a task_group destroyed without wait() is not swallowed silently") {
    std::string err = capture_stderr([] {
        csp::runtime rt(1);
        auto done = csp::make_chan<int>(1);
        {
            csp::task_group g(rt);
            g.go([done] {
                done.send(1);
                throw std::runtime_error("uncollected group failure");
            });
            CHECK(done.recv() == 1);
        }  // no wait()
    });
    CHECK(err.find("uncollected group failure") != std::string::npos);
}

// Waits for every task of rt; returns how many false deadlock reports
// wait() raised on the way.
int deadlock_reports_until_done(csp::runtime& rt) {
    int reports = 0;
    for (;;) {
        try {
            rt.wait();
            return reports;
        } catch (const csp::deadlock_error&) {
            ++reports;
        }
    }
}

// Regression: the deadlock detector compared a count of parked *operations*
// with the count of live *tasks*. One task with two operations parked at
// once (asio's awaitable operator ||, which runs each branch as its own
// coroutine) made parked >= live while another task was still computing.
TEST_CASE("runtime: no deadlock report while one task waits on two channels at once and another computes") {
    using namespace asio::experimental::awaitable_operators;
    csp::runtime rt(2);
    auto x = csp::make_chan<int>(), y = csp::make_chan<int>();
    std::atomic<int> got{0};
    rt.go([&]() -> asio::awaitable<void> {
        auto r = co_await (x.async_recv(use_awaitable) || y.async_recv(use_awaitable));
        if (r.index() == 0) got = std::get<0>(r).value_or(-1);
    });
    rt.go([&](std::stop_token st) {
        auto until = steady::now() + 400ms;
        while (steady::now() < until) std::this_thread::yield();
        CHECK(x.send(7, st) == csp::status::ok);
    });
    CHECK(deadlock_reports_until_done(rt) == 0);  // the computing task sends; everything ends
    CHECK(got.load() == 7);
}

// Regression: csp::after() defaults to the default runtime, whose pending
// timers the deadlock detector of another runtime did not count. Here the
// timer's runtime is declared after `rt`, so it is destroyed (its threads
// joined) before `rt`: see the BUG below for the other order.
TEST_CASE("runtime: no deadlock report while a task waits on an after() of another runtime") {
    csp::runtime rt(1);
    csp::runtime timers(1);
    std::atomic<int> got{0};
    rt.go([&]() -> asio::awaitable<void> {
        auto t = csp::after(400ms, timers);
        if (co_await t.async_recv(use_awaitable)) got = 1;
    });
    CHECK(deadlock_reports_until_done(rt) == 0);  // the timer fires; everything ends
    CHECK(got.load() == 1);
}

// BUG: a runtime destroyed while a thread of another runtime is still inside
// Asio's post into it (the timer's handler woke our task, the task ended and
// wait() returned before that post had signalled the scheduler's condition
// variable) destroys the condition variable under the signal: TSan reports
// the race in about one run in four under load. Here `rt` goes first while
// the default runtime lives on. Marked skip until ~runtime can wait for
// posts in flight.
TEST_CASE("runtime: no deadlock report while a task waits on an after() of the default runtime" *
          doctest::skip()) {
    csp::runtime rt(1);
    std::atomic<int> got{0};
    rt.go([&]() -> asio::awaitable<void> {
        auto t = csp::after(400ms);  // the default runtime's timer
        if (co_await t.async_recv(use_awaitable)) got = 1;
    });
    CHECK(deadlock_reports_until_done(rt) == 0);  // the timer fires; everything ends
    CHECK(got.load() == 1);
}

// Runs rt.wait() on a thread; the future holds its outcome.
std::future<void> wait_async(csp::runtime& rt) {
    return std::async(std::launch::async, [&rt] { rt.wait(); });
}

TEST_CASE("runtime: wait() reports a deadlock when every task is parked on a channel nothing can complete") {
    for (unsigned workers : {1u, 2u}) {
        CAPTURE(workers);
        csp::runtime rt(workers);
        auto a = csp::make_chan<int>(), b = csp::make_chan<int>(), c = csp::make_chan<int>(1);
        std::atomic<int> ended{0};
        // Two coroutines waiting for each other, one select, one plain task.
        rt.go([&]() -> asio::awaitable<void> {
            end_guard eg{ended};
            if (auto v = co_await a.async_recv(use_awaitable)) co_await b.async_send(*v, use_awaitable);
        });
        rt.go([&]() -> asio::awaitable<void> {
            end_guard eg{ended};
            if (auto v = co_await b.async_recv(use_awaitable)) co_await a.async_send(*v, use_awaitable);
        });
        rt.go([&]() -> asio::awaitable<void> {
            end_guard eg{ended};
            (void)co_await csp::async_select(use_awaitable, csp::on_recv(c, [](std::optional<int>) {}),
                                             csp::on_recv(a, [](std::optional<int>) {}));
        });
        rt.go([&] {
            end_guard eg{ended};
            (void)c.recv();
        });
        auto t0 = steady::now();
        try {
            rt.wait();
            FAIL_CHECK("no deadlock reported");
        } catch (const csp::deadlock_error& e) {
            MESSAGE("reported after " << std::chrono::duration<double, std::milli>(steady::now() - t0).count()
                                      << " ms: " << std::string(e.what()));
            CHECK(std::string(e.what()).find("deadlock") != std::string::npos);
        }
        CHECK(ended.load() == 0);
        CHECK(rt.live_tasks() == 4);
        // End it properly: closing lets every task finish.
        a.close();
        b.close();
        c.close();
        CHECK_NOTHROW(rt.wait());
        CHECK(ended.load() == 4);
    }
}

TEST_CASE("runtime: no deadlock report while a task waits with a timeout") {
    csp::runtime rt(2);
    auto never = csp::make_chan<int>();
    std::atomic<int> timed_out{0};
    auto t0 = steady::now();
    rt.go([&]() -> asio::awaitable<void> {
        std::size_t i = co_await csp::async_select(use_awaitable, csp::on_recv(never, [](std::optional<int>) {}),
                                                   csp::on_timeout(300ms, [&] { timed_out.fetch_add(1); }));
        CHECK(i == 1);
    });
    rt.go([&] {
        if (never.recv_for(300ms).state() == csp::status::timeout) timed_out.fetch_add(1);
    });
    rt.go([&] {
        int i = csp::select(csp::on_recv(never, [](std::optional<int>) {}),
                            csp::on_timeout(300ms, [&] { timed_out.fetch_add(1); }));
        CHECK(i == 1);
    });
    CHECK_NOTHROW(rt.wait());
    CHECK(timed_out.load() == 3);
    CHECK(steady::now() - t0 >= 300ms);
}

TEST_CASE("runtime: no deadlock report while a timer is pending or a task computes") {
    csp::runtime rt(2);
    std::atomic<int> got{0};
    auto t0 = steady::now();
    auto timer = csp::after(300ms, rt);
    rt.go([&]() -> asio::awaitable<void> {  // parked, but a timer will feed it
        if (co_await timer.async_recv(use_awaitable)) got.fetch_add(1);
    });
    auto slow = csp::make_chan<int>();
    rt.go([&]() -> asio::awaitable<void> {  // parked on a task that computes
        if (co_await slow.async_recv(use_awaitable)) got.fetch_add(10);
    });
    rt.go([&] {
        auto until = steady::now() + 300ms;
        while (steady::now() < until) std::this_thread::yield();
        slow.send(1);
    });
    CHECK_NOTHROW(rt.wait());
    CHECK(got.load() == 11);
    CHECK(steady::now() - t0 >= 300ms);
}

TEST_CASE("runtime: no deadlock report while a ticker runs") {
    csp::runtime rt(2);
    auto never = csp::make_chan<int>();
    std::atomic<int> ended{0};
    csp::ticker tk = csp::tick(10ms, rt);
    rt.go([&]() -> asio::awaitable<void> {  // parked with nothing in the runtime to feed it
        end_guard eg{ended};
        (void)co_await never.async_recv(use_awaitable);
    });
    auto w = wait_async(rt);
    // Well past the detector's window: with the ticker running, no report.
    CHECK(w.wait_for(500ms) == std::future_status::timeout);
    // End it properly: release the task, stop the ticker.
    never.send(1);
    tk.stop();
    CHECK_NOTHROW(w.get());
    CHECK(ended.load() == 1);
}

// A value whose move throws when asked to: a send that throws while handing
// it to a parked receiver makes that receiver run its operation again.
struct fragile {
    int v = 0;
    bool explode = false;
    fragile(int x, bool e) : v(x), explode(e) {}
    fragile(fragile&& o) : v(o.v), explode(o.explode) {
        if (explode) throw std::runtime_error("fragile move");
    }
};

// Regression: an async operation parked in a runtime, retried after a
// sender's move threw, and then completed at once on its retry called
// park_hooks::unparked() a second time, so the parked count drifted below
// zero and a later real deadlock was never reported.
TEST_CASE("runtime: a receive retried after a throwing move keeps the deadlock report working") {
    csp::runtime rt(1);
    auto ch = csp::make_chan<fragile>(1);
    auto never = csp::make_chan<int>();
    auto ready = csp::make_chan<int>(1);
    std::latch blocking(1), hold(1);
    std::atomic<int> got{-1};
    rt.go([&]() -> asio::awaitable<void> {
        REQUIRE(ready.try_send(1) == csp::status::ok);
        auto v = co_await ch.async_recv(use_awaitable);  // parks: nothing to receive yet
        got = v ? v->v : -2;
    });
    CHECK(ready.recv() == 1);
    rt.go([&]() -> asio::awaitable<void> {  // holds the only worker while the main thread works
        blocking.count_down();
        hold.wait();
        co_return;
    });
    blocking.wait();
    // The receiver is parked (its receive started before the worker took the
    // next task). This send claims it, the move throws: the receiver retries.
    CHECK_THROWS_AS(ch.send(fragile(1, true)), std::runtime_error);
    // A value for the retry to find at once.
    CHECK(ch.try_send(fragile(2, false)) == csp::status::ok);
    hold.count_down();
    rt.wait();
    CHECK(got.load() == 2);

    // Now a real deadlock: one task parked on a channel nobody feeds.
    std::atomic<int> ended{0};
    rt.go([&]() -> asio::awaitable<void> {
        end_guard eg{ended};
        (void)co_await never.async_recv(use_awaitable);
    });
    auto w = wait_async(rt);
    const bool finished = w.wait_for(kSanitized ? 10s : 3s) == std::future_status::ready;
    CHECK_MESSAGE(finished, "wait() did not report the deadlock");
    if (!finished) never.close();  // end it anyway
    bool reported = false;
    try {
        w.get();
    } catch (const csp::deadlock_error&) {
        reported = true;
    }
    CHECK(reported);
    if (reported) never.close();
    rt.wait();
    CHECK(ended.load() == 1);
}

// ---------------------------------------------------------------------------
// Destruction

TEST_CASE("runtime: destruction cancels parked tasks and returns") {
    auto a = csp::make_chan<int>(), b = csp::make_chan<int>();
    std::atomic<int> ended{0}, aborted{0}, stopped{0};
    csp::wait_group wg;
    wg.add(1);
    constexpr int kCoro = 4 * 25, kPlain = 3;
    std::latch parked(kCoro + kPlain);
    {
        csp::runtime rt(2);
        auto coro = [&](auto body) {
            rt.go([&, body]() -> asio::awaitable<void> {
                end_guard eg{ended};
                parked.count_down();
                try {
                    co_await body();
                } catch (const std::system_error& e) {
                    if (e.code() == asio::error::operation_aborted) aborted.fetch_add(1);
                    throw;
                }
            });
        };
        for (int k = 0; k < kCoro / 4; ++k) {
            coro([&]() -> asio::awaitable<void> { (void)co_await a.async_recv(use_awaitable); });
            coro([&]() -> asio::awaitable<void> { co_await b.async_send(1, use_awaitable); });
            coro([&]() -> asio::awaitable<void> {
                (void)co_await csp::async_select(use_awaitable, csp::on_recv(a, [](std::optional<int>) {}),
                                                 csp::on_send(b, 2));
            });
            coro([&]() -> asio::awaitable<void> { (void)co_await wg.async_wait(use_awaitable); });
        }
        rt.go([&](std::stop_token st) {
            end_guard eg{ended};
            parked.count_down();
            if (a.recv(st).state() == csp::status::cancelled) stopped.fetch_add(1);
        });
        rt.go([&](std::stop_token st) {
            end_guard eg{ended};
            parked.count_down();
            if (b.send(3, st) == csp::status::cancelled) stopped.fetch_add(1);
        });
        rt.go([&](std::stop_token st) {
            end_guard eg{ended};
            parked.count_down();
            if (csp::select(csp::on_recv(a, [](std::optional<int>) {}), csp::on_stop(st, [] {})) == 1)
                stopped.fetch_add(1);
        });
        parked.wait();
    }  // ~runtime
    CHECK(ended.load() == kCoro + kPlain);
    CHECK(aborted.load() == kCoro);
    CHECK(stopped.load() == kPlain);
    // Nothing was taken or left registered.
    CHECK(a.try_send(1) == csp::status::would_block);
    CHECK(b.try_recv().state() == csp::status::would_block);
}

// Counts the live blocks of the operations bound to it.
template <class T>
struct counting_alloc {
    using value_type = T;
    std::atomic<long>* live;
    explicit counting_alloc(std::atomic<long>* l) noexcept : live(l) {}
    template <class U>
    counting_alloc(const counting_alloc<U>& o) noexcept : live(o.live) {}
    T* allocate(std::size_t n) {
        live->fetch_add(1);
        return std::allocator<T>().allocate(n);
    }
    void deallocate(T* p, std::size_t n) noexcept {
        live->fetch_sub(1);
        std::allocator<T>().deallocate(p, n);
    }
    template <class U>
    bool operator==(const counting_alloc<U>& o) const noexcept {
        return live == o.live;
    }
};

// Regression: when the runtime was destroyed while coroutine tasks were
// parked in async_select with a timeout case, each select's cancelled timer
// handler (holding a reference on the operation) was still queued when
// ~runtime stopped the io_context, which then destroyed it unrun: the
// operation leaked (LeakSanitizer, and the counting allocator here).
TEST_CASE("runtime: destruction with tasks parked in async_select with a timeout frees every operation") {
    constexpr int n = 5000;
    auto a = csp::make_chan<int>();
    std::atomic<long> live{0};
    std::atomic<int> ended{0};
    std::latch parked(n);
    {
        csp::runtime rt(1);
        for (int k = 0; k < n; ++k)
            rt.go([&]() -> asio::awaitable<void> {
                end_guard eg{ended};
                parked.count_down();
                (void)co_await csp::async_select(
                    asio::bind_allocator(counting_alloc<void>(&live), use_awaitable),
                    csp::on_recv(a, [](std::optional<int>) {}), csp::on_timeout(1h, [] {}));
            });
        parked.wait();
        // One worker runs its queue in order: when a task started after the
        // others runs, the last of them has suspended in its select.
        std::latch behind(1);
        rt.go([&]() -> asio::awaitable<void> {
            behind.count_down();
            co_return;
        });
        behind.wait();
        CHECK(live.load() >= n);
    }
    CHECK(ended.load() == n);
    CHECK(live.load() == 0);
}

TEST_CASE("runtime: destruction with an after() timer still pending") {
    std::optional<csp::receiver<csp::clock_time>> late;
    {
        csp::runtime rt(1);
        late = csp::after(1h, rt);
    }
    CHECK(late->try_recv().state() == csp::status::would_block);
}

// ---------------------------------------------------------------------------
// wait_group

TEST_CASE("runtime: wait_group with threads and coroutines, reusable, never below zero") {
    csp::wait_group wg;
    wg.wait();  // zero: returns at once
    constexpr int n = 8;
    std::vector<int> work(n, 0);
    wg.add(n);
    std::vector<std::thread> ts;
    for (int i = 0; i < n; ++i)
        ts.emplace_back([&, i] {
            work[static_cast<std::size_t>(i)] = i + 1;
            wg.done();
        });
    wg.wait();
    int sum = 0;
    for (int w : work) sum += w;  // the workers' writes happen-before wait() returns
    CHECK(sum == n * (n + 1) / 2);
    for (auto& t : ts) t.join();

    // Reuse, with coroutine waiters on the runtime and a thread doing the work.
    csp::runtime rt(2);
    for (int round = 0; round < 3; ++round) {
        CAPTURE(round);
        wg.add(2);
        std::atomic<int> woke{0}, done_before{0};
        std::atomic<int> progress{0};
        std::latch waiting(4);
        for (int k = 0; k < 4; ++k)
            rt.go([&]() -> asio::awaitable<void> {
                waiting.count_down();
                auto r = co_await wg.async_wait(use_awaitable);
                CHECK_FALSE(r.has_value());
                if (progress.load() == 2) done_before.fetch_add(1);
                woke.fetch_add(1);
            });
        waiting.wait();
        std::thread worker([&] {
            progress.fetch_add(1);
            wg.done();
            progress.fetch_add(1);
            wg.add(-1);
        });
        wg.wait();
        worker.join();
        rt.wait();
        CHECK(woke.load() == 4);
        CHECK(done_before.load() == 4);
    }

    CHECK_THROWS_AS(wg.done(), csp::error);
    CHECK_THROWS_AS(wg.add(-1), csp::error);
    wg.add(1);
    CHECK_THROWS_AS(wg.add(-2), csp::error);
    wg.add(-1);
    wg.wait();
    wg.add(0);
    wg.wait();

    // async_wait is cancellable: a cancelled waiter does not wait any more.
    wg.add(1);
    asio::io_context io;
    asio::cancellation_signal sig;
    std::error_code ec;
    wg.async_wait(asio::bind_cancellation_slot(
        sig.slot(), asio::bind_executor(io, [&](std::error_code e, std::optional<std::monostate>) { ec = e; })));
    asio::post(io, [&] { sig.emit(asio::cancellation_type::terminal); });
    io.run();
    CHECK(ec == asio::error::operation_aborted);
    wg.done();
}

// ---------------------------------------------------------------------------
// Timers as channels

TEST_CASE("runtime: after(d) delivers once, in recv, a blocking select and async_select") {
    csp::runtime rt(2);
    auto t0 = steady::now();
    auto once = csp::after(20ms, rt);
    auto v = once.recv();
    REQUIRE(v.has_value());
    CHECK(*v - t0 >= 20ms);
    CHECK(steady::now() - t0 >= 20ms);
    CHECK(once.recv_for(50ms).state() == csp::status::timeout);  // once only

    auto never = csp::make_chan<int>();
    t0 = steady::now();
    auto timer = csp::after(20ms, rt);
    int i = csp::select(csp::on_recv(never, [](std::optional<int>) {}),
                        csp::on_recv(timer, [&](std::optional<csp::clock_time> t) { CHECK(t.has_value()); }));
    CHECK(i == 1);
    CHECK(steady::now() - t0 >= 20ms);

    std::atomic<int> idx{-1};
    rt.go([&]() -> asio::awaitable<void> {
        auto t1 = steady::now();
        auto tm = csp::after(20ms, rt);
        std::size_t k = co_await csp::async_select(use_awaitable, csp::on_recv(never, [](std::optional<int>) {}),
                                                   csp::on_recv(tm, [](std::optional<csp::clock_time>) {}));
        CHECK(steady::now() - t1 >= 20ms);
        idx = static_cast<int>(k);
    });
    rt.wait();
    CHECK(idx.load() == 1);
}

TEST_CASE("runtime: tick(d) delivers repeatedly; stop() closes its channel so range-for ends") {
    csp::runtime rt(2);
    {
        auto tk = csp::tick(5ms, rt);
        int n = 0;
        csp::clock_time last{};
        bool increasing = true;
        for (csp::clock_time t : tk.chan()) {
            if (t <= last) increasing = false;
            last = t;
            if (++n == 5) tk.stop();
        }
        CHECK(n >= 5);
        CHECK(n <= 6);  // one tick may already wait in the channel
        CHECK(increasing);
    }
    {
        // A coroutine task counting ticks; the ticker is stopped from outside.
        csp::ticker tk = csp::tick(2ms, rt);
        auto rx = tk.chan();
        std::atomic<int> ticks{0};
        auto three = csp::make_chan<int>();
        rt.go([&]() -> asio::awaitable<void> {
            while (co_await rx.async_recv(use_awaitable))
                if (ticks.fetch_add(1) + 1 == 3) co_await three.async_send(3, use_awaitable);
        });
        CHECK(three.recv() == 3);
        tk.stop();  // stops: the task's loop ends at close
        rt.wait();
        CHECK(ticks.load() >= 3);
        CHECK(rx.closed());
    }
    CHECK_THROWS_AS(csp::tick(0ms, rt), csp::error);
}

// ---------------------------------------------------------------------------
// The default runtime

TEST_CASE("runtime: csp::go on the default runtime") {
    auto ch = csp::make_chan<int>();
    csp::go([&]() -> asio::awaitable<void> {
        for (int i = 1; i <= 3; ++i) co_await ch.async_send(i, use_awaitable);
    });
    csp::go([&] { ch.send(10); });
    int sum = 0;
    for (int k = 0; k < 4; ++k) sum += ch.recv().value_or(-100);
    CHECK(sum == 16);
    CHECK(&csp::runtime::default_runtime() == &csp::runtime::default_runtime());
    CHECK(csp::runtime::default_runtime().workers() >= 1);
    csp::runtime::default_runtime().wait();
    CHECK(csp::runtime::default_runtime().live_tasks() == 0);
}

}  // namespace
