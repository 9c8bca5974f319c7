// Ports of Go's own channel tests to csp. Go's semantics are the reference:
// where these pass, csp behaves as Go's runtime does.
//
// Goroutines become std::jthread; every thread is joined before its test case
// ends, so a Go test that lets a goroutine leak (blocked forever, or looping
// forever) is adapted to unblock or stop it, and says how. Go's iteration
// counts are scaled for a 2-core machine and sanitizer builds; each scaled
// count says so. Where Go checks "this blocks" by sleeping and looking, the
// port waits with a short timeout: a check, never synchronisation.
//
// Not ported: test/chan/powser1.go (power series), which starts goroutines
// per operator, recursively, hundreds alive at once: with one thread per
// goroutine that is far beyond what a 2-core test should start.
#include <doctest/doctest.h>

#include <channels/channels.hpp>

#include <any>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using namespace std::chrono_literals;

// Polls f until it returns true, yielding between tries, for at most `limit`.
// Go's nonblock.go polls the same way (with runtime.Gosched and a ticker).
template <class F>
bool poll_until(F f, std::chrono::milliseconds limit = 10s) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (!f()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::yield();
    }
    return true;
}

// ===========================================================================
// /usr/share/go-1.19/test/chan/doubleselect.go
//
// A sender selects over four unbuffered channels, each drained by a mux
// that forwards to one channel; if two cases of one select ran, a value
// would arrive twice. Go's 100000 iterations.

TEST_CASE("go test/chan/doubleselect.go: a select never runs two cases") {
    constexpr int iterations = 100000;
    std::array<csp::channel<int>, 4> c{csp::make_chan<int>(), csp::make_chan<int>(),
                                       csp::make_chan<int>(), csp::make_chan<int>()};
    auto done = csp::make_chan<bool>();
    auto cmux = csp::make_chan<int>();
    std::vector<char> seen(iterations, 0);
    long duplicates = 0, out_of_range = 0, received = 0;
    {
        std::vector<std::jthread> threads;
        threads.emplace_back([&] {
            for (int i = 0; i < iterations; ++i)
                csp::select(csp::on_send(c[0], i), csp::on_send(c[1], i),
                            csp::on_send(c[2], i), csp::on_send(c[3], i));
            for (int k = 3; k >= 0; --k) c[static_cast<std::size_t>(k)].close();  // Go's defers
        });
        for (int k = 0; k < 4; ++k)
            threads.emplace_back([&, in = c[static_cast<std::size_t>(k)].as_receiver(),
                                  out = cmux.as_sender()] {
                for (int v : in) out.send(v);
                done.send(true);
            });
        threads.emplace_back([&] {
            for (int k = 0; k < 4; ++k) (void)done.recv();
            cmux.close();
        });
        for (int v : cmux) {
            ++received;
            if (v < 0 || v >= iterations) ++out_of_range;
            else if (seen[static_cast<std::size_t>(v)]++) ++duplicates;
        }
    }
    CHECK(duplicates == 0);
    CHECK(out_of_range == 0);
    CHECK(received == iterations);  // Go checks duplicates only; nothing may be lost either
}

// ===========================================================================
// /usr/share/go-1.19/test/chan/fifo.go

TEST_CASE("go test/chan/fifo.go: channels are FIFO") {
    constexpr int N = 10;

    SUBCASE("AsynchFifo") {
        auto ch = csp::make_chan<int>(N);
        for (int i = 0; i < N; ++i) ch.send(i);
        for (int i = 0; i < N; ++i) CHECK(ch.recv() == i);
    }

    SUBCASE("SynchFifo") {
        // A daisy chain: link i waits for its turn on `in`, receives one value
        // from the unbuffered ch, then passes the turn on. In order, link i
        // must get value i.
        auto ch = csp::make_chan<int>();
        std::array<int, N> got{};
        auto in = csp::make_chan<int>();
        auto start = in;
        std::vector<std::jthread> chain;
        for (int i = 0; i < N; ++i) {
            auto out = csp::make_chan<int>();
            chain.emplace_back([&got, i, ch, in, out] {
                (void)in.recv();
                got[static_cast<std::size_t>(i)] = ch.recv().value_or(-1);
                out.send(1);
            });
            in = out;
        }
        start.send(0);
        for (int i = 0; i < N; ++i) ch.send(i);
        (void)in.recv();
        for (auto& t : chain) t.join();
        for (int i = 0; i < N; ++i) CHECK(got[static_cast<std::size_t>(i)] == i);
    }
}

// ===========================================================================
// /usr/share/go-1.19/test/chan/nonblock.go
//
// Non-blocking sends and receives (select with default) against a peer that
// is blocked or about to block, for several value types, unbuffered and with
// a buffer of one. Go polls with a 10 us ticker and gives up after 10000 tries
// (about 100 ms); this port polls with yield and gives up after 10 s, so a
// slow sanitizer build does not fail it.

template <class T>
void nonblock_round(std::size_t buffer, T to_recv, T to_send) {
    auto c = csp::make_chan<T>(static_cast<std::ptrdiff_t>(buffer));
    auto sync = csp::make_chan<bool>();

    bool defaulted = false;
    csp::select(csp::on_recv(c, [](std::optional<T>) {}), csp::on_default([&] { defaulted = true; }));
    CHECK(defaulted);  // nothing to receive yet

    {
        std::optional<T> receiver_got;
        std::jthread receiver([&] {
            receiver_got = c.recv();
            sync.send(true);
        });
        // An lvalue send case moves from its value only when chosen: the
        // value survives every try that ran default.
        T v = to_recv;
        bool sent = poll_until([&] {
            bool ok = false;
            csp::select(csp::on_send(c, v, [&] { ok = true; }), csp::on_default([] {}));
            return ok;
        });
        CHECK(sent);
        (void)sync.recv();
        CHECK(receiver_got == to_recv);
    }

    {
        std::jthread sender([&] {
            c.send(to_send);
            sync.send(true);
        });
        if (buffer > 0) (void)sync.recv();
        std::optional<T> got;
        bool received = poll_until([&] {
            bool ok = false;
            csp::select(csp::on_recv(c,
                                     [&](std::optional<T> v) {
                                         got = std::move(v);
                                         ok = true;
                                     }),
                        csp::on_default([] {}));
            return ok;
        });
        CHECK(received);
        CHECK(got == to_send);
        if (buffer == 0) (void)sync.recv();
    }
}

TEST_CASE("go test/chan/nonblock.go: non-blocking operations against blocked peers") {
    for (std::size_t buffer = 0; buffer < 2; ++buffer) {
        CAPTURE(buffer);
        nonblock_round<std::int32_t>(buffer, 123, 234);
        nonblock_round<std::int64_t>(buffer, 123456, 234567);
        nonblock_round<bool>(buffer, true, true);
        nonblock_round<std::string>(buffer, "hello", "hello again");
    }
}

// ===========================================================================
// /usr/share/go-1.19/test/chan/select.go
//
// Go evaluates every send expression when a select starts, so GetValue runs
// once per case per select, nil channels included; building the cases does
// the same here.

namespace select_go {
unsigned counter = 0, shift = 0;
unsigned get_value() {
    ++counter;
    return 1u << shift;
}
int send(csp::channel<unsigned> a, csp::channel<unsigned> b) {
    int i = 0;
    for (bool more = true; more;) {
        csp::select(csp::on_send(a, get_value(),
                                 [&] {
                                     ++i;
                                     a = {};
                                 }),
                    csp::on_send(b, get_value(),
                                 [&] {
                                     ++i;
                                     b = {};
                                 }),
                    csp::on_default([&] { more = false; }));
        if (more) ++shift;
    }
    return i;
}
}  // namespace select_go

TEST_CASE("go test/chan/select.go: select with nil-ed cases and default") {
    select_go::counter = select_go::shift = 0;
    auto a = csp::make_chan<unsigned>(1), b = csp::make_chan<unsigned>(1);
    CHECK(select_go::send(a, b) == 2);
    unsigned av = a.recv().value_or(0), bv = b.recv().value_or(0);
    CHECK((av | bv) == 3u);
    CHECK(select_go::send(a, csp::channel<unsigned>{}) == 1);
    CHECK(select_go::counter == 10u);
}

// ===========================================================================
// /usr/share/go-1.19/test/chan/select3.go
//
// Blocking semantics of select and plain operations. testBlock(never, f)
// runs f on a thread and expects it back within 10 s; testBlock(always, f)
// expects f still blocked after 10 ms (Go's numbers), then unblocks it so the
// thread can be joined (Go leaks the goroutine). testPanic maps to
// CHECK_THROWS / CHECK_NOTHROW.
//
// Deliberate differences, documented in chan.hpp: a blocking operation on a
// nil channel, and a select whose cases are all on nil channels with nothing
// else to wait for, throw csp::error (they could only hang); an empty select
// does not compile. Receiving from a closed channel gives nullopt, not the
// zero value.

template <class F>
void never_blocks(F f) {
    auto c = csp::make_chan<int>(1);
    std::jthread t([&] {
        f();
        c.send(1);
    });
    CHECK(c.recv_for(10s).ok());
}

template <class F, class Unblock>
void always_blocks(F f, Unblock unblock) {
    auto c = csp::make_chan<int>(1);
    std::jthread t([&] {
        f();
        c.send(1);
    });
    CHECK(c.recv_for(10ms).state() == csp::status::timeout);
    unblock();
    CHECK(c.recv_for(10s).ok());
}

template <class... C>
concept can_select = requires(C&&... c) { csp::select(std::forward<C>(c)...); };

TEST_CASE("go test/chan/select3.go: which selects and operations block") {
    csp::channel<int> nilch;
    auto closedch = csp::make_chan<int>();
    closedch.close();
    auto unreachable = [](auto&&...) { FAIL_CHECK("control flow shouldn't reach here"); };

    // Sending/receiving on a nil channel blocks in Go; csp throws instead.
    CHECK_THROWS_AS(nilch.send(7), csp::error);
    CHECK_THROWS_AS((void)nilch.recv(), csp::error);

    // A nil channel inside a select is never selected.
    CHECK_NOTHROW(csp::select(csp::on_send(nilch, 7, unreachable), csp::on_default([] {})));
    CHECK_NOTHROW(csp::select(csp::on_recv(nilch, unreachable), csp::on_default([] {})));

    // Sending to an async channel with free buffer space never blocks.
    never_blocks([] {
        auto ch = csp::make_chan<int>(1);
        ch.send(7);
    });

    // Receiving from a closed channel never blocks.
    never_blocks([&] {
        for (int i = 0; i < 10; ++i) {
            CHECK(closedch.recv() == std::nullopt);
            CHECK(closedch.try_recv().state() == csp::status::closed);
        }
    });

    // Sending to a closed channel panics (throws).
    CHECK_THROWS_AS(closedch.send(7), csp::closed_error);

    // Receiving from a non-ready channel always blocks.
    {
        auto ch = csp::make_chan<int>();
        always_blocks([&] { CHECK(ch.recv() == std::nullopt); }, [&] { ch.close(); });
    }

    // Empty selects always block in Go; here they do not compile.
    static_assert(!can_select<>);

    // Selects with only nil channels always block in Go; csp throws.
    CHECK_THROWS_AS(csp::select(csp::on_recv(nilch, unreachable)), csp::error);
    CHECK_THROWS_AS(csp::select(csp::on_send(nilch, 7, unreachable)), csp::error);
    CHECK_THROWS_AS(csp::select(csp::on_recv(nilch, unreachable), csp::on_send(nilch, 7, unreachable)),
                    csp::error);

    // Selects with non-ready non-nil channels always block.
    {
        auto ch = csp::make_chan<int>();
        always_blocks(
            [&] { csp::select(csp::on_recv(ch, [](std::optional<int> v) { CHECK(!v); })); },
            [&] { ch.close(); });
    }

    // Selects with default cases don't block.
    never_blocks([] { csp::select(csp::on_default([] {})); });
    never_blocks([&] { csp::select(csp::on_recv(nilch, unreachable), csp::on_default([] {})); });
    never_blocks([&] { csp::select(csp::on_send(nilch, 7, unreachable), csp::on_default([] {})); });

    // Selects with ready channels don't block.
    never_blocks([&] {
        auto ch = csp::make_chan<int>(1);
        CHECK(csp::select(csp::on_send(ch, 7), csp::on_default(unreachable)) == 0);
    });
    never_blocks([&] {
        auto ch = csp::make_chan<int>(1);
        ch.send(7);
        CHECK(csp::select(csp::on_recv(ch, [](std::optional<int> v) { CHECK(v == 7); }),
                          csp::on_default(unreachable)) == 0);
    });

    // Selects with closed channels behave like ordinary operations.
    never_blocks([&] {
        csp::select(csp::on_recv(closedch, [](std::optional<int> v) { CHECK(!v); }));
    });
    CHECK_THROWS_AS(csp::select(csp::on_send(closedch, 7)), csp::closed_error);

    // A select should not get confused if it sees itself: with only itself on
    // the other side it blocks; a plain receive then takes its send case.
    {
        auto c = csp::make_chan<int>();
        int ran = -1;
        always_blocks(
            [&] {
                ran = csp::select(csp::on_send(c, 1), csp::on_recv(c, unreachable));
            },
            [&] { CHECK(c.recv() == 1); });
        CHECK(ran == 0);
    }
}

// ===========================================================================
// /usr/share/go-1.19/test/chan/sieve1.go
//
// The concurrent prime sieve: a generator and a chain of filters, one thread
// each (27 threads for the 25 primes below 100). Go's Generate and Sieve loop
// forever and leak; here Sieve stops after 25 primes and closes the end of
// the chain, and each stage that finds its output closed closes its input,
// so the shutdown runs back up the chain to the generator.

TEST_CASE("go test/chan/sieve1.go: concurrent prime sieve") {
    constexpr std::array<int, 25> a{2,  3,  5,  7,  11, 13, 17, 19, 23, 29, 31, 37, 41,
                                    43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97};
    auto primes = csp::make_chan<int>();
    std::vector<std::jthread> stages;

    auto filter = [](csp::channel<int> in, csp::channel<int> out, int prime) {
        for (int i : in) {
            if (i % prime == 0) continue;
            try {
                out.send(i);
            } catch (const csp::closed_error&) {
                in.close();
                return;
            }
        }
    };

    std::jthread sieve([&] {
        auto ch = csp::make_chan<int>();
        stages.emplace_back([ch] {
            try {
                for (int i = 2;; ++i) ch.send(i);
            } catch (const csp::closed_error&) {
            }
        });
        for (std::size_t k = 0; k < a.size(); ++k) {
            int prime = ch.recv().value_or(-1);
            primes.send(prime);
            auto ch1 = csp::make_chan<int>();
            stages.emplace_back(filter, ch, ch1, prime);
            ch = ch1;
        }
        ch.close();
    });

    for (std::size_t i = 0; i < a.size(); ++i) {
        CAPTURE(i);
        CHECK(primes.recv() == a[i]);
    }
    sieve.join();  // only then is `stages` complete
    for (auto& s : stages) s.join();
}

// ===========================================================================
// /usr/share/go-1.19/test/chan/zerosize.go
//
// Channels of zero-size types. C++ objects are never zero-size; these are
// the closest: an empty struct and a zero-length array. Go only makes them;
// this also moves a few values through.

struct empty {
    bool operator==(const empty&) const = default;
};

template <class T>
void zerosize_round() {
    auto unbuffered = csp::make_chan<T>();
    auto buffered = csp::make_chan<T>(1);
    CHECK(unbuffered.capacity() == 0u);
    CHECK(buffered.capacity() == 1u);
    buffered.send(T{});
    CHECK(buffered.size() == 1u);
    CHECK(buffered.recv().has_value());
    std::jthread t([&] { unbuffered.send(T{}); });
    CHECK(unbuffered.recv().has_value());
}

TEST_CASE("go test/chan/zerosize.go: channels of empty types") {
    zerosize_round<empty>();
    zerosize_round<std::array<std::byte, 0>>();
}

// ===========================================================================
// /usr/share/go-1.19/test/chan/perm.go
//
// Go's errorcheck test of channel directions, as compile-time checks: what
// Go accepts must compile, what Go rejects must not. Requires-expressions
// must be in a template to test for ill-formed expressions, hence the
// concepts.

template <class H> concept can_send = requires(const H& h) { h.send(0); };
template <class H> concept can_recv = requires(const H& h) { h.recv(); };
template <class H> concept can_try_recv = requires(const H& h) { h.try_recv(); };
template <class H> concept can_close = requires(const H& h) { h.close(); };
template <class H> concept can_range = requires(const H& h) { h.begin(); };
template <class H> concept can_select_send = requires(const H& h) { csp::on_send(h, 0); };
template <class H>
concept can_select_recv = requires(const H& h) { csp::on_recv(h, [](std::optional<int>) {}); };

using c_t = csp::channel<int>;    // chan int
using cr_t = csp::receiver<int>;  // <-chan int
using cs_t = csp::sender<int>;    // chan<- int

// cr = c; cs = c: ok.  c = cr; c = cs; cr = cs; cs = cr: errors.
static_assert(std::is_convertible_v<c_t, cr_t>);
static_assert(std::is_convertible_v<c_t, cs_t>);
static_assert(!std::is_convertible_v<cr_t, c_t>);
static_assert(!std::is_convertible_v<cs_t, c_t>);
static_assert(!std::is_convertible_v<cs_t, cr_t>);
static_assert(!std::is_convertible_v<cr_t, cs_t>);
static_assert(!std::is_assignable_v<c_t&, cr_t>);
static_assert(!std::is_assignable_v<c_t&, cs_t>);
static_assert(!std::is_assignable_v<cr_t&, cs_t>);
static_assert(!std::is_assignable_v<cs_t&, cr_t>);

// <-n; n <- 2: errors (not a channel).
static_assert(!can_recv<int> && !can_send<int> && !can_select_recv<int> && !can_select_send<int>);

// c <- 0; <-c; x, ok := <-c: ok.
static_assert(can_send<c_t> && can_recv<c_t> && can_try_recv<c_t>);
// cr <- 0: error.  <-cr; x, ok = <-cr: ok.
static_assert(!can_send<cr_t> && can_recv<cr_t> && can_try_recv<cr_t>);
// cs <- 0: ok.  <-cs; x, ok = <-cs: errors.
static_assert(can_send<cs_t> && !can_recv<cs_t> && !can_try_recv<cs_t>);

// select: c <- 0, <-c, cr receive, cs send: ok;  cr <- 0, <-cs: errors.
static_assert(can_select_send<c_t> && can_select_recv<c_t>);
static_assert(!can_select_send<cr_t> && can_select_recv<cr_t>);
static_assert(can_select_send<cs_t> && !can_select_recv<cs_t>);

// for range cs: error (and range over c, cr: ok).
static_assert(can_range<c_t> && can_range<cr_t> && !can_range<cs_t>);

// close(c); close(cs): ok.  close(cr); close(n): errors.
static_assert(can_close<c_t> && can_close<cs_t> && !can_close<cr_t> && !can_close<int>);

// closing_sender is a chan<- int that closes on its own: the same rules.
static_assert(std::is_convertible_v<csp::closing_sender<int>, cs_t>);
static_assert(can_send<csp::closing_sender<int>> && !can_recv<csp::closing_sender<int>>);
static_assert(can_select_send<csp::closing_sender<int>> &&
              !can_select_recv<csp::closing_sender<int>>);

TEST_CASE("go test/chan/perm.go: channel directions (compile-time, above)") {
    // The static_asserts above are the test; this runs the permitted forms.
    auto c = csp::make_chan<int>(2);
    cs_t cs = c;
    cr_t cr = c;
    cs.send(0);
    c.send(1);
    CHECK(cr.recv() == 0);
    CHECK(c.recv() == 1);
    cs.close();
    CHECK(cr.try_recv().state() == csp::status::closed);
}

// ===========================================================================
// /usr/share/go-1.19/src/runtime/chan_test.go: TestChan
//
// Go runs capacities 0..199 (0..19 with -short); this runs 0..19, as Go's
// -short does, to stay fast on 2 cores and under TSan. Go's time.Sleep(time.Millisecond) before
// looking whether a goroutine got through becomes a 1 ms timed receive on a
// "finished" channel: a check that the goroutine is still blocked.

TEST_CASE("go runtime/chan_test.go: TestChan") {
    constexpr int N = 20;
    for (int chan_cap = 0; chan_cap < N; ++chan_cap) {
        CAPTURE(chan_cap);
        {
            // Receive from an empty channel blocks.
            auto c = csp::make_chan<int>(chan_cap);
            auto finished = csp::make_chan<int>(2);
            std::jthread r1([&] {
                (void)c.recv();
                finished.send(1);
            });
            std::jthread r2([&] {
                csp::select(csp::on_recv(c, [](std::optional<int>) {}));
                finished.send(2);
            });
            CHECK(finished.recv_for(1ms).state() == csp::status::timeout);
            // A non-blocking receive does not block.
            CHECK(csp::select(csp::on_recv(c, [](std::optional<int>) {}),
                              csp::on_default([] {})) == 1);
            CHECK(c.try_recv().state() == csp::status::would_block);
            c.send(0);
            c.send(0);
            CHECK(finished.recv().has_value());
            CHECK(finished.recv().has_value());
        }
        {
            // Send to a full channel blocks.
            auto c = csp::make_chan<int>(chan_cap);
            for (int i = 0; i < chan_cap; ++i) c.send(i);
            std::atomic<bool> sent{false};
            auto finished = csp::make_chan<int>(1);
            std::jthread s([&] {
                c.send(0);
                sent = true;
                finished.send(1);
            });
            CHECK(finished.recv_for(1ms).state() == csp::status::timeout);
            CHECK_FALSE(sent.load());
            // A non-blocking send does not block.
            CHECK(csp::select(csp::on_send(c, 0), csp::on_default([] {})) == 1);
            CHECK(c.try_send(0) == csp::status::would_block);
            CHECK(c.recv() == 0);  // the oldest value: a buffered 0, or the blocked sender's 0
            CHECK(finished.recv().has_value());
            CHECK(sent.load());
        }
        {
            // Receive the buffered values, then "zero" (nullopt) from a closed channel.
            auto c = csp::make_chan<int>(chan_cap);
            for (int i = 0; i < chan_cap; ++i) c.send(i);
            c.close();
            bool in_order = true;
            for (int i = 0; i < chan_cap; ++i) in_order = in_order && c.recv() == i;
            CHECK(in_order);
            CHECK(c.recv() == std::nullopt);
            CHECK(c.try_recv().state() == csp::status::closed);
        }
        {
            // Close unblocks a receive.
            auto c = csp::make_chan<int>(chan_cap);
            auto done = csp::make_chan<bool>();
            std::jthread r([&] { done.send(c.recv() == std::nullopt); });
            c.close();
            CHECK(done.recv() == true);
        }
        {
            // 100 integers arrive uncorrupted and in order, received with recv
            // and then with a form that reports a status, as Go's `v, ok := <-c`.
            auto c = csp::make_chan<int>(chan_cap);
            {
                std::jthread s([&] {
                    for (int i = 0; i < 100; ++i) c.send(i);
                });
                bool ok = true;
                for (int i = 0; i < 100; ++i) ok = ok && c.recv() == i;
                CHECK(ok);
            }
            {
                std::jthread s([&] {
                    for (int i = 0; i < 100; ++i) c.send(i);
                });
                bool ok = true;
                for (int i = 0; i < 100; ++i) {
                    csp::recv_result<int> v = c.recv_for(10s);
                    ok = ok && v.ok() && *v == i;
                }
                CHECK(ok);
            }
            // P goroutines send 0..L-1 each; P receive L each; every value
            // must arrive exactly P times.
            constexpr int P = 4, L = 1000;
            std::array<std::map<int, int>, P> per;
            {
                std::vector<std::jthread> threads;
                for (int p = 0; p < P; ++p)
                    threads.emplace_back([&] {
                        for (int i = 0; i < L; ++i) c.send(i);
                    });
                for (int p = 0; p < P; ++p)
                    threads.emplace_back([&, p] {
                        for (int i = 0; i < L; ++i) ++per[static_cast<std::size_t>(p)][c.recv().value_or(-1)];
                    });
            }
            std::map<int, int> recv;
            for (auto& m : per)
                for (auto [k, v] : m) recv[k] += v;
            CHECK(recv.size() == static_cast<std::size_t>(L));
            bool each_p = true;
            for (auto [k, v] : recv) each_p = each_p && v == P && k >= 0 && k < L;
            CHECK(each_p);
        }
        {
            // len/cap.
            auto c = csp::make_chan<int>(chan_cap);
            CHECK(c.size() == 0u);
            CHECK(c.capacity() == static_cast<std::size_t>(chan_cap));
            for (int i = 0; i < chan_cap; ++i) c.send(i);
            CHECK(c.size() == static_cast<std::size_t>(chan_cap));
            CHECK(c.capacity() == static_cast<std::size_t>(chan_cap));
        }
    }
}

// ===========================================================================
// /usr/share/go-1.19/src/runtime/chan_test.go: TestNonblockRecvRace
//
// A select with a default must see a buffered value, or the close, while the
// main thread closes and takes the value. Go's 10000 rounds, one thread
// each for Go's one goroutine each.

TEST_CASE("go runtime/chan_test.go: TestNonblockRecvRace") {
    constexpr int n = 10000;
    int not_ready = 0;
    for (int i = 0; i < n; ++i) {
        auto c = csp::make_chan<int>(1);
        c.send(1);
        bool defaulted = false;
        std::jthread t([&] {
            csp::select(csp::on_recv(c, [](std::optional<int>) {}),
                        csp::on_default([&] { defaulted = true; }));
        });
        c.close();
        (void)c.recv();
        t.join();
        not_ready += defaulted ? 1 : 0;
    }
    CHECK(not_ready == 0);
}

// ===========================================================================
// /usr/share/go-1.19/src/runtime/chan_test.go: TestNonblockSelectRace and
// TestNonblockSelectRace2
//
// A select must act on the state of its channels at one moment: from the
// moment the other goroutine starts, c1 or c2 is always ready, so its
// select must never run default. Go starts one goroutine per round; here a
// worker thread is handed each round's channels through an unbuffered
// channel, which starts its select at the same point of the round. Go's
// 100000 rounds.

struct race_round {
    csp::channel<int> c1, c2;
};

void nonblock_select_race(bool close_c2) {
    constexpr int n = 100000;
    auto rounds = csp::make_chan<race_round>();
    auto done = csp::make_chan<bool>(1);
    std::jthread worker([&] {
        for (race_round& r : rounds) {
            bool ok = true;
            csp::select(csp::on_recv(r.c1, [](std::optional<int>) {}),
                        csp::on_recv(r.c2, [](std::optional<int>) {}),
                        csp::on_default([&] { ok = false; }));
            done.send(ok);
        }
    });
    int failures = 0;
    for (int i = 0; i < n; ++i) {
        auto c1 = csp::make_chan<int>(1);
        auto c2 = close_c2 ? csp::make_chan<int>() : csp::make_chan<int>(1);
        c1.send(1);
        rounds.send(race_round{c1, c2});
        if (close_c2) c2.close();
        else c2.send(1);
        csp::select(csp::on_recv(c1, [](std::optional<int>) {}), csp::on_default([] {}));
        if (!done.recv().value_or(false)) ++failures;
    }
    rounds.close();
    worker.join();
    CHECK(failures == 0);
}

TEST_CASE("go runtime/chan_test.go: TestNonblockSelectRace") { nonblock_select_race(false); }

TEST_CASE("go runtime/chan_test.go: TestNonblockSelectRace2") { nonblock_select_race(true); }

// ===========================================================================
// /usr/share/go-1.19/src/runtime/chan_test.go: TestSelfSelect
//
// Two goroutines select to send and receive on the same channel; they must
// not deadlock, and on an unbuffered channel a select never receives its own
// value.

TEST_CASE("go runtime/chan_test.go: TestSelfSelect") {
    for (int chan_cap : {0, 10}) {
        CAPTURE(chan_cap);
        auto c = csp::make_chan<int>(chan_cap);
        std::atomic<int> self_receives{0};
        {
            std::vector<std::jthread> threads;
            for (int p = 0; p < 2; ++p)
                threads.emplace_back([&, p] {
                    auto recv = [&](std::optional<int> v) {
                        if (chan_cap == 0 && v == p) self_receives.fetch_add(1);
                    };
                    for (int i = 0; i < 1000; ++i) {
                        if (p == 0 || i % 2 == 0)
                            csp::select(csp::on_send(c, p), csp::on_recv(c, recv));
                        else
                            csp::select(csp::on_recv(c, recv), csp::on_send(c, p));
                    }
                });
        }
        CHECK(self_receives.load() == 0);
    }
}

// ===========================================================================
// /usr/share/go-1.19/src/runtime/chan_test.go: TestSelectStress
//
// Four goroutines send N values on one channel each, four receive N from
// one each, one sends N on every channel through one select and one receives
// N from every channel through one select, turning each case off (nil) once
// its N are done. It must not deadlock. Go: N = 100000 (10000 with -short);
// here 20000, for 2 cores and TSan. Added: counts per channel are checked.

TEST_CASE("go runtime/chan_test.go: TestSelectStress") {
    constexpr int N = 20000;
    std::array<csp::channel<int>, 4> c{csp::make_chan<int>(), csp::make_chan<int>(),
                                       csp::make_chan<int>(2), csp::make_chan<int>(3)};
    std::array<long, 4> plain_received{}, select_received{}, select_sent{};
    {
        std::vector<std::jthread> threads;
        for (std::size_t k = 0; k < 4; ++k) {
            threads.emplace_back([&, k] {
                for (int i = 0; i < N; ++i) c[k].send(0);
            });
            threads.emplace_back([&, k] {
                for (int i = 0; i < N; ++i) plain_received[k] += c[k].recv().has_value() ? 1 : 0;
            });
        }
        threads.emplace_back([&] {
            std::array<int, 4> n{};
            auto c1 = c;
            auto sent = [&](std::size_t k) {
                return [&, k] {
                    if (++n[k] == N) c1[k] = {};
                };
            };
            for (int i = 0; i < 4 * N; ++i)
                csp::select(csp::on_send(c1[3], 0, sent(3)), csp::on_send(c1[2], 0, sent(2)),
                            csp::on_send(c1[0], 0, sent(0)), csp::on_send(c1[1], 0, sent(1)));
            for (std::size_t k = 0; k < 4; ++k) select_sent[k] = n[k];
        });
        threads.emplace_back([&] {
            std::array<int, 4> n{};
            auto c1 = c;
            auto got = [&](std::size_t k) {
                return [&, k](std::optional<int>) {
                    if (++n[k] == N) c1[k] = {};
                };
            };
            for (int i = 0; i < 4 * N; ++i)
                csp::select(csp::on_recv(c1[0], got(0)), csp::on_recv(c1[1], got(1)),
                            csp::on_recv(c1[2], got(2)), csp::on_recv(c1[3], got(3)));
            for (std::size_t k = 0; k < 4; ++k) select_received[k] = n[k];
        });
    }
    for (std::size_t k = 0; k < 4; ++k) {
        CAPTURE(k);
        CHECK(plain_received[k] == N);
        CHECK(select_received[k] == N);
        CHECK(select_sent[k] == N);
        CHECK(c[k].size() == 0u);
    }
}

// ===========================================================================
// /usr/share/go-1.19/src/runtime/chan_test.go: TestSelectFairness
//
// Two always-ready buffered channels and two never-ready unbuffered ones:
// the ready ones must win equally often, within Go's six-nines margin.

TEST_CASE("go runtime/chan_test.go: TestSelectFairness") {
    constexpr int trials = 10000;
    auto c1 = csp::make_chan<std::uint8_t>(trials + 1);
    auto c2 = csp::make_chan<std::uint8_t>(trials + 1);
    for (int i = 0; i < trials + 1; ++i) {
        c1.send(1);
        c2.send(2);
    }
    auto c3 = csp::make_chan<std::uint8_t>(), c4 = csp::make_chan<std::uint8_t>();
    auto out = csp::make_chan<std::uint8_t>();
    auto done = csp::make_chan<std::uint8_t>();
    std::jthread t([&] {
        for (;;) {
            std::uint8_t b = 0;
            auto take = [&](std::optional<std::uint8_t> v) { b = v.value_or(0); };
            csp::select(csp::on_recv(c3, take), csp::on_recv(c4, take), csp::on_recv(c1, take),
                        csp::on_recv(c2, take));
            bool stop = false;
            csp::select(csp::on_send(out, b), csp::on_recv(done, [&](std::optional<std::uint8_t>) {
                            stop = true;
                        }));
            if (stop) return;
        }
    });
    int cnt1 = 0, cnt2 = 0, unexpected = 0;
    for (int i = 0; i < trials; ++i) {
        switch (out.recv().value_or(0)) {
            case 1: ++cnt1; break;
            case 2: ++cnt2; break;
            default: ++unexpected; break;
        }
    }
    double r = static_cast<double>(cnt1) / trials;
    double e = std::abs(r - 0.5);
    CAPTURE(cnt1);
    CAPTURE(cnt2);
    CHECK(unexpected == 0);
    CHECK(e <= 4.891676 / (2 * std::sqrt(static_cast<double>(trials))));
    done.close();
}

// ===========================================================================
// /usr/share/go-1.19/src/runtime/chan_test.go: TestChanSendInterface
//
// Go checks that sending interface values compiles and runs; the C++ analogue
// of `chan any` is a channel of std::any. Added: which case ran.

TEST_CASE("go runtime/chan_test.go: TestChanSendInterface") {
    struct mt {};
    auto m = std::make_shared<mt>();
    auto c = csp::make_chan<std::any>(1);
    c.send(std::any(m));
    CHECK(csp::select(csp::on_send(c, std::any(m)), csp::on_default([] {})) == 1);
    CHECK(csp::select(csp::on_send(c, std::any(m)), csp::on_send(c, std::any(std::make_shared<mt>())),
                      csp::on_default([] {})) == 2);
    std::optional<std::any> got = c.recv();
    REQUIRE(got.has_value());
    CHECK(std::any_cast<std::shared_ptr<mt>>(*got) == m);
}

// ===========================================================================
// /usr/share/go-1.19/src/runtime/chan_test.go: TestPseudoRandomSend
//
// A select with two send cases on one channel must pick both, unbuffered
// (where it waits registered twice, and the receiver takes whichever
// registration comes first) and buffered (where both are ready).
// runtime.Gosched becomes std::this_thread::yield.

TEST_CASE("go runtime/chan_test.go: TestPseudoRandomSend") {
    constexpr int n = 100;
    for (int chan_cap : {0, n}) {
        CAPTURE(chan_cap);
        auto c = csp::make_chan<int>(chan_cap);
        std::array<int, n> l{};
        std::jthread r([&] {
            for (int i = 0; i < n; ++i) {
                std::this_thread::yield();
                l[static_cast<std::size_t>(i)] = c.recv().value_or(-1);
            }
        });
        for (int i = 0; i < n; ++i) csp::select(csp::on_send(c, 1), csp::on_send(c, 0));
        r.join();
        int n0 = 0, n1 = 0;
        for (int v : l) {
            n0 += v == 0 ? 1 : 0;
            n1 += v == 1 ? 1 : 0;
        }
        CHECK(n0 + n1 == n);
        CHECK(n0 > n / 10);
        CHECK(n1 > n / 10);
    }
}

// ===========================================================================
// /usr/share/go-1.19/src/runtime/chan_test.go: TestMultiConsumer
//
// 23 workers range over one buffered channel and forward to another; a
// feeder closes the first, waits for the workers and closes the second. The
// consumer must see every value once, with Go's 271828 values.
// runtime.Gosched becomes yield; sync.WaitGroup becomes
// joining the workers.

TEST_CASE("go runtime/chan_test.go: TestMultiConsumer") {
    constexpr int nwork = 23;
    constexpr int niter = 271828;
    constexpr std::array<int, 10> pn{2, 3, 7, 11, 13, 17, 19, 23, 27, 31};
    auto q = csp::make_chan<int>(nwork * 3);
    auto r = csp::make_chan<int>(nwork * 3);
    long expect = 0;
    std::jthread feeder([&] {
        std::vector<std::jthread> workers;
        for (int w = 0; w < nwork; ++w)
            workers.emplace_back([&, w] {
                for (int v : q) {
                    if (pn[static_cast<std::size_t>(w) % pn.size()] == v) std::this_thread::yield();
                    r.send(v);
                }
            });
        for (int i = 0; i < niter; ++i) {
            int v = pn[static_cast<std::size_t>(i) % pn.size()];
            expect += v;
            q.send(v);
        }
        q.close();
        for (auto& w : workers) w.join();
        r.close();
    });
    long n = 0, s = 0;
    for (int v : r) {
        ++n;
        s += v;
    }
    feeder.join();
    CHECK(n == niter);
    CHECK(s == expect);
}

// ===========================================================================
// /usr/share/go-1.19/src/runtime/chan_test.go: TestSelectDuplicateChannel
//
// A select waits with two registrations on c (and one on d); a plain receiver
// also waits on c. Waking the select through d must take both its
// registrations off c, so the next send on c reaches the plain receiver (it
// used to corrupt Go's queue). Go orders the two goroutines with 1 ms sleeps;
// this port does not sleep, and runs 1000 rounds so that the orders occur.

TEST_CASE("go runtime/chan_test.go: TestSelectDuplicateChannel") {
    constexpr int rounds = 1000;
    int bad = 0;
    for (int i = 0; i < rounds; ++i) {
        auto c = csp::make_chan<int>(), d = csp::make_chan<int>(), e = csp::make_chan<int>();
        std::optional<int> a_got, b_got;
        std::jthread a([&] {
            csp::select(csp::on_recv(c, [&](std::optional<int> v) { a_got = v; }),
                        csp::on_recv(c, [&](std::optional<int> v) { a_got = v; }),
                        csp::on_recv(d, [&](std::optional<int> v) { a_got = v; }));
            e.send(9);
        });
        std::jthread b([&] { b_got = c.recv(); });
        d.send(7);
        bad += e.recv() == 9 ? 0 : 1;
        c.send(8);
        a.join();
        b.join();
        bad += a_got == 7 && b_got == 8 ? 0 : 1;
    }
    CHECK(bad == 0);
}

}  // namespace
