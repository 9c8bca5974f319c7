// Stress tests for csp's channels and select: they try to break the
// invariants of DESIGN.md ("Invariants to test, always") by making the races
// that matter likely. Several producers and consumers on every kind of buffer,
// selects that send and receive on shared channels, timeouts and stop requests
// racing with hand-offs, close racing with blocked parties.
//
// Every value carries (producer, sequence number). Consumers record what they
// got; after every thread is joined, the main thread checks that each value
// reported sent arrived exactly once, that nothing else arrived, and that each
// consumer saw each producer's values in increasing order (FIFO per sender).
// Values are move-only and mark their source when moved from, so a value that
// is moved twice, or moved by an operation that reported failure, shows up.
//
// Counts scale with CSP_STRESS_ITERS (default 1; the 'stress' test setup
// sets 10). Random choices come from a seed printed with any failure.
#include <doctest/doctest.h>

#include <channels/async.hpp>
#include <channels/channels.hpp>

#include <asio/bind_executor.hpp>
#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <latch>
#include <memory>
#include <optional>
#include <random>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "test_support.hpp"

namespace {

using namespace std::chrono_literals;

int scale() { return csp_test::stress_iters(); }

unsigned fresh_seed() { return std::random_device{}(); }

void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#else
    std::atomic_signal_fence(std::memory_order_seq_cst);
#endif
}

// Busy-waits a random short while. It shifts the moment of a racing operation
// so that many interleavings occur; it never orders two threads.
void jitter(std::minstd_rand& rng, unsigned max_spins) {
    unsigned n = static_cast<unsigned>(rng() % (max_spins + 1));
    for (unsigned i = 0; i < n; ++i) cpu_relax();
}

// A tiny random duration, zero included: zero times out at once unless the
// operation can complete now, the others race the deadline with the peer.
std::chrono::nanoseconds tiny(std::minstd_rand& rng) {
    static constexpr std::array<std::chrono::nanoseconds, 6> ds{0ns, 500ns, 2us, 10us, 50us, 200us};
    return ds[rng() % ds.size()];
}

constexpr int kMovedFrom = -1;

// A move-only value that marks its source when moved from: a value moved by
// two select cases, or by an operation that then reported failure, arrives as
// (or is left behind as) kMovedFrom.
struct item {
    int producer = kMovedFrom;
    int seq = kMovedFrom;

    item(int p, int s) noexcept : producer(p), seq(s) {}
    item(item&& o) noexcept : producer(o.producer), seq(o.seq) { o.producer = o.seq = kMovedFrom; }
    item& operator=(item&& o) noexcept {
        producer = o.producer;
        seq = o.seq;
        o.producer = o.seq = kMovedFrom;
        return *this;
    }
    item(const item&) = delete;
    item& operator=(const item&) = delete;

    bool is(int p, int s) const noexcept { return producer == p && seq == s; }
    bool moved_from() const noexcept { return producer == kMovedFrom && seq == kMovedFrom; }
};

// sent[p][s] != 0: producer p was told that its value s was delivered.
using sent_log = std::vector<std::vector<unsigned char>>;
// What one consumer (or one consumer on one channel) got, in order.
using recv_log = std::vector<std::pair<int, int>>;

struct audit {
    long expected = 0, received = 0;
    long missing = 0, duplicated = 0, unsent = 0, reordered = 0, garbage = 0;
    std::string first;  // the first problem found

    bool clean() const {
        return missing + duplicated + unsent + reordered + garbage == 0 && received == expected;
    }
    std::string report() const {
        return "expected " + std::to_string(expected) + ", received " + std::to_string(received) +
               ", missing " + std::to_string(missing) + ", duplicated " +
               std::to_string(duplicated) + ", never reported sent " + std::to_string(unsent) +
               ", out of order " + std::to_string(reordered) + ", garbage " +
               std::to_string(garbage) + (first.empty() ? "" : "; first: " + first);
    }
    void note(long& counter, const std::string& what) {
        ++counter;
        if (first.empty()) first = what;
    }
    void merge(const audit& o) {
        expected += o.expected;
        received += o.received;
        missing += o.missing;
        duplicated += o.duplicated;
        unsent += o.unsent;
        reordered += o.reordered;
        garbage += o.garbage;
        if (first.empty()) first = o.first;
    }
};

std::string value_name(int p, int s) {
    return "(" + std::to_string(p) + "," + std::to_string(s) + ")";
}

// Exactly once, nothing extra, FIFO per producer within each log.
audit check_delivery(const sent_log& sent, const std::vector<recv_log>& logs) {
    audit a;
    std::vector<std::vector<int>> count(sent.size());
    for (std::size_t p = 0; p < sent.size(); ++p) {
        count[p].assign(sent[p].size(), 0);
        for (unsigned char b : sent[p]) a.expected += b ? 1 : 0;
    }
    for (std::size_t c = 0; c < logs.size(); ++c) {
        std::vector<int> last(sent.size(), -1);
        for (auto [p, s] : logs[c]) {
            ++a.received;
            if (p < 0 || static_cast<std::size_t>(p) >= sent.size() || s < 0 ||
                static_cast<std::size_t>(s) >= sent[static_cast<std::size_t>(p)].size()) {
                a.note(a.garbage, "log " + std::to_string(c) + " got " + value_name(p, s));
                continue;
            }
            auto up = static_cast<std::size_t>(p), us = static_cast<std::size_t>(s);
            if (!sent[up][us])
                a.note(a.unsent, "log " + std::to_string(c) + " got " + value_name(p, s) +
                                     " whose send reported failure");
            if (++count[up][us] == 2)
                a.note(a.duplicated, value_name(p, s) + " received twice");
            if (s <= last[up])
                a.note(a.reordered, "log " + std::to_string(c) + " got " + value_name(p, s) +
                                        " after " + value_name(p, last[up]));
            last[up] = s;
        }
    }
    for (std::size_t p = 0; p < sent.size(); ++p)
        for (std::size_t s = 0; s < sent[p].size(); ++s)
            if (sent[p][s] && count[p][s] == 0)
                a.note(a.missing, value_name(static_cast<int>(p), static_cast<int>(s)) +
                                      " reported sent, never received");
    return a;
}

#define CHECK_DELIVERY(a)                           \
    do {                                            \
        const audit& audit_ = (a);                  \
        CHECK_MESSAGE(audit_.clean(), audit_.report()); \
        CHECK(audit_.expected > 0);                 \
    } while (false)

// ---------------------------------------------------------------------------
// 1. Producers and consumers

enum class send_style { plain, select, try_first, timed };
enum class recv_style { plain, range, select, timed };
constexpr int kStyles = 4;

// Sends v (which is (p, s)) in the given style. True when delivered; false
// when the channel is closed, and then v must be untouched. Anything that
// contradicts the documented contract counts in `anomalies`.
bool send_one(const csp::sender<item>& tx, item& v, send_style how, std::minstd_rand& rng,
              std::atomic<long>& anomalies) {
    const int p = v.producer, s = v.seq;
    auto failed = [&] {
        if (!v.is(p, s)) anomalies.fetch_add(1);  // a failed send must leave v alone
        return false;
    };
    auto delivered = [&] {
        if (!v.moved_from()) anomalies.fetch_add(1);  // delivered, yet still here
        return true;
    };
    switch (how) {
        case send_style::plain:
            try {
                tx.send(std::move(v));
                return delivered();
            } catch (const csp::closed_error&) {
                return failed();
            }
        case send_style::select:
            try {
                int ran = 0;
                int k = csp::select(csp::on_send(tx, v, [&] { ++ran; }));
                if (k != 0 || ran != 1) anomalies.fetch_add(1);
                return delivered();
            } catch (const csp::closed_error&) {
                return failed();
            }
        case send_style::try_first:
            switch (tx.try_send(std::move(v))) {
                case csp::status::ok: return delivered();
                case csp::status::closed: return failed();
                case csp::status::would_block:
                    if (!v.is(p, s)) anomalies.fetch_add(1);
                    break;
                default: anomalies.fetch_add(1); break;
            }
            try {
                tx.send(std::move(v));
                return delivered();
            } catch (const csp::closed_error&) {
                return failed();
            }
        case send_style::timed:
            for (;;) {
                switch (tx.send_for(std::move(v), tiny(rng))) {
                    case csp::status::ok: return delivered();
                    case csp::status::closed: return failed();
                    case csp::status::timeout:
                        if (!v.is(p, s)) anomalies.fetch_add(1);
                        break;
                    default: anomalies.fetch_add(1); break;
                }
            }
    }
    return false;
}

// Receives until the channel is closed and drained, in the given style.
void recv_all(const csp::receiver<item>& rx, recv_log& log, recv_style how, std::minstd_rand& rng,
              std::atomic<long>& anomalies) {
    auto keep = [&](const item& v) { log.emplace_back(v.producer, v.seq); };
    switch (how) {
        case recv_style::plain:
            while (std::optional<item> v = rx.recv()) keep(*v);
            break;
        case recv_style::range:
            for (item& v : rx) keep(v);
            break;
        case recv_style::select:
            for (bool more = true; more;) {
                int ran = 0;
                csp::select(csp::on_recv(rx, [&](std::optional<item> v) {
                    ++ran;
                    if (v) keep(*v);
                    else more = false;
                }));
                if (ran != 1) anomalies.fetch_add(1);
            }
            break;
        case recv_style::timed:
            for (;;) {
                csp::recv_result<item> r = rx.recv_for(tiny(rng));
                if (r) keep(*r);
                else if (r.state() == csp::status::closed) break;
                else if (r.state() != csp::status::timeout) anomalies.fetch_add(1);
            }
            break;
    }
}

struct mpmc_config {
    int producers, consumers;
    std::size_t capacity;
    int per_producer;
    long close_after;  // < 0: the last producer to finish closes (closing_sender)
    int style_shift;   // rotates the styles so that every config mixes them differently
};

audit run_mpmc(const mpmc_config& cfg, unsigned seed, std::atomic<long>& anomalies) {
    auto ch = csp::make_chan<item>(static_cast<std::ptrdiff_t>(cfg.capacity));
    sent_log sent(static_cast<std::size_t>(cfg.producers),
                  std::vector<unsigned char>(static_cast<std::size_t>(cfg.per_producer), 0));
    std::vector<recv_log> logs(static_cast<std::size_t>(cfg.consumers));
    std::atomic<long> delivered{0};
    auto start_closer = csp::make_chan<int>(1);  // one token: the K-th delivery happened
    {
        std::vector<std::jthread> threads;
        for (int c = 0; c < cfg.consumers; ++c)
            threads.emplace_back([&, c, rx = ch.as_receiver()] {
                std::minstd_rand rng(seed + 1000u + static_cast<unsigned>(c));
                auto how = static_cast<recv_style>((c + cfg.style_shift) % kStyles);
                recv_all(rx, logs[static_cast<std::size_t>(c)], how, rng, anomalies);
            });
        // With no closer, every producer holds a copy of one closing_sender,
        // made before any producer starts, so the channel closes exactly when
        // the last producer is done.
        csp::closing_sender<item> closer_share =
            cfg.close_after < 0 ? ch.as_closing_sender() : csp::closing_sender<item>{};
        for (int p = 0; p < cfg.producers; ++p)
            threads.emplace_back([&, p, share = closer_share, tx = ch.as_sender()] {
                std::minstd_rand rng(seed + static_cast<unsigned>(p));
                auto how = static_cast<send_style>((p + cfg.style_shift) % kStyles);
                auto& mine = sent[static_cast<std::size_t>(p)];
                for (int s = 0; s < cfg.per_producer; ++s) {
                    item v(p, s);
                    if (!send_one(tx, v, how, rng, anomalies)) break;
                    mine[static_cast<std::size_t>(s)] = 1;
                    if (delivered.fetch_add(1) + 1 == cfg.close_after) start_closer.send(1);
                }
            });
        closer_share = csp::closing_sender<item>{};
        if (cfg.close_after >= 0)
            threads.emplace_back([&] {
                std::minstd_rand rng(seed + 7u);
                if (cfg.close_after > 0) (void)start_closer.recv();
                jitter(rng, 2000);
                ch.close();
            });
    }
    return check_delivery(sent, logs);
}

struct shape {
    int producers, consumers;
};
constexpr std::array<shape, 3> kShapes{{{3, 3}, {4, 1}, {1, 4}}};
constexpr std::array<std::size_t, 4> kCapacities{0, 1, 7, 1024};

TEST_CASE("stress: producers and consumers get every value exactly once, FIFO per producer") {
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    const int total = 36000 * scale();  // values per configuration
    std::atomic<long> anomalies{0};
    int shift = 0;
    for (shape sh : kShapes)
        for (std::size_t cap : kCapacities) {
            CAPTURE(sh.producers);
            CAPTURE(sh.consumers);
            CAPTURE(cap);
            mpmc_config cfg{sh.producers, sh.consumers, cap, total / sh.producers, -1, shift++};
            audit a = run_mpmc(cfg, seed + static_cast<unsigned>(shift) * 7919u, anomalies);
            CHECK_DELIVERY(a);
            CHECK(a.expected == static_cast<long>(cfg.per_producer) * cfg.producers);
        }
    CHECK(anomalies.load() == 0);
}

TEST_CASE("stress: close at a random moment: delivered exactly once, failed sends never arrive") {
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    const int rounds = 12 * scale();
    const int total = 1200;  // values per configuration and round
    std::atomic<long> anomalies{0};
    std::minstd_rand rng(seed);
    audit all;
    int shift = 0;
    for (int round = 0; round < rounds; ++round)
        for (shape sh : kShapes)
            for (std::size_t cap : kCapacities) {
                int per = total / sh.producers;
                long k = static_cast<long>(rng() % static_cast<unsigned>(per * sh.producers + 1));
                mpmc_config cfg{sh.producers, sh.consumers, cap, per, k, shift++};
                audit a = run_mpmc(cfg, seed + static_cast<unsigned>(shift) * 7919u, anomalies);
                if (!a.clean() && all.first.empty())
                    all.first = "producers " + std::to_string(sh.producers) + ", consumers " +
                                std::to_string(sh.consumers) + ", capacity " +
                                std::to_string(cap) + ", close after " + std::to_string(k) +
                                ": " + a.first;
                all.merge(a);
                // The closer starts only after k deliveries, so at least k arrive.
                if (a.expected < k) anomalies.fetch_add(1);
            }
    CHECK_DELIVERY(all);
    CHECK(anomalies.load() == 0);
}

// ---------------------------------------------------------------------------
// 2. Selects that send and receive

TEST_CASE("stress: selects sending and receiving on shared channels account for every value") {
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    constexpr int kSelectors = 4, kChans = 4;
    constexpr int kPlainUnbuffered = kSelectors, kPlainBuffered = kSelectors + 1;
    constexpr int kSenders = kSelectors + 2;
    const int n = 20000 * scale();  // values per sender
    const long total = static_cast<long>(n) * kSenders;

    // Two unbuffered and two buffered channels. Selector t sends on t and
    // t+1 and receives on t+2, t+3 and t itself (mod 4): every channel has
    // sending and receiving selects, each selector sends and receives on one
    // channel in the same select, and each unbuffered channel has a receiver
    // that is not its sender, so a selector waiting on its own channel is
    // always matched by someone else.
    std::array<csp::channel<item>, kChans> ch{csp::make_chan<item>(0), csp::make_chan<item>(0),
                                              csp::make_chan<item>(1), csp::make_chan<item>(3)};
    auto done = csp::make_chan<int>();  // closed by whoever receives the last value
    std::atomic<long> received{0}, anomalies{0}, self_received{0};
    std::vector<recv_log> logs(static_cast<std::size_t>(kSelectors * kChans));

    auto on_value = [&](int t, int k, std::optional<item>& v) {
        if (!v) {
            anomalies.fetch_add(1);  // no data channel is ever closed
            return;
        }
        logs[static_cast<std::size_t>(t * kChans + k)].emplace_back(v->producer, v->seq);
        // A select cannot complete with itself: on an unbuffered channel a
        // selector never receives its own value.
        if (k < 2 && v->producer == t) self_received.fetch_add(1);
        if (received.fetch_add(1) + 1 == total) done.close();
    };

    auto selector = [&](int t) {
        csp::channel<item> nil;
        const int s0 = t, s1 = (t + 1) % kChans;
        const int r0 = (t + 2) % kChans, r1 = (t + 3) % kChans, r2 = t;
        int seq = 0;
        item v(t, 0);
        bool finished = false;
        while (!finished) {
            const bool sending = seq < n;
            int ran = 0, sends = 0;
            auto sent = [&] {
                ++ran;
                ++sends;
            };
            auto recv_on = [&](int k) {
                return [&, k](std::optional<item> got) {
                    ++ran;
                    on_value(t, k, got);
                };
            };
            // Once all is sent, the send cases go to the nil channel: never ready.
            csp::select(csp::on_send(sending ? ch[s0] : nil, v, sent),
                        csp::on_send(sending ? ch[s1] : nil, v, sent),
                        csp::on_recv(ch[r0], recv_on(r0)), csp::on_recv(ch[r1], recv_on(r1)),
                        csp::on_recv(ch[r2], recv_on(r2)),
                        csp::on_recv(done, [&](std::optional<int> d) {
                            ++ran;
                            if (d) anomalies.fetch_add(1);
                            finished = true;
                        }));
            if (ran != 1) anomalies.fetch_add(1);
            if (sends == 1) {
                if (!v.moved_from()) anomalies.fetch_add(1);
                v = item(t, ++seq);
            } else if (!v.is(t, seq)) {
                anomalies.fetch_add(1);  // a case that was not chosen moved v
            }
        }
        if (seq != n) anomalies.fetch_add(1);
    };

    // The same protocol over cases built at run time and reused from one
    // select to the next (selector 3 runs this one).
    auto range_selector = [&](int t) {
        const int s0 = t, s1 = (t + 1) % kChans;
        const int r0 = (t + 2) % kChans, r1 = (t + 3) % kChans, r2 = t;
        int seq = 0, ran = 0, sends = 0;
        item v(t, 0);
        bool finished = false;
        auto sent = [&] {
            ++ran;
            ++sends;
        };
        auto recv_on = [&](int k) {
            return [&, k](std::optional<item> got) {
                ++ran;
                on_value(t, k, got);
            };
        };
        auto on_done = [&](std::optional<int> d) {
            ++ran;
            if (d) anomalies.fetch_add(1);
            finished = true;
        };
        std::vector<csp::any_case> sending, draining;
        sending.emplace_back(csp::on_send(ch[s0], v, sent));
        sending.emplace_back(csp::on_recv(ch[r0], recv_on(r0)));
        sending.emplace_back(csp::on_send(ch[s1], v, sent));
        sending.emplace_back(csp::on_recv(ch[r1], recv_on(r1)));
        sending.emplace_back(csp::on_recv(ch[r2], recv_on(r2)));
        sending.emplace_back(csp::on_recv(done, on_done));
        draining.emplace_back(csp::on_recv(ch[r0], recv_on(r0)));
        draining.emplace_back(csp::on_recv(ch[r1], recv_on(r1)));
        draining.emplace_back(csp::on_recv(ch[r2], recv_on(r2)));
        draining.emplace_back(csp::on_recv(done, on_done));
        while (!finished) {
            ran = sends = 0;
            csp::select(seq < n ? sending : draining);
            if (ran != 1) anomalies.fetch_add(1);
            if (sends == 1) {
                if (!v.moved_from()) anomalies.fetch_add(1);
                v = item(t, ++seq);
            } else if (!v.is(t, seq)) {
                anomalies.fetch_add(1);
            }
        }
        if (seq != n) anomalies.fetch_add(1);
    };

    {
        std::vector<std::jthread> threads;
        for (int t = 0; t < kSelectors - 1; ++t) threads.emplace_back(selector, t);
        threads.emplace_back(range_selector, kSelectors - 1);
        // Plain senders meet the selects too: a blocking send on an unbuffered
        // channel, and try_send falling back to a timed send on a buffered one.
        threads.emplace_back([&] {
            for (int s = 0; s < n; ++s) ch[0].send(item(kPlainUnbuffered, s));
        });
        threads.emplace_back([&] {
            std::minstd_rand rng(seed);
            for (int s = 0; s < n; ++s) {
                item v(kPlainBuffered, s);
                if (ch[3].try_send(std::move(v)) == csp::status::ok) continue;
                while (ch[3].send_for(std::move(v), tiny(rng)) != csp::status::ok)
                    if (!v.is(kPlainBuffered, s)) anomalies.fetch_add(1);
            }
        });
    }
    CHECK_DELIVERY(check_delivery(
        sent_log(kSenders, std::vector<unsigned char>(static_cast<std::size_t>(n), 1)), logs));
    CHECK(received.load() == total);
    CHECK(self_received.load() == 0);
    CHECK(anomalies.load() == 0);
    for (auto& c : ch) CHECK(c.size() == 0);
}

// ---------------------------------------------------------------------------
// 3. Fairness

// Each of the k counted cases must win 1/k of the selects, within 1.5 points
// (more than 9 standard deviations at 100 000 selects).
void check_fair(const std::vector<long>& wins, long selects) {
    const double share = 1.0 / static_cast<double>(wins.size());
    long sum = 0;
    for (std::size_t i = 0; i < wins.size(); ++i) {
        CAPTURE(i);
        CAPTURE(wins[i]);
        CHECK(std::abs(static_cast<double>(wins[i]) / static_cast<double>(selects) - share) <=
              0.015);
        sum += wins[i];
    }
    CHECK(sum == selects);
}

TEST_CASE("stress: select chooses uniformly among ready cases") {
    const long n = 100000L * scale();

    SUBCASE("receives on two closed channels; default never runs") {
        auto a = csp::make_chan<int>(), b = csp::make_chan<int>();
        a.close();
        b.close();
        std::vector<long> wins(2, 0);
        long defaults = 0, values = 0;
        for (long i = 0; i < n; ++i) {
            int k = csp::select(csp::on_recv(a, [&](std::optional<int> v) { values += v ? 1 : 0; }),
                                csp::on_recv(b, [&](std::optional<int> v) { values += v ? 1 : 0; }),
                                csp::on_default([&] { ++defaults; }));
            if (k < 2) ++wins[static_cast<std::size_t>(k)];
        }
        check_fair(wins, n);
        CHECK(defaults == 0);
        CHECK(values == 0);
    }

    SUBCASE("two and four buffered channels kept non-empty") {
        for (int k : {2, 4}) {
            CAPTURE(k);
            std::vector<csp::channel<int>> chans;
            for (int i = 0; i < k; ++i) {
                chans.push_back(csp::make_chan<int>(2));
                chans.back().send(i);
            }
            std::vector<long> wins(static_cast<std::size_t>(k), 0);
            long wrong = 0;
            std::vector<csp::any_case> cases;
            for (int i = 0; i < k; ++i)
                cases.emplace_back(csp::on_recv(chans[static_cast<std::size_t>(i)],
                                                [&, i](std::optional<int> v) {
                                                    if (!v || *v != i) ++wrong;
                                                }));
            for (long j = 0; j < n; ++j) {
                int w = csp::select(cases);
                ++wins[static_cast<std::size_t>(w)];
                if (chans[static_cast<std::size_t>(w)].try_send(w) != csp::status::ok) ++wrong;
            }
            check_fair(wins, n);
            CHECK(wrong == 0);
            for (auto& c : chans) CHECK(c.size() == 1);
        }
    }

    SUBCASE("a send with room, a receive on a closed channel and a requested stop") {
        auto out = csp::make_chan<int>(1);
        auto shut = csp::make_chan<int>();
        shut.close();
        std::stop_source stop;
        stop.request_stop();
        std::vector<long> wins(3, 0);
        long wrong = 0;
        for (long i = 0; i < n; ++i) {
            int k = csp::select(csp::on_send(out, 7), csp::on_recv(shut, [&](std::optional<int> v) {
                                    if (v) ++wrong;
                                }),
                                csp::on_stop(stop.get_token(), [] {}));
            ++wins[static_cast<std::size_t>(k)];
            csp::recv_result<int> r = out.try_recv();
            if ((k == 0) != r.ok() || (r.ok() && *r != 7)) ++wrong;
        }
        check_fair(wins, n);
        CHECK(wrong == 0);
    }

    SUBCASE("the same ready channel named in several cases") {
        auto a = csp::make_chan<int>(), b = csp::make_chan<int>();
        a.close();
        b.close();
        std::vector<long> wins(4, 0);
        for (long i = 0; i < n; ++i) {
            auto f = [](std::optional<int>) {};
            ++wins[static_cast<std::size_t>(csp::select(csp::on_recv(a, f), csp::on_recv(b, f),
                                                        csp::on_recv(a, f), csp::on_recv(a, f)))];
        }
        check_fair(wins, n);
    }
}

// ---------------------------------------------------------------------------
// 4. Timeouts and stop requests racing with hand-offs

// Two senders, two receivers, one channel; every operation may give up. A
// sender that gave up moves on to its next value, so the values reported
// delivered are a random subset that the receivers must get exactly.
struct giveup_counts {
    long delivered = 0, gave_up = 0;
};

// op(sender, value&, rng) -> status; recv_op(rng, log) -> false once closed.
template <class SendOp, class RecvOp>
audit run_giveup_race(std::size_t cap, int n, SendOp send_op, RecvOp recv_op, unsigned seed,
                      giveup_counts& counts, std::atomic<long>& anomalies) {
    auto ch = csp::make_chan<item>(static_cast<std::ptrdiff_t>(cap));
    constexpr int kSenders = 2, kReceivers = 2;
    sent_log sent(kSenders, std::vector<unsigned char>(static_cast<std::size_t>(n), 0));
    std::vector<recv_log> logs(kReceivers);
    std::array<giveup_counts, kSenders> per{};
    {
        std::vector<std::jthread> threads;
        for (int r = 0; r < kReceivers; ++r)
            threads.emplace_back([&, r, rx = ch.as_receiver()] {
                std::minstd_rand rng(seed + 100u + static_cast<unsigned>(r));
                while (recv_op(r, rx, rng, logs[static_cast<std::size_t>(r)])) {
                }
            });
        auto share = ch.as_closing_sender();
        for (int p = 0; p < kSenders; ++p)
            threads.emplace_back([&, p, tx = share] {
                std::minstd_rand rng(seed + static_cast<unsigned>(p));
                for (int s = 0; s < n; ++s) {
                    item v(p, s);
                    csp::status st = send_op(p, tx, v, rng);
                    auto& c = per[static_cast<std::size_t>(p)];
                    if (st == csp::status::ok) {
                        sent[static_cast<std::size_t>(p)][static_cast<std::size_t>(s)] = 1;
                        ++c.delivered;
                        if (!v.moved_from()) anomalies.fetch_add(1);
                    } else {
                        ++c.gave_up;
                        if (!v.is(p, s)) anomalies.fetch_add(1);  // gave up, yet v moved
                        if (st == csp::status::closed) anomalies.fetch_add(1);
                    }
                }
            });
    }
    for (auto& c : per) {
        counts.delivered += c.delivered;
        counts.gave_up += c.gave_up;
    }
    return check_delivery(sent, logs);
}

TEST_CASE("stress: timeouts racing with sends never lose or duplicate a value") {
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    const int n = 6000 * scale();
    std::atomic<long> anomalies{0};
    giveup_counts counts;
    audit all;

    // Sender 0: send_for. Sender 1: select with a send case and a timeout.
    auto send_op = [&](int p, const csp::closing_sender<item>& tx, item& v,
                       std::minstd_rand& rng) -> csp::status {
        if (p == 0) return tx.send_for(std::move(v), tiny(rng));
        int ran = 0;
        csp::status st = csp::status::would_block;
        csp::select(csp::on_send(tx, v, [&] {
            ++ran;
            st = csp::status::ok;
        }),
                    csp::on_timeout(tiny(rng), [&] {
            ++ran;
            st = csp::status::timeout;
        }));
        if (ran != 1) anomalies.fetch_add(1);
        return st;
    };
    // Receiver 0: recv_for. Receiver 1: select with a receive case and a timeout.
    auto recv_op = [&](int r, const csp::receiver<item>& rx, std::minstd_rand& rng,
                       recv_log& log) -> bool {
        if (r == 0) {
            csp::recv_result<item> got = rx.recv_for(tiny(rng));
            if (got) log.emplace_back(got->producer, got->seq);
            else if (got.state() == csp::status::closed) return false;
            else if (got.state() != csp::status::timeout) anomalies.fetch_add(1);
            return true;
        }
        bool open = true;
        int ran = 0;
        csp::select(csp::on_recv(rx,
                                 [&](std::optional<item> got) {
                                     ++ran;
                                     if (got) log.emplace_back(got->producer, got->seq);
                                     else open = false;
                                 }),
                    csp::on_timeout(tiny(rng), [&] { ++ran; }));
        if (ran != 1) anomalies.fetch_add(1);
        return open;
    };

    for (std::size_t cap : {0, 1, 4}) {
        CAPTURE(cap);
        audit a = run_giveup_race(cap, n, send_op, recv_op, seed + static_cast<unsigned>(cap),
                                  counts, anomalies);
        all.merge(a);
    }
    CHECK_DELIVERY(all);
    CHECK(anomalies.load() == 0);
    // Both outcomes must really occur, or the race was not run.
    CHECK(counts.delivered > 0);
    CHECK(counts.gave_up > 0);
    MESSAGE("delivered " << counts.delivered << ", gave up " << counts.gave_up);
}

// Regression (fixed): a timed operation given a huge duration, as code says "no timeout"
// with duration::max(), times out at once instead of waiting. after_now()
// computes steady_clock::now() + ceil<steady_clock::duration>(d): for
// nanoseconds::max() the addition overflows (signed overflow, undefined;
// UBSan reports it in chrono.h) and wraps to a deadline in the past, and for
// hours::max() the conversion to nanoseconds overflows already. recv_for,
// send_for, on_timeout and the *_until forms of other clocks share it. A
// deadline should saturate at steady_clock::time_point::max().
TEST_CASE("stress: a timeout of duration::max() waits instead of overflowing") {
    auto ch = csp::make_chan<int>();
    {
        std::jthread sender([&] { ch.send(1); });
        csp::recv_result<int> r = ch.recv_for(std::chrono::nanoseconds::max());
        CHECK(r.state() == csp::status::ok);
        if (!r) CHECK(ch.recv() == 1);  // let the sender go
    }
    {
        std::jthread sender([&] { ch.send(2); });
        csp::recv_result<int> r = ch.recv_for(std::chrono::hours::max());
        CHECK(r.state() == csp::status::ok);
        if (!r) CHECK(ch.recv() == 2);
    }
    {
        std::jthread receiver([&] { CHECK(ch.recv() == 3); });
        csp::status st = ch.send_for(3, std::chrono::nanoseconds::max());
        CHECK(st == csp::status::ok);
        if (st != csp::status::ok) ch.send(3);  // let the receiver go
    }
    {
        std::jthread sender([&] { ch.send(4); });
        int k = csp::select(csp::on_recv(ch, [](std::optional<int> v) { CHECK(v == 4); }),
                            csp::on_timeout(std::chrono::nanoseconds::max(), [] {}));
        CHECK(k == 0);
        if (k != 0) CHECK(ch.recv() == 4);
    }
}

TEST_CASE("stress: stop requests racing with sends never lose or duplicate a value") {
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    const int n = 3000 * scale();
    std::atomic<long> anomalies{0};
    giveup_counts counts;
    audit all;

    for (std::size_t cap : {0, 1, 4}) {
        CAPTURE(cap);
        // Each operation gets its own stop_source and hands it to a canceller
        // thread before it starts; the canceller requests the stop after a
        // random spin, so requests land before, during and after hand-offs.
        // One operation in eight starts with its stop already requested: it
        // gives up unless it can complete at once, so that give-ups happen
        // however the machine's timing falls (the canceller alone may always
        // come too late). The channel of sources closes when every operator
        // is done.
        auto stops = csp::make_chan<std::stop_source>(64);
        auto stop_share = stops.as_closing_sender();
        auto arm = [&](std::minstd_rand& rng) {
            std::stop_source src;
            if (rng() % 8 == 0) src.request_stop();
            else stops.send(src);
            return src.get_token();
        };
        // Sender 0: send(v, token). Sender 1: select with a send case and on_stop.
        auto send_op = [&, keep = stop_share](int p, const csp::closing_sender<item>& tx,
                                              item& v, std::minstd_rand& rng) -> csp::status {
            std::stop_token tok = arm(rng);
            if (p == 0) return tx.send(std::move(v), tok);
            int ran = 0;
            csp::status st = csp::status::would_block;
            csp::select(csp::on_send(tx, v, [&] {
            ++ran;
            st = csp::status::ok;
        }),
                        csp::on_stop(tok, [&] {
            ++ran;
            st = csp::status::cancelled;
        }));
            if (ran != 1) anomalies.fetch_add(1);
            return st;
        };
        // Receiver 0: recv(token). Receiver 1: select with a receive case and on_stop.
        auto recv_op = [&, keep = stop_share](int r, const csp::receiver<item>& rx,
                                              std::minstd_rand& rng, recv_log& log) -> bool {
            std::stop_token tok = arm(rng);
            if (r == 0) {
                csp::recv_result<item> got = rx.recv(tok);
                if (got) log.emplace_back(got->producer, got->seq);
                else if (got.state() == csp::status::closed) return false;
                else if (got.state() != csp::status::cancelled) anomalies.fetch_add(1);
                return true;
            }
            bool open = true;
            int ran = 0;
            csp::select(csp::on_recv(rx,
                                     [&](std::optional<item> got) {
                                         ++ran;
                                         if (got) log.emplace_back(got->producer, got->seq);
                                         else open = false;
                                     }),
                        csp::on_stop(tok, [&] { ++ran; }));
            if (ran != 1) anomalies.fetch_add(1);
            return open;
        };
        stop_share = csp::closing_sender<std::stop_source>{};
        std::jthread canceller([&, rx = stops.as_receiver()] {
            std::minstd_rand rng(seed + 99u);
            for (std::stop_source& s : rx) {
                jitter(rng, 3000);
                s.request_stop();
            }
        });
        audit a = run_giveup_race(cap, n, std::move(send_op), std::move(recv_op),
                                  seed + static_cast<unsigned>(cap), counts, anomalies);
        canceller.join();
        all.merge(a);
    }
    CHECK_DELIVERY(all);
    CHECK(anomalies.load() == 0);
    CHECK(counts.delivered > 0);
    CHECK(counts.gave_up > 0);
    MESSAGE("delivered " << counts.delivered << ", gave up " << counts.gave_up);
}

// ---------------------------------------------------------------------------
// 5. Close racing with blocked senders, receivers and selects

TEST_CASE("stress: close racing with blocked senders, receivers and selects") {
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    const int rounds = 300 * scale();
    std::minstd_rand rng(seed);
    std::atomic<long> anomalies{0};
    long close_wins = 0, double_close_errors = 0, select_send_closed = 0;
    audit all;

    for (int round = 0; round < rounds; ++round) {
        const std::size_t cap = std::array<std::size_t, 3>{0, 1, 3}[static_cast<std::size_t>(round % 3)];
        // Alternate between too many senders (they block in send when close
        // comes) and too many receivers (they block in recv).
        const bool sender_heavy = (round / 3) % 2 == 0;
        const int plain_senders = sender_heavy ? 3 : 1;
        const int plain_receivers = sender_heavy ? 1 : 3;
        // Producer ids: plain senders 0.., then the self-select thread.
        const int selector_id = plain_senders;
        const int producers = plain_senders + 1;
        const int consumers = plain_receivers + 2;  // + timed receiver + selector
        auto ch = csp::make_chan<item>(static_cast<std::ptrdiff_t>(cap));
        auto other = csp::make_chan<item>();  // never ready: only widens the selects
        constexpr int kMaxPerProducer = 1 << 20;
        std::vector<int> delivered_count(static_cast<std::size_t>(producers), 0);
        std::vector<recv_log> logs(static_cast<std::size_t>(consumers));
        std::latch ready(plain_senders + consumers + 2);
        std::atomic<int> closes{0}, close_errors{0};
        std::atomic<long> select_closed{0};
        const unsigned rs = static_cast<unsigned>(rng());
        {
            std::vector<std::jthread> threads;
            for (int p = 0; p < plain_senders; ++p)
                threads.emplace_back([&, p] {
                    ready.arrive_and_wait();
                    int s = 0;
                    for (; s < kMaxPerProducer; ++s) {
                        item v(p, s);
                        try {
                            ch.send(std::move(v));
                        } catch (const csp::closed_error&) {
                            if (!v.is(p, s)) anomalies.fetch_add(1);
                            break;
                        }
                    }
                    delivered_count[static_cast<std::size_t>(p)] = s;
                });
            for (int c = 0; c < plain_receivers; ++c)
                threads.emplace_back([&, c] {
                    ready.arrive_and_wait();
                    while (std::optional<item> v = ch.recv())
                        logs[static_cast<std::size_t>(c)].emplace_back(v->producer, v->seq);
                });
            threads.emplace_back([&, c = plain_receivers] {
                std::minstd_rand r(rs + 1);
                ready.arrive_and_wait();
                for (;;) {
                    csp::recv_result<item> v = ch.recv_for(tiny(r));
                    if (v) logs[static_cast<std::size_t>(c)].emplace_back(v->producer, v->seq);
                    else if (v.state() == csp::status::closed) break;
                }
            });
            // Sends and receives on the same channel in one select, plus a
            // case on a channel that is never ready; stops at close, which
            // either hands it nullopt or throws from its send case.
            threads.emplace_back([&, c = plain_receivers + 1] {
                ready.arrive_and_wait();
                int s = 0;
                item v(selector_id, 0);
                for (bool open = true; open;) {
                    bool sent = false;
                    try {
                        csp::select(csp::on_send(ch, v, [&] { sent = true; }),
                                    csp::on_recv(ch,
                                                 [&](std::optional<item> got) {
                                                     if (got)
                                                         logs[static_cast<std::size_t>(c)]
                                                             .emplace_back(got->producer, got->seq);
                                                     else open = false;
                                                 }),
                                    csp::on_recv(other, [&](std::optional<item>) {
                                        anomalies.fetch_add(1);
                                    }));
                    } catch (const csp::closed_error&) {
                        select_closed.fetch_add(1);
                        open = false;
                    }
                    if (sent) {
                        if (!v.moved_from()) anomalies.fetch_add(1);
                        v = item(selector_id, ++s);
                    } else if (!v.is(selector_id, s)) {
                        anomalies.fetch_add(1);
                    }
                }
                delivered_count[static_cast<std::size_t>(selector_id)] = s;
            });
            // Two closers race: exactly one may close, the other must get closed_error.
            for (int k = 0; k < 2; ++k)
                threads.emplace_back([&, k] {
                    std::minstd_rand r(rs + 10u + static_cast<unsigned>(k));
                    ready.arrive_and_wait();
                    jitter(r, 20000);
                    try {
                        ch.close();
                        closes.fetch_add(1);
                    } catch (const csp::closed_error&) {
                        close_errors.fetch_add(1);
                    }
                });
        }
        sent_log sent(static_cast<std::size_t>(producers));
        for (int p = 0; p < producers; ++p)
            sent[static_cast<std::size_t>(p)].assign(
                static_cast<std::size_t>(delivered_count[static_cast<std::size_t>(p)]) + 1, 0);
        for (int p = 0; p < producers; ++p)
            std::fill_n(sent[static_cast<std::size_t>(p)].begin(),
                        delivered_count[static_cast<std::size_t>(p)], 1);
        audit a = check_delivery(sent, logs);
        if (!a.clean() && all.first.empty())
            all.first = "round " + std::to_string(round) + ": " + a.first;
        all.merge(a);
        close_wins += closes.load();
        double_close_errors += close_errors.load();
        select_send_closed += select_closed.load();
        if (!ch.closed() || ch.size() != 0) anomalies.fetch_add(1);
    }
    CHECK_MESSAGE(all.clean(), all.report());
    CHECK(close_wins == rounds);
    CHECK(double_close_errors == rounds);
    CHECK(anomalies.load() == 0);
    MESSAGE("selects whose send case met the close: " << select_send_closed << " of " << rounds);
}


// ---------------------------------------------------------------------------
// 6. Moves that throw

struct boom {};

// An item whose `fuse`-th move from now throws (0: the next one; -1: none).
// A throwing move leaves its source as it was, with the fuse spent, so the
// owner can try again with the same value.
struct fragile {
    int producer = kMovedFrom;
    int seq = kMovedFrom;
    int fuse = -1;

    fragile(int p, int s, int f) noexcept : producer(p), seq(s), fuse(f) {}
    fragile(fragile&& o) : producer(o.producer), seq(o.seq), fuse(o.fuse) {
        if (o.fuse == 0) {
            o.fuse = -1;
            throw boom{};
        }
        if (fuse > 0) --fuse;
        o.producer = o.seq = kMovedFrom;
    }
    fragile& operator=(fragile&&) = delete;

    bool is(int p, int s) const noexcept { return producer == p && seq == s; }
};

TEST_CASE("stress: a move that throws reaches the sender, and every value still arrives once") {
    // Every third value throws on its first move: out of the sender's object,
    // whoever does it (the sender itself, a receiver taking it from a waiting
    // sender, or a receiver refilling the ring from one). The sender gets the
    // exception with its value intact, sends again, and the value must then
    // arrive exactly once; receivers never see the exception.
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    constexpr int kProducers = 3, kConsumers = 3;
    const int n = 6000 * scale();
    std::atomic<long> anomalies{0}, sender_throws{0}, receiver_throws{0};
    audit all;
    for (std::size_t cap : {0, 1, 7}) {
        CAPTURE(cap);
        auto ch = csp::make_chan<fragile>(static_cast<std::ptrdiff_t>(cap));
        std::vector<recv_log> logs(kConsumers);
        {
            std::vector<std::jthread> threads;
            for (int c = 0; c < kConsumers; ++c)
                threads.emplace_back([&, c] {
                    std::minstd_rand rng(seed + 50u + static_cast<unsigned>(c));
                    auto& log = logs[static_cast<std::size_t>(c)];
                    for (bool open = true; open;) {
                        try {
                            if (c == 0) {
                                std::optional<fragile> v = ch.recv();
                                if (v) log.emplace_back(v->producer, v->seq);
                                else open = false;
                            } else if (c == 1) {
                                csp::select(csp::on_recv(ch, [&](std::optional<fragile> v) {
                                    if (v) log.emplace_back(v->producer, v->seq);
                                    else open = false;
                                }));
                            } else {
                                csp::recv_result<fragile> v = ch.recv_for(tiny(rng));
                                if (v) log.emplace_back(v->producer, v->seq);
                                else if (v.state() == csp::status::closed) open = false;
                            }
                        } catch (const boom&) {
                            receiver_throws.fetch_add(1);
                        }
                    }
                });
            auto share = ch.as_closing_sender();
            for (int p = 0; p < kProducers; ++p)
                threads.emplace_back([&, p, tx = share] {
                    std::minstd_rand rng(seed + static_cast<unsigned>(p));
                    for (int s = 0; s < n; ++s) {
                        fragile v(p, s, s % 3 == 0 ? 0 : -1);
                        for (int attempt = 0;; ++attempt) {
                            if (attempt > 1) {
                                anomalies.fetch_add(1);  // it threw twice: it had one fuse
                                break;
                            }
                            try {
                                if (p == 0) {
                                    tx.send(std::move(v));
                                } else if (p == 1) {
                                    csp::select(csp::on_send(tx, v));
                                } else {
                                    while (tx.send_for(std::move(v), tiny(rng)) !=
                                           csp::status::ok)
                                        if (!v.is(p, s)) anomalies.fetch_add(1);
                                }
                                break;
                            } catch (const boom&) {
                                sender_throws.fetch_add(1);
                                if (!v.is(p, s) || s % 3 != 0) anomalies.fetch_add(1);
                            }
                        }
                    }
                });
        }
        all.merge(check_delivery(
            sent_log(kProducers, std::vector<unsigned char>(static_cast<std::size_t>(n), 1)), logs));
    }
    CHECK_DELIVERY(all);
    CHECK(sender_throws.load() == 3L * kProducers * ((n + 2) / 3));
    CHECK(receiver_throws.load() == 0);
    CHECK(anomalies.load() == 0);
}

// BUG: a value whose move throws after it has left the channel is lost. The
// README promises that a throwing move reaches the operation that owned the
// value (the sender, or a receiver taking from the buffer) and that a
// receiver about to get that value waits for the next one. But after the
// value has moved into the receiver's slot, the receive moves it again
// (chan_state::recv's `recv_result<T>(std::move(*out))`, recv_api::recv's
// `.value()`, try_recv's `recv_result(std::move(out), ...)`, recv_case::run's
// `std::optional<T> v = std::move(value_)`, recv_iterator's emplace); if that
// move throws, the exception reaches the receiver and the value, whose send
// reported success, is destroyed. Invariant 1 (every value sent is received
// exactly once, or the send reports failure) fails for throwing moves.
TEST_CASE("stress: a move that throws after the hand-off loses no value" * doctest::skip()) {
    for (int form = 0; form < 4; ++form) {
        CAPTURE(form);  // 0 recv, 1 recv_for, 2 select, 3 range-for
        auto ch = csp::make_chan<fragile>();
        // Fuse 1: the hand-off into the receiver's slot succeeds, the next move throws.
        std::jthread sender([&] { ch.send(fragile(0, 0, 1)); });
        bool threw = false, got = false;
        try {
            switch (form) {
                case 0: got = ch.recv().has_value(); break;
                case 1: got = ch.recv_for(10s).ok(); break;
                case 2:
                    csp::select(csp::on_recv(ch, [&](std::optional<fragile> v) { got = v.has_value(); }));
                    break;
                default:
                    for (fragile& v : ch) {
                        got = v.is(0, 0);
                        break;
                    }
                    break;
            }
        } catch (const boom&) {
            threw = true;
        }
        sender.join();  // its send reported success
        if (threw) got = ch.try_recv().ok();  // the value must still be there
        CHECK(got);
    }
}

// ---------------------------------------------------------------------------
// 7. Memory ordering

TEST_CASE("stress: a send happens-before its receive, close happens-before closed") {
    // Plain (non-atomic) data written before a send or a close is read after
    // the matching receive, or after seeing closed; ThreadSanitizer reports a
    // race if the library's promise of chan.hpp does not hold, and the values
    // read are checked in every build.
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    constexpr int kProducers = 2, kConsumers = 4;
    const int n = 10000 * scale();
    long wrong = 0;
    for (std::size_t cap : {0, 1, 16}) {
        CAPTURE(cap);
        std::vector<long> data(static_cast<std::size_t>(kProducers * n), 0);
        long epilogue = 0;
        auto ch = csp::make_chan<int>(static_cast<std::ptrdiff_t>(cap));
        auto producers_done = csp::make_chan<int>(kProducers);
        std::array<long, kConsumers> bad{};
        {
            std::vector<std::jthread> threads;
            for (int c = 0; c < kConsumers; ++c)
                threads.emplace_back([&, c] {
                    std::minstd_rand rng(seed + static_cast<unsigned>(c));
                    long& my_bad = bad[static_cast<std::size_t>(c)];
                    auto use = [&](int i) {
                        if (data[static_cast<std::size_t>(i)] != 3L * i + 1) ++my_bad;
                    };
                    for (bool open = true; open;) {
                        switch (c) {
                            case 0:
                                if (auto v = ch.recv()) use(*v);
                                else open = false;
                                break;
                            case 1:
                                csp::select(csp::on_recv(ch, [&](std::optional<int> v) {
                                    if (v) use(*v);
                                    else open = false;
                                }));
                                break;
                            case 2: {
                                auto v = ch.recv_for(tiny(rng));
                                if (v) use(*v);
                                else open = v.state() != csp::status::closed;
                                break;
                            }
                            default: {
                                auto v = ch.try_recv();
                                if (v) use(*v);
                                else if (v.state() == csp::status::closed) open = false;
                                else std::this_thread::yield();
                                break;
                            }
                        }
                    }
                    if (epilogue != 42) ++my_bad;  // written before close
                });
            for (int p = 0; p < kProducers; ++p)
                threads.emplace_back([&, p] {
                    for (int s = 0; s < n; ++s) {
                        int i = p * n + s;
                        data[static_cast<std::size_t>(i)] = 3L * i + 1;
                        ch.send(i);
                    }
                    producers_done.send(p);
                });
            threads.emplace_back([&] {
                for (int p = 0; p < kProducers; ++p) (void)producers_done.recv();
                epilogue = 42;
                ch.close();
            });
        }
        for (long b : bad) wrong += b;
    }
    CHECK(wrong == 0);
}

// ---------------------------------------------------------------------------
// 8. Wide selects

TEST_CASE("stress: selects over 20 channels fed concurrently get every value once") {
    // More cases than select's on-stack scratch space (16), so the range form
    // takes its heap path; capacities mixed. Five senders feed four channels
    // each; one consumer selects over all twenty (range form), another over
    // the first ten with the variadic form, both until all are closed,
    // turning each closed channel's case into a nil case.
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    constexpr int kChans = 20, kSenders = 5, kPerSender = kChans / kSenders;
    const int n = 8000 * scale();  // values per sender
    std::vector<csp::channel<item>> chans;
    for (int k = 0; k < kChans; ++k) chans.push_back(csp::make_chan<item>(k % 3 == 0 ? 0 : k % 4));
    std::vector<recv_log> logs(2 * kChans);
    std::atomic<long> anomalies{0};
    {
        std::vector<std::jthread> threads;
        // Consumer 0: a range select over all twenty, rebuilt as channels close.
        threads.emplace_back([&] {
            std::vector<char> open(kChans, 1);
            for (int left = kChans; left > 0;) {
                std::vector<csp::any_case> cases;
                csp::channel<item> nil;
                for (int k = 0; k < kChans; ++k)
                    cases.emplace_back(csp::on_recv(open[static_cast<std::size_t>(k)] ? chans[static_cast<std::size_t>(k)] : nil,
                                                    [&, k](std::optional<item> v) {
                                                        if (v)
                                                            logs[static_cast<std::size_t>(k)].emplace_back(v->producer, v->seq);
                                                        else {
                                                            open[static_cast<std::size_t>(k)] = 0;
                                                            --left;
                                                        }
                                                    }));
                int w = csp::select(cases);
                if (w < 0 || w >= kChans) anomalies.fetch_add(1);
            }
        });
        // Consumer 1: a variadic select over the first ten.
        threads.emplace_back([&] {
            std::array<csp::channel<item>, 10> c;
            for (std::size_t k = 0; k < c.size(); ++k) c[k] = chans[k];
            int left = 10;
            auto on = [&](std::size_t k) {
                return [&, k](std::optional<item> v) {
                    if (v) logs[kChans + k].emplace_back(v->producer, v->seq);
                    else {
                        c[k] = {};
                        --left;
                    }
                };
            };
            while (left > 0)
                csp::select(csp::on_recv(c[0], on(0)), csp::on_recv(c[1], on(1)),
                            csp::on_recv(c[2], on(2)), csp::on_recv(c[3], on(3)),
                            csp::on_recv(c[4], on(4)), csp::on_recv(c[5], on(5)),
                            csp::on_recv(c[6], on(6)), csp::on_recv(c[7], on(7)),
                            csp::on_recv(c[8], on(8)), csp::on_recv(c[9], on(9)));
        });
        for (int p = 0; p < kSenders; ++p)
            threads.emplace_back([&, p] {
                std::minstd_rand rng(seed + static_cast<unsigned>(p));
                // Sender p owns channels p, p+5, p+10, p+15: a select sends each value
                // on any one of them.
                std::array<csp::channel<item>, kPerSender> mine;
                for (int j = 0; j < kPerSender; ++j)
                    mine[static_cast<std::size_t>(j)] = chans[static_cast<std::size_t>(p + kSenders * j)];
                for (int s = 0; s < n; ++s) {
                    item v(p, s);
                    int ran = 0;
                    csp::select(csp::on_send(mine[0], v, [&] { ++ran; }),
                                csp::on_send(mine[1], v, [&] { ++ran; }),
                                csp::on_send(mine[2], v, [&] { ++ran; }),
                                csp::on_send(mine[3], v, [&] { ++ran; }));
                    if (ran != 1 || !v.moved_from()) anomalies.fetch_add(1);
                    jitter(rng, 50);
                }
                for (auto& c : mine) c.close();
            });
    }
    // One log per (consumer, channel): FIFO per sender holds within each.
    CHECK_DELIVERY(check_delivery(
        sent_log(kSenders, std::vector<unsigned char>(static_cast<std::size_t>(n), 1)), logs));
    CHECK(anomalies.load() == 0);
}

// ---------------------------------------------------------------------------
// 9. Values nobody took

struct counted {
    static inline std::atomic<long> live{0};
    std::unique_ptr<int> payload;  // a leak also shows under LeakSanitizer

    explicit counted(int v) : payload(std::make_unique<int>(v)) { live.fetch_add(1); }
    counted(counted&& o) noexcept : payload(std::move(o.payload)) { live.fetch_add(1); }
    counted& operator=(counted&&) = delete;
    ~counted() { live.fetch_sub(1); }
};

TEST_CASE("stress: values left in a channel or in an unchosen select case are destroyed once") {
    // Consumers stop early, a closer races the producers, and the channel is
    // dropped with values in its buffer; send cases that own their values
    // lose races. At the end no value may be alive (or leaked, under ASan).
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    const int rounds = 200 * scale();
    std::minstd_rand rng(seed);
    long taken = 0;
    REQUIRE(counted::live.load() == 0);
    for (int round = 0; round < rounds; ++round) {
        auto ch = csp::make_chan<counted>(static_cast<std::ptrdiff_t>(round % 5));
        auto spare = csp::make_chan<counted>(1);  // the other case of the selects
        const int keep = static_cast<int>(rng() % 40);
        const unsigned rs = static_cast<unsigned>(rng());
        std::atomic<long> got{0};
        {
            std::vector<std::jthread> threads;
            threads.emplace_back([&] {  // takes `keep` values, then leaves
                for (int i = 0; i < keep; ++i)
                    if (!ch.recv()) break;
                    else got.fetch_add(1);
            });
            for (int p = 0; p < 2; ++p)
                threads.emplace_back([&, p] {
                    for (int s = 0;; ++s) {
                        try {
                            if (p == 0) {
                                if (ch.send_for(counted(s), 200us) == csp::status::closed) return;
                            } else {
                                // Owned values: the loser of each select dies with its case.
                                csp::select(csp::on_send(ch, counted(s)),
                                            csp::on_send(spare, counted(-s)),
                                            csp::on_timeout(200us, [] {}));
                                (void)spare.try_recv();
                            }
                        } catch (const csp::closed_error&) {
                            return;
                        }
                    }
                });
            threads.emplace_back([&] {
                std::minstd_rand r(rs);
                jitter(r, 50000);
                ch.close();
            });
        }
        taken += got.load();
    }
    CHECK(counted::live.load() == 0);
    CHECK(taken > 0);
}


// ---------------------------------------------------------------------------
// 10. Everything at once

TEST_CASE("stress: every kind of operation on shared channels at once") {
    // Six threads each run a random mix of try, timed and cancellable sends
    // and receives and of selects built at run time from random send and
    // receive cases (the same channel may get both) plus a default, a
    // timeout, a stop case or both, over four shared channels; one channel is
    // closed part-way. No operation here can block for ever, so every thread
    // ends; then the main thread drains the buffers. Every value whose send
    // reported success must be received exactly once, FIFO per sender on each
    // channel.
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    constexpr int kThreads = 6, kChans = 4, kClosing = 3;
    const int ops = 4000 * scale();  // per thread; value (t, i) belongs to op i of thread t
    std::array<csp::channel<item>, kChans> ch{csp::make_chan<item>(0), csp::make_chan<item>(0),
                                              csp::make_chan<item>(1), csp::make_chan<item>(3)};
    sent_log sent(kThreads, std::vector<unsigned char>(static_cast<std::size_t>(ops), 0));
    std::vector<recv_log> logs(static_cast<std::size_t>((kThreads + 1) * kChans));
    std::atomic<long> anomalies{0}, op_count{0};
    std::minstd_rand main_rng(seed);
    const long close_at = static_cast<long>(main_rng() % static_cast<unsigned>(kThreads * ops));
    auto close_token = csp::make_chan<int>(1);
    auto stops = csp::make_chan<std::stop_source>(64);
    {
        std::vector<std::jthread> threads;
        std::jthread canceller([&, rx = stops.as_receiver()] {
            std::minstd_rand rng(seed + 99u);
            for (std::stop_source& src : rx) {
                jitter(rng, 2000);
                src.request_stop();
            }
        });
        threads.emplace_back([&] {
            (void)close_token.recv();
            ch[kClosing].close();
        });
        auto stop_share = stops.as_closing_sender();
        for (int t = 0; t < kThreads; ++t)
            threads.emplace_back([&, t, stop_tx = stop_share] {
                std::minstd_rand rng(seed + static_cast<unsigned>(t));
                auto log = [&](int k, const item& v) {
                    if (v.moved_from()) anomalies.fetch_add(1);
                    logs[static_cast<std::size_t>(t * kChans + k)].emplace_back(v.producer, v.seq);
                };
                auto arm = [&] {
                    std::stop_source src;
                    stop_tx.send(src);
                    return src.get_token();
                };
                for (int i = 0; i < ops; ++i) {
                    if (op_count.fetch_add(1) == close_at) close_token.send(1);
                    const int k = static_cast<int>(rng() % kChans);
                    auto& c = ch[static_cast<std::size_t>(k)];
                    item v(t, i);
                    bool delivered = false;
                    auto after_send = [&](csp::status st) {
                        delivered = st == csp::status::ok;
                        if (st == csp::status::closed && k != kClosing) anomalies.fetch_add(1);
                    };
                    auto after_recv = [&](csp::recv_result<item>& r) {
                        if (r) log(k, *r);
                        else if (r.state() == csp::status::closed && k != kClosing)
                            anomalies.fetch_add(1);
                    };
                    switch (rng() % 10) {
                        case 0: after_send(c.try_send(std::move(v))); break;
                        case 1: {
                            auto r = c.try_recv();
                            after_recv(r);
                            break;
                        }
                        case 2: after_send(c.send_for(std::move(v), tiny(rng))); break;
                        case 3: {
                            auto r = c.recv_for(tiny(rng));
                            after_recv(r);
                            break;
                        }
                        case 4: after_send(c.send(std::move(v), arm())); break;
                        case 5: {
                            auto r = c.recv(arm());
                            after_recv(r);
                            break;
                        }
                        default: {
                            // A select of 1 to 3 channel cases plus a way out.
                            std::vector<csp::any_case> cases;
                            int ran = 0, sends = 0;
                            const int n_cases = 1 + static_cast<int>(rng() % 3);
                            for (int j = 0; j < n_cases; ++j) {
                                const int kk = static_cast<int>(rng() % kChans);
                                auto& cc = ch[static_cast<std::size_t>(kk)];
                                if (rng() % 2)
                                    cases.emplace_back(csp::on_send(cc, v, [&] {
                                        ++ran;
                                        ++sends;
                                    }));
                                else
                                    cases.emplace_back(
                                        csp::on_recv(cc, [&, kk](std::optional<item> got) {
                                            ++ran;
                                            if (got) log(kk, *got);
                                            else if (kk != kClosing) anomalies.fetch_add(1);
                                        }));
                            }
                            switch (rng() % 4) {
                                case 0: cases.emplace_back(csp::on_default([&] { ++ran; })); break;
                                case 1:
                                    cases.emplace_back(csp::on_timeout(tiny(rng), [&] { ++ran; }));
                                    break;
                                case 2: cases.emplace_back(csp::on_stop(arm(), [&] { ++ran; })); break;
                                default:
                                    cases.emplace_back(csp::on_timeout(tiny(rng), [&] { ++ran; }));
                                    cases.emplace_back(csp::on_stop(arm(), [&] { ++ran; }));
                                    break;
                            }
                            std::shuffle(cases.begin(), cases.end(), rng);
                            try {
                                csp::select(cases);
                                if (ran != 1) anomalies.fetch_add(1);
                                delivered = sends == 1;
                            } catch (const csp::closed_error&) {
                                if (ran != 0) anomalies.fetch_add(1);
                            }
                            break;
                        }
                    }
                    if (delivered) {
                        sent[static_cast<std::size_t>(t)][static_cast<std::size_t>(i)] = 1;
                        if (!v.moved_from()) anomalies.fetch_add(1);
                    } else if (!v.is(t, i)) {
                        anomalies.fetch_add(1);  // not delivered, yet moved
                    }
                }
            });
        stop_share = csp::closing_sender<std::stop_source>{};
        for (auto& th : threads) th.join();
        // Every operator is done: the last stop share is gone and the canceller ends.
    }
    for (int k = 0; k < kChans; ++k)
        for (;;) {
            csp::recv_result<item> r = ch[static_cast<std::size_t>(k)].try_recv();
            if (!r) break;
            logs[static_cast<std::size_t>(kThreads * kChans + k)].emplace_back(r->producer, r->seq);
        }
    CHECK_DELIVERY(check_delivery(sent, logs));
    CHECK(anomalies.load() == 0);
    CHECK(ch[kClosing].closed());
}


// ---------------------------------------------------------------------------
// 11. The asynchronous select's retry

// Regressions (fixed), both in the retry after a sender's value failed to
// move into a waiting async_select (a throwing move), while the timer and
// the stop callback armed by the first attempt stay armed:
// - completing twice: the retry once reopened the state to kWaiting before
//   pass 1, so a stop request or a timer expiry could claim it while pass 1
//   also completed a case (a handler run twice, then use after free). Now
//   the state stays claimed through pass 1 and reopens only at pass 2.
// - completing never: a stop request or a timer expiry landing while the
//   state was still claimed lost its CAS and does not fire again; the retry
//   then parked for good (the `first.recv()` below hung). Now the retry
//   claims for a due stop or deadline right after it reopens the state.
TEST_CASE("stress: an async_select retried after a throwing move completes exactly once") {
    const unsigned seed = fresh_seed();
    INFO("seed " << seed);
    const int rounds = 3000 * scale();
    asio::io_context io;
    auto work = asio::make_work_guard(io);
    std::vector<std::thread> pool;
    for (int i = 0; i < 2; ++i) pool.emplace_back([&] { io.run(); });
    std::minstd_rand rng(seed);
    // Channels and counters outlive every completion, so that a second
    // completion is counted rather than touching freed memory.
    std::vector<csp::channel<fragile>> chans;
    std::vector<std::atomic<int>> calls(static_cast<std::size_t>(rounds));
    auto first = csp::make_chan<int>(rounds);
    long sender_throws = 0;
    for (int r = 0; r < rounds; ++r) {
        chans.push_back(csp::make_chan<fragile>());
        auto& ch = chans.back();
        auto on_done = asio::bind_executor(io, [&, r](std::exception_ptr, std::size_t) {
            if (calls[static_cast<std::size_t>(r)].fetch_add(1) == 0) first.send(r);
        });
        auto ignore = [](std::optional<fragile>) {};
        std::stop_source stop;
        const bool use_timer = r % 2 == 1;
        if (use_timer)
            csp::async_select(on_done, csp::on_recv(ch, ignore),
                              csp::on_timeout(std::chrono::microseconds(rng() % 40), [] {}));
        else
            csp::async_select(on_done, csp::on_recv(ch, ignore), csp::on_stop(stop.get_token(), [] {}));
        // The select is registered: this send claims it, the move throws,
        // and the select retries while the stop request (or the timer) lands.
        const unsigned spins = static_cast<unsigned>(rng() % 3000);
        std::jthread stopper([&stop, spins] {
            for (unsigned i = 0; i < spins; ++i) cpu_relax();
            stop.request_stop();
        });
        try {
            (void)ch.send_for(fragile(r, 0, 0), 2ms);
        } catch (const boom&) {
            ++sender_throws;
        }
        stopper.join();
        // A generous bound, only so that a select that never completes fails
        // this test with its round instead of hanging the suite.
        const auto done = first.recv_for(60s);
        REQUIRE_MESSAGE(done.ok(), "round " << r << " never completed");
    }
    work.reset();
    for (auto& t : pool) t.join();
    long twice = 0;
    for (auto& c : calls) twice += c.load() != 1 ? 1 : 0;
    CHECK(twice == 0);
    CHECK(sender_throws > 0);
}

}  // namespace
