// A parked waiter costs no CPU. A blocked thread spins only briefly (at most
// ~1000 pauses, tens of microseconds), yields a few times, then sleeps on a
// futex (parker.hpp); a parked coroutine task holds no thread at all. Each
// case below waits about one second and measures the CPU time its waiter
// consumed over that second: a busy-wait would cost about 1000 ms, a parked
// waiter well under a millisecond. The bound (kMaxCpu per second of waiting)
// leaves room for a slow, shared CI machine, and each case also checks that
// the wait really lasted (>= kWait) and ended with the exact value, so that
// it cannot pass by not waiting at all.
//
// The thread cases read CLOCK_THREAD_CPUTIME_ID on the waiting thread (the
// sender's thread and other processes do not count). The task case reads
// CLOCK_PROCESS_CPUTIME_ID: the runtime's workers and every other thread of
// the process, while the main thread only sleeps.
//
// The sleeps here are the scenario being measured (a value that arrives one
// second late), not synchronisation: every result is checked after a join,
// a channel operation or rt.wait().

#include <channels/channels.hpp>
#include <runtime/csp.hpp>

#include <asio/use_awaitable.hpp>

#include <doctest/doctest.h>

#include <cerrno>
#include <chrono>
#include <optional>
#include <string>
#include <system_error>
#include <thread>

#include <time.h>

namespace {

using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;
using ms = std::chrono::duration<double, std::milli>;

constexpr auto kWait = 1s;
constexpr auto kMaxCpu = 50ms;  // per kWait of waiting

std::chrono::nanoseconds cpu_time(clockid_t id) {
    timespec ts{};
    if (clock_gettime(id, &ts) != 0) throw std::system_error(errno, std::system_category(), "clock_gettime");
    return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}
std::chrono::nanoseconds thread_cpu() { return cpu_time(CLOCK_THREAD_CPUTIME_ID); }
std::chrono::nanoseconds process_cpu() { return cpu_time(CLOCK_PROCESS_CPUTIME_ID); }

// What one wait cost: its wall time and the CPU time of whoever was measured.
struct cost {
    std::chrono::nanoseconds wall{}, cpu{};
};

// Runs wait() on this thread and measures this thread's CPU time.
template <class F>
cost measure_this_thread(F&& wait) {
    const auto c0 = thread_cpu();
    const auto t0 = clk::now();
    wait(t0);
    const auto t1 = clk::now();
    const auto c1 = thread_cpu();
    return {t1 - t0, c1 - c0};
}

void check_idle(const std::string& what, cost c) {
    MESSAGE(what << ": " << ms(c.cpu).count() << " ms CPU over " << ms(c.wall).count()
                 << " ms of waiting");
    CHECK(c.wall >= kWait);
    CHECK(c.cpu < kMaxCpu);
}

}  // namespace

TEST_CASE("the CPU clock sees a busy thread") {
    // Without this, a clock that never advances would pass every test below.
    // Spins until the clock shows 20 ms (bounded, should it never advance).
    const auto c0 = thread_cpu();
    const auto t0 = clk::now();
    while (thread_cpu() - c0 < 20ms && clk::now() - t0 < 5s) {
    }
    CHECK(thread_cpu() - c0 >= 20ms);
    CHECK(clk::now() - t0 >= 20ms);
}

TEST_CASE("a thread blocked in recv() on an unbuffered channel uses no CPU") {
    auto ch = csp::make_chan<int>();
    std::optional<int> got;
    std::jthread sender;
    const cost c = measure_this_thread([&](clk::time_point t0) {
        // The value arrives one second after the wait began.
        sender = std::jthread([&ch, at = t0 + kWait] {
            std::this_thread::sleep_until(at);
            ch.send(42);
        });
        got = ch.recv();
    });
    sender.join();
    REQUIRE(got.has_value());
    CHECK(*got == 42);
    check_idle("recv()", c);
}

TEST_CASE("a thread in recv_for() that times out uses no CPU") {
    auto ch = csp::make_chan<int>();
    csp::status state = csp::status::ok;
    const cost c = measure_this_thread([&](clk::time_point) { state = ch.recv_for(kWait).state(); });
    CHECK(state == csp::status::timeout);
    CHECK(ch.try_recv().state() == csp::status::would_block);
    check_idle("recv_for() timing out", c);
}

TEST_CASE("a thread blocked in select over two receive cases uses no CPU") {
    auto a = csp::make_chan<int>();
    auto b = csp::make_chan<int>();
    std::optional<int> from_a, from_b;
    int calls = 0;
    int chosen = -1;
    std::jthread sender;
    const cost c = measure_this_thread([&](clk::time_point t0) {
        sender = std::jthread([&b, at = t0 + kWait] {
            std::this_thread::sleep_until(at);
            b.send(42);
        });
        chosen = csp::select(csp::on_recv(a,
                                          [&](std::optional<int> v) {
                                              ++calls;
                                              from_a = v;
                                          }),
                             csp::on_recv(b, [&](std::optional<int> v) {
                                 ++calls;
                                 from_b = v;
                             }));
    });
    sender.join();
    CHECK(chosen == 1);
    CHECK(calls == 1);
    CHECK_FALSE(from_a.has_value());
    REQUIRE(from_b.has_value());
    CHECK(*from_b == 42);
    check_idle("select over two receives", c);
}

TEST_CASE("a coroutine task parked in async_recv costs the process no CPU") {
    csp::runtime rt(2);
    auto ch = csp::make_chan<int>();
    auto started = csp::make_chan<int>();
    std::optional<int> got;
    clk::duration task_waited{};
    rt.go([&]() -> asio::awaitable<void> {
        co_await started.async_send(1, asio::use_awaitable);
        const auto t0 = clk::now();
        got = co_await ch.async_recv(asio::use_awaitable);
        task_waited = clk::now() - t0;
    });
    // The task is running and about to park (or parked) in async_recv.
    REQUIRE(started.recv() == std::optional<int>(1));

    const auto c0 = process_cpu();
    const auto t0 = clk::now();
    std::this_thread::sleep_until(t0 + kWait);
    const auto t1 = clk::now();
    const auto c1 = process_cpu();
    ch.send(42);  // completes only when the parked task took it
    rt.wait();

    REQUIRE(got.has_value());
    CHECK(*got == 42);
    // The task waited through the whole measured second (it was already
    // parked, give or take the microseconds after its handshake).
    CHECK(task_waited >= kWait - 100ms);
    check_idle("a task parked in async_recv (whole process, 2 workers)", cost{t1 - t0, c1 - c0});
}
