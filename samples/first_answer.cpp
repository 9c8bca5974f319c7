// first_answer — ask every replica, keep the fastest answer, cancel the rest.
//
//   replica 0 ─┐
//   replica 1 ─┼──► answers ──► select { first answer | overall timeout } ──► cancel the others
//   replica 2 ─┘
//
// Each replica is a coroutine task of one task_group. It simulates a
// request with a random latency: it waits on csp::after(latency), a timer
// channel, then sends its answer. main waits with csp::select for the first
// answer or the overall timeout (on_timeout), whichever comes first, then
// cancels the group: the replicas still waiting on their timer complete as
// cancelled at once (their work is abandoned, as with Go's context), and
// the group's destructor waits for them.
//
// The answers channel holds one value per replica, so a replica that
// answers just after the winner never blocks.
//
//   first_answer [replicas=5] [timeout_ms=200] [seed=random]
//   prints "replica <i> answered in <t> ms (latency <l> ms)" or "timeout after <t> ms"
#include <runtime/csp.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <random>
#include <vector>

namespace {

struct answer {
    int replica;
    std::chrono::milliseconds latency;
};

}  // namespace

int main(int argc, char** argv) {
    const int replicas = argc > 1 ? std::max(0, std::atoi(argv[1])) : 5;
    const auto timeout = std::chrono::milliseconds(argc > 2 ? std::max(0, std::atoi(argv[2])) : 200);
    const unsigned seed = argc > 3 ? static_cast<unsigned>(std::strtoul(argv[3], nullptr, 10)) : std::random_device{}();

    // Latencies between 20 and 400 ms: with the defaults some runs time out.
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> ms(20, 400);
    std::vector<std::chrono::milliseconds> latency;
    for (int i = 0; i < replicas; ++i) latency.emplace_back(ms(rng));

    csp::runtime rt;
    auto answers = csp::make_chan<answer>(std::max(1, replicas));
    std::atomic<int> cancelled{0};

    const auto start = std::chrono::steady_clock::now();
    {
        csp::task_group group(rt);
        for (int i = 0; i < replicas; ++i) {
            group.go([i, d = latency[static_cast<std::size_t>(i)], tx = answers.as_sender(), &rt,
                      &cancelled]() -> csp::task<> {
                auto done = csp::after(d, rt);  // the simulated request
                try {
                    co_await done.async_recv(csp::use_task);
                } catch (const std::system_error&) {  // operation_aborted: the group was cancelled
                    cancelled.fetch_add(1, std::memory_order_relaxed);
                    throw;  // ends the task; a cancelled group does not report it as an error
                }
                answer a{i, d};
                co_await tx.async_send(std::move(a), csp::use_task);
            });
        }

        csp::select(
            csp::on_recv(answers,
                         [&](std::optional<answer> a) {
                             const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::steady_clock::now() - start);
                             fmt::print("replica {} answered in {} ms (latency {} ms)\n", a->replica,
                                        took.count(), a->latency.count());
                         }),
            csp::on_timeout(timeout, [&] {
                fmt::print("timeout after {} ms\n", timeout.count());
            }));
        group.cancel();  // the losers stop waiting now
        group.wait();    // and have all ended here
    }
    const auto total = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);

    std::string lat;
    for (auto l : latency) lat += fmt::format(" {}", l.count());
    fmt::print("{} replicas (latencies ms:{}), {} cancelled, all ended after {} ms, seed {}\n", replicas, lat,
               cancelled.load(), total.count(), seed);
    return 0;
}
