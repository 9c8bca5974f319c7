// csp::task: csp's own coroutine type and the use_task awaiters. Each test
// checks exact values and counts: nothing lost, nothing duplicated, errors
// and cancellation as in an asio::awaitable task.
#include <doctest/doctest.h>

#include <runtime/csp.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace {

using csp::use_task;

csp::task<> relay(csp::receiver<long> in, csp::sender<long> out, long rounds) {
    for (long i = 0; i < rounds; ++i) {
        std::optional<long> v = co_await in.async_recv(use_task);
        REQUIRE(v);
        long next = *v + 1;
        co_await out.async_send(next, use_task);
    }
}

csp::task<long> sum_until_closed(csp::receiver<long> in) {
    long sum = 0;
    while (auto v = co_await in.async_recv(use_task)) sum += *v;
    co_return sum;
}

csp::task<long> fails_after(csp::receiver<long> in, long n) {
    for (long i = 0; i < n; ++i) (void)co_await in.async_recv(use_task);
    throw std::runtime_error("stage failed");
}

bool aborted(const std::system_error& e) { return e.code() == asio::error::operation_aborted; }

}  // namespace

TEST_CASE("task: ping-pong over unbuffered channels, each value once and in order") {
    csp::runtime rt(2);
    auto ab = csp::make_chan<long>(), ba = csp::make_chan<long>();
    const long rounds = 20000;
    rt.go(relay(ab.as_receiver(), ba.as_sender(), rounds));
    long last = -1;
    rt.go([&]() -> csp::task<> {
        long x = 0;
        for (long i = 0; i < rounds; ++i) {
            co_await ab.async_send(x, use_task);
            std::optional<long> back = co_await ba.async_recv(use_task);
            REQUIRE(back);
            x = *back + 1;
        }
        last = x;
    });
    rt.wait();
    CHECK(last == 2 * rounds);
}

TEST_CASE("task: a task started from a task runs at once, to its first wait, before its starter goes on") {
    csp::runtime rt(2);
    auto gate = csp::make_chan<long>();  // unbuffered: each child parks on it
    constexpr long n = 2000;
    long ran_before_go_returned = 0;  // the parent's
    std::atomic<long> received{0}, sum{0};
    rt.go([&]() -> csp::task<> {
        for (long i = 0; i < n; ++i) {
            bool started = false;  // written by the child before its first wait only
            rt.go([&started, &received, &sum, rx = gate.as_receiver()]() -> csp::task<> {
                started = true;
                std::optional<long> v = co_await rx.async_recv(use_task);
                REQUIRE(v);
                sum.fetch_add(*v, std::memory_order_relaxed);
                received.fetch_add(1, std::memory_order_relaxed);
            });
            if (started) ++ran_before_go_returned;
        }
        for (long i = 0; i < n; ++i) {
            long x = i;
            co_await gate.async_send(x, use_task);
        }
    });
    rt.wait();
    CHECK(ran_before_go_returned == n);
    CHECK(received.load() == n);
    CHECK(sum.load() == n * (n - 1) / 2);
}

TEST_CASE("task: 1000 producers, a buffered channel, a task that awaits a task<long>") {
    csp::runtime rt(2);
    auto ch = csp::make_chan<long>(16);
    const long producers = 1000, each = 50;
    auto closer = ch.as_closing_sender();
    for (long p = 0; p < producers; ++p)
        rt.go([tx = closer, p]() -> csp::task<> {
            for (long i = 0; i < each; ++i) {
                long v = p * each + i;
                co_await tx.async_send(std::move(v), use_task);
            }
        });
    closer = {};  // the channel closes when the last producer ends
    long sum = -1;
    rt.go([&, rx = ch.as_receiver()]() -> csp::task<> { sum = co_await sum_until_closed(rx); });
    rt.wait();
    const long n = producers * each;
    CHECK(sum == n * (n - 1) / 2);
}

TEST_CASE("task: an exception leaves an awaited task through co_await, and a root task through wait()") {
    csp::runtime rt(2);
    auto ch = csp::make_chan<long>(4);
    std::string caught;
    rt.go([&, rx = ch.as_receiver()]() -> csp::task<> {
        try {
            (void)co_await fails_after(rx, 3);
        } catch (const std::runtime_error& e) {
            caught = e.what();
        }
        throw std::logic_error("root failed");
    });
    for (long i = 0; i < 3; ++i) ch.send(i);
    CHECK_THROWS_WITH_AS(rt.wait(), "root failed", std::logic_error);
    CHECK(caught == "stage failed");
    CHECK(ch.size() == 0);
}

TEST_CASE("task: a send on a closed channel throws errc::closed and keeps the caller's value") {
    csp::runtime rt(1);
    auto ch = csp::make_chan<std::unique_ptr<int>>(1);
    ch.close();
    bool threw = false, kept = false;
    rt.go([&]() -> csp::task<> {
        auto p = std::make_unique<int>(7);
        try {
            co_await ch.async_send(p, use_task);
        } catch (const std::system_error& e) {
            threw = e.code() == csp::errc::closed;
        }
        kept = p && *p == 7;
    });
    rt.wait();
    CHECK(threw);
    CHECK(kept);
}

// A send that finds the ring full gives its worker back once and tries
// again before it waits (task_ops.hpp). Whatever runs in between (a
// receive, a close, the task's own cancellation) decides the second
// attempt. On one worker, the task readied by the hand-over on `go` runs
// before the second attempt; in any order, the results are the same.
TEST_CASE("task: a send that found the ring full goes through once a receive between its attempts makes room") {
    csp::runtime rt(1);
    auto ch = csp::make_chan<std::unique_ptr<int>>(1);
    ch.send(std::make_unique<int>(1));  // full
    auto go = csp::make_chan<int>();
    int drained = 0;
    rt.go([&]() -> csp::task<> {
        (void)co_await go.async_recv(use_task);
        auto v = ch.try_recv();  // the room the sender's second attempt finds
        drained = v ? **v : -1;
    });
    bool sent = false, moved = false;
    rt.go([&]() -> csp::task<> {
        co_await go.async_send(0, use_task);
        auto p = std::make_unique<int>(2);
        co_await ch.async_send(p, use_task);
        sent = true;
        moved = !p;
    });
    rt.wait();
    CHECK(drained == 1);
    CHECK(sent);
    CHECK(moved);
    auto v = ch.try_recv();
    REQUIRE(v);
    CHECK(**v == 2);
    CHECK(ch.try_recv().state() == csp::status::would_block);  // sent once
}

TEST_CASE("task: a send that found the ring full goes through when one slot frees, though the ring never gets half empty") {
    // The sender waits out a mostly full ring for a while (task_ops.hpp,
    // retry), but not for good: here the receiver takes one value and then
    // waits for the sender, with seven values still in the ring.
    csp::runtime rt(1);
    auto ch = csp::make_chan<int>(8);
    for (int i = 0; i < 8; ++i) ch.send(i);  // full
    auto go = csp::make_chan<int>();
    auto ack = csp::make_chan<int>();
    int first = -1, acked = -1;
    rt.go([&]() -> csp::task<> {
        (void)co_await go.async_recv(use_task);
        first = *co_await ch.async_recv(use_task);  // one slot free
        acked = *co_await ack.async_recv(use_task);
    });
    rt.go([&]() -> csp::task<> {
        co_await go.async_send(0, use_task);
        co_await ch.async_send(8, use_task);  // finds the ring full
        co_await ack.async_send(1, use_task);
    });
    rt.wait();
    CHECK(first == 0);
    CHECK(acked == 1);
    for (int i = 1; i <= 8; ++i) {
        auto v = ch.try_recv();
        REQUIRE(v);
        CHECK(*v == i);
    }
    CHECK(ch.try_recv().state() == csp::status::would_block);
}

TEST_CASE("task: a task whose operations complete at once, with long work between them, lets a task queued behind it run") {
    // One worker: the second task can run only when the first gives the
    // worker back. The first never has to suspend (its channel always has
    // room, then a value), so only the cooperative yield (task.hpp:
    // awaiter_ref) lets the second in, after a few windows of operations.
    csp::runtime rt(1);
    auto ch = csp::make_chan<long>(1);
    std::atomic<bool> other_ran{false};
    long ops_before_other_ran = -1;
    long sum = 0, expected_sum = 0;
    constexpr long kIterations = 20'000;  // 100 ms of work: far longer than the yield needs
    rt.go([&]() -> csp::task<> {
        for (long i = 0; i < kIterations; ++i) {
            const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(5);
            while (std::chrono::steady_clock::now() < until) {  // work between operations, not a wait
            }
            co_await ch.async_send(i, use_task);
            std::optional<long> v = co_await ch.async_recv(use_task);
            REQUIRE(v);
            sum += *v;
            expected_sum += i;
            if (other_ran.load()) {
                ops_before_other_ran = 2 * (i + 1);
                break;
            }
        }
    });
    rt.go([&]() -> csp::task<> {
        other_ran = true;
        co_return;
    });
    rt.wait();
    CHECK(other_ran);
    REQUIRE(ops_before_other_ran > 0);  // it ran while the first task still worked
    CHECK(sum == expected_sum);  // every value sent came back, once
    CHECK(ch.try_recv().state() == csp::status::would_block);
}

TEST_CASE("task: a send that found the ring full throws errc::closed and keeps its value when a close comes between its attempts") {
    csp::runtime rt(1);
    auto ch = csp::make_chan<std::unique_ptr<int>>(1);
    ch.send(std::make_unique<int>(1));  // full
    auto go = csp::make_chan<int>();
    rt.go([&]() -> csp::task<> {
        (void)co_await go.async_recv(use_task);
        ch.close();
    });
    bool closed = false, kept = false;
    rt.go([&]() -> csp::task<> {
        co_await go.async_send(0, use_task);
        auto p = std::make_unique<int>(2);
        try {
            co_await ch.async_send(p, use_task);
        } catch (const std::system_error& e) {
            closed = e.code() == csp::errc::closed;
        }
        kept = p && *p == 2;
    });
    rt.wait();
    CHECK(closed);
    CHECK(kept);
    auto v = ch.try_recv();  // the value sent before the close is still received
    REQUIRE(v);
    CHECK(**v == 1);
    CHECK(ch.try_recv().state() == csp::status::closed);
}

TEST_CASE("task: a send cancelled between its first attempt on a full ring and its second throws operation_aborted and sends nothing") {
    csp::runtime rt(1);
    auto ch = csp::make_chan<std::unique_ptr<int>>(1);
    ch.send(std::make_unique<int>(1));  // full
    auto outcome = csp::make_chan<int>(1);
    bool kept = false;
    {
        csp::task_group g(rt);
        g.go([&]() -> csp::task<> {
            auto p = std::make_unique<int>(2);
            // The cancellation reaches this task as a handler queued on its
            // own queue, ahead of the send's second attempt: the send finds
            // the ring full, gives the worker back, and is cancelled before
            // it tries again or waits.
            g.cancel();
            int r = 0;
            try {
                co_await ch.async_send(p, use_task);
                r = 1;
            } catch (const std::system_error& e) {
                r = aborted(e) ? 2 : 3;
            }
            kept = p && *p == 2;
            (void)outcome.try_send(r);
        });
        // Bounded, so that a send left waiting fails the test instead of hanging it.
        auto r = outcome.recv_for(std::chrono::seconds(30));
        REQUIRE(r);
        CHECK(*r == 2);
        g.wait();
    }
    CHECK(kept);
    auto v = ch.try_recv();
    REQUIRE(v);
    CHECK(**v == 1);
    CHECK(ch.try_recv().state() == csp::status::would_block);  // nothing else was sent
}

TEST_CASE("task: async_select with use_task: ready at once, after a wait, by timeout, and a handler's exception") {
    csp::runtime rt(2);
    auto a = csp::make_chan<int>(), b = csp::make_chan<int>(1), first_done = csp::make_chan<int>();
    std::vector<std::string> log;
    rt.go([&]() -> csp::task<> {
        co_await b.async_send(5, use_task);  // b is ready now
        std::size_t i = co_await csp::async_select(
            use_task, csp::on_recv(a, [&](std::optional<int>) { log.push_back("a"); }),
            csp::on_recv(b, [&](std::optional<int> v) { log.push_back("b" + std::to_string(*v)); }));
        CHECK(i == 1);
        co_await first_done.async_send(1, use_task);
        // Nothing ready (b is empty): waits until the thread below sends on a.
        i = co_await csp::async_select(
            use_task, csp::on_recv(a, [&](std::optional<int> v) { log.push_back("a" + std::to_string(*v)); }),
            csp::on_recv(b, [&](std::optional<int>) { log.push_back("b"); }));
        CHECK(i == 0);
        i = co_await csp::async_select(use_task, csp::on_recv(a, [&](std::optional<int>) { log.push_back("a"); }),
                                       csp::on_timeout(std::chrono::milliseconds(1), [&] { log.push_back("late"); }));
        CHECK(i == 1);
        try {
            co_await b.async_send(6, use_task);
            (void)co_await csp::async_select(use_task, csp::on_recv(b, [](std::optional<int>) {
                                                 throw std::runtime_error("handler");
                                             }));
        } catch (const std::runtime_error& e) {
            log.push_back(e.what());
        }
    });
    CHECK(first_done.recv() == 1);  // only then is a ready, so the first select could not choose it
    a.send(9);
    rt.wait();
    CHECK(log == std::vector<std::string>{"b5", "a9", "late", "handler"});
    CHECK(b.size() == 0);
}

TEST_CASE("task: a select over a range of cases built at run time") {
    csp::runtime rt(2);
    std::vector<csp::channel<int>> chans;
    for (int i = 0; i < 4; ++i) chans.push_back(csp::make_chan<int>());
    int got = -1, from = -1;
    rt.go([&]() -> csp::task<> {
        std::vector<csp::any_case> cases;
        for (int i = 0; i < 4; ++i)
            cases.emplace_back(csp::on_recv(chans[static_cast<std::size_t>(i)], [&](std::optional<int> v) { got = *v; }));
        from = static_cast<int>(co_await csp::async_select(use_task, cases));
    });
    chans[2].send(42);
    rt.wait();
    CHECK(from == 2);
    CHECK(got == 42);
}

TEST_CASE("task: cancelling a group cancels a parked operation, takes nothing, and later operations throw") {
    csp::runtime rt(2);
    auto ch = csp::make_chan<int>(1);
    std::atomic<int> parked_aborted{0}, later_aborted{0};
    {
        csp::task_group g(rt);
        auto ready = csp::make_chan<int>();
        g.go([&]() -> csp::task<> {
            co_await ready.async_send(1, use_task);
            try {
                (void)co_await ch.async_recv(use_task);  // nobody sends: waits until cancelled
            } catch (const std::system_error& e) {
                if (aborted(e)) ++parked_aborted;
            }
            try {
                co_await ch.async_send(3, use_task);  // room in the channel, but the task is cancelled
            } catch (const std::system_error& e) {
                if (aborted(e)) ++later_aborted;
            }
        });
        CHECK(ready.recv() == 1);
        g.cancel();
        g.wait();  // cancellation endings are not errors
    }
    CHECK(parked_aborted == 1);
    CHECK(later_aborted == 1);
    ch.send(5);  // the cancelled receive took nothing, the cancelled send gave nothing
    CHECK(ch.try_recv().value() == 5);
}

TEST_CASE("task: destroying the runtime cancels parked csp::tasks and returns") {
    auto ch = csp::make_chan<int>();
    std::atomic<int> ended{0};
    {
        csp::runtime rt(2);
        for (int i = 0; i < 100; ++i)
            rt.go([&, rx = ch.as_receiver()]() -> csp::task<> {
                struct count_end {
                    std::atomic<int>& n;
                    ~count_end() { ++n; }
                } end{ended};
                (void)co_await rx.async_recv(use_task);
            });
    }
    CHECK(ended == 100);
    CHECK(ch.try_recv().state() == csp::status::would_block);
}

TEST_CASE("task: wait() reports a deadlock when every csp::task is parked on a channel nothing can complete") {
    csp::runtime rt(2);
    auto a = csp::make_chan<int>(), b = csp::make_chan<int>();
    rt.go([&]() -> csp::task<> { (void)co_await a.async_recv(use_task); });
    rt.go([&]() -> csp::task<> { (void)co_await b.async_recv(use_task); });
    CHECK_THROWS_AS(rt.wait(), csp::deadlock_error);
    a.close();
    b.close();
    rt.wait();
}

TEST_CASE("task: two csp::tasks parked to receive on one channel mark its ends as shared; one task alone does not") {
    csp::runtime rt(2);
    auto shared = csp::make_chan<int>(8), solo = csp::make_chan<int>(8);
    std::atomic<int> nothing{0};
    for (int i = 0; i < 2; ++i)
        rt.go([&, rx = shared.as_receiver()]() -> csp::task<> {
            if (co_await rx.async_recv(use_task)) ++nothing;
        });
    rt.go([&, rx = solo.as_receiver()]() -> csp::task<> {
        if (co_await rx.async_recv(use_task)) ++nothing;
    });
    // Thrown only once every task is parked: each noted its wait.
    CHECK_THROWS_AS(rt.wait(), csp::deadlock_error);
    CHECK(shared.state()->ends_shared());
    CHECK_FALSE(solo.state()->ends_shared());
    shared.close();
    solo.close();
    rt.wait();
    CHECK(nothing == 0);
}

TEST_CASE("task: a callable taking a stop_token, and csp::tasks mixed with asio::awaitable tasks and threads") {
    csp::runtime rt(2);
    auto in = csp::make_chan<long>(8), out = csp::make_chan<long>(8);
    std::atomic<bool> stopped{false};
    rt.go([&](std::stop_token st) -> csp::task<> {
        while (auto v = co_await in.async_recv(use_task)) {
            long y = *v * 2;
            co_await out.async_send(y, use_task);
        }
        out.close();
        stopped = st.stop_requested();
    });
    long sum = 0, count = 0;
    rt.go([&]() -> asio::awaitable<void> {
        while (auto v = co_await out.async_recv(asio::use_awaitable)) {
            sum += *v;
            ++count;
        }
    });
    for (long i = 0; i < 1000; ++i) in.send(i);
    in.close();
    rt.wait();
    CHECK(count == 1000);
    CHECK(sum == 999 * 1000);
    CHECK_FALSE(stopped);
}

TEST_CASE("task: a task started but never awaited or given to go() is destroyed without running") {
    bool ran = false;
    {
        auto t = [&]() -> csp::task<> {
            ran = true;
            co_return;
        }();
        (void)t;
    }
    CHECK_FALSE(ran);
}

TEST_CASE("task: co_await csp::ignore_cancellation keeps a task receiving through its group's cancellation") {
    csp::runtime rt(2);
    auto ch = csp::make_chan<int>();
    auto started = csp::make_chan<int>();
    long sum = 0, count = 0;
    bool aborted_after = false;
    {
        csp::task_group g(rt);
        g.go([&]() -> csp::task<> {
            co_await csp::ignore_cancellation;
            co_await started.async_send(1, use_task);
            try {
                while (auto v = co_await ch.async_recv(use_task)) {
                    sum += *v;
                    ++count;
                }
            } catch (const std::system_error&) {
                aborted_after = true;
            }
        });
        CHECK(started.recv() == 1);
        g.cancel();
        for (int i = 1; i <= 100; ++i) ch.send(i);  // each one is still received
        ch.close();
        g.wait();
    }
    CHECK(count == 100);
    CHECK(sum == 5050);
    CHECK_FALSE(aborted_after);
}

TEST_CASE("task: a callable's captures are destroyed before wait() returns") {
    csp::runtime rt(2);
    auto ch = csp::make_chan<int>(4);
    auto alive = std::make_shared<int>(0);
    const int tasks = 200;
    for (int i = 0; i < tasks; ++i)
        rt.go([alive, tx = ch.as_sender(), i]() -> csp::task<> {
            if (i % 2) co_await tx.async_send(i, use_task);  // half of them wait for the reader
        });
    long received = 0;
    for (int i = 0; i < tasks / 2; ++i) received += ch.recv().value_or(-1000000);
    rt.wait();
    CHECK(alive.use_count() == 1);  // only ours: every task's copy is gone
    CHECK(received == 100 * 100);   // 1 + 3 + ... + 199
}

TEST_CASE("task: a select parked with use_task is cancelled with its group and takes nothing") {
    csp::runtime rt(2);
    auto a = csp::make_chan<int>(), b = csp::make_chan<int>(1);
    auto parked = csp::make_chan<int>();
    bool aborted_select = false, default_ran = false;
    {
        csp::task_group g(rt);
        g.go([&]() -> csp::task<> {
            // A default case never waits.
            std::size_t i = co_await csp::async_select(use_task, csp::on_recv(a, [](std::optional<int>) {}),
                                                       csp::on_default([&] { default_ran = true; }));
            CHECK(i == 1);
            co_await parked.async_send(1, use_task);
            try {
                (void)co_await csp::async_select(use_task, csp::on_recv(a, [](std::optional<int>) {}),
                                                 csp::on_recv(b, [](std::optional<int>) {}));
            } catch (const std::system_error& e) {
                aborted_select = aborted(e);
            }
        });
        CHECK(parked.recv() == 1);
        g.cancel();
        g.wait();
    }
    CHECK(default_ran);
    CHECK(aborted_select);
    b.send(4);  // b had room and nothing was taken from it
    CHECK(b.try_recv().value() == 4);
}

// Many parties on small channels exercise the waiting paths of every
// operation (a full ring, an empty ring, a value handed to a parked
// receiver, a receiver retried after a lock-free party took its value).
TEST_CASE("task: producers and consumers, tasks and threads, on capacity 0 and 1: each value once") {
    for (std::ptrdiff_t cap : {0, 1}) {
        CAPTURE(cap);
        csp::runtime rt(2);
        auto ch = csp::make_chan<long>(cap);
        const long per = 5000, task_producers = 3, thread_producers = 1;
        const long total = per * (task_producers + thread_producers);
        std::vector<long> seen(static_cast<std::size_t>(total), 0);
        std::mutex seen_mu;
        auto closer = ch.as_closing_sender();
        for (long p = 0; p < task_producers; ++p)
            rt.go([tx = closer, p]() -> csp::task<> {
                for (long i = 0; i < per; ++i) {
                    long v = p * per + i;
                    co_await tx.async_send(v, use_task);
                }
            });
        std::thread thread_producer([tx = closer] {
            for (long i = 0; i < per; ++i) tx.send(task_producers * per + i);
        });
        closer = {};
        auto record = [&](long v) {
            std::lock_guard g(seen_mu);
            ++seen[static_cast<std::size_t>(v)];
        };
        for (int c = 0; c < 3; ++c)
            rt.go([rx = ch.as_receiver(), &record]() -> csp::task<> {
                while (auto v = co_await rx.async_recv(use_task)) record(*v);
            });
        std::thread thread_consumer([rx = ch.as_receiver(), &record] {
            while (auto v = rx.recv()) record(*v);
        });
        thread_producer.join();
        thread_consumer.join();
        rt.wait();
        long wrong = 0;
        for (long n : seen) wrong += n != 1;
        CHECK(wrong == 0);
    }
}
