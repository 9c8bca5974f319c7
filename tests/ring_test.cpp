// The lock-free ring of buffered channels (channels/detail/lf_ring.hpp) on
// its own: FIFO across many laps, full and empty at the exact capacity
// (non-powers of two included), the close mark, the quick push and pop, and
// values taken exactly once, in each producer's order, by concurrent
// producers and consumers.

#include <channels/channels.hpp>

#include <doctest/doctest.h>

#include <array>
#include <memory>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "test_support.hpp"

namespace {

using csp::detail::lf_ring;
using result = lf_ring<int>::result;

TEST_CASE("lf_ring: FIFO, full and empty at the exact capacity, over many laps") {
    for (std::size_t cap : {1u, 2u, 3u, 5u, 8u}) {
        CAPTURE(cap);
        lf_ring<int> r(cap);
        int next_in = 0, next_out = 0;
        for (int lap = 0; lap < 50; ++lap) {
            // Fill to the brim: exactly cap values go in, the next is refused.
            for (std::size_t i = 0; i < cap; ++i) {
                int v = next_in;
                REQUIRE(r.push(v) == result::ok);
                ++next_in;
                CHECK(r.has_value());
            }
            CHECK(r.size() == cap);
            CHECK_FALSE(r.has_room());
            int extra = -1;
            CHECK(r.push(extra) == result::full_or_empty);
            CHECK(extra == -1);  // a refused value is not moved from
            // Take half (at least one), so that head and tail wrap at
            // different points of each lap.
            const std::size_t take = (cap + 1) / 2;
            for (std::size_t i = 0; i < take; ++i) {
                std::optional<int> out;
                REQUIRE(r.pop(out) == result::ok);
                CHECK(*out == next_out++);
            }
            CHECK(r.size() == cap - take);
            CHECK(r.has_room());  // the slots just taken are free again
            CHECK(r.has_value() == (take < cap));
            std::optional<int> out;
            while (r.pop(out) == result::ok) {
                CHECK(*out == next_out++);
                out.reset();
            }
            CHECK(r.size() == 0);
            CHECK_FALSE(r.has_value());
            CHECK(r.has_room());
        }
        r.close();
        CHECK_FALSE(r.has_room());  // closed: no room for anyone
        CHECK_FALSE(r.has_value());
        CHECK(next_out == next_in);
    }
}

TEST_CASE("lf_ring: after close, pushes are refused and the values already in are still taken") {
    lf_ring<std::unique_ptr<int>> r(3);
    auto a = std::make_unique<int>(1), b = std::make_unique<int>(2);
    REQUIRE(r.push(a) == lf_ring<std::unique_ptr<int>>::result::ok);
    REQUIRE(r.push(b) == lf_ring<std::unique_ptr<int>>::result::ok);
    CHECK(r.close());
    CHECK_FALSE(r.close());  // only the first close marks
    auto c = std::make_unique<int>(3);
    CHECK(r.push(c) == lf_ring<std::unique_ptr<int>>::result::closed);
    REQUIRE(c);  // kept by the caller
    std::optional<std::unique_ptr<int>> out;
    REQUIRE(r.pop(out) == lf_ring<std::unique_ptr<int>>::result::ok);
    CHECK(**out == 1);
    out.reset();
    REQUIRE(r.pop(out) == lf_ring<std::unique_ptr<int>>::result::ok);
    CHECK(**out == 2);
    out.reset();
    CHECK(r.pop(out) == lf_ring<std::unique_ptr<int>>::result::closed);
    CHECK_FALSE(out);
}

TEST_CASE("lf_ring: the quick push and pop report full_or_empty where the exact ones would tell more") {
    lf_ring<int> r(2);
    std::optional<int> out;
    CHECK(r.quick_pop(out) == result::full_or_empty);  // empty
    CHECK_FALSE(out);
    int a = 1, b = 2, c = 3;
    REQUIRE(r.quick_push(a) == result::ok);
    REQUIRE(r.quick_push(b) == result::ok);
    CHECK(r.quick_push(c) == result::full_or_empty);  // full
    CHECK(r.push(c) == result::full_or_empty);
    CHECK(c == 3);
    REQUIRE(r.quick_pop(out) == result::ok);
    CHECK(*out == 1);
    REQUIRE(r.quick_push(c) == result::ok);  // the slot just taken is free again
    r.close();
    CHECK(r.quick_push(a) == result::closed);  // the close mark needs no look at head_
    out.reset();
    REQUIRE(r.quick_pop(out) == result::ok);
    CHECK(*out == 2);
    out.reset();
    REQUIRE(r.quick_pop(out) == result::ok);
    CHECK(*out == 3);
    out.reset();
    // Closed and drained: only the exact pop, which reads tail_, says so.
    CHECK(r.quick_pop(out) == result::full_or_empty);
    CHECK(r.pop(out) == result::closed);
    CHECK_FALSE(out);
}

TEST_CASE("lf_ring: try_push and try_pop move a value where one claim can, and otherwise change nothing") {
    lf_ring<std::unique_ptr<int>> r(3);
    using res = lf_ring<std::unique_ptr<int>>::result;
    std::optional<std::unique_ptr<int>> out;
    CHECK_FALSE(r.try_pop(out));  // empty
    CHECK_FALSE(out);
    auto v0 = std::make_unique<int>(0);
    CHECK_FALSE(r.try_push(v0));  // a lap's first index is left to push(), which counts the laps
    REQUIRE(v0);
    REQUIRE(r.push(v0) == res::ok);
    for (int i : {1, 2}) {
        auto v = std::make_unique<int>(i);
        REQUIRE(r.try_push(v));
        CHECK_FALSE(v);  // moved into the ring
    }
    auto extra = std::make_unique<int>(3);
    CHECK_FALSE(r.try_push(extra));  // full
    REQUIRE(extra);
    CHECK(*extra == 3);
    CHECK(r.size() == 3);
    CHECK_FALSE(r.try_pop(out));  // the head is at the lap's first index too
    REQUIRE(r.pop(out) == res::ok);
    CHECK(**out == 0);
    for (int i : {1, 2}) {
        out.reset();
        REQUIRE(r.try_pop(out));
        CHECK(**out == i);
    }
    out.reset();
    CHECK_FALSE(r.try_pop(out));  // empty again
    CHECK(r.size() == 0);
    REQUIRE(r.push(extra) == res::ok);  // index 0 of the next lap
    r.close();
    auto late = std::make_unique<int>(4);
    CHECK_FALSE(r.try_push(late));  // closed (at index 1: the mark fails the claim)
    CHECK(late);
    CHECK(r.push(late) == res::closed);
    REQUIRE(r.pop(out) == res::ok);
    CHECK(**out == 3);
    out.reset();
    CHECK_FALSE(r.try_pop(out));
    CHECK(r.pop(out) == res::closed);
}

TEST_CASE("lf_ring: has_room_for(k) tells whether the k slots from the tail on are free, across laps") {
    for (std::size_t cap : {1u, 3u, 4u}) {
        CAPTURE(cap);
        lf_ring<int> r(cap);
        std::optional<int> out;
        for (int lap = 0; lap < 5; ++lap) {
            for (std::size_t k = 1; k <= cap; ++k) CHECK(r.has_room_for(k));  // empty
            // Fill one at a time: after i values, exactly cap - i slots are free.
            for (std::size_t i = 1; i <= cap; ++i) {
                int v = static_cast<int>(i);
                REQUIRE(r.push(v) == result::ok);
                for (std::size_t k = 1; k <= cap; ++k) CHECK(r.has_room_for(k) == (k <= cap - i));
            }
            // Take them back: after j values, j slots are free.
            for (std::size_t j = 1; j <= cap; ++j) {
                out.reset();
                REQUIRE(r.pop(out) == result::ok);
                for (std::size_t k = 1; k <= cap; ++k) CHECK(r.has_room_for(k) == (k <= j));
            }
            // Shift the start of the next lap by one value.
            int v = 0;
            REQUIRE(r.push(v) == result::ok);
            out.reset();
            REQUIRE(r.pop(out) == result::ok);
        }
        int v = 1;
        REQUIRE(r.push(v) == result::ok);
        r.close();
        CHECK(r.has_room_for(cap));  // closed: a sender goes on, to be told so
    }
}

TEST_CASE("lf_ring: concurrent producers and consumers take every value once, in each producer's order") {
    constexpr int kProducers = 4, kConsumers = 4;
    const int per = 20000 * csp_test::stress_iters();
    for (const auto& [cap, quick] :
         {std::pair{1u, false}, {3u, false}, {64u, false}, {1u, true}, {3u, true}, {64u, true}}) {
        CAPTURE(cap);
        CAPTURE(quick);
        lf_ring<int> r(cap);
        std::vector<std::vector<int>> got(kConsumers);
        std::array<int, kConsumers> order_errors{};
        {
            std::vector<std::jthread> ts;
            for (int p = 0; p < kProducers; ++p)
                ts.emplace_back([&r, p, per, quick = quick] {
                    for (int i = 0; i < per; ++i) {
                        int v = p * per + i;
                        while ((quick ? r.quick_push(v) : r.push(v)) != result::ok) std::this_thread::yield();
                    }
                });
            for (int c = 0; c < kConsumers; ++c)
                ts.emplace_back([&, c, quick = quick] {
                    std::array<int, kProducers> last{};
                    last.fill(-1);
                    const int share = kProducers * per / kConsumers;
                    for (int n = 0; n < share;) {
                        std::optional<int> out;
                        if ((quick ? r.quick_pop(out) : r.pop(out)) != result::ok) {
                            std::this_thread::yield();
                            continue;
                        }
                        const int p = *out / per, i = *out % per;
                        if (i <= last[static_cast<std::size_t>(p)]) ++order_errors[static_cast<std::size_t>(c)];
                        last[static_cast<std::size_t>(p)] = i;
                        got[static_cast<std::size_t>(c)].push_back(*out);
                        ++n;
                    }
                });
        }
        std::vector<int> seen(static_cast<std::size_t>(kProducers * per), 0);
        for (const auto& g : got)
            for (int v : g) ++seen[static_cast<std::size_t>(v)];
        int missing = 0, duplicated = 0;
        for (int s : seen) {
            missing += s == 0;
            duplicated += s > 1;
        }
        CHECK(missing == 0);
        CHECK(duplicated == 0);
        for (int e : order_errors) CHECK(e == 0);
        CHECK(r.size() == 0);
    }
}

TEST_CASE("a buffered channel of ints reports its size and capacity from the lock-free ring") {
    auto ch = csp::make_chan<int>(3);
    CHECK(ch.capacity() == 3);
    CHECK(ch.size() == 0);
    CHECK(ch.try_send(1) == csp::status::ok);
    CHECK(ch.try_send(2) == csp::status::ok);
    CHECK(ch.size() == 2);
    CHECK(ch.try_send(3) == csp::status::ok);
    CHECK(ch.try_send(4) == csp::status::would_block);
    CHECK(ch.size() == 3);
    ch.close();
    CHECK(ch.try_send(5) == csp::status::closed);
    CHECK(*ch.recv() == 1);
    CHECK(*ch.recv() == 2);
    CHECK(*ch.recv() == 3);
    CHECK_FALSE(ch.recv());
    CHECK(ch.size() == 0);
}

}  // namespace
