// Timeout cases of asynchronous selects, which share one timer per
// execution context (channels/detail/deadline_queue.hpp): a deadline armed
// behind an earlier or later one, a deadline that leaves because a value
// won, the timer that still waits for a deadline that left, and timeouts
// racing with values in tasks on every worker.
//
// Elapsed times are checked only from below: a timeout never fires before
// its deadline (the semantics); how late it fires is not asserted.
#include <doctest/doctest.h>

#include <runtime/csp.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <vector>

#include "test_support.hpp"

namespace {

using namespace std::chrono_literals;
using csp::use_task;
using steady = std::chrono::steady_clock;

struct timed_out_after {
    int timeouts = 0;
    steady::duration waited{};
};

// One select over a channel nobody sends on and a timeout of d.
csp::task<> wait_out(csp::receiver<int> never, std::chrono::milliseconds d, timed_out_after& out) {
    const auto t0 = steady::now();
    std::size_t i = co_await csp::async_select(use_task, csp::on_recv(never, [](std::optional<int>) {}),
                                               csp::on_timeout(d, [&] { ++out.timeouts; }));
    out.waited = steady::now() - t0;
    CHECK(i == 1);
}

}  // namespace

TEST_CASE("deadlines: selects with different timeouts each time out once, none before its deadline") {
    constexpr int n = 40;
    std::vector<int> ms(n);
    std::iota(ms.begin(), ms.end(), 1);
    std::shuffle(ms.begin(), ms.end(), std::minstd_rand(7));  // armed in no particular order
    auto never = csp::make_chan<int>();
    std::vector<timed_out_after> out(n);
    {
        csp::runtime rt(2);
        for (int i = 0; i < n; ++i)
            rt.go([&, i] { return wait_out(never.as_receiver(), std::chrono::milliseconds(ms[i]), out[i]); });
        rt.wait();
    }
    for (int i = 0; i < n; ++i) {
        CAPTURE(ms[i]);
        CHECK(out[i].timeouts == 1);
        CHECK(out[i].waited >= std::chrono::milliseconds(ms[i]));
    }
}

TEST_CASE("deadlines: a short timeout armed while a long one waits fires without waiting for the long one") {
    auto wake_long = csp::make_chan<int>();
    auto never = csp::make_chan<int>();
    std::optional<int> long_got;
    int long_timeouts = 0;
    timed_out_after short_one;
    // One worker runs the tasks in the order they were started: the long
    // select is armed (and parked) before the short one.
    csp::runtime rt(1);
    rt.go([&]() -> csp::task<> {
        co_await csp::async_select(use_task, csp::on_recv(wake_long, [&](std::optional<int> v) { long_got = v; }),
                                   csp::on_timeout(1h, [&] { ++long_timeouts; }));
    });
    rt.go([&]() -> csp::task<> {
        co_await wait_out(never.as_receiver(), 5ms, short_one);
        co_await wake_long.async_send(9, use_task);  // only now may the long select end
    });
    rt.wait();
    CHECK(short_one.timeouts == 1);
    CHECK(short_one.waited >= 5ms);
    CHECK(long_got == 9);
    CHECK(long_timeouts == 0);
}

TEST_CASE("deadlines: after a value beat a long timeout, later timeouts of the same task still fire") {
    auto data = csp::make_chan<int>();
    auto never = csp::make_chan<int>();
    int got = 0, late = 0;
    std::vector<timed_out_after> shorts(3);
    csp::runtime rt(2);
    rt.go([&]() -> csp::task<> {
        for (int round = 0; round < 3; ++round) {
            // The timer is left waiting for this select's hour when the value comes...
            co_await csp::async_select(use_task, csp::on_recv(data, [&](std::optional<int> v) { got += *v; }),
                                       csp::on_timeout(1h, [&] { ++late; }));
            // ...and must still wake this one.
            co_await wait_out(never.as_receiver(), 2ms, shorts[static_cast<std::size_t>(round)]);
        }
    });
    rt.go([&]() -> csp::task<> {
        for (int v = 1; v <= 3; ++v) co_await data.async_send(v, use_task);
    });
    rt.wait();
    CHECK(got == 6);
    CHECK(late == 0);
    for (const auto& s : shorts) {
        CHECK(s.timeouts == 1);
        CHECK(s.waited >= 2ms);
    }
}

TEST_CASE("deadlines: timeouts racing with values in tasks never lose or duplicate a value") {
    const int n = 20000 * csp_test::stress_iters();
    constexpr int producers = 2, consumers = 3;
    // Timeouts from none at all to longer than a hand-off: both outcomes happen.
    constexpr std::chrono::microseconds tiny[] = {0us, 1us, 5us, 50us, 500us};
    for (int cap : {0, 1, 16}) {
        CAPTURE(cap);
        auto ch = csp::make_chan<int>(cap);
        auto hits = std::make_unique<std::atomic<int>[]>(static_cast<std::size_t>(n));
        std::atomic<long> send_timeouts{0}, recv_timeouts{0}, anomalies{0};
        std::atomic<int> producers_left{producers};
        csp::runtime rt(2);
        for (int p = 0; p < producers; ++p) {
            rt.go([&, p, tx = ch.as_sender()]() -> csp::task<> {
                std::minstd_rand rng(static_cast<unsigned>(11 * p + cap));
                for (int v = p; v < n; v += producers) {
                    // A send case that loses to its timeout did not send: try again.
                    for (bool sent = false; !sent;) {
                        int ran = 0;
                        co_await csp::async_select(use_task, csp::on_send(tx, v, [&] {
                                                       ++ran;
                                                       sent = true;
                                                   }),
                                                   csp::on_timeout(tiny[rng() % 5], [&] {
                                                       ++ran;
                                                       send_timeouts.fetch_add(1);
                                                   }));
                        if (ran != 1) anomalies.fetch_add(1);
                    }
                }
                if (producers_left.fetch_sub(1) == 1) ch.close();
            });
        }
        for (int c = 0; c < consumers; ++c) {
            rt.go([&, c, rx = ch.as_receiver()]() -> csp::task<> {
                std::minstd_rand rng(static_cast<unsigned>(101 * c + cap));
                for (bool open = true; open;) {
                    int ran = 0;
                    co_await csp::async_select(use_task, csp::on_recv(rx, [&](std::optional<int> v) {
                                                   ++ran;
                                                   if (v) hits[static_cast<std::size_t>(*v)].fetch_add(1);
                                                   else open = false;
                                               }),
                                               csp::on_timeout(tiny[rng() % 5], [&] {
                                                   ++ran;
                                                   recv_timeouts.fetch_add(1);
                                               }));
                    if (ran != 1) anomalies.fetch_add(1);
                }
            });
        }
        rt.wait();
        int missing = 0, duplicated = 0;
        for (int v = 0; v < n; ++v) {
            const int h = hits[static_cast<std::size_t>(v)].load();
            missing += h == 0;
            duplicated += h > 1;
        }
        CHECK(missing == 0);
        CHECK(duplicated == 0);
        CHECK(anomalies.load() == 0);
        // The race was run: receivers gave up waiting, and values still came.
        CHECK(recv_timeouts.load() > 0);
        MESSAGE("cap " << cap << ": send timeouts " << send_timeouts.load() << ", receive timeouts "
                       << recv_timeouts.load());
    }
}
