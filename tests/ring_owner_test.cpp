// Owned ring ends (channels/detail/ring_owner.hpp): an end that one thread
// uses alone becomes that thread's, which then claims without a locked
// instruction; another thread that uses the end, closes the ring, or
// registers as a waiter on the channel takes it back first. Nothing is lost,
// duplicated or reordered on the way, and a waiter that registers while the
// other side's end is owned is still woken.
//
// Where the process-wide barrier is missing, no end is ever owned: the
// tests still run, and only the checks that an end did become owned are
// skipped.

#include <channels/channels.hpp>
#include <runtime/csp.hpp>

#include <doctest/doctest.h>

#include <array>
#include <atomic>
#include <barrier>
#include <optional>
#include <thread>
#include <vector>

#include "test_support.hpp"

namespace {

using csp::detail::lf_ring;
using result = lf_ring<int>::result;

bool owning_works() { return csp::detail::process_barrier_available(); }

// Enough values through a ring of `cap` for one thread to own its ends.
int laps_to_own(int cap) { return cap * static_cast<int>(csp::detail::ring_owner::kFirstStreak + 2); }

int pop_value(lf_ring<int>& r) {
    std::optional<int> out;
    REQUIRE(r.pop(out) == result::ok);
    return *out;
}

// Pushes and pops through r (capacity `cap`) on this thread alone, long
// enough for it to own both ends; leaves r empty.
void use_alone(lf_ring<int>& r, int cap) {
    for (int i = 0; i < laps_to_own(cap); ++i) {
        int v = i;
        REQUIRE(r.push(v) == result::ok);
        REQUIRE(pop_value(r) == i);
    }
}

TEST_CASE("ring ends used by one thread become its own, and another thread's push and pop take them back in order") {
    lf_ring<int> r(4);
    use_alone(r, 4);
    if (owning_works()) {
        CHECK(r.tail_owned());
        CHECK(r.head_owned());
    }
    for (int v : {1, 2, 3}) REQUIRE(r.push(v) == result::ok);  // the owner's plain claims
    std::thread([&] {
        int v = 4;
        CHECK(r.push(v) == result::ok);  // revokes the tail
        CHECK(r.push(v) == result::full_or_empty);
    }).join();
    CHECK_FALSE(r.tail_owned());
    CHECK(r.head_owned() == owning_works());
    std::thread([&] { CHECK(pop_value(r) == 1); }).join();  // revokes the head
    CHECK_FALSE(r.head_owned());
    CHECK(pop_value(r) == 2);
    CHECK(pop_value(r) == 3);
    CHECK(pop_value(r) == 4);
    std::optional<int> out;
    CHECK(r.pop(out) == result::full_or_empty);
    CHECK(r.size() == 0);
}

TEST_CASE("a ring closed by another thread while its tail is owned refuses the owner's next push") {
    lf_ring<int> r(8);
    use_alone(r, 8);
    CHECK(r.tail_owned() == owning_works());
    for (int v : {7, 8}) REQUIRE(r.push(v) == result::ok);
    std::thread([&] { CHECK(r.close()); }).join();
    CHECK_FALSE(r.tail_owned());
    int v = 9;
    CHECK(r.push(v) == result::closed);
    CHECK(v == 9);
    CHECK(pop_value(r) == 7);
    CHECK(pop_value(r) == 8);
    std::optional<int> out;
    CHECK(r.pop(out) == result::closed);
}

TEST_CASE("the owner itself closing its ring, and the ring's size and hints seen from another thread") {
    lf_ring<int> r(3);
    use_alone(r, 3);
    for (int v : {1, 2}) REQUIRE(r.push(v) == result::ok);
    std::thread([&] {
        CHECK(r.size() == 2);  // revokes both ends: the owner's claims are seen
        CHECK(r.has_value());
        CHECK(r.has_room());
    }).join();
    CHECK_FALSE(r.tail_owned());
    CHECK_FALSE(r.head_owned());
    CHECK(r.close());
    CHECK_FALSE(r.close());
    CHECK(pop_value(r) == 1);
    CHECK(pop_value(r) == 2);
    std::optional<int> out;
    CHECK(r.pop(out) == result::closed);
}

TEST_CASE("an owner's try_push and try_pop claim its ends; another thread's leave them owned, to push() and pop()") {
    lf_ring<int> r(4);
    use_alone(r, 4);
    for (int v : {1, 2}) REQUIRE(r.try_push(v) == owning_works());  // at any index, lap starts included
    if (!owning_works()) return;
    std::thread([&] {
        int v = 3;
        CHECK_FALSE(r.try_push(v));
        CHECK(v == 3);
        std::optional<int> out;
        CHECK_FALSE(r.try_pop(out));
        CHECK_FALSE(out);
        CHECK(r.tail_owned());  // nothing revoked
        CHECK(r.head_owned());
    }).join();
    std::optional<int> out;
    REQUIRE(r.try_pop(out));
    CHECK(*out == 1);
    std::thread([&] { CHECK(pop_value(r) == 2); }).join();  // pop() revokes the head
    CHECK_FALSE(r.head_owned());
    CHECK(r.tail_owned());
    out.reset();
    CHECK_FALSE(r.try_pop(out));  // empty
    int v = 5;
    REQUIRE(r.try_push(v));
    CHECK(pop_value(r) == 5);
}

// Phases, each a barrier: one producer alone (it comes to own the tail),
// then both at once (the other revokes), and so on; two consumers pop
// throughout, each trying the one-claim way (try_push, try_pop) before the
// exact one. Every value arrives once, in its producer's order.
TEST_CASE("stress: producers that take turns owning the tail and contend for it lose nothing") {
    constexpr int kProducers = 2, kConsumers = 2, kBlock = 2048;
    constexpr int kPhases = 6;  // solo 0, both, solo 1, both, solo 0, both
    const int rounds = 4 * csp_test::stress_iters();
    int owned_after_solo = 0;
    for (int round = 0; round < rounds; ++round) {
        CAPTURE(round);
        lf_ring<int> r(round % 2 == 0 ? 8 : 5);
        // Per producer: values p * kMax + i, i counting up.
        constexpr int kMax = kPhases * kBlock;
        std::array<int, kProducers> sent{};
        std::barrier phase_end(kProducers + 1);
        std::atomic<int> total{0};
        std::vector<std::vector<int>> got(kConsumers);
        std::array<int, kConsumers> order_errors{};
        {
            std::vector<std::jthread> ts;
            for (int p = 0; p < kProducers; ++p)
                ts.emplace_back([&, p] {
                    for (int phase = 0; phase < kPhases; ++phase) {
                        const bool solo = phase % 2 == 0;
                        if (!solo || (phase / 2) % 2 == p) {
                            for (int i = 0; i < kBlock; ++i) {
                                int v = p * kMax + sent[static_cast<std::size_t>(p)]++;
                                while (!r.try_push(v) && r.push(v) != result::ok) std::this_thread::yield();
                            }
                            total.fetch_add(kBlock, std::memory_order_relaxed);
                        }
                        phase_end.arrive_and_wait();
                    }
                });
            for (int c = 0; c < kConsumers; ++c)
                ts.emplace_back([&, c] {
                    std::array<int, kProducers> last{};
                    last.fill(-1);
                    for (;;) {
                        std::optional<int> out;
                        const result got_one = r.try_pop(out) ? result::ok : r.pop(out);
                        if (got_one == result::closed) return;
                        if (got_one != result::ok) {
                            std::this_thread::yield();
                            continue;
                        }
                        const int p = *out / kMax, i = *out % kMax;
                        if (i <= last[static_cast<std::size_t>(p)]) ++order_errors[static_cast<std::size_t>(c)];
                        last[static_cast<std::size_t>(p)] = i;
                        got[static_cast<std::size_t>(c)].push_back(*out);
                    }
                });
            for (int phase = 0; phase < kPhases; ++phase) {
                phase_end.arrive_and_wait();
                if (phase % 2 == 0 && r.tail_owned()) ++owned_after_solo;
            }
            r.close();  // the consumers drain, then see closed
        }
        std::vector<int> seen(static_cast<std::size_t>(kProducers * kMax), 0);
        for (const auto& g : got)
            for (int v : g) ++seen[static_cast<std::size_t>(v)];
        int received = 0, duplicated = 0;
        for (int s : seen) {
            received += s > 0;
            duplicated += s > 1;
        }
        CHECK(received == total.load());
        CHECK(received == sent[0] + sent[1]);
        CHECK(duplicated == 0);
        for (int e : order_errors) CHECK(e == 0);
    }
    if (owning_works()) CHECK(owned_after_solo > 0);
}

// Dekker's rule with an owned end: a receiver registers (the ring looks
// empty) while the producer claims with plain stores, and a sender
// registers (the ring looks full) while the consumer does. Each side
// alternates bursts and pauses of the other kind's making, so both park
// many times; every value still arrives, in order.
TEST_CASE("stress: threads parked on a channel whose other end is owned are woken, in order") {
    const int n = 200000 * csp_test::stress_iters();
    for (int cap : {1, 4, 64}) {
        CAPTURE(cap);
        auto ch = csp::make_chan<int>(static_cast<std::size_t>(cap));
        std::thread producer([tx = ch.as_sender(), n] {
            for (int i = 0; i < n; ++i) {
                tx.send(i);
                if (i % 5000 == 0) std::this_thread::yield();  // lets the receiver drain and park
            }
            tx.close();
        });
        int expected = 0, out_of_order = 0;
        for (int v : ch.as_receiver()) {
            out_of_order += v != expected;
            expected = v + 1;
            if (v % 7000 == 0) std::this_thread::yield();  // lets the sender fill and park
        }
        producer.join();
        CHECK(expected == n);
        CHECK(out_of_order == 0);
    }
}

// A runtime with one worker: its tasks own both ends of their channels;
// the main thread receives from the last one (registering while the
// worker owns its tail) and closes the first one's sender side last.
TEST_CASE("a one-worker runtime's tasks own their channels, and a thread receiving from them gets every value") {
    const int n = 100000 * csp_test::stress_iters();
    csp::runtime rt(1);
    auto first = csp::make_chan<int>(16);
    auto last = csp::make_chan<long long>(16);
    rt.go([tx = first.as_sender(), n]() -> csp::task<void> {
        for (int i = 0; i < n; ++i) co_await tx.async_send(i, csp::use_task);
        tx.close();
    });
    for (int w = 0; w < 3; ++w)
        rt.go([rx = first.as_receiver(), tx = last.as_closing_sender()]() -> csp::task<void> {
            while (auto v = co_await rx.async_recv(csp::use_task)) co_await tx.async_send(2LL * *v, csp::use_task);
        });
    long long sum = 0;
    int count = 0;
    for (long long v : last.as_receiver()) {
        sum += v;
        ++count;
    }
    rt.wait();
    CHECK(count == n);
    CHECK(sum == static_cast<long long>(n) * (n - 1));
}

}  // namespace
