// No allocation per operation: once a channel exists, sending, receiving,
// selecting, timing out and try_* must not touch the heap, on the fast path
// (ready now) or the slow one (park, be woken, take the nodes back).
//
// The global operator new is replaced by one that counts, per thread, so a
// window counts only what its own thread allocated: doctest, thread creation
// (which allocates on the creating thread) and the peer thread stay out. Every
// thread is created before the windows open, and each measured loop follows a
// warm-up of the same operations, so one-time costs (thread_local set-up,
// lazily initialised statics) are paid before counting starts.

#include <channels/channels.hpp>

#include <doctest/doctest.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <optional>
#include <thread>

namespace {

constinit thread_local std::size_t t_allocs = 0;

void* counted(std::size_t n) {
    ++t_allocs;
    if (void* p = std::malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}

void* counted(std::size_t n, std::align_val_t al) {
    ++t_allocs;
    auto a = static_cast<std::size_t>(al);
    // aligned_alloc wants a size that is a multiple of the alignment.
    std::size_t size = n ? (n + a - 1) / a * a : a;
    if (void* p = std::aligned_alloc(a, size)) return p;
    throw std::bad_alloc();
}

}  // namespace

// Every form is replaced: a form left to the library might allocate with
// something that our delete cannot free, or escape the count.
void* operator new(std::size_t n) { return counted(n); }
void* operator new[](std::size_t n) { return counted(n); }
void* operator new(std::size_t n, std::align_val_t a) { return counted(n, a); }
void* operator new[](std::size_t n, std::align_val_t a) { return counted(n, a); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
    try {
        return counted(n);
    } catch (...) {
        return nullptr;
    }
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
    try {
        return counted(n);
    } catch (...) {
        return nullptr;
    }
}
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
    try {
        return counted(n, a);
    } catch (...) {
        return nullptr;
    }
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
    try {
        return counted(n, a);
    } catch (...) {
        return nullptr;
    }
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }

namespace {

using i64 = std::int64_t;
using namespace std::chrono_literals;

constexpr int kWarm = 1000;
constexpr int kOps = 10000;

// Allocations the calling thread made while f ran.
template <class F>
std::size_t allocs_during(F&& f) {
    std::size_t before = t_allocs;
    f();
    return t_allocs - before;
}

// Runs body(i) kWarm times, then kOps times under the count.
template <class F>
std::size_t steady_allocs(F&& body) {
    for (int i = 0; i < kWarm; ++i) body(i);
    return allocs_during([&] {
        for (int i = 0; i < kOps; ++i) body(i);
    });
}

constexpr std::size_t kNotRun = static_cast<std::size_t>(-1);

}  // namespace

TEST_CASE("the counter sees the library's allocations") {
    // Without this, a counter that never counts would pass every test below.
    std::size_t made = allocs_during([] {
        auto ch = csp::make_chan<i64>(4);
        CHECK(ch.capacity() == 4);
    });
    CHECK(made >= 1);
}

TEST_CASE("unbuffered ping-pong between two threads allocates nothing") {
    auto c1 = csp::make_chan<i64>();
    auto c2 = csp::make_chan<i64>();
    std::size_t echo_allocs = kNotRun;
    std::thread echo([&] {
        echo_allocs = steady_allocs([&](int) { c2.send(c1.recv().value()); });
    });
    i64 sum = 0;
    std::size_t main_allocs = steady_allocs([&](int i) {
        c1.send(i);
        sum += c2.recv().value();
    });
    echo.join();
    CHECK(main_allocs == 0);
    CHECK(echo_allocs == 0);
    CHECK(sum == i64{kWarm} * (kWarm - 1) / 2 + i64{kOps} * (kOps - 1) / 2);
}

TEST_CASE("buffered send and recv on one thread allocate nothing") {
    auto ch = csp::make_chan<i64>(8);
    i64 sum = 0;
    std::size_t one_by_one = steady_allocs([&](int i) {
        ch.send(i);
        sum += ch.recv().value();
    });
    // Filling to capacity and draining wraps the ring around.
    std::size_t fill_drain = steady_allocs([&](int i) {
        for (int k = 0; k < 8; ++k) ch.send(i + k);
        for (int k = 0; k < 8; ++k) sum += ch.recv().value();
    });
    CHECK(one_by_one == 0);
    CHECK(fill_drain == 0);
    CHECK(ch.size() == 0);
}

TEST_CASE("buffered send and recv across two threads allocate nothing") {
    // A small capacity makes the producer wait for room and the consumer for
    // values, so both park and are woken, and receivers refill from senders.
    auto ch = csp::make_chan<i64>(4);
    std::size_t producer_allocs = kNotRun;
    std::thread producer([&] { producer_allocs = steady_allocs([&](int i) { ch.send(i); }); });
    i64 sum = 0;
    std::size_t consumer_allocs = steady_allocs([&](int) { sum += ch.recv().value(); });
    producer.join();
    CHECK(producer_allocs == 0);
    CHECK(consumer_allocs == 0);
    CHECK(sum == i64{kWarm} * (kWarm - 1) / 2 + i64{kOps} * (kOps - 1) / 2);
}

TEST_CASE("select with two receive cases and a send case allocates nothing") {
    SUBCASE("cases ready at once, one thread") {
        auto a = csp::make_chan<i64>(1);
        auto b = csp::make_chan<i64>(1);
        auto out = csp::make_chan<i64>(1);
        int chosen[3] = {};
        std::size_t n = steady_allocs([&](int i) {
            (void)a.try_send(i);
            (void)b.try_send(i);
            (void)out.try_recv();
            i64 v = i;
            int c = csp::select(csp::on_recv(a, [](std::optional<i64>) {}),
                                csp::on_recv(b, [](std::optional<i64>) {}),
                                csp::on_send(out, v));
            ++chosen[c];
        });
        CHECK(n == 0);
        CHECK(chosen[0] > 0);
        CHECK(chosen[1] > 0);
        CHECK(chosen[2] > 0);
    }

    SUBCASE("blocking, against a peer selecting the other way") {
        // All unbuffered: every select completes by a rendezvous with one
        // select of the peer, so both run the same number of selects, and
        // whoever comes second finds the first one's registered nodes.
        auto a = csp::make_chan<i64>();
        auto b = csp::make_chan<i64>();
        auto out = csp::make_chan<i64>();
        std::size_t peer_allocs = kNotRun;
        std::thread peer([&] {
            peer_allocs = steady_allocs([&](int i) {
                i64 x = i, y = i;
                (void)csp::select(csp::on_send(a, x), csp::on_send(b, y),
                                  csp::on_recv(out, [](std::optional<i64>) {}));
            });
        });
        int chosen[3] = {};
        std::size_t main_allocs = steady_allocs([&](int i) {
            i64 v = i;
            int c = csp::select(csp::on_recv(a, [](std::optional<i64>) {}),
                                csp::on_recv(b, [](std::optional<i64>) {}),
                                csp::on_send(out, v));
            ++chosen[c];
        });
        peer.join();
        CHECK(main_allocs == 0);
        CHECK(peer_allocs == 0);
        CHECK(chosen[0] > 0);
        CHECK(chosen[1] > 0);
        CHECK(chosen[2] > 0);
    }
}

TEST_CASE("timed operations that time out allocate nothing") {
    // Long enough that the waiter gets past spinning and sleeps in the kernel
    // with a timeout; few enough operations to keep the test short.
    constexpr auto wait = 50us;
    constexpr int warm = 20, ops = 200;
    auto ch = csp::make_chan<i64>();
    int timeouts = 0;
    auto count = [&](auto op) {
        for (int i = 0; i < warm; ++i) op();
        return allocs_during([&] {
            for (int i = 0; i < ops; ++i) op();
        });
    };
    std::size_t recv_allocs = count([&] {
        if (ch.recv_for(wait).state() == csp::status::timeout) ++timeouts;
    });
    std::size_t send_allocs = count([&] {
        i64 v = 1;
        if (ch.send_for(std::move(v), wait) == csp::status::timeout) ++timeouts;
    });
    std::size_t select_allocs = count([&] {
        if (csp::select(csp::on_recv(ch, [](std::optional<i64>) {}),
                        csp::on_timeout(wait, [] {})) == 1)
            ++timeouts;
    });
    CHECK(recv_allocs == 0);
    CHECK(send_allocs == 0);
    CHECK(select_allocs == 0);
    CHECK(timeouts == 3 * (warm + ops));
}

TEST_CASE("try_send and try_recv allocate nothing") {
    auto buffered = csp::make_chan<i64>(8);
    auto unbuffered = csp::make_chan<i64>();
    auto closed = csp::make_chan<i64>(8);
    closed.close();
    int ok = 0, would_block = 0, was_closed = 0;
    auto tally = [&](csp::status s) {
        if (s == csp::status::ok) ++ok;
        else if (s == csp::status::would_block) ++would_block;
        else if (s == csp::status::closed) ++was_closed;
    };
    std::size_t n = steady_allocs([&](int i) {
        for (int k = 0; k < 9; ++k) tally(buffered.try_send(i));  // the 9th finds it full
        for (int k = 0; k < 9; ++k) tally(buffered.try_recv().state());
        tally(unbuffered.try_send(i));  // no receiver waits
        tally(unbuffered.try_recv().state());
        tally(closed.try_send(i));
        tally(closed.try_recv().state());
    });
    CHECK(n == 0);
    constexpr int rounds = kWarm + kOps;
    CHECK(ok == 16 * rounds);
    CHECK(would_block == 4 * rounds);
    CHECK(was_closed == 2 * rounds);
}
