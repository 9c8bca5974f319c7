// Value types through channels: move-only, no default constructor, large,
// over-aligned, empty, std::string; a type that counts its live instances
// (nothing leaks, nothing is destroyed twice); and a type whose move
// constructor throws on demand, to check the promise in the header of
// channels/detail/chan_state.hpp: "If a move throws, the exception goes to the
// operation that owned the value (the sender, or a receiver taking from the
// ring) and nothing else changes: a receiver that was about to get the value
// runs its operation again."
#include <doctest/doctest.h>

#include <channels/channels.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "test_support.hpp"

using namespace std::chrono_literals;
using csp::status;
using namespace csp_test;

namespace {

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

// ---- tracked
//
// Every instance of a tracked type is counted while it lives; destroying or
// copying from something that is not alive is counted as misuse. The dead
// mark is written through a volatile so that the compiler cannot drop the
// store as dead at the end of the object's lifetime.

std::atomic<int> g_live{0};
std::atomic<int> g_misuse{0};

class tracked {
public:
    tracked() noexcept { g_live.fetch_add(1); }
    tracked(const tracked& o) noexcept {
        o.check();
        g_live.fetch_add(1);
    }
    tracked& operator=(const tracked& o) noexcept {
        o.check();
        check();
        return *this;
    }
    ~tracked() {
        check();
        *static_cast<volatile std::uint32_t*>(&magic_) = kDead;
        g_live.fetch_sub(1);
    }
    void check() const noexcept {
        if (*static_cast<const volatile std::uint32_t*>(&magic_) != kAlive) g_misuse.fetch_add(1);
    }

private:
    static constexpr std::uint32_t kAlive = 0x600DF00D, kDead = 0xDEADBEEF;
    std::uint32_t magic_ = kAlive;
};

struct counted : tracked {
    explicit counted(int i) : id(i) {}
    int id;
};

// Checks at the end of a test that every tracked instance made in it is gone.
struct census {
    int base = g_live.load();
    int misuse = g_misuse.load();
    int live() const { return g_live.load() - base; }
    void check_clean() const {
        CHECK(live() == 0);
        CHECK(g_misuse.load() - misuse == 0);
    }
};

// ---- fragile
//
// arm(id, skip): the move of the fragile value `id` that comes after `skip`
// further moves of it throws move_failure, once. Targeting one value (not
// "the next move on this thread") makes the outcome independent of which
// thread happens to perform the move.

struct move_failure : std::runtime_error {
    explicit move_failure(int i) : std::runtime_error("fragile move failed"), id(i) {}
    int id;
};

std::atomic<int> g_explode_id{-1};
std::atomic<int> g_explode_skip{0};

void arm(int id, int skip = 0) {
    g_explode_skip.store(skip);
    g_explode_id.store(id);
}
bool armed() { return g_explode_id.load() != -1; }
void disarm() { g_explode_id.store(-1); }

struct fragile : tracked {
    explicit fragile(int i) : id(i) {}
    fragile(fragile&& o) : tracked(o), id(o.id) {
        if (g_explode_id.load() != id) return;
        if (g_explode_skip.load() > 0) {
            g_explode_skip.fetch_sub(1);
            return;
        }
        int expected = id;
        if (g_explode_id.compare_exchange_strong(expected, -1)) throw move_failure(id);
    }
    fragile& operator=(fragile&&) = default;
    int id;
};
static_assert(!std::is_nothrow_move_constructible_v<fragile>);

std::vector<int> drain_ids(const csp::channel<fragile>& ch) {
    std::vector<int> ids;
    while (auto v = ch.recv()) ids.push_back(v->id);
    return ids;
}

// Tries to send v until its armed move throws; until then each try must
// report would_block. Returns how many tries reported something else (it
// stops at the first, so that a broken channel cannot make it spin forever).
int try_send_until_it_throws(const csp::channel<fragile>& ch, fragile& v) {
    for (;;) {
        status s;
        try {
            s = ch.try_send(std::move(v));
        } catch (const move_failure&) {
            return 0;
        }
        if (s != status::would_block) return 1;
        std::this_thread::yield();
    }
}

// ---- other types

struct no_default {
    explicit no_default(int x) : v(x) {}
    no_default(const no_default&) = default;
    no_default(no_default&&) noexcept = default;
    int v;
};
static_assert(!std::is_default_constructible_v<no_default>);

struct big {
    explicit big(int seed) : id(seed) {
        for (std::size_t i = 0; i < bytes.size(); ++i)
            bytes[i] = static_cast<char>((static_cast<std::size_t>(seed) * 31 + i * 7) & 0x7f);
        sum = checksum();
    }
    std::uint32_t checksum() const {
        std::uint32_t h = 2166136261u;  // FNV-1a
        for (char c : bytes) h = (h ^ static_cast<unsigned char>(c)) * 16777619u;
        return h;
    }
    bool intact() const { return sum == checksum(); }
    int id;
    std::array<char, 4096> bytes;
    std::uint32_t sum;
};

std::atomic<int> g_misaligned{0};
struct alignas(64) over_aligned {
    explicit over_aligned(int x) : v(x) { note(this); }
    over_aligned(const over_aligned& o) : v(o.v) {
        note(this);
        note(&o);
    }
    static void note(const void* p) {
        if (reinterpret_cast<std::uintptr_t>(p) % 64 != 0) g_misaligned.fetch_add(1);
    }
    int v;
};

struct nothing {};
static_assert(std::is_empty_v<nothing>);

}  // namespace

// ---- move-only

TEST_CASE("unique_ptr: ownership moves through every capacity, in order") {
    const int n = 200 * stress_iters();
    for_each_capacity([&](int cap) {
        auto ch = csp::make_chan<std::unique_ptr<int>>(cap);
        std::jthread producer([tx = ch.as_closing_sender(), n] {
            for (int i = 0; i < n; ++i) tx.send(std::make_unique<int>(i));
        });
        std::vector<int> got;
        // `for (T v : ch)` cannot compile for a move-only T (the iterator
        // yields an lvalue); take a reference and move out of it.
        for (auto& p : ch) {
            std::unique_ptr<int> mine = std::move(p);
            got.push_back(*mine);
        }
        producer.join();
        CHECK(got == iota_vec(n));
    });
}

TEST_CASE("unique_ptr: try_*, timed and cancellable operations move only on success") {
    for_each_capacity([](int cap) {
        auto ch = csp::make_chan<std::unique_ptr<int>>(cap);
        fill(ch, cap, [](int i) { return std::make_unique<int>(i); });
        auto p = std::make_unique<int>(-1);
        CHECK(ch.try_send(std::move(p)) == status::would_block);
        CHECK(ch.send_for(std::move(p), 1ms) == status::timeout);
        std::stop_source stopped;
        stopped.request_stop();
        CHECK(ch.send(std::move(p), stopped.get_token()) == status::cancelled);
        REQUIRE(p);
        CHECK(*p == -1);
        CHECK(try_drain_ptrs(ch) == iota_vec(cap));
        CHECK(ch.try_recv().state() == status::would_block);
    });
}

TEST_CASE("unique_ptr: select moves an lvalue only from the chosen send case") {
    auto full = csp::make_chan<std::unique_ptr<int>>(1);
    REQUIRE(full.try_send(std::make_unique<int>(0)) == status::ok);
    auto room = csp::make_chan<std::unique_ptr<int>>(1);
    auto a = std::make_unique<int>(1);
    auto b = std::make_unique<int>(2);
    int i = csp::select(csp::on_send(full, a), csp::on_send(room, b));
    CHECK(i == 1);
    REQUIRE(a);  // its case was not chosen
    CHECK(*a == 1);
    CHECK_FALSE(b);
    std::unique_ptr<int> got;
    CHECK(csp::select(csp::on_recv(
              room, [&](std::optional<std::unique_ptr<int>> v) { got = std::move(*v); })) == 0);
    REQUIRE(got);
    CHECK(*got == 2);
}

// ---- no default constructor

TEST_CASE("a type with no default constructor works with every operation") {
    for_each_capacity([](int cap) {
        auto ch = csp::make_chan<no_default>(cap);
        std::jthread producer([tx = ch.as_closing_sender()] {
            tx.send(no_default(1));
            CHECK(tx.send_for(no_default(2), 30s) == status::ok);
            const no_default three(3);
            tx.send(three);  // the copying overload
            std::stop_source never;
            CHECK(tx.send(no_default(4), never.get_token()) == status::ok);
            no_default five(5);
            csp::select(csp::on_send(tx, five));
        });
        std::vector<int> got;
        got.push_back(ch.recv()->v);
        got.push_back(ch.recv_for(30s)->v);
        for (;;) {  // no_default is not assignable, so neither is its recv_result
            auto r = ch.try_recv();
            if (r.state() == status::would_block) {
                std::this_thread::yield();
                continue;
            }
            REQUIRE(r);
            got.push_back(r->v);
            break;
        }
        csp::select(csp::on_recv(ch, [&](std::optional<no_default> v) { got.push_back(v->v); }));
        for (const no_default& v : ch) got.push_back(v.v);
        producer.join();
        CHECK(got == std::vector<int>{1, 2, 3, 4, 5});
    });
}

// ---- large and over-aligned

TEST_CASE("a 4 KiB value arrives intact through every capacity") {
    const int n = 100 * stress_iters();
    for_each_capacity([&](int cap) {
        auto ch = csp::make_chan<big>(cap);
        std::jthread producer([tx = ch.as_closing_sender(), n] {
            for (int i = 0; i < n; ++i) tx.send(big(i));
        });
        int count = 0, damaged = 0, out_of_order = 0;
        for (const big& b : ch) {
            if (!b.intact()) ++damaged;
            if (b.id != count) ++out_of_order;
            ++count;
        }
        producer.join();
        CHECK(count == n);
        CHECK(damaged == 0);
        CHECK(out_of_order == 0);
    });
}

TEST_CASE("an over-aligned value is stored aligned in the channel") {
    g_misaligned = 0;
    for_each_capacity([](int cap) {
        auto ch = csp::make_chan<over_aligned>(cap);
        std::jthread producer([tx = ch.as_closing_sender()] {
            for (int i = 0; i < 20; ++i) tx.send(over_aligned(i));
        });
        int sum = 0;
        for (const over_aligned& v : ch) sum += v.v;
        producer.join();
        CHECK(sum == 190);
    });
    CHECK(g_misaligned.load() == 0);
}

// ---- empty type

TEST_CASE("an empty type: each send is one value, counted by size and by receive") {
    for_each_capacity([](int cap) {
        auto ch = csp::make_chan<nothing>(cap);
        fill(ch, cap, [](int) { return nothing{}; });
        CHECK(ch.size() == static_cast<std::size_t>(cap));
        CHECK(ch.try_send(nothing{}) == status::would_block);
        const int extra = 50;
        std::jthread producer([&] {
            for (int i = 0; i < extra; ++i) ch.send(nothing{});
            ch.close();
        });
        int n = 0;
        for (nothing v : ch) {
            (void)v;
            ++n;
        }
        producer.join();
        CHECK(n == cap + extra);
        CHECK(ch.try_recv().state() == status::closed);
    });
}

// ---- std::string

TEST_CASE("std::string: short and long strings keep their contents") {
    for_each_capacity([](int cap) {
        auto ch = csp::make_chan<std::string>(cap);
        const std::vector<std::string> sent = {
            "", "a", "short", std::string(15, 's'), std::string(16, 'l'), std::string(10000, 'x')};
        std::jthread producer([&, tx = ch.as_closing_sender()] {
            for (const auto& s : sent) tx.send(s);  // copies: `sent` is still read below
            tx.send("a literal");
        });
        std::vector<std::string> got;
        for (std::string s : ch) got.push_back(std::move(s));
        producer.join();
        std::vector<std::string> expected = sent;
        expected.push_back("a literal");
        CHECK(got == expected);
    });
}

// ---- counted: no leak, no double free

TEST_CASE("values left in a channel are destroyed, once, when its last handle goes") {
    census c;
    for (int cap : {1, 2, 8, 1024}) {
        CAPTURE(cap);
        int left = std::min(cap, 5);
        {
            csp::receiver<counted> rx;
            {
                auto ch = csp::make_chan<counted>(cap);
                for (int i = 0; i < left; ++i) ch.send(counted(i));
                CHECK(c.live() == left);  // the temporaries are gone, the buffered copies stay
                {
                    auto v = ch.recv();
                    REQUIRE(v);
                    CHECK(v->id == 0);
                    CHECK(c.live() == left);
                }
                CHECK(c.live() == left - 1);
                rx = ch;
            }
            // The receiver alone keeps the channel and its values alive.
            CHECK(c.live() == left - 1);
        }
        CHECK(c.live() == 0);
    }
    c.check_clean();
}

TEST_CASE("a closed channel with leftovers frees them with its last handle") {
    census c;
    {
        auto ch = csp::make_chan<counted>(4);
        ch.send(counted(1));
        ch.send(counted(2));
        ch.close();
        CHECK(c.live() == 2);
    }
    c.check_clean();
}

TEST_CASE("failed and timed-out sends keep their single instance with the caller") {
    census c;
    for_each_capacity([&](int cap) {
        auto ch = csp::make_chan<counted>(cap);
        fill(ch, cap, [](int i) { return counted(i); });
        counted v(-1);
        CHECK(c.live() == cap + 1);
        CHECK(ch.try_send(std::move(v)) == status::would_block);
        CHECK(ch.send_for(std::move(v), 1ms) == status::timeout);
        CHECK(c.live() == cap + 1);  // no copy was left behind anywhere
        ch.close();
        CHECK_THROWS_AS(ch.send(std::move(v)), csp::closed_error);
        CHECK(ch.try_send(std::move(v)) == status::closed);
        CHECK(c.live() == cap + 1);
        CHECK(v.id == -1);
    });
    c.check_clean();
}

TEST_CASE(
    "select: a losing rvalue send case destroys its value once; a winning one hands it over") {
    census c;
    {
        auto full = csp::make_chan<counted>(1);
        full.send(counted(0));
        auto ready = csp::make_chan<counted>(1);
        ready.send(counted(1));
        CHECK(c.live() == 2);

        int got = -1;
        int i = csp::select(csp::on_send(full, counted(10)),
                            csp::on_recv(ready, [&](std::optional<counted> v) {
                                got = v.value_or(counted(-2)).id;
                            }));
        CHECK(i == 1);
        CHECK(got == 1);
        CHECK(c.live() == 1);  // counted(10) is gone with its case; the received one too

        auto room = csp::make_chan<counted>(1);
        CHECK(csp::select(csp::on_send(room, counted(20)), csp::on_default([] {})) == 0);
        CHECK(c.live() == 2);  // one in `full`, one in `room`
        CHECK(room.recv()->id == 20);
        CHECK(c.live() == 1);
    }
    c.check_clean();
}

TEST_CASE("select over any_case: owned send values are freed with the cases") {
    census c;
    {
        auto full = csp::make_chan<counted>(0);
        std::vector<csp::any_case> cases;
        cases.emplace_back(csp::on_send(full, counted(1)));
        cases.emplace_back(csp::on_send(full, counted(2)));
        cases.emplace_back(csp::on_default([] {}));
        CHECK(c.live() == 2);
        CHECK(csp::select(cases) == 2);
        CHECK(csp::select(cases) == 2);  // cases are reusable
        CHECK(c.live() == 2);
    }
    c.check_clean();
}

TEST_CASE("counted values through many threads: each delivered once, none leaked") {
    census c;
    const int per_producer = 300 * stress_iters();
    constexpr int producers = 2, consumers = 2;
    for_each_capacity([&](int cap) {
        auto ch = csp::make_chan<counted>(cap);
        std::vector<std::vector<int>> got(consumers);
        {
            std::vector<std::jthread> cs;
            for (int k = 0; k < consumers; ++k)
                cs.emplace_back([&, k] {
                    for (;;) {
                        // Mix the receive forms; each holds the value differently.
                        if (k == 0) {
                            auto v = ch.recv();
                            if (!v) return;
                            got[0].push_back(v->id);
                        } else {
                            auto r = ch.recv_for(1ms);
                            if (r.state() == status::closed) return;
                            if (r) got[1].push_back(r->id);
                        }
                    }
                });
            std::vector<std::jthread> ps;
            auto closer = ch.as_closing_sender();
            for (int p = 0; p < producers; ++p)
                ps.emplace_back([p, per_producer, tx = closer] {
                    for (int i = 0; i < per_producer; ++i) {
                        counted v(p * per_producer + i);
                        if (i % 2)
                            tx.send(std::move(v));
                        else
                            while (tx.send_for(std::move(v), 100us) != status::ok) {
                            }
                    }
                });
        }
        std::vector<int> all;
        for (auto& g : got) all.insert(all.end(), g.begin(), g.end());
        std::sort(all.begin(), all.end());
        CHECK(all == iota_vec(producers * per_producer));
        CHECK(c.live() == 0);
    });
    c.check_clean();
}

// ---- throwing moves: plain operations

TEST_CASE("buffered send: a move into the buffer that throws reaches the sender; nothing changes") {
    census c;
    for (int cap : {1, 2, 1024}) {
        CAPTURE(cap);
        auto ch = csp::make_chan<fragile>(cap);
        if (cap > 1) ch.send(fragile(0));
        std::size_t before = ch.size();

        fragile v(1);
        arm(1);
        CHECK_THROWS_AS(ch.send(std::move(v)), move_failure);
        CHECK(ch.size() == before);
        arm(1);
        CHECK_THROWS_AS((void)ch.try_send(std::move(v)), move_failure);
        arm(1);
        CHECK_THROWS_AS((void)ch.send_for(std::move(v), 1s), move_failure);
        CHECK(ch.size() == before);
        CHECK(v.id == 1);  // the value is still the caller's

        ch.send(std::move(v));  // and can be sent again
        ch.close();
        CHECK(drain_ids(ch) == (cap > 1 ? std::vector<int>{0, 1} : std::vector<int>{1}));
    }
    c.check_clean();
}

TEST_CASE(
    "buffered receive: a move out of the buffer that throws reaches the receiver; the value "
    "stays") {
    census c;
    for (int cap : {2, 1024}) {
        CAPTURE(cap);
        auto ch = csp::make_chan<fragile>(cap);
        ch.send(fragile(0));
        ch.send(fragile(1));

        arm(0);
        CHECK_THROWS_AS((void)ch.recv(), move_failure);
        arm(0);
        CHECK_THROWS_AS((void)ch.try_recv(), move_failure);
        arm(0);
        CHECK_THROWS_AS((void)ch.recv_for(1s), move_failure);
        arm(0);
        CHECK_THROWS_AS(
            [&] {
                for (const fragile& f : ch) (void)f;
            }(),
            move_failure);
        CHECK(ch.size() == 2);
        ch.close();
        CHECK(drain_ids(ch) == std::vector<int>{0, 1});
    }
    c.check_clean();
}

TEST_CASE(
    "send to a receiver whose value fails to move: the sender gets the exception, the receiver "
    "runs again") {
    // With a receiver already waiting, the sender moves the value into it;
    // if the receiver comes second, it moves the value out of the waiting
    // sender. The value belongs to the sender in both cases, so the outcome
    // is the same either way.
    census c;
    for_each_capacity([&](int cap) {
        auto ch = csp::make_chan<fragile>(cap);
        std::vector<int> got;
        std::jthread receiver([&] { got = drain_ids(ch); });
        let_it_block();

        fragile v(1);
        arm(1);
        CHECK_THROWS_AS(ch.send(std::move(v)), move_failure);
        CHECK_FALSE(armed());
        CHECK(v.id == 1);
        ch.send(std::move(v));
        ch.send(fragile(2));
        ch.close();
        receiver.join();
        CHECK(got == std::vector<int>{1, 2});
    });
    c.check_clean();
}

TEST_CASE(
    "try_send into a waiting receiver whose move throws: the receiver waits on and gets the next "
    "value") {
    census c;
    for_each_capacity([&](int cap) {
        auto ch = csp::make_chan<fragile>(cap);
        std::vector<int> got;
        std::jthread receiver([&] { got = drain_ids(ch); });

        fragile v(1);
        arm(1);
        // would_block until the receiver waits (unbuffered); then the move
        // into the receiver throws. Buffered: the move into the ring throws.
        CHECK(try_send_until_it_throws(ch, v) == 0);
        ch.send(fragile(2));
        ch.send(fragile(3));
        ch.close();
        receiver.join();
        CHECK(got == std::vector<int>{2, 3});
        CHECK(v.id == 1);
    });
    c.check_clean();
}

TEST_CASE("try_recv from a waiting sender whose move throws: the sender gets the exception") {
    census c;
    {
        auto ch = csp::make_chan<fragile>(0);
        bool sender_threw = false;
        arm(7);
        std::jthread sender([&] {
            fragile v(7);
            try {
                ch.send(std::move(v));
            } catch (const move_failure& e) {
                sender_threw = e.id == 7 && v.id == 7;
            }
            ch.send(fragile(8));
        });
        // The failed take reports would_block: the value was never the receiver's.
        int not_would_block = 0;
        while (armed())
            if (ch.try_recv().state() != status::would_block) ++not_would_block;
        CHECK(not_would_block == 0);
        auto r = ch.recv();
        sender.join();
        CHECK(sender_threw);
        REQUIRE(r);
        CHECK(r->id == 8);
        CHECK(ch.try_recv().state() == status::would_block);
    }
    c.check_clean();
}

TEST_CASE(
    "blocking recv meets a sender whose value fails to move: the receiver gets the next value") {
    census c;
    for_each_capacity([&](int cap) {
        auto ch = csp::make_chan<fragile>(cap);
        int sender_failures = 0;
        std::jthread sender([&] {
            let_it_block();  // make it likely that the receiver waits first
            fragile v(1);
            arm(1);
            try {
                ch.send(std::move(v));
            } catch (const move_failure&) {
                ++sender_failures;
            }
            ch.send(fragile(2));
            ch.close();
        });
        std::vector<int> got = drain_ids(ch);
        sender.join();
        CHECK(sender_failures == 1);
        CHECK(got == std::vector<int>{2});
    });
    c.check_clean();
}

TEST_CASE(
    "a full buffer refilled from a waiting sender whose move throws: the sender gets it, the "
    "receiver its value") {
    census c;
    for (int cap : {1, 2}) {
        CAPTURE(cap);
        auto ch = csp::make_chan<fragile>(cap);
        for (int i = 0; i < cap; ++i) ch.send(fragile(i));
        bool sender_threw = false;
        arm(100);
        std::jthread sender([&] {
            fragile v(100);
            try {
                ch.send(std::move(v));  // blocks: the buffer is full
            } catch (const move_failure&) {
                sender_threw = v.id == 100;
            }
        });
        let_it_block();  // make the refill path likely (the sender's own push also throws)
        auto first = ch.recv();
        sender.join();
        CHECK(sender_threw);
        REQUIRE(first);
        CHECK(first->id == 0);
        ch.send(fragile(200));
        ch.close();
        std::vector<int> expected = iota_vec(cap - 1, 1);
        expected.push_back(200);
        CHECK(drain_ids(ch) == expected);
    }
    c.check_clean();
}

// ---- throwing moves: select

TEST_CASE(
    "select send case into a waiting receiver whose move throws: select throws, the receiver runs "
    "again") {
    census c;
    for_each_capacity([&](int cap) {
        auto ch = csp::make_chan<fragile>(cap);
        std::vector<int> got;
        std::jthread receiver([&] { got = drain_ids(ch); });
        fragile v(1);
        arm(1);
        int handler_runs = 0, defaults = 0;
        bool threw = false;
        while (!threw) {
            try {
                csp::select(csp::on_send(ch, v, [&] { ++handler_runs; }),
                            csp::on_default([&] { ++defaults; }));
                std::this_thread::yield();
            } catch (const move_failure&) {
                threw = true;
            }
        }
        CHECK(handler_runs == 0);
        CHECK(v.id == 1);
        ch.send(fragile(2));
        CHECK(csp::select(csp::on_send(ch, v, [&] { ++handler_runs; })) == 0);  // v again
        ch.close();
        receiver.join();
        CHECK(handler_runs == 1);
        CHECK(got == std::vector<int>{2, 1});
    });
    c.check_clean();
}

TEST_CASE(
    "select recv case taking from the buffer: a throwing move reaches the select; the value "
    "stays") {
    census c;
    {
        auto ch = csp::make_chan<fragile>(4);
        ch.send(fragile(0));
        ch.send(fragile(1));
        int handler_runs = 0;
        arm(0);
        CHECK_THROWS_AS(
            csp::select(csp::on_recv(ch, [&](std::optional<fragile>) { ++handler_runs; })),
            move_failure);
        CHECK(handler_runs == 0);
        CHECK(ch.size() == 2);
        ch.close();
        CHECK(drain_ids(ch) == std::vector<int>{0, 1});
    }
    c.check_clean();
}

TEST_CASE("a select waiting on a send case: the receiver's failed take makes the select throw") {
    census c;
    {
        auto ch = csp::make_chan<fragile>(0);
        auto other = csp::make_chan<int>(0);
        int handler_runs = 0;
        bool select_threw = false;
        fragile v(5);
        arm(5);
        std::jthread selector([&] {
            try {
                csp::select(csp::on_send(ch, v, [&] { ++handler_runs; }),
                            csp::on_recv(other, [&](std::optional<int>) { ++handler_runs; }));
            } catch (const move_failure& e) {
                select_threw = e.id == 5;
            }
        });
        int not_would_block = 0;
        while (armed())
            if (ch.try_recv().state() != status::would_block) ++not_would_block;
        CHECK(not_would_block == 0);
        selector.join();
        CHECK(select_threw);
        CHECK(handler_runs == 0);
        CHECK(v.id == 5);
        // Both channels are still usable and hold nothing.
        CHECK(ch.try_recv().state() == status::would_block);
        CHECK(other.try_send(1) == status::would_block);
    }
    c.check_clean();
}

TEST_CASE(
    "a select waiting on a recv case: a sender's failed move reaches the sender; the select gets "
    "the next value") {
    census c;
    {
        auto ch = csp::make_chan<fragile>(0);
        auto other = csp::make_chan<int>(0);
        std::vector<int> got;
        int index = -1;
        std::jthread selector([&] {
            index = csp::select(
                csp::on_recv(ch, [&](std::optional<fragile> f) { got.push_back(f ? f->id : -1); }),
                csp::on_recv(other, [&](std::optional<int>) { got.push_back(-2); }));
        });
        fragile v(1);
        arm(1);
        CHECK(try_send_until_it_throws(ch, v) == 0);
        ch.send(fragile(2));
        selector.join();
        CHECK(index == 0);
        CHECK(got == std::vector<int>{2});
        CHECK(v.id == 1);
    }
    c.check_clean();
}

TEST_CASE("select send case into the buffer: a throwing move reaches the select; nothing changes") {
    census c;
    {
        auto ch = csp::make_chan<fragile>(2);
        ch.send(fragile(0));
        fragile v(1);
        arm(1);
        int handler_runs = 0;
        CHECK_THROWS_AS(
            csp::select(csp::on_send(ch, v, [&] { ++handler_runs; }), csp::on_default([] {})),
            move_failure);
        CHECK(handler_runs == 0);
        CHECK(ch.size() == 1);
        CHECK(csp::select(csp::on_send(ch, v, [&] { ++handler_runs; })) == 0);
        CHECK(handler_runs == 1);
        ch.close();
        CHECK(drain_ids(ch) == std::vector<int>{0, 1});
    }
    c.check_clean();
}

// ---- throwing moves: after the hand-off
//
// BUG: a receive moves the value several times after taking it from the
// channel (ring -> the operation's std::optional -> recv_result -> the
// returned std::optional; select: -> the case's optional -> the handler's
// argument). If one of those later moves throws, the value has already left
// the channel and is destroyed with the exception: it is neither delivered
// nor still in the channel, against "No operation destroys a value it did not
// deliver" (chan.hpp) and "nothing else changes" (chan_state.hpp).
// Skipped until the library keeps the value in the channel until its final
// move, or documents (or static_asserts) that T's move must not throw.
TEST_CASE("a receive whose later internal move throws loses no value" * doctest::skip()) {
    census c;
    for (int skip = 0; skip < 4; ++skip) {
        CAPTURE(skip);
        auto ch = csp::make_chan<fragile>(4);
        ch.send(fragile(0));
        ch.send(fragile(1));
        std::vector<int> got;
        arm(0, skip);
        try {
            if (auto v = ch.recv()) got.push_back(v->id);
        } catch (const move_failure&) {
        }
        disarm();
        ch.close();
        for (int id : drain_ids(ch)) got.push_back(id);
        CHECK(got == std::vector<int>{0, 1});  // received now, or left for the next receive
    }
    for (int skip = 0; skip < 4; ++skip) {
        CAPTURE(skip);
        auto ch = csp::make_chan<fragile>(4);
        ch.send(fragile(0));
        ch.send(fragile(1));
        std::vector<int> got;
        arm(0, skip);
        try {
            csp::select(csp::on_recv(ch, [&](std::optional<fragile> v) { got.push_back(v->id); }));
        } catch (const move_failure&) {
        }
        disarm();
        ch.close();
        for (int id : drain_ids(ch)) got.push_back(id);
        CHECK(got == std::vector<int>{0, 1});
    }
    c.check_clean();
}
