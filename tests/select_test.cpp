// csp::select: Go's select over send and receive cases, default, timeouts,
// deadlines, stop tokens, null channels, and selects over cases built at
// run time. Go's semantics (the spec's "Select statements", runtime/select.go)
// are the reference wherever the header leaves a detail open.
#include <doctest/doctest.h>

#include <channels/channels.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <latch>
#include <memory>
#include <numeric>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "test_support.hpp"

using namespace std::chrono_literals;
using csp::status;
using namespace csp_test;

namespace {

using clk = std::chrono::steady_clock;

std::vector<int> iota_vec(int n, int from = 0) {
    std::vector<int> v(static_cast<std::size_t>(n));
    std::iota(v.begin(), v.end(), from);
    return v;
}

// Fills the buffer with make(0) .. make(cap - 1), so that the next send would block.
template <class T, class Make>
void fill(const csp::channel<T>& ch, int cap, Make make) {
    int refused = 0;
    for (int i = 0; i < cap; ++i)
        if (ch.try_send(make(i)) != status::ok) ++refused;
    REQUIRE(refused == 0);
}

// What try_recv gives until it would block or reports closed, as ints.
std::vector<int> try_drain_ptrs(const csp::channel<std::unique_ptr<int>>& ch) {
    std::vector<int> got;
    while (auto r = ch.try_recv()) got.push_back(**r);
    return got;
}

}  // namespace

// ---- choosing a case

TEST_CASE("select runs the handler of the one ready case, over mixed types and directions") {
    auto a = csp::make_chan<int>(1);
    auto b = csp::make_chan<std::string>(0);
    auto c = csp::make_chan<double>(1);
    std::string s(50, 's');
    std::vector<int> ran;
    std::optional<int> got_a;
    auto run = [&] {
        return csp::select(csp::on_recv(a,
                                        [&](std::optional<int> v) {
                                            ran.push_back(0);
                                            got_a = v;
                                        }),
                           csp::on_send(b, s, [&] { ran.push_back(1); }),
                           csp::on_send(c, 1.5, [&] { ran.push_back(2); }));
    };

    // Only c has room.
    CHECK(run() == 2);
    CHECK(ran == std::vector<int>{2});
    CHECK(c.try_recv().value() == 1.5);
    CHECK(s == std::string(50, 's'));  // b's case was not chosen: s untouched

    // Only a has a value (c is full again).
    REQUIRE(c.try_send(9.0) == status::ok);
    a.send(7);
    CHECK(run() == 0);
    CHECK(ran == std::vector<int>{2, 0});
    CHECK(got_a == 7);

    // Nothing is ready until a receiver comes for b.
    std::optional<std::string> got_b;
    std::jthread receiver([&] { got_b = b.recv(); });
    CHECK(run() == 1);
    receiver.join();
    CHECK(ran == std::vector<int>{2, 0, 1});
    CHECK(got_b == std::string(50, 's'));
    CHECK(c.size() == 1);  // c's case did not send either
}

TEST_CASE("ready cases are chosen uniformly at random") {
    const int rounds = 3000 * stress_iters();
    std::array<csp::channel<int>, 3> ch = {csp::make_chan<int>(1), csp::make_chan<int>(1),
                                           csp::make_chan<int>(1)};
    for (auto& c : ch) c.send(0);
    std::array<int, 3> chosen{};
    for (int i = 0; i < rounds; ++i) {
        auto h = [](std::optional<int>) {};
        int k = csp::select(csp::on_recv(ch[0], h), csp::on_recv(ch[1], h), csp::on_recv(ch[2], h));
        ++chosen[static_cast<std::size_t>(k)];
        ch[static_cast<std::size_t>(k)].send(0);  // ready again for the next round
    }
    // Expected rounds/3 each; the bounds are more than 10 standard deviations away.
    for (int k = 0; k < 3; ++k) {
        CAPTURE(k);
        CHECK(chosen[static_cast<std::size_t>(k)] > rounds / 4);
        CHECK(chosen[static_cast<std::size_t>(k)] < rounds * 5 / 12);
    }
}

TEST_CASE("on_default runs only when no other case is ready") {
    auto ch = csp::make_chan<int>(1);
    int defaults = 0, received = 0;
    auto run = [&] {
        return csp::select(csp::on_default([&] { ++defaults; }),
                           csp::on_recv(ch, [&](std::optional<int>) { ++received; }));
    };
    CHECK(run() == 0);
    CHECK(defaults == 1);
    int other = 0;
    for (int i = 0; i < 200; ++i) {
        ch.send(i);
        if (run() != 1) ++other;
    }
    CHECK(other == 0);
    CHECK(defaults == 1);
    CHECK(received == 200);

    // Send cases: default while full, the send once there is room.
    ch.send(0);
    int sent = 0;
    auto send_or_default = [&] {
        return csp::select(csp::on_send(ch, 1, [&] { ++sent; }),
                           csp::on_default([&] { ++defaults; }));
    };
    CHECK(send_or_default() == 1);
    CHECK(defaults == 2);
    CHECK(ch.recv() == 0);
    CHECK(send_or_default() == 0);
    CHECK(sent == 1);
    CHECK(defaults == 2);

    // A default alone is a valid select, as `select { default: }` is in Go.
    CHECK(csp::select(csp::on_default([&] { ++defaults; })) == 0);
    CHECK(defaults == 3);
}

TEST_CASE("a waiting unbuffered sender makes a receive case ready, so default is not taken") {
    auto ch = csp::make_chan<int>();
    std::jthread sender([&] { ch.send(5); });
    int got = -1;
    // Spins on default until the sender waits; then the receive case must win.
    int i;
    while ((i = csp::select(csp::on_recv(ch, [&](std::optional<int> v) { got = *v; }),
                            csp::on_default([] {}))) == 1)
        std::this_thread::yield();
    CHECK(i == 0);
    CHECK(got == 5);
}

// ---- time and cancellation

TEST_CASE("on_timeout runs when nothing becomes ready in time, and only then") {
    auto ch = csp::make_chan<int>(1);
    bool timed_out = false;
    auto t0 = clk::now();
    int i = csp::select(csp::on_recv(ch, [](std::optional<int>) {}),
                        csp::on_timeout(20ms, [&] { timed_out = true; }));
    CHECK(i == 1);
    CHECK(timed_out);
    CHECK(clk::now() - t0 >= 20ms);

    // A ready case wins over a timeout that has not expired, and over one that has.
    ch.send(1);
    auto ignore = [](std::optional<int>) {};
    CHECK(csp::select(csp::on_recv(ch, ignore), csp::on_timeout(30s, [] {})) == 0);
    ch.send(2);
    CHECK(csp::select(csp::on_timeout(-1ms, [] {}), csp::on_recv(ch, ignore)) == 1);

    // A value that arrives while the select waits is taken.
    std::optional<int> got;
    std::jthread sender([&] {
        let_it_block();
        ch.send(3);
    });
    CHECK(csp::select(csp::on_recv(ch, [&](std::optional<int> v) { got = v; }),
                      csp::on_timeout(30s, [] {})) == 0);
    sender.join();
    CHECK(got == 3);
}

TEST_CASE("with several timeouts, the earliest one fires") {
    auto ch = csp::make_chan<int>();
    std::vector<int> fired;
    int i = csp::select(csp::on_timeout(30s, [&] { fired.push_back(0); }),
                        csp::on_recv(ch, [](std::optional<int>) {}),
                        csp::on_timeout(10ms, [&] { fired.push_back(2); }),
                        csp::on_timeout(20s, [&] { fired.push_back(3); }));
    CHECK(i == 2);
    CHECK(fired == std::vector<int>{2});
}

TEST_CASE("on_deadline, on the steady and on the system clock") {
    auto ch = csp::make_chan<int>();
    auto t0 = clk::now();
    CHECK(csp::select(csp::on_recv(ch, [](std::optional<int>) {}),
                      csp::on_deadline(clk::now() + 20ms, [] {})) == 1);
    CHECK(clk::now() - t0 >= 20ms);

    t0 = clk::now();
    CHECK(csp::select(csp::on_deadline(std::chrono::system_clock::now() + 20ms, [] {}),
                      csp::on_recv(ch, [](std::optional<int>) {})) == 0);
    CHECK(clk::now() - t0 >= 15ms);  // converted between clocks: allow slack

    // A deadline in the past times out at once when nothing is ready.
    t0 = clk::now();
    CHECK(csp::select(csp::on_recv(ch, [](std::optional<int>) {}),
                      csp::on_deadline(std::chrono::system_clock::now() - 1h, [] {})) == 1);
    CHECK(clk::now() - t0 < 10s);
}

TEST_CASE("on_stop is a case, like Go's ctx.Done()") {
    auto ch = csp::make_chan<int>();
    {
        // Requested from another thread while the select waits.
        std::stop_source src;
        int i = -1;
        bool stopped = false;
        std::jthread selector([&] {
            i = csp::select(csp::on_recv(ch, [](std::optional<int>) {}),
                            csp::on_stop(src.get_token(), [&] { stopped = true; }));
        });
        let_it_block();
        src.request_stop();
        selector.join();
        CHECK(i == 1);
        CHECK(stopped);
        CHECK(ch.try_send(1) == status::would_block);  // the select left no receiver behind
    }
    {
        // Already requested: the case is ready at once.
        std::stop_source src;
        src.request_stop();
        CHECK(csp::select(csp::on_stop(src.get_token(), [] {}),
                          csp::on_recv(ch, [](std::optional<int>) {})) == 0);
    }
    {
        // Not requested: a value wins.
        std::stop_source src;
        std::optional<int> got;
        std::jthread sender([&] { ch.send(4); });
        CHECK(csp::select(csp::on_stop(src.get_token(), [] {}),
                          csp::on_recv(ch, [&](std::optional<int> v) { got = v; })) == 1);
        CHECK(got == 4);
    }
    {
        // A token without a stop state never fires.
        int i = csp::select(csp::on_stop(std::stop_token{}, [] {}), csp::on_timeout(10ms, [] {}));
        CHECK(i == 1);
    }
}

TEST_CASE("a requested stop and a ready value are both ready: either may be chosen") {
    auto ch = csp::make_chan<int>(1);
    std::stop_source src;
    src.request_stop();
    int stops = 0, values = 0;
    for (int i = 0; i < 200; ++i) {
        if (ch.size() == 0) ch.send(i);
        csp::select(csp::on_stop(src.get_token(), [&] { ++stops; }),
                    csp::on_recv(ch, [&](std::optional<int>) { ++values; }));
    }
    CHECK(stops + values == 200);
    CHECK(stops > 0);   // Go chooses uniformly among ready cases: with 200
    CHECK(values > 0);  // rounds, missing either is a 2^-199 chance
}

// ---- closed and null channels

TEST_CASE("a receive case on a closed channel is ready and gets nullopt, after the buffer") {
    for_each_capacity([](int cap) {
        auto ch = csp::make_chan<int>(cap);
        for (int i = 0; i < std::min(cap, 3); ++i) ch.send(i);
        ch.close();
        std::vector<int> got;
        int nullopts = 0;
        for (int k = 0; k < std::min(cap, 3) + 2; ++k) {
            int i = csp::select(csp::on_recv(ch,
                                             [&](std::optional<int> v) {
                                                 if (v)
                                                     got.push_back(*v);
                                                 else
                                                     ++nullopts;
                                             }),
                                csp::on_default([] { FAIL("a closed channel is always ready"); }));
            CHECK(i == 0);
        }
        CHECK(got == iota_vec(std::min(cap, 3)));
        CHECK(nullopts == 2);
    });
}

TEST_CASE("close wakes a select waiting on a receive case with nullopt") {
    for_each_capacity([](int cap) {
        auto ch = csp::make_chan<int>(cap);
        auto other = csp::make_chan<std::string>(cap);
        std::optional<int> got = -1;
        int i = -1;
        std::jthread selector([&] {
            i = csp::select(csp::on_recv(other, [](std::optional<std::string>) {}),
                            csp::on_recv(ch, [&](std::optional<int> v) { got = v; }));
        });
        let_it_block();
        ch.close();
        selector.join();
        CHECK(i == 1);
        CHECK_FALSE(got.has_value());
        CHECK(other.try_send("x") == (cap == 0 ? status::would_block : status::ok));
    });
}

TEST_CASE("a send case chosen on a closed channel throws closed_error; the lvalue stays") {
    for_each_capacity([](int cap) {
        auto ch = csp::make_chan<std::unique_ptr<int>>(cap);
        ch.close();
        auto p = std::make_unique<int>(1);
        int handler_runs = 0;
        CHECK_THROWS_AS(csp::select(csp::on_send(ch, p, [&] { ++handler_runs; })),
                        csp::closed_error);
        // A closed channel makes the send case ready, so it beats default (Go panics here too).
        CHECK_THROWS_AS(
            csp::select(csp::on_send(ch, p, [&] { ++handler_runs; }), csp::on_default([] {})),
            csp::closed_error);
        CHECK(handler_runs == 0);
        REQUIRE(p);
        CHECK(*p == 1);
    });
}

TEST_CASE("close wakes a select waiting on a send case: it throws closed_error, the lvalue stays") {
    for_each_capacity([](int cap) {
        auto ch = csp::make_chan<std::unique_ptr<int>>(cap);
        fill(ch, cap, [](int i) { return std::make_unique<int>(i); });
        auto other = csp::make_chan<int>();
        auto p = std::make_unique<int>(-1);
        bool threw = false;
        std::jthread selector([&] {
            try {
                csp::select(csp::on_send(ch, p), csp::on_recv(other, [](std::optional<int>) {}));
            } catch (const csp::closed_error&) {
                threw = true;
            }
        });
        let_it_block();
        ch.close();
        selector.join();
        CHECK(threw);
        REQUIRE(p);
        CHECK(*p == -1);
        CHECK(ch.size() == static_cast<std::size_t>(cap));
        CHECK(other.try_send(1) == status::would_block);  // its other case was withdrawn
    });
}

TEST_CASE("a case on a null channel is never ready") {
    csp::channel<int> nil;
    auto ch = csp::make_chan<int>(1);
    CHECK(csp::select(csp::on_recv(nil, [](std::optional<int>) { FAIL("nil recv ran"); }),
                      csp::on_default([] {})) == 1);
    int v = 5;
    CHECK(csp::select(csp::on_send(nil, v, [] { FAIL("nil send ran"); }),
                      csp::on_timeout(10ms, [] {})) == 1);
    CHECK(v == 5);
    ch.send(1);
    CHECK(csp::select(csp::on_recv(nil, [](std::optional<int>) {}),
                      csp::on_send(csp::sender<int>{}, 2),
                      csp::on_recv(ch, [](std::optional<int>) {})) == 2);
}

TEST_CASE("switching cases off with null channels: Go's merge idiom") {
    // for a != nil || b != nil { select { case v, ok := <-a: if !ok { a = nil } ... } }
    const int n = 200 * stress_iters();
    auto a = csp::make_chan<int>(0);
    auto b = csp::make_chan<int>(3);
    std::jthread pa([tx = a.as_closing_sender(), n] {
        for (int i = 0; i < n; ++i) tx.send(i);
    });
    std::jthread pb([tx = b.as_closing_sender(), n] {
        for (int i = 0; i < n; ++i) tx.send(n + i);
    });
    csp::receiver<int> ra = a, rb = b;
    std::vector<int> from_a, from_b;
    while (ra || rb) {
        csp::select(csp::on_recv(ra,
                                 [&](std::optional<int> v) {
                                     if (v)
                                         from_a.push_back(*v);
                                     else
                                         ra = {};
                                 }),
                    csp::on_recv(rb, [&](std::optional<int> v) {
                        if (v)
                            from_b.push_back(*v);
                        else
                            rb = {};
                    }));
    }
    CHECK(from_a == iota_vec(n));
    CHECK(from_b == iota_vec(n, n));
}

// ---- misuse

TEST_CASE("a select with an empty range of cases throws csp::error") {
    std::vector<csp::any_case> none;
    CHECK_THROWS_AS(csp::select(none), csp::error);
    auto ch = csp::make_chan<int>();
    auto h = [](std::optional<int>) {};
    std::vector<decltype(csp::on_recv(ch, h))> none_either;
    // Hide the emptiness from the optimiser: when gcc 12 can prove the range
    // empty, select.hpp's uninitialised stack array `cs_small` trips
    // -Werror=maybe-uninitialized in the caller's build (reported as a bug).
    if (stress_iters() < 0) none_either.push_back(csp::on_recv(ch, h));
    CHECK_THROWS_AS(csp::select(none_either), csp::error);
}

TEST_CASE("more than one on_default throws csp::error and takes nothing") {
    auto ch = csp::make_chan<int>(1);
    ch.send(1);
    int runs = 0;
    CHECK_THROWS_AS(csp::select(csp::on_default([&] { ++runs; }),
                                csp::on_recv(ch, [&](std::optional<int>) { ++runs; }),
                                csp::on_default([&] { ++runs; })),
                    csp::error);
    std::vector<csp::any_case> cases;
    cases.emplace_back(csp::on_default([&] { ++runs; }));
    cases.emplace_back(csp::on_default([&] { ++runs; }));
    CHECK_THROWS_AS(csp::select(cases), csp::error);
    CHECK(runs == 0);
    CHECK(ch.size() == 1);
}

TEST_CASE("a select on null channels only, without default, timeout or stop, throws csp::error") {
    csp::channel<int> nil;
    csp::receiver<std::string> nil2;
    CHECK_THROWS_AS(csp::select(csp::on_recv(nil, [](std::optional<int>) {})), csp::error);
    CHECK_THROWS_AS(
        csp::select(csp::on_send(nil, 1), csp::on_recv(nil2, [](std::optional<std::string>) {})),
        csp::error);
    // With a way out, it is a valid select that takes that way.
    auto ignore = [](std::optional<int>) {};
    CHECK(csp::select(csp::on_recv(nil, ignore), csp::on_timeout(1ms, [] {})) == 1);
    CHECK(csp::select(csp::on_recv(nil, [](std::optional<int>) {}), csp::on_default([] {})) == 1);
}

// ---- nothing taken but the chosen case

TEST_CASE("a select that times out takes nothing and gives nothing") {
    for_each_capacity([](int cap) {
        auto full = csp::make_chan<std::unique_ptr<int>>(cap);
        fill(full, cap, [](int i) { return std::make_unique<int>(i); });
        auto p = std::make_unique<int>(-1);
        CHECK(csp::select(csp::on_send(full, p), csp::on_timeout(10ms, [] {})) == 1);
        REQUIRE(p);
        CHECK(*p == -1);
        CHECK(full.size() == static_cast<std::size_t>(cap));
        CHECK(full.try_send(std::make_unique<int>(0)) ==
              status::would_block);  // no leftover registration
        CHECK(try_drain_ptrs(full) == iota_vec(cap));
    });
}

TEST_CASE("a select that takes another case leaves the lvalue and the other channels alone") {
    auto full = csp::make_chan<std::string>(1);
    full.send("old");
    auto ready = csp::make_chan<std::string>(2);
    ready.send("r1");
    ready.send("r2");
    std::string mine(40, 'm');
    std::optional<std::string> got;
    CHECK(csp::select(csp::on_send(full, mine),
                      csp::on_recv(ready, [&](std::optional<std::string> v) { got = v; })) == 1);
    CHECK(got == "r1");
    CHECK(mine == std::string(40, 'm'));
    CHECK(full.try_recv().value() == "old");
    CHECK(ready.try_recv().value() == "r2");
}

TEST_CASE("a select waiting on two channels takes from exactly one when both are sent to") {
    const int rounds = 300 * stress_iters();
    for (int cap : {0, 1}) {
        CAPTURE(cap);
        auto a = csp::make_chan<int>(cap);
        auto b = csp::make_chan<int>(cap);
        int bad = 0;
        for (int r = 0; r < rounds; ++r) {
            std::vector<int> got;
            auto h = [&](std::optional<int> v) { got.push_back(*v); };
            {
                std::jthread sa([&] { a.send(2 * r); });
                std::jthread sb([&] { b.send(2 * r + 1); });
                int i = csp::select(csp::on_recv(a, h), csp::on_recv(b, h));
                // The other value is still there: in the buffer or with its sender.
                got.push_back(*(i == 0 ? b : a).recv());
            }
            std::sort(got.begin(), got.end());
            if (got != std::vector<int>{2 * r, 2 * r + 1}) ++bad;
            if (a.size() + b.size() != 0) ++bad;
        }
        CHECK(bad == 0);
    }
}

TEST_CASE("receives racing their timeouts lose and duplicate nothing") {
    const int n = 1000 * stress_iters();
    for_each_capacity([&](int cap) {
        auto ch = csp::make_chan<int>(cap);
        std::jthread producer([&] {
            for (int i = 0; i < n; ++i) ch.send(i);
        });
        std::vector<int> got;
        int timeouts = 0;
        for (int k = 0; static_cast<int>(got.size()) < n; ++k)
            csp::select(csp::on_recv(ch, [&](std::optional<int> v) { got.push_back(*v); }),
                        csp::on_timeout(std::chrono::microseconds(k % 20), [&] { ++timeouts; }));
        producer.join();
        CHECK(got == iota_vec(n));
        CHECK(ch.size() == 0);
    });
}

TEST_CASE("sends racing their timeouts are delivered exactly once") {
    const int n = 1000 * stress_iters();
    for_each_capacity([&](int cap) {
        auto ch = csp::make_chan<std::unique_ptr<int>>(cap);
        std::jthread producer([&] {
            for (int i = 0; i < n; ++i) {
                auto v = std::make_unique<int>(i);
                // The lvalue is moved only by the case that is chosen, so a
                // timed-out attempt can be retried with the same value.
                for (int k = 0; v; ++k)
                    csp::select(csp::on_send(ch, v),
                                csp::on_timeout(std::chrono::microseconds(k % 20), [] {}));
            }
            ch.close();
        });
        std::vector<int> got;
        for (auto& p : ch) got.push_back(*p);
        producer.join();
        CHECK(got == iota_vec(n));
    });
}

// ---- the same channel more than once

TEST_CASE("the same channel in several receive cases: one value runs one handler") {
    auto ch = csp::make_chan<int>(1);
    std::array<int, 2> runs{}, chosen{};
    int left_over = 0;
    for (int i = 0; i < 200; ++i) {
        ch.send(i);
        int k = csp::select(csp::on_recv(ch, [&](std::optional<int>) { ++runs[0]; }),
                            csp::on_recv(ch, [&](std::optional<int>) { ++runs[1]; }));
        if (ch.size() != 0) ++left_over;
        ++chosen[static_cast<std::size_t>(k)];
    }
    CHECK(left_over == 0);
    CHECK(runs == chosen);  // the handler that ran is the case select reported
    CHECK(runs[0] + runs[1] == 200);
    CHECK(runs[0] > 0);  // both cases are ready, and chosen at random
    CHECK(runs[1] > 0);
}

TEST_CASE(
    "a waiting select with one channel in two cases is woken once and leaves nothing registered") {
    auto ch = csp::make_chan<int>(0);
    int runs = 0, i = -1;
    std::jthread selector([&] {
        i = csp::select(csp::on_recv(ch, [&](std::optional<int> v) { runs += *v; }),
                        csp::on_recv(ch, [&](std::optional<int> v) { runs += *v; }));
    });
    ch.send(1);
    selector.join();
    CHECK(runs == 1);
    CHECK((i == 0 || i == 1));
    CHECK(ch.try_send(2) == status::would_block);  // the other registration is gone
}

TEST_CASE("a send and a receive case on one buffered channel: whichever can proceed") {
    auto ch = csp::make_chan<int>(1);
    std::vector<int> got;
    auto run = [&](int v) {
        return csp::select(csp::on_send(ch, v),
                           csp::on_recv(ch, [&](std::optional<int> x) { got.push_back(*x); }));
    };
    CHECK(run(1) == 0);  // empty: only the send can proceed
    CHECK(run(2) == 1);  // full: only the receive can
    CHECK(got == std::vector<int>{1});
    CHECK(ch.size() == 0);
}

TEST_CASE("a send and a receive case on one unbuffered channel never meet each other") {
    // The select must pair with the plain peer: it receives when the peer
    // sends and sends when the peer receives.
    const int rounds = 500 * stress_iters();
    auto ch = csp::make_chan<int>(0);
    std::vector<int> peer_got;
    std::jthread peer([&] {
        for (int i = 0; i < rounds; ++i) {
            if (i % 2 == 0)
                ch.send(i);
            else
                peer_got.push_back(*ch.recv());
        }
    });
    std::vector<int> chosen, got;
    for (int i = 0; i < rounds; ++i) {
        int mine = 100000 + i;
        chosen.push_back(
            csp::select(csp::on_send(ch, mine),
                        csp::on_recv(ch, [&](std::optional<int> v) { got.push_back(*v); })));
    }
    peer.join();
    std::vector<int> expected_chosen, expected_got, expected_peer;
    for (int i = 0; i < rounds; ++i) {
        expected_chosen.push_back(i % 2 == 0 ? 1 : 0);
        if (i % 2 == 0)
            expected_got.push_back(i);
        else
            expected_peer.push_back(100000 + i);
    }
    CHECK(chosen == expected_chosen);
    CHECK(got == expected_got);
    CHECK(peer_got == expected_peer);
}

TEST_CASE("two threads selecting send and receive on one channel never deadlock or self-receive") {
    // Port of Go's TestSelfSelect (src/runtime/chan_test.go).
    const int rounds = 1000 * stress_iters();
    for (int cap : {0, 10}) {
        CAPTURE(cap);
        auto ch = csp::make_chan<int>(cap);
        std::array<int, 2> self_receives{}, sends{}, receives{};
        {
            std::array<std::jthread, 2> ts;
            for (int p = 0; p < 2; ++p)
                ts[static_cast<std::size_t>(p)] = std::jthread([&, p] {
                    auto k = static_cast<std::size_t>(p);
                    auto on_value = [&](std::optional<int> v) {
                        ++receives[k];
                        if (cap == 0 && v == p) ++self_receives[k];
                    };
                    for (int i = 0; i < rounds; ++i) {
                        int mine = p;
                        if (p == 0 || i % 2 == 0)
                            csp::select(csp::on_send(ch, mine, [&] { ++sends[k]; }),
                                        csp::on_recv(ch, on_value));
                        else
                            csp::select(csp::on_recv(ch, on_value),
                                        csp::on_send(ch, mine, [&] { ++sends[k]; }));
                    }
                });
        }
        CHECK(self_receives == std::array<int, 2>{0, 0});
        CHECK(sends[0] + receives[0] == rounds);
        CHECK(sends[1] + receives[1] == rounds);
        // Whatever was sent was received, or is still buffered.
        CHECK(sends[0] + sends[1] == receives[0] + receives[1] + static_cast<int>(ch.size()));
        if (cap == 0) {
            CHECK(sends[0] == receives[1]);
            CHECK(sends[1] == receives[0]);
        }
    }
}

TEST_CASE("a stop racing a delivery to a waiting select: the value is taken or left, never lost") {
    const int rounds = 100 * stress_iters();
    for_each_capacity([&](int cap) {
        auto ch = csp::make_chan<int>(cap);
        int bad = 0;
        for (int i = 0; i < rounds; ++i) {
            std::stop_source src;
            std::optional<int> got;
            int chosen = -1;
            status s;
            {
                std::jthread selector([&] {
                    chosen = csp::select(csp::on_recv(ch, [&](std::optional<int> v) { got = v; }),
                                         csp::on_stop(src.get_token(), [] {}));
                });
                std::jthread stopper([&] { src.request_stop(); });
                s = ch.send_for(int{i}, std::chrono::microseconds(i % 100));
            }
            int copies = got == i ? 1 : 0;
            if (chosen == 0 && got != i) ++bad;
            if (chosen == 1 && got) ++bad;
            while (auto left = ch.try_recv()) copies += *left == i ? 1 : 100;
            if (copies != (s == status::ok ? 1 : 0)) ++bad;
        }
        CHECK(bad == 0);
    });
}

// ---- both sides select

TEST_CASE(
    "both sides of an unbuffered channel select at once: every value delivered once, in order") {
    const int n = 5000 * stress_iters();
    auto ch = csp::make_chan<int>(0);
    // Cases that are never ready (nobody sends on them), so that each side is
    // a real multi-case select, registered on two channels while it waits.
    auto idle_a = csp::make_chan<int>(0);
    auto idle_b = csp::make_chan<int>(0);
    std::vector<int> got;
    std::jthread sender([&] {
        for (int i = 0; i < n; ++i) {
            int v = i;
            csp::select(csp::on_send(ch, v), csp::on_recv(idle_a, [](std::optional<int>) {}));
        }
    });
    for (int i = 0; i < n; ++i)
        csp::select(csp::on_recv(ch, [&](std::optional<int> v) { got.push_back(*v); }),
                    csp::on_recv(idle_b, [](std::optional<int>) {}));
    sender.join();
    CHECK(got == iota_vec(n));
}

TEST_CASE("two selecting sides over two channels with timeouts: exactly once, in order") {
    const int n = 2000 * stress_iters();
    auto c1 = csp::make_chan<int>(0);
    auto c2 = csp::make_chan<int>(0);
    std::vector<int> got;
    std::array<int, 2> via{};
    std::jthread sender([&] {
        for (int i = 0; i < n; ++i) {
            int v = i;
            bool sent = false;
            for (int k = 0; !sent; ++k)
                csp::select(csp::on_send(c1, v, [&] { sent = true; }),
                            csp::on_send(c2, v, [&] { sent = true; }),
                            csp::on_timeout(std::chrono::microseconds(k % 30), [] {}));
        }
    });
    for (int k = 0; static_cast<int>(got.size()) < n; ++k)
        csp::select(csp::on_recv(c1,
                                 [&](std::optional<int> v) {
                                     got.push_back(*v);
                                     ++via[0];
                                 }),
                    csp::on_recv(c2,
                                 [&](std::optional<int> v) {
                                     got.push_back(*v);
                                     ++via[1];
                                 }),
                    csp::on_timeout(std::chrono::microseconds(k % 30), [] {}));
    sender.join();
    // The sender offers value i only after i - 1 was taken, so order is total.
    CHECK(got == iota_vec(n));
    CHECK(via[0] + via[1] == n);
    CHECK(c1.try_recv().state() == status::would_block);
    CHECK(c2.try_recv().state() == status::would_block);
}

// Regression (fixed): on_timeout(d) computes its deadline when the case is built, not when
// the select starts. select.hpp promises "no other case became ready within
// d of the select's start" and that range cases "may be reused from one
// select to the next"; a reused timeout case instead fires at once in every
// select after its first deadline passed (Go evaluates time.After(d) each
// time the select statement runs). Skipped until fixed.
TEST_CASE("a reused on_timeout case measures d from the start of each select") {
    auto ch = csp::make_chan<int>();
    std::vector<csp::any_case> cases;
    cases.emplace_back(csp::on_recv(ch, [](std::optional<int>) {}));
    cases.emplace_back(csp::on_timeout(20ms, [] {}));
    for (int i = 0; i < 3; ++i) {
        CAPTURE(i);
        auto t0 = clk::now();
        CHECK(csp::select(cases) == 1);
        CHECK(clk::now() - t0 >= 20ms);
    }
}

// Regression (fixed): on_timeout(d) adds d to steady_clock::now() without saturating, so
// duration::max() overflows (UB) and the select times out at once instead of
// waiting for the receive case. Same cause as the skipped duration::max()
// test in chan_test.cpp. Skipped until fixed.
TEST_CASE("on_timeout(duration::max()) waits for the other cases") {
    auto ch = csp::make_chan<int>();
    std::jthread sender([&] {
        let_it_block();
        ch.send(1);
    });
    int i = csp::select(csp::on_recv(ch, [](std::optional<int>) {}),
                        csp::on_timeout(std::chrono::hours::max(), [] {}));
    CHECK(i == 0);
    if (i != 0) (void)ch.recv();  // let the sender finish either way
}

// ---- cases built at run time

TEST_CASE("select over a vector of one case type merges N channels") {
    constexpr int producers = 20;  // more than the 16 cases select keeps on the stack
    const int per_producer = 50 * stress_iters();
    std::vector<csp::channel<int>> chans;
    for (int p = 0; p < producers; ++p) chans.push_back(csp::make_chan<int>(p % 3));
    std::vector<std::jthread> ps;
    for (int p = 0; p < producers; ++p)
        ps.emplace_back(
            [tx = chans[static_cast<std::size_t>(p)].as_closing_sender(), p, per_producer] {
                for (int i = 0; i < per_producer; ++i) tx.send(p * per_producer + i);
            });

    std::optional<int> last;
    auto handler = [&](std::optional<int> v) { last = v; };
    using case_t = decltype(csp::on_recv(chans[0], handler));
    std::vector<csp::channel<int>> live = chans;  // a null entry is a finished producer
    auto build = [&] {
        std::vector<case_t> cases;
        cases.reserve(live.size());
        for (auto& c : live) cases.push_back(csp::on_recv(c, handler));
        return cases;
    };
    std::vector<case_t> cases = build();
    std::vector<std::vector<int>> got(producers);
    for (int open = producers; open > 0;) {
        int i = csp::select(cases);  // the same cases, reused until a channel closes
        if (i < 0 || i >= producers) FAIL("select returned " << i);
        if (last) {
            got[static_cast<std::size_t>(i)].push_back(*last);
        } else {
            live[static_cast<std::size_t>(i)] = {};
            cases = build();
            --open;
        }
    }
    for (int p = 0; p < producers; ++p) {
        CAPTURE(p);
        CHECK(got[static_cast<std::size_t>(p)] == iota_vec(per_producer, p * per_producer));
    }
}

TEST_CASE("select over a vector of any_case mixes kinds and value types") {
    auto ints = csp::make_chan<int>(1);
    auto strs = csp::make_chan<std::string>(1);
    auto out = csp::make_chan<double>(1);
    std::vector<std::string> log;
    double d = 2.5;
    std::vector<csp::any_case> cases;
    cases.emplace_back(csp::on_recv(ints, [&](std::optional<int> v) {
        log.push_back("int " + std::to_string(v.value_or(-1)));
    }));
    cases.emplace_back(csp::on_recv(
        strs, [&](std::optional<std::string> v) { log.push_back("str " + v.value_or("closed")); }));
    cases.emplace_back(csp::on_send(out, d, [&] { log.push_back("sent"); }));
    cases.emplace_back(csp::on_timeout(10ms, [&] { log.push_back("timeout"); }));

    out.send(0.0);  // full: the send case waits
    CHECK(csp::select(cases) == 3);
    ints.send(1);
    CHECK(csp::select(cases) == 0);
    strs.send("s");
    CHECK(csp::select(cases) == 1);
    CHECK(out.recv() == 0.0);
    CHECK(csp::select(cases) == 2);
    CHECK(out.recv() == 2.5);
    CHECK(log == std::vector<std::string>{"timeout", "int 1", "str s", "sent"});
}

TEST_CASE(
    "select over a vector of any_case: merging N channels, switching cases off by assignment") {
    constexpr int producers = 18;
    const int per_producer = 50 * stress_iters();
    std::vector<csp::channel<int>> chans;
    for (int p = 0; p < producers; ++p) chans.push_back(csp::make_chan<int>(p % 2));
    std::vector<std::jthread> ps;
    for (int p = 0; p < producers; ++p)
        ps.emplace_back(
            [tx = chans[static_cast<std::size_t>(p)].as_closing_sender(), p, per_producer] {
                for (int i = 0; i < per_producer; ++i) tx.send(p * per_producer + i);
            });

    std::optional<int> last;
    std::vector<csp::any_case> cases;
    for (auto& c : chans)
        cases.emplace_back(csp::on_recv(c, [&](std::optional<int> v) { last = v; }));
    std::vector<std::vector<int>> got(producers);
    for (int open = producers; open > 0;) {
        int i = csp::select(cases);
        if (last) {
            got[static_cast<std::size_t>(i)].push_back(*last);
        } else {
            cases[static_cast<std::size_t>(i)] =
                csp::on_recv(csp::channel<int>{}, [](std::optional<int>) {});
            --open;
        }
    }
    for (int p = 0; p < producers; ++p) {
        CAPTURE(p);
        CHECK(got[static_cast<std::size_t>(p)] == iota_vec(per_producer, p * per_producer));
    }
}

// ---- handlers

TEST_CASE("handlers run with no channel lock held: a handler may use the same channel") {
    auto ch = csp::make_chan<int>(1);
    ch.send(1);
    std::vector<int> seen;
    for (int i = 0; i < 3; ++i)
        csp::select(csp::on_recv(ch, [&](std::optional<int> v) {
            seen.push_back(*v);
            ch.send(*v + 1);  // would deadlock if the select still held ch's lock
        }));
    CHECK(seen == std::vector<int>{1, 2, 3});
    CHECK(ch.recv() == 4);

    int v = 10;
    CHECK(csp::select(csp::on_send(ch, v, [&] { CHECK(ch.recv() == 10); })) == 0);
}

TEST_CASE("an exception from a handler leaves select after its case completed") {
    auto ch = csp::make_chan<int>(2);
    ch.send(1);
    ch.send(2);
    CHECK_THROWS_AS(
        csp::select(csp::on_recv(ch, [](std::optional<int>) { throw std::runtime_error("h"); })),
        std::runtime_error);
    CHECK(ch.size() == 1);  // the value was taken before the handler ran
    CHECK(ch.recv() == 2);
}

TEST_CASE("on_send copies a const lvalue and owns an rvalue") {
    auto ch = csp::make_chan<std::string>(2);
    const std::string keep(30, 'k');
    CHECK(csp::select(csp::on_send(ch, keep)) == 0);
    CHECK(keep == std::string(30, 'k'));
    CHECK(csp::select(csp::on_send(ch, std::string(30, 'r'))) == 0);
    CHECK(ch.recv() == std::string(30, 'k'));
    CHECK(ch.recv() == std::string(30, 'r'));

    // Send cases on the directional and closing handles too.
    csp::sender<std::string> tx = ch;
    CHECK(csp::select(csp::on_send(tx, std::string("tx"))) == 0);
    {
        auto closer = ch.as_closing_sender();
        CHECK(csp::select(csp::on_send(closer, std::string("closer"))) == 0);
    }
    CHECK(ch.closed());
    csp::receiver<std::string> rx = ch;
    std::vector<std::string> rest;
    while (true) {
        bool more = true;
        csp::select(csp::on_recv(rx, [&](std::optional<std::string> v) {
            if (v)
                rest.push_back(*v);
            else
                more = false;
        }));
        if (!more) break;
    }
    CHECK(rest == std::vector<std::string>{"tx", "closer"});
}
