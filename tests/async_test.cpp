// The asynchronous face of csp's channels: async_send, async_recv and
// csp::async_select as Asio operations, with every completion token, on a
// plain asio::io_context (one thread and several) and on csp::runtime.
//
// What is checked, always with exact values and counts:
//   - each token's shape: use_awaitable, plain callbacks, use_future,
//     experimental::deferred, as_tuple(use_awaitable), bind_cancellation_slot;
//   - async_send of an rvalue (the operation owns it: destroyed on failure)
//     and of an lvalue (moved from only on success);
//   - async_recv: the value, or nullopt once the channel is closed and drained;
//   - async_select: the index, the handler ran, and the exception_ptr
//     (closed_error, operation_aborted, the handler's own exception);
//   - a thread and a coroutine on the same channel, selects on both sides;
//   - the handler's associated executor (strand, another io_context);
//   - work tracking (io.run() does not return while a callback waits);
//   - cancellation: operation_aborted, and nothing taken or given;
//   - null channels throw csp::error.
// Allocation counts are in alloc_test.cpp, races in cancel_race_test.cpp.
#include <doctest/doctest.h>

#include <channels/async.hpp>
#include <channels/channels.hpp>
#include <runtime/csp.hpp>

#include <asio/bind_cancellation_slot.hpp>
#include <asio/bind_executor.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/deferred.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/strand.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/use_future.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <latch>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "tsan_suppressions.hpp"

namespace {

using namespace std::chrono_literals;
using asio::use_awaitable;
using asio::experimental::as_tuple;
using asio::experimental::deferred;

// Coroutines spawned on an io_context, with every exception they end with
// kept for the main thread to check.
class spawner {
public:
    template <class F>
    void spawn(const asio::any_io_executor& ex, F f) {
        asio::co_spawn(ex, std::move(f), [this](std::exception_ptr e) {
            std::lock_guard g(mu_);
            ++ended_;
            if (e) errors_.push_back(e);
        });
    }
    template <class F>
    void spawn(asio::io_context& io, F f) {
        spawn(io.get_executor(), std::move(f));
    }

    int ended() {
        std::lock_guard g(mu_);
        return ended_;
    }

    // Fails the test with each exception's message.
    void check() {
        std::lock_guard g(mu_);
        for (auto& e : errors_) {
            try {
                std::rethrow_exception(e);
            } catch (const std::exception& ex) {
                FAIL_CHECK("a coroutine threw: " << ex.what());
            } catch (...) {
                FAIL_CHECK("a coroutine threw something");
            }
        }
        errors_.clear();
    }

private:
    std::mutex mu_;
    std::vector<std::exception_ptr> errors_;
    int ended_ = 0;
};

// Runs io on n threads until it runs out of work.
void run_threads(asio::io_context& io, int n) {
    std::vector<std::thread> ts;
    for (int i = 0; i < n; ++i) ts.emplace_back([&io] { io.run(); });
    for (auto& t : ts) t.join();
}

bool is_aborted(const std::error_code& ec) { return ec == asio::error::operation_aborted; }

// A value that counts its live instances, so that a value the operation
// destroyed, or one that is still held somewhere, shows up.
struct counted {
    static inline std::atomic<int> live{0};
    int v = -1;
    explicit counted(int x) : v(x) { live.fetch_add(1); }
    counted(counted&& o) noexcept : v(o.v) {
        o.v = -1;
        live.fetch_add(1);
    }
    counted& operator=(counted&&) = delete;
    ~counted() { live.fetch_sub(1); }
};

template <class E, class F>
bool throws_as(F&& f) {
    try {
        f();
    } catch (const E&) {
        return true;
    } catch (...) {
        return false;
    }
    return false;
}

// ---------------------------------------------------------------------------
// use_awaitable

// A producer and a consumer coroutine pass n values through a channel of the
// given capacity; the consumer sees every value once, in order, then closed.
void awaitable_stream(int capacity, int threads, int n) {
    asio::io_context io;
    spawner sp;
    auto ch = csp::make_chan<std::unique_ptr<int>>(capacity);
    std::vector<int> got;
    bool saw_closed = false;
    sp.spawn(io, [&]() -> asio::awaitable<void> {
        for (int i = 0; i < n; ++i) co_await ch.async_send(std::make_unique<int>(i), use_awaitable);
        ch.close();
    });
    sp.spawn(io, [&]() -> asio::awaitable<void> {
        for (;;) {
            std::optional<std::unique_ptr<int>> v = co_await ch.async_recv(use_awaitable);
            if (!v) break;
            got.push_back(**v);
        }
        saw_closed = true;
        // Closed and drained stays closed.
        auto again = co_await ch.async_recv(use_awaitable);
        CHECK_FALSE(again.has_value());
    });
    run_threads(io, threads);
    sp.check();
    CHECK(sp.ended() == 2);
    CHECK(saw_closed);
    REQUIRE(got.size() == static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) CHECK(got[static_cast<std::size_t>(i)] == i);
}

TEST_CASE("async: use_awaitable send and recv deliver every value in order, then closed") {
    for (int cap : {0, 1, 7}) {
        CAPTURE(cap);
        awaitable_stream(cap, 1, 2000);
        awaitable_stream(cap, 3, 2000);
    }
}

// Operations that complete at once resume their coroutine inline, a bounded
// number of times in a row: a million of them in one coroutine, none ever
// blocking, must neither overflow the stack nor lose or reorder a value.
TEST_CASE("async: a coroutine whose operations never block runs a million of them without growing the stack") {
    asio::io_context io(1);
    spawner sp;
    auto ch = csp::make_chan<int>(1);
    auto sel = csp::make_chan<int>(1);
    constexpr int n = 1'000'000;
    long long sum = 0;
    int selected = 0;
    sp.spawn(io, [&]() -> asio::awaitable<void> {
        for (int i = 0; i < n; ++i) {
            co_await ch.async_send(i, use_awaitable);
            auto v = co_await ch.async_recv(use_awaitable);
            if (!v || *v != i) throw std::logic_error("lost or reordered");
            sum += *v;
            if (i % 100 == 0) {  // a select that completes at once, too
                co_await sel.async_send(i, use_awaitable);
                co_await csp::async_select(use_awaitable,
                                           csp::on_recv(sel, [&](std::optional<int> w) { selected += w ? 1 : 0; }));
            }
        }
    });
    io.run();
    sp.check();
    CHECK(sp.ended() == 1);
    CHECK(sum == static_cast<long long>(n) * (n - 1) / 2);
    CHECK(selected == n / 100);
}

TEST_CASE("async: several coroutine producers and consumers on several io threads, exact accounting") {
    constexpr int kProducers = 4, kConsumers = 3, kEach = 1500;
    for (int cap : {0, 3}) {
        CAPTURE(cap);
        asio::io_context io;
        spawner sp;
        auto ch = csp::make_chan<int>(cap);
        auto done = csp::make_chan<int>(kProducers);
        std::vector<std::vector<int>> logs(kConsumers);
        for (int p = 0; p < kProducers; ++p)
            sp.spawn(io, [&, p]() -> asio::awaitable<void> {
                for (int s = 0; s < kEach; ++s) co_await ch.async_send(p * kEach + s, use_awaitable);
                co_await done.async_send(p, use_awaitable);
            });
        sp.spawn(io, [&]() -> asio::awaitable<void> {  // closes once every producer is done
            for (int p = 0; p < kProducers; ++p) (void)co_await done.async_recv(use_awaitable);
            ch.close();
        });
        for (int c = 0; c < kConsumers; ++c)
            sp.spawn(io, [&, c]() -> asio::awaitable<void> {
                while (auto v = co_await ch.async_recv(use_awaitable)) logs[static_cast<std::size_t>(c)].push_back(*v);
            });
        run_threads(io, 4);
        sp.check();
        std::vector<int> count(kProducers * kEach, 0);
        for (auto& log : logs) {
            std::vector<int> last(kProducers, -1);
            for (int v : log) {
                REQUIRE(v >= 0);
                REQUIRE(v < kProducers * kEach);
                ++count[static_cast<std::size_t>(v)];
                int p = v / kEach, s = v % kEach;
                CHECK(s > last[static_cast<std::size_t>(p)]);  // FIFO per producer
                last[static_cast<std::size_t>(p)] = s;
            }
        }
        int wrong = 0;
        for (int k : count) wrong += k != 1;
        CHECK(wrong == 0);
    }
}

TEST_CASE("async: coroutine tasks on csp::runtime pass values both ways") {
    for (unsigned workers : {1u, 2u, 4u}) {
        CAPTURE(workers);
        csp::runtime rt(workers);
        auto req = csp::make_chan<int>();
        auto rsp = csp::make_chan<int>(2);
        constexpr int n = 3000;
        long sum = 0;
        rt.go([&]() -> asio::awaitable<void> {
            while (auto v = co_await req.async_recv(use_awaitable)) co_await rsp.async_send(*v * 3, use_awaitable);
            rsp.close();
        });
        rt.go([&]() -> asio::awaitable<void> {
            for (int i = 0; i < n; ++i) {
                co_await req.async_send(i, use_awaitable);
                auto r = co_await rsp.async_recv(use_awaitable);
                REQUIRE(r.has_value());
                CHECK(*r == 3 * i);
                sum += *r;
            }
            req.close();
            auto end = co_await rsp.async_recv(use_awaitable);
            CHECK_FALSE(end.has_value());
        });
        rt.wait();
        CHECK(sum == 3L * n * (n - 1) / 2);
        CHECK(rt.live_tasks() == 0);
    }
}

// ---------------------------------------------------------------------------
// Plain callbacks

TEST_CASE("async: plain callbacks complete on the system executor, never inline") {
    auto ch = csp::make_chan<int>(1);
    REQUIRE(ch.try_send(5) == csp::status::ok);
    std::promise<std::pair<std::optional<int>, std::thread::id>> got;
    ch.async_recv([&](std::error_code ec, std::optional<int> v) {
        CHECK_FALSE(ec);
        got.set_value({v, std::this_thread::get_id()});
    });
    auto [v, where] = got.get_future().get();
    CHECK(v == 5);
    CHECK(where != std::this_thread::get_id());  // no executor: the system executor, not inline

    std::promise<std::error_code> sent;
    ch.async_send(6, [&](std::error_code ec) { sent.set_value(ec); });
    CHECK_FALSE(sent.get_future().get());
    CHECK(ch.try_recv().value() == 6);

    // A parked callback receive, completed by a thread's send.
    std::promise<std::optional<int>> later;
    ch.async_recv([&](std::error_code ec, std::optional<int> x) {
        CHECK_FALSE(ec);
        later.set_value(x);
    });
    std::thread t([&] { ch.send(7); });
    CHECK(later.get_future().get() == 7);
    t.join();

    // Closed and drained: nullopt, no error. Send on closed: errc::closed.
    ch.close();
    std::promise<std::pair<std::error_code, std::optional<int>>> closed;
    ch.async_recv([&](std::error_code ec, std::optional<int> x) { closed.set_value({ec, x}); });
    auto [cec, cv] = closed.get_future().get();
    CHECK_FALSE(cec);
    CHECK_FALSE(cv.has_value());
    std::promise<std::error_code> failed;
    ch.async_send(8, [&](std::error_code ec) { failed.set_value(ec); });
    CHECK(failed.get_future().get() == csp::errc::closed);
}

TEST_CASE("async: callbacks bound to a one-thread io_context run inside run(), after the initiation returned") {
    for (int cap : {0, 2}) {
        CAPTURE(cap);
        asio::io_context io;
        auto ch = csp::make_chan<int>(cap);
        std::vector<int> got;
        bool initiating = false;
        int inline_calls = 0;
        // A receive loop of callbacks, and a send loop of callbacks.
        struct receiver_loop {
            asio::io_context& io;
            csp::channel<int>& ch;
            std::vector<int>& got;
            bool& initiating;
            int& inline_calls;
            void start() {
                initiating = true;
                ch.async_recv(asio::bind_executor(io, *this));
                initiating = false;
            }
            void operator()(std::error_code ec, std::optional<int> v) {
                if (initiating) ++inline_calls;
                CHECK_FALSE(ec);
                if (!v) return;
                got.push_back(*v);
                start();
            }
        };
        struct sender_loop {
            asio::io_context& io;
            csp::channel<int>& ch;
            int next;
            int n;
            void start() { ch.async_send(next, asio::bind_executor(io, *this)); }
            void operator()(std::error_code ec) {
                CHECK_FALSE(ec);
                if (++next == n) ch.close();
                else start();
            }
        };
        receiver_loop{io, ch, got, initiating, inline_calls}.start();
        sender_loop{io, ch, 0, 500}.start();
        io.run();
        CHECK(inline_calls == 0);
        REQUIRE(got.size() == 500);
        for (int i = 0; i < 500; ++i) CHECK(got[static_cast<std::size_t>(i)] == i);
    }
}

// ---------------------------------------------------------------------------
// use_future

TEST_CASE("async: use_future gives the value, nullopt at close, and throws errc::closed") {
    for (int cap : {0, 1}) {
        CAPTURE(cap);
        auto ch = csp::make_chan<std::unique_ptr<int>>(cap);
        std::future<std::optional<std::unique_ptr<int>>> r = ch.async_recv(asio::use_future);
        std::future<void> s = ch.async_send(std::make_unique<int>(41), asio::use_future);
        s.get();
        auto v = r.get();
        REQUIRE(v.has_value());
        CHECK(**v == 41);

        // A future receive waits for a thread's send.
        auto r2 = ch.async_recv(asio::use_future);
        std::thread t([&] { ch.send(std::make_unique<int>(42)); });
        CHECK(**r2.get() == 42);
        t.join();

        ch.close();
        CHECK_FALSE(ch.async_recv(asio::use_future).get().has_value());
        auto s2 = ch.async_send(std::make_unique<int>(43), asio::use_future);
        try {
            s2.get();
            FAIL_CHECK("async_send on a closed channel succeeded");
        } catch (const std::system_error& e) {
            CHECK(e.code() == csp::errc::closed);
        }
    }
}

TEST_CASE("async: a buffered channel drained through use_future after close") {
    auto ch = csp::make_chan<int>(3);
    for (int i = 0; i < 3; ++i) ch.async_send(i, asio::use_future).get();
    ch.close();
    for (int i = 0; i < 3; ++i) CHECK(ch.async_recv(asio::use_future).get() == i);
    CHECK_FALSE(ch.async_recv(asio::use_future).get().has_value());
}

// ---------------------------------------------------------------------------
// experimental::deferred and as_tuple

TEST_CASE("async: deferred operations start only when invoked, with any token") {
    asio::io_context io;
    spawner sp;
    auto ch = csp::make_chan<int>(1);
    auto later_send = ch.async_send(9, deferred);
    auto later_recv = ch.async_recv(deferred);
    CHECK(ch.size() == 0);  // nothing started yet
    int lv = 10;
    auto lvalue_send = ch.async_send(lv, deferred);  // refers to lv
    std::vector<int> got;
    sp.spawn(io, [&]() -> asio::awaitable<void> {
        co_await std::move(later_send)(use_awaitable);
        CHECK(ch.size() == 1);
        auto v = co_await std::move(later_recv)(use_awaitable);
        got.push_back(v.value_or(-1));
        co_await std::move(lvalue_send)(use_awaitable);
        auto w = co_await ch.async_recv(deferred)(use_awaitable);
        got.push_back(w.value_or(-1));
    });
    io.run();
    sp.check();
    CHECK(got == std::vector<int>{9, 10});

    // A deferred operation completed with a plain callback.
    std::promise<std::optional<int>> p;
    ch.async_recv(deferred)([&](std::error_code ec, std::optional<int> v) {
        CHECK_FALSE(ec);
        p.set_value(v);
    });
    ch.send(11);
    CHECK(p.get_future().get() == 11);
}

TEST_CASE("async: as_tuple(use_awaitable) reports errors as values, never throws") {
    asio::io_context io;
    spawner sp;
    auto ch = csp::make_chan<int>(1);
    asio::cancellation_signal sig;
    std::error_code recv_ec, send_ec, closed_send_ec, cancelled_ec;
    std::optional<int> recv_v, closed_v, cancelled_v{-5};
    sp.spawn(io, [&]() -> asio::awaitable<void> {
        auto [ec1] = co_await ch.async_send(1, as_tuple(use_awaitable));
        send_ec = ec1;
        auto [ec2, v2] = co_await ch.async_recv(as_tuple(use_awaitable));
        recv_ec = ec2;
        recv_v = v2;
        // Parked, then cancelled through a slot: no throw, operation_aborted.
        // The emit is queued before the operation starts and runs after it parked.
        asio::post(io, [&] { sig.emit(asio::cancellation_type::terminal); });
        auto [ec3, v3] = co_await ch.async_recv(
            asio::bind_cancellation_slot(sig.slot(), as_tuple(use_awaitable)));
        cancelled_ec = ec3;
        cancelled_v = v3;
        ch.close();
        auto [ec4, v4] = co_await ch.async_recv(as_tuple(use_awaitable));
        CHECK_FALSE(ec4);
        closed_v = v4;
        auto [ec5] = co_await ch.async_send(2, as_tuple(use_awaitable));
        closed_send_ec = ec5;
    });
    io.run();
    sp.check();
    CHECK_FALSE(send_ec);
    CHECK_FALSE(recv_ec);
    CHECK(recv_v == 1);
    CHECK(is_aborted(cancelled_ec));
    CHECK_FALSE(cancelled_v.has_value());
    CHECK_FALSE(closed_v.has_value());
    CHECK(closed_send_ec == csp::errc::closed);
}

// ---------------------------------------------------------------------------
// async_send: rvalues are owned, lvalues are moved from only on success

TEST_CASE("async: an lvalue async_send is moved from only on success") {
    asio::io_context io;
    spawner sp;
    auto ch = csp::make_chan<std::unique_ptr<int>>();
    auto ok_value = std::make_unique<int>(1);
    auto closed_value = std::make_unique<int>(2);
    auto cancelled_value = std::make_unique<int>(3);
    asio::cancellation_signal sig;
    std::error_code cancelled_ec, closed_ec;
    auto go = csp::make_chan<int>();
    sp.spawn(io, [&]() -> asio::awaitable<void> {
        // Cancelled while parked (no receiver): still ours. The emit is queued
        // before the operation starts, so it runs once the operation parked.
        asio::post(io, [&] { sig.emit(asio::cancellation_type::terminal); });
        auto [ec] = co_await ch.async_send(cancelled_value,
                                           asio::bind_cancellation_slot(sig.slot(), as_tuple(use_awaitable)));
        cancelled_ec = ec;
        co_await go.async_send(0, use_awaitable);
        // Taken by a receiver: moved from.
        co_await ch.async_send(ok_value, use_awaitable);
    });
    sp.spawn(io, [&]() -> asio::awaitable<void> {
        (void)co_await go.async_recv(use_awaitable);  // after the cancellation
        auto v = co_await ch.async_recv(use_awaitable);
        CHECK((v && *v && **v == 1));
        ch.close();
        auto [ec] = co_await ch.async_send(closed_value, as_tuple(use_awaitable));
        closed_ec = ec;
    });
    io.run();
    sp.check();
    CHECK(is_aborted(cancelled_ec));
    REQUIRE(cancelled_value != nullptr);
    CHECK(*cancelled_value == 3);
    CHECK(ok_value == nullptr);
    CHECK(closed_ec == csp::errc::closed);
    REQUIRE(closed_value != nullptr);
    CHECK(*closed_value == 2);
}

TEST_CASE("async: an rvalue async_send owns its value: destroyed when the send fails, delivered once otherwise") {
    REQUIRE(counted::live.load() == 0);
    {
        auto ch = csp::make_chan<counted>(1);
        ch.async_send(counted(1), asio::use_future).get();  // into the buffer
        CHECK(counted::live.load() == 1);
        // Parked (buffer full), then the channel is closed: the value dies with the operation.
        auto f = ch.async_send(counted(2), asio::use_future);
        CHECK(counted::live.load() == 2);
        {
            auto r = ch.try_recv();  // frees the slot: the parked send's value moves in
            REQUIRE(r.ok());
            CHECK(r->v == 1);
        }
        f.get();
        auto f3 = ch.async_send(counted(3), asio::use_future);  // parked again
        ch.close();
        CHECK(throws_as<std::system_error>([&] { f3.get(); }));
        CHECK(ch.try_recv()->v == 2);  // the buffered value survives the close
        CHECK(ch.try_recv().state() == csp::status::closed);
    }
    CHECK(counted::live.load() == 0);

    // Cancelled while parked: destroyed, nothing in the channel.
    {
        asio::io_context io;
        auto ch = csp::make_chan<counted>();
        asio::cancellation_signal sig;
        std::error_code got;
        ch.async_send(counted(7), asio::bind_cancellation_slot(
                                      sig.slot(), asio::bind_executor(io, [&](std::error_code ec) { got = ec; })));
        CHECK(counted::live.load() == 1);
        asio::post(io, [&] { sig.emit(asio::cancellation_type::terminal); });
        io.run();
        CHECK(is_aborted(got));
        CHECK(counted::live.load() == 0);
        CHECK(ch.try_recv().state() == csp::status::would_block);
    }
}

// ---------------------------------------------------------------------------
// Cancellation: operation_aborted, and nothing taken

TEST_CASE("async: a cancelled async_recv takes nothing: the next value stays in the channel") {
    for (int cap : {0, 1}) {
        CAPTURE(cap);
        asio::io_context io;
        auto ch = csp::make_chan<int>(cap);
        asio::cancellation_signal sig;
        std::error_code got_ec;
        std::optional<int> got_v{-1};
        int calls = 0;
        ch.async_recv(asio::bind_cancellation_slot(
            sig.slot(), asio::bind_executor(io, [&](std::error_code ec, std::optional<int> v) {
                ++calls;
                got_ec = ec;
                got_v = v;
            })));
        asio::post(io, [&] { sig.emit(asio::cancellation_type::terminal); });
        io.run();
        CHECK(calls == 1);
        CHECK(is_aborted(got_ec));
        CHECK_FALSE(got_v.has_value());
        // No receiver is registered any more: an unbuffered try_send finds nobody.
        if (cap == 0) CHECK(ch.try_send(5) == csp::status::would_block);
        else {
            CHECK(ch.try_send(5) == csp::status::ok);
            CHECK(ch.try_recv().value() == 5);
        }
        // Emitting again after the completion does nothing (the slot was cleared).
        sig.emit(asio::cancellation_type::terminal);
        CHECK(calls == 1);
    }
}

TEST_CASE("async: cancellation after the value was delivered is a no-op") {
    asio::io_context io;
    auto ch = csp::make_chan<int>();
    asio::cancellation_signal sig;
    std::error_code got_ec;
    std::optional<int> got_v;
    int calls = 0;
    ch.async_recv(asio::bind_cancellation_slot(
        sig.slot(), asio::bind_executor(io, [&](std::error_code ec, std::optional<int> v) {
            ++calls;
            got_ec = ec;
            got_v = v;
        })));
    // The sender claims the parked receive; its completion is queued behind this post.
    REQUIRE(ch.try_send(33) == csp::status::ok);
    asio::post(io, [&] { sig.emit(asio::cancellation_type::terminal); });
    io.run();
    CHECK(calls == 1);
    CHECK_FALSE(got_ec);
    CHECK(got_v == 33);
}

// A value whose move throws once, when armed: a sender that claims a parked
// receive and fails to move its value into it leaves the receive due to run
// again (a retry; with a lock-free ring, a value taken by a lock-free
// receiver first does the same).
struct move_bomb {
    explicit move_bomb(int v, bool arm = false) : value(v), armed(arm) {}
    move_bomb(move_bomb&& o) : value(o.value) {
        if (std::exchange(o.armed, false)) throw std::runtime_error("move_bomb");
    }
    int value;
    bool armed = false;
};

// Asio emits a cancellation once. One that comes while a peer holds the
// claim of a parked operation, for what then turns out to be a retry, must
// still end the operation: registering again would wait past it forever (a
// task_group race test hung this way).
TEST_CASE("async: a cancellation that comes while the operation is claimed for a retry ends it") {
    SUBCASE("async_recv") {
        asio::io_context io;
        auto ch = csp::make_chan<move_bomb>();
        asio::cancellation_signal sig;
        int calls = 0;
        std::error_code got_ec;
        bool got_value = false;
        ch.async_recv(asio::bind_cancellation_slot(
            sig.slot(), asio::bind_executor(io, [&](std::error_code ec, std::optional<move_bomb> v) {
                ++calls;
                got_ec = ec;
                got_value = v.has_value();
            })));
        move_bomb bomb(7, true);
        CHECK_THROWS_AS((void)ch.try_send(std::move(bomb)), std::runtime_error);  // claims, then retry
        sig.emit(asio::cancellation_type::terminal);  // the claim is held: the CAS loses
        io.poll();
        CHECK(calls == 1);
        CHECK(is_aborted(got_ec));
        CHECK_FALSE(got_value);
        CHECK(ch.try_send(move_bomb(8)) == csp::status::would_block);  // nobody waits any more
        ch.close();  // if the receive had registered again, this ends it
        io.poll();
        CHECK(calls == 1);
    }
    SUBCASE("async_select") {
        asio::io_context io;
        auto ch = csp::make_chan<move_bomb>();
        asio::cancellation_signal sig;
        int calls = 0;
        bool aborted = false, handler_ran = false;
        csp::async_select(
            asio::bind_cancellation_slot(
                sig.slot(), asio::bind_executor(io, [&](std::exception_ptr e, std::size_t) {
                    ++calls;
                    try {
                        if (e) std::rethrow_exception(e);
                    } catch (const std::system_error& err) {
                        aborted = is_aborted(err.code());
                    }
                })),
            csp::on_recv(ch, [&](std::optional<move_bomb>) { handler_ran = true; }));
        move_bomb bomb(7, true);
        CHECK_THROWS_AS((void)ch.try_send(std::move(bomb)), std::runtime_error);
        sig.emit(asio::cancellation_type::terminal);
        io.poll();
        CHECK(calls == 1);
        CHECK(aborted);
        CHECK_FALSE(handler_ran);
        CHECK(ch.try_send(move_bomb(8)) == csp::status::would_block);
        ch.close();
        io.poll();
        CHECK(calls == 1);
    }
}

TEST_CASE("async: every cancellation type is honoured") {
    for (auto type : {asio::cancellation_type::terminal, asio::cancellation_type::partial,
                      asio::cancellation_type::total, asio::cancellation_type::all}) {
        asio::io_context io;
        auto ch = csp::make_chan<int>();
        asio::cancellation_signal sig;
        std::error_code got;
        ch.async_recv(asio::bind_cancellation_slot(
            sig.slot(), asio::bind_executor(io, [&](std::error_code ec, std::optional<int>) { got = ec; })));
        asio::post(io, [&] { sig.emit(type); });
        io.run();
        CHECK(is_aborted(got));
    }
}

TEST_CASE("async: use_future with a cancellation slot throws operation_aborted") {
    auto ch = csp::make_chan<int>();
    asio::cancellation_signal sig;
    auto f = ch.async_recv(asio::bind_cancellation_slot(sig.slot(), asio::use_future));
    // The operation is parked (nothing to receive); its completion would run on
    // the system executor, so emitting from this thread is the operation's context.
    sig.emit(asio::cancellation_type::terminal);
    try {
        (void)f.get();
        FAIL_CHECK("a cancelled receive delivered");
    } catch (const std::system_error& e) {
        CHECK(is_aborted(e.code()));
    }
    CHECK(ch.try_send(1) == csp::status::would_block);
}

// ---------------------------------------------------------------------------
// async_select

TEST_CASE("async: async_select returns the index and runs the handler of the chosen case") {
    asio::io_context io;
    spawner sp;
    auto a = csp::make_chan<int>(1);
    auto b = csp::make_chan<std::string>(1);
    auto out = csp::make_chan<int>(1);
    std::vector<std::string> ran;
    sp.spawn(io, [&]() -> asio::awaitable<void> {
        REQUIRE(b.try_send(std::string("hello")) == csp::status::ok);
        std::size_t i = co_await csp::async_select(
            use_awaitable, csp::on_recv(a, [&](std::optional<int>) { ran.push_back("a"); }),
            csp::on_recv(b, [&](std::optional<std::string> s) { ran.push_back("b:" + s.value_or("?")); }));
        CHECK(i == 1);
        // A send case to a buffered channel with room.
        int v = 77;
        i = co_await csp::async_select(use_awaitable, csp::on_recv(a, [&](std::optional<int>) { ran.push_back("a"); }),
                                       csp::on_send(out, v, [&] { ran.push_back("sent"); }));
        CHECK(i == 1);
        CHECK(out.try_recv().value() == 77);
        // The default runs when nothing is ready.
        i = co_await csp::async_select(use_awaitable, csp::on_recv(a, [&](std::optional<int>) { ran.push_back("a"); }),
                                       csp::on_default([&] { ran.push_back("default"); }));
        CHECK(i == 1);
        // A receive case on a closed channel gets nullopt.
        a.close();
        i = co_await csp::async_select(
            use_awaitable, csp::on_recv(b, [&](std::optional<std::string>) { ran.push_back("b"); }),
            csp::on_recv(a, [&](std::optional<int> x) { ran.push_back(x ? "a-value" : "a-closed"); }));
        CHECK(i == 1);
    });
    io.run();
    sp.check();
    CHECK(ran == std::vector<std::string>{"b:hello", "sent", "default", "a-closed"});
}

TEST_CASE("async: a parked async_select is completed by a thread's send, exactly one case") {
    for (int cap : {0, 1}) {
        CAPTURE(cap);
        asio::io_context io;
        spawner sp;
        auto a = csp::make_chan<int>(cap), b = csp::make_chan<int>(cap);
        std::latch parked(1);
        std::vector<std::pair<int, int>> got;
        sp.spawn(io, [&]() -> asio::awaitable<void> {
            for (int round = 0; round < 200; ++round) {
                auto sel = csp::async_select(deferred, csp::on_recv(a, [&](std::optional<int> v) { got.emplace_back(0, *v); }),
                                             csp::on_recv(b, [&](std::optional<int> v) { got.emplace_back(1, *v); }));
                if (round == 0) parked.count_down();
                std::size_t i = co_await std::move(sel)(use_awaitable);
                CHECK(static_cast<int>(i) == got.back().first);
            }
        });
        std::thread io_thread([&] { io.run(); });
        parked.wait();
        for (int k = 0; k < 200; ++k) (k % 2 ? a : b).send(k);
        io_thread.join();
        sp.check();
        REQUIRE(got.size() == 200);
        // Each value once, from the channel it was sent on, FIFO per channel
        // (unbuffered: in sending order).
        std::vector<int> seen(200, 0), last{-1, -1};
        int bad = 0;
        for (auto [c, k] : got) {
            if (k < 0 || k >= 200 || c != (k % 2 ? 0 : 1) || k <= last[static_cast<std::size_t>(c)]) {
                ++bad;
                continue;
            }
            last[static_cast<std::size_t>(c)] = k;
            ++seen[static_cast<std::size_t>(k)];
        }
        CHECK(bad == 0);
        CHECK(std::count(seen.begin(), seen.end(), 1) == 200);
        if (cap == 0)
            for (int k = 0; k < 200; ++k) CHECK(got[static_cast<std::size_t>(k)].second == k);
    }
}

TEST_CASE("async: async_select completes with closed_error for a send case on a closed channel") {
    asio::io_context io;
    spawner sp;
    auto ch = csp::make_chan<std::unique_ptr<int>>();
    auto idle = csp::make_chan<int>();
    auto mine = std::make_unique<int>(4);
    bool handler_ran = false;
    sp.spawn(io, [&]() -> asio::awaitable<void> {
        // Parked on the send case, then the channel is closed.
        asio::post(io, [&] { ch.close(); });
        try {
            (void)co_await csp::async_select(use_awaitable, csp::on_recv(idle, [](std::optional<int>) {}),
                                             csp::on_send(ch, mine, [&] { handler_ran = true; }));
            FAIL_CHECK("a send case on a closed channel succeeded");
        } catch (const csp::closed_error&) {
        }
        // Already closed at the start: the same error at once.
        auto [e, i] = co_await csp::async_select(as_tuple(use_awaitable), csp::on_send(ch, mine));
        CHECK(i == 0);
        CHECK(throws_as<csp::closed_error>([&] { std::rethrow_exception(e); }));
    });
    io.run();
    sp.check();
    CHECK_FALSE(handler_ran);
    REQUIRE(mine != nullptr);  // never moved from
    CHECK(*mine == 4);
}

TEST_CASE("async: a cancelled async_select throws operation_aborted and takes nothing") {
    for (int cap : {0, 1}) {
        CAPTURE(cap);
        asio::io_context io;
        spawner sp;
        auto in = csp::make_chan<int>(cap);
        auto out = csp::make_chan<std::unique_ptr<int>>(0);
        auto v = std::make_unique<int>(12);
        asio::cancellation_signal sig;
        bool aborted = false, handler_ran = false;
        sp.spawn(io, [&]() -> asio::awaitable<void> {
            asio::post(io, [&] { sig.emit(asio::cancellation_type::terminal); });
            try {
                (void)co_await csp::async_select(
                    asio::bind_cancellation_slot(sig.slot(), use_awaitable),
                    csp::on_recv(in, [&](std::optional<int>) { handler_ran = true; }),
                    csp::on_send(out, v, [&] { handler_ran = true; }));
            } catch (const std::system_error& e) {
                aborted = is_aborted(e.code());
            }
        });
        io.run();
        sp.check();
        CHECK(aborted);
        CHECK_FALSE(handler_ran);
        REQUIRE(v != nullptr);
        CHECK(*v == 12);
        // Neither registration is left behind.
        CHECK(out.try_recv().state() == csp::status::would_block);
        if (cap == 0) CHECK(in.try_send(1) == csp::status::would_block);
    }
}

TEST_CASE("async: async_select completes with the handler's own exception") {
    asio::io_context io;
    auto ch = csp::make_chan<int>(1);
    REQUIRE(ch.try_send(1) == csp::status::ok);
    std::exception_ptr got;
    std::size_t index = 99;
    csp::async_select(asio::bind_executor(io, [&](std::exception_ptr e, std::size_t i) {
                          got = e;
                          index = i;
                      }),
                      csp::on_recv(ch, [](std::optional<int>) { throw std::runtime_error("from the handler"); }));
    io.run();
    CHECK(index == 0);
    REQUIRE(got);
    try {
        std::rethrow_exception(got);
    } catch (const std::runtime_error& e) {
        CHECK(std::string(e.what()) == "from the handler");
    }
    CHECK(ch.try_recv().state() == csp::status::would_block);  // the value was taken

    // With use_awaitable, co_await rethrows it.
    spawner sp;
    asio::io_context io2;
    REQUIRE(ch.try_send(2) == csp::status::ok);
    bool caught = false;
    sp.spawn(io2, [&]() -> asio::awaitable<void> {
        try {
            (void)co_await csp::async_select(use_awaitable, csp::on_recv(ch, [](std::optional<int>) { throw 42; }));
        } catch (int x) {
            caught = x == 42;
        }
    });
    io2.run();
    sp.check();
    CHECK(caught);
}

TEST_CASE("async: async_select with a timeout: fires when nothing comes, not when a value comes first") {
    asio::io_context io;
    spawner sp;
    auto ch = csp::make_chan<int>();
    std::vector<std::string> ran;
    std::chrono::steady_clock::duration waited{};
    sp.spawn(io, [&]() -> asio::awaitable<void> {
        auto t0 = std::chrono::steady_clock::now();
        std::size_t i = co_await csp::async_select(use_awaitable, csp::on_recv(ch, [&](std::optional<int>) { ran.push_back("recv"); }),
                                                   csp::on_timeout(20ms, [&] { ran.push_back("timeout"); }));
        waited = std::chrono::steady_clock::now() - t0;
        CHECK(i == 1);
        // An expired deadline with nothing ready: the timeout at once.
        i = co_await csp::async_select(use_awaitable, csp::on_recv(ch, [&](std::optional<int>) { ran.push_back("recv"); }),
                                       csp::on_timeout(0ms, [&] { ran.push_back("timeout0"); }));
        CHECK(i == 1);
        // A deadline in the past, via on_deadline.
        i = co_await csp::async_select(use_awaitable, csp::on_recv(ch, [&](std::optional<int>) { ran.push_back("recv"); }),
                                       csp::on_deadline(std::chrono::steady_clock::now() - 1s, [&] { ran.push_back("deadline"); }));
        CHECK(i == 1);
    });
    io.run();
    sp.check();
    CHECK(ran == std::vector<std::string>{"timeout", "timeout0", "deadline"});
    CHECK(waited >= 20ms);
    CHECK(ch.try_send(1) == csp::status::would_block);  // the timed-out select left no registration

    // A value that comes long before the timeout wins; the timer is disarmed
    // and run() returns without waiting for it.
    asio::io_context io3;
    spawner sp3;
    std::optional<int> got;
    std::latch parked(1);
    sp3.spawn(io3, [&]() -> asio::awaitable<void> {
        auto sel = csp::async_select(deferred, csp::on_recv(ch, [&](std::optional<int> v) { got = v; }),
                                     csp::on_timeout(1h, [&] { ran.push_back("late timeout"); }));
        parked.count_down();
        std::size_t i = co_await std::move(sel)(use_awaitable);
        CHECK(i == 0);
    });
    auto t0 = std::chrono::steady_clock::now();
    std::thread t([&] { io3.run(); });
    parked.wait();
    ch.send(5);
    t.join();
    sp3.check();
    CHECK(got == 5);
    CHECK(std::chrono::steady_clock::now() - t0 < 30s);
}

TEST_CASE("async: async_select with a stop case") {
    asio::io_context io;
    spawner sp;
    auto ch = csp::make_chan<int>();
    std::stop_source early, late;
    early.request_stop();
    std::vector<std::string> ran;
    std::latch parked(1);
    sp.spawn(io, [&]() -> asio::awaitable<void> {
        std::size_t i = co_await csp::async_select(use_awaitable, csp::on_recv(ch, [&](std::optional<int>) { ran.push_back("recv"); }),
                                                   csp::on_stop(early.get_token(), [&] { ran.push_back("early"); }));
        CHECK(i == 1);
        auto sel = csp::async_select(deferred, csp::on_recv(ch, [&](std::optional<int>) { ran.push_back("recv"); }),
                                     csp::on_stop(late.get_token(), [&] { ran.push_back("late"); }));
        parked.count_down();
        i = co_await std::move(sel)(use_awaitable);
        CHECK(i == 1);
    });
    std::thread t([&] { io.run(); });
    parked.wait();
    std::thread stopper([&] { late.request_stop(); });
    stopper.join();
    t.join();
    sp.check();
    CHECK(ran == std::vector<std::string>{"early", "late"});
    CHECK(ch.try_send(1) == csp::status::would_block);
}

TEST_CASE("async: async_select over a range of cases built at run time") {
    asio::io_context io;
    spawner sp;
    std::vector<csp::channel<int>> chans;
    for (int i = 0; i < 5; ++i) chans.push_back(csp::make_chan<int>(1));
    std::vector<int> got(5, -1);
    std::vector<csp::any_case> cases;
    for (int i = 0; i < 5; ++i)
        cases.emplace_back(csp::on_recv(chans[static_cast<std::size_t>(i)], [&got, i](std::optional<int> v) {
            got[static_cast<std::size_t>(i)] = v.value_or(-2);
        }));
    sp.spawn(io, [&]() -> asio::awaitable<void> {
        for (int round = 0; round < 5; ++round) {
            REQUIRE(chans[static_cast<std::size_t>(4 - round)].try_send(100 + round) == csp::status::ok);
            std::size_t i = co_await csp::async_select(use_awaitable, cases);
            CHECK(i == static_cast<std::size_t>(4 - round));
        }
    });
    io.run();
    sp.check();
    CHECK(got == std::vector<int>{104, 103, 102, 101, 100});
}

TEST_CASE("async: async_select with plain callbacks") {
    auto a = csp::make_chan<int>(), b = csp::make_chan<int>();
    std::atomic<int> seen{-1};
    std::promise<std::size_t> p1;
    csp::async_select(
        [&](std::exception_ptr e, std::size_t i) {
            CHECK_FALSE(e);
            p1.set_value(i);
        },
        csp::on_recv(a, [&](std::optional<int> v) { seen = *v; }),
        csp::on_recv(b, [&](std::optional<int> v) { seen = 100 + *v; }));
    std::thread t([&] { b.send(3); });
    CHECK(p1.get_future().get() == 1);
    t.join();
    CHECK(seen.load() == 103);

    std::promise<std::size_t> p2;
    csp::async_select(
        [&](std::exception_ptr e, std::size_t i) {
            CHECK_FALSE(e);
            p2.set_value(i);
        },
        csp::on_recv(a, [&](std::optional<int> v) { seen = *v; }), csp::on_timeout(5ms, [&] { seen = -7; }));
    CHECK(p2.get_future().get() == 1);
    CHECK(seen.load() == -7);

    std::promise<std::exception_ptr> p3;
    csp::async_select([&](std::exception_ptr e, std::size_t) { p3.set_value(e); },
                      csp::on_default([] { throw std::logic_error("x"); }));
    auto e = p3.get_future().get();
    CHECK(throws_as<std::logic_error>([&] { std::rethrow_exception(e); }));
}

// Regression: async_select with asio::use_future did not compile (the
// timer was built on the handler's executor, which use_future's is not).
TEST_CASE("async: async_select with use_future") {
    auto a = csp::make_chan<int>(), b = csp::make_chan<int>();
    std::atomic<int> seen{-1};
    auto f = csp::async_select(asio::use_future, csp::on_recv(a, [&](std::optional<int> v) { seen = *v; }),
                               csp::on_recv(b, [&](std::optional<int> v) { seen = 100 + *v; }));
    std::thread t([&] { b.send(3); });
    CHECK(f.get() == 1);
    t.join();
    CHECK(seen.load() == 103);
    auto g = csp::async_select(asio::use_future, csp::on_default([] { throw std::logic_error("x"); }));
    CHECK(throws_as<std::logic_error>([&] { g.get(); }));
    // A timeout case: its timer cannot live on use_future's executor.
    std::atomic<int> timed_out{0};
    auto h = csp::async_select(asio::use_future, csp::on_recv(a, [](std::optional<int>) {}),
                               csp::on_timeout(std::chrono::milliseconds(1), [&] { ++timed_out; }));
    CHECK(h.get() == 1);
    CHECK(timed_out.load() == 1);
    CHECK(a.try_send(5) == csp::status::would_block);  // the select left nothing registered
}

// ---------------------------------------------------------------------------
// Threads and coroutines on the same channel

TEST_CASE("async: a thread sends to a coroutine and a coroutine to a thread on the same channel") {
    for (int cap : {0, 2}) {
        for (int io_threads : {1, 2}) {
            CAPTURE(cap);
            CAPTURE(io_threads);
            constexpr int n = 3000;
            asio::io_context io;
            spawner sp;
            auto ch = csp::make_chan<int>(cap);
            // Phase 1: the thread sends 0..n-1, the coroutine receives; phase 2: the reverse.
            // A second channel separates the phases: with a buffer, the
            // thread could otherwise receive its own values back.
            auto phase_done = csp::make_chan<int>();
            long coro_sum = 0;
            int coro_bad = 0;
            sp.spawn(io, [&]() -> asio::awaitable<void> {
                for (int i = 0; i < n; ++i) {
                    auto v = co_await ch.async_recv(use_awaitable);
                    if (v != i) ++coro_bad;
                    coro_sum += v.value_or(0);
                }
                co_await phase_done.async_send(1, use_awaitable);
                for (int i = 0; i < n; ++i) co_await ch.async_send(n + i, use_awaitable);
                ch.close();
            });
            std::vector<std::thread> ts;
            for (int k = 0; k < io_threads; ++k) ts.emplace_back([&] { io.run(); });
            for (int i = 0; i < n; ++i) ch.send(i);
            CHECK(phase_done.recv() == 1);
            std::vector<int> got;
            for (int v : ch) got.push_back(v);
            for (auto& t : ts) t.join();
            sp.check();
            CHECK(coro_bad == 0);
            CHECK(coro_sum == long(n) * (n - 1) / 2);
            REQUIRE(got.size() == static_cast<std::size_t>(n));
            for (int i = 0; i < n; ++i) CHECK(got[static_cast<std::size_t>(i)] == n + i);
        }
    }
}

// A thread in a blocking select and a coroutine in async_select, each with a
// send and a receive case on two unbuffered channels: every round pairs some
// case of one with the matching case of the other. Cases whose quota is met
// are switched off with a null channel, as Go does with nil.
void selects_on_both_sides(int rounds, int io_threads, bool runtime_side) {
    auto to_coro = csp::make_chan<int>();
    auto to_thread = csp::make_chan<int>();
    std::vector<int> coro_got, thread_got;
    int coro_sent = 0;
    auto coro = [&]() -> asio::awaitable<void> {
        int next = 0;
        while (next < rounds || static_cast<int>(coro_got.size()) < rounds) {
            csp::channel<int> in = static_cast<int>(coro_got.size()) < rounds ? to_coro : csp::channel<int>{};
            csp::channel<int> out = next < rounds ? to_thread : csp::channel<int>{};
            int v = 1'000'000 + next;
            std::size_t i = co_await csp::async_select(
                use_awaitable, csp::on_recv(in, [&](std::optional<int> x) { coro_got.push_back(x.value_or(-1)); }),
                csp::on_send(out, v, [&] { ++next; }));
            CHECK(i <= 1);
        }
        coro_sent = next;
    };
    std::thread t;
    auto thread_side = [&] {
        int next = 0;
        while (next < rounds || static_cast<int>(thread_got.size()) < rounds) {
            csp::channel<int> in = static_cast<int>(thread_got.size()) < rounds ? to_thread : csp::channel<int>{};
            csp::channel<int> out = next < rounds ? to_coro : csp::channel<int>{};
            int v = next;
            csp::select(csp::on_recv(in, [&](std::optional<int> x) { thread_got.push_back(x.value_or(-1)); }),
                        csp::on_send(out, v, [&] { ++next; }));
        }
    };
    if (runtime_side) {
        csp::runtime rt(static_cast<unsigned>(io_threads));
        rt.go(coro);
        thread_side();
        rt.wait();
    } else {
        asio::io_context io;
        spawner sp;
        sp.spawn(io, coro);
        std::vector<std::thread> ts;
        for (int k = 0; k < io_threads; ++k) ts.emplace_back([&] { io.run(); });
        thread_side();
        for (auto& th : ts) th.join();
        sp.check();
    }
    CHECK(coro_sent == rounds);
    REQUIRE(coro_got.size() == static_cast<std::size_t>(rounds));
    REQUIRE(thread_got.size() == static_cast<std::size_t>(rounds));
    int bad = 0;
    for (int i = 0; i < rounds; ++i) {
        bad += coro_got[static_cast<std::size_t>(i)] != i;
        bad += thread_got[static_cast<std::size_t>(i)] != 1'000'000 + i;
    }
    CHECK(bad == 0);
}

TEST_CASE("async: a blocking select on a thread against async_select in a coroutine, unbuffered, exact accounting") {
    selects_on_both_sides(5000, 1, false);
    selects_on_both_sides(3000, 2, false);
    selects_on_both_sides(3000, 2, true);
}

// ---------------------------------------------------------------------------
// Executors and work tracking

TEST_CASE("async: the completion runs on the handler's associated executor (strand, another io_context)") {
    asio::io_context io;
    asio::io_context other;
    auto strand = asio::make_strand(io);
    auto ch = csp::make_chan<int>();
    constexpr int n = 300;
    std::atomic<int> on_strand{0}, on_other{0}, wrong{0};
    std::atomic<int> received{0};
    std::thread::id other_id;

    // Receivers bound to the strand, and receivers bound to `other`.
    struct loop {
        csp::channel<int> ch;
        std::function<bool()> right_place;
        std::atomic<int>& right;
        std::atomic<int>& wrong;
        std::atomic<int>& received;
        std::function<void(loop*)> restart;
        void operator()(std::error_code ec, std::optional<int> v) {
            if (ec || !v) return;
            (right_place() ? right : wrong).fetch_add(1);
            received.fetch_add(1);
            restart(this);
        }
    };
    loop on_s{ch, [&] { return strand.running_in_this_thread(); }, on_strand, wrong, received, {}};
    on_s.restart = [&](loop* l) { ch.async_recv(asio::bind_executor(strand, std::ref(*l))); };
    loop on_o{ch, [&] { return other.get_executor().running_in_this_thread() && std::this_thread::get_id() == other_id; },
              on_other, wrong, received, {}};
    on_o.restart = [&](loop* l) { ch.async_recv(asio::bind_executor(other, std::ref(*l))); };
    on_s.restart(&on_s);
    on_o.restart(&on_o);

    std::vector<std::thread> ts;
    for (int k = 0; k < 2; ++k) ts.emplace_back([&] { io.run(); });
    std::thread to([&] { other.run(); });
    other_id = to.get_id();
    // other_id is written before any value is sent, hence before any check reads it.
    for (int i = 0; i < n; ++i) ch.send(i);
    ch.close();
    for (auto& t : ts) t.join();
    to.join();
    CHECK(received.load() == n);
    CHECK(wrong.load() == 0);
    CHECK(on_strand.load() + on_other.load() == n);

    // Select handlers run there too.
    asio::io_context io2;
    auto strand2 = asio::make_strand(io2);
    auto a = csp::make_chan<int>(1);
    REQUIRE(a.try_send(1) == csp::status::ok);
    bool case_on_strand = false, completion_on_strand = false;
    csp::async_select(asio::bind_executor(strand2, [&](std::exception_ptr, std::size_t) {
                          completion_on_strand = strand2.running_in_this_thread();
                      }),
                      csp::on_recv(a, [&](std::optional<int>) { case_on_strand = strand2.running_in_this_thread(); }));
    io2.run();
    CHECK(case_on_strand);
    CHECK(completion_on_strand);
}

TEST_CASE("async: coroutines resume on their own io_context's threads") {
    asio::io_context io;
    spawner sp;
    auto ch = csp::make_chan<int>();
    std::thread::id io_id;
    int wrong = 0;
    sp.spawn(io, [&]() -> asio::awaitable<void> {
        for (int i = 0; i < 200; ++i) {
            (void)co_await ch.async_recv(use_awaitable);
            if (std::this_thread::get_id() != io_id || !io.get_executor().running_in_this_thread()) ++wrong;
        }
    });
    std::thread t([&] { io.run(); });
    io_id = t.get_id();
    for (int i = 0; i < 200; ++i) ch.send(i);
    t.join();
    sp.check();
    CHECK(wrong == 0);
}

TEST_CASE("async: a parked callback keeps io.run() from returning until a thread delivers") {
    for (int cap : {0, 1}) {
        CAPTURE(cap);
        asio::io_context io;  // no work but ours
        auto ch = csp::make_chan<int>(cap);
        std::optional<int> got;
        ch.async_recv(asio::bind_executor(io, [&](std::error_code ec, std::optional<int> v) {
            CHECK_FALSE(ec);
            got = v;
        }));
        std::latch running(1);
        std::thread sender([&] {
            running.wait();  // io.run() has started and run its first handler
            ch.send(8);
        });
        asio::post(io, [&] { running.count_down(); });
        io.run();  // must not return before the value came
        const bool had_it = got.has_value();
        sender.join();
        CHECK(had_it);
        if (!had_it) {  // leave nothing behind
            io.restart();
            io.run();
        }
        CHECK(got == 8);
    }

    // The same for a parked send and a parked select.
    asio::io_context io;
    auto ch = csp::make_chan<int>();
    bool sent = false, selected = false;
    ch.async_send(1, asio::bind_executor(io, [&](std::error_code ec) { sent = !ec; }));
    auto other = csp::make_chan<int>();
    csp::async_select(asio::bind_executor(io, [&](std::exception_ptr e, std::size_t) { selected = !e; }),
                      csp::on_recv(other, [](std::optional<int>) {}));
    std::latch running(1);
    std::thread peer([&] {
        running.wait();
        CHECK(ch.recv() == 1);
        other.send(2);
    });
    asio::post(io, [&] { running.count_down(); });
    io.run();
    const bool both = sent && selected;
    peer.join();
    CHECK(both);
    if (!both) {
        io.restart();
        io.run();
    }
}

// ---------------------------------------------------------------------------
// Misuse

TEST_CASE("async: async_send and async_recv on a null channel throw csp::error") {
    csp::channel<int> nil;
    CHECK_THROWS_AS(nil.async_recv(asio::use_future), csp::error);
    CHECK_THROWS_AS(nil.async_send(1, asio::use_future), csp::error);
    int v = 3;
    CHECK_THROWS_AS(nil.async_send(v, [](std::error_code) {}), csp::error);
    CHECK(v == 3);
    csp::sender<int> s;
    csp::receiver<int> r;
    CHECK_THROWS_AS(s.async_send(2, [](std::error_code) {}), csp::error);
    CHECK_THROWS_AS(r.async_recv([](std::error_code, std::optional<int>) {}), csp::error);

    // In a coroutine, the throw reaches the co_await.
    asio::io_context io;
    bool caught = false;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            try {
                (void)co_await nil.async_recv(use_awaitable);
            } catch (const csp::error&) {
                caught = true;
            }
        },
        asio::detached);
    io.run();
    CHECK(caught);

    // A select case on a null channel is never ready; with a default it runs the default.
    std::promise<std::size_t> p;
    csp::async_select([&](std::exception_ptr, std::size_t i) { p.set_value(i); },
                      csp::on_recv(nil, [](std::optional<int>) {}), csp::on_default([] {}));
    CHECK(p.get_future().get() == 1);
}

TEST_CASE("async: sender and receiver handles have the async face of their direction") {
    auto ch = csp::make_chan<int>(1);
    csp::sender<int> tx = ch;
    csp::receiver<int> rx = ch;
    tx.async_send(5, asio::use_future).get();
    CHECK(rx.async_recv(asio::use_future).get() == 5);
    const int c = 6;
    tx.async_send(c, asio::use_future).get();  // a const lvalue is copied
    CHECK(rx.async_recv(asio::use_future).get() == 6);
}

}  // namespace
