// sieve — Go's concurrent prime sieve, with csp tasks and channels.
//
//   generate ──► filter(2) ──► filter(3) ──► filter(5) ──► ... ──► main
//
// The generator sends 2, 3, 4, ... on a channel. main receives the first
// number from the last channel of the chain: it is prime (no smaller prime
// divides it). main then starts a filter task for that prime, which passes
// on every number it does not divide, and listens at the new end of the
// chain. After n primes, n filter tasks and the generator are running;
// cancelling their task_group ends them all (each is parked in a channel
// operation, which completes as cancelled).
//
// The channels are unbuffered, as in the Go original, so every number
// travels hand to hand through the chain.
//
//   sieve [n=100]      prints the first n primes, one per line; summary on stderr
#include <runtime/csp.hpp>

#include <fmt/core.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>

namespace {

// Sends 2, 3, 4, ... until cancelled.
csp::task<> generate(csp::sender<std::uint64_t> out) {
    for (std::uint64_t i = 2;; ++i) co_await out.async_send(i, csp::use_task);
}

// Copies the values of `in` that `prime` does not divide to `out`.
csp::task<> filter(csp::receiver<std::uint64_t> in, csp::sender<std::uint64_t> out, std::uint64_t prime) {
    while (auto v = co_await in.async_recv(csp::use_task))
        if (*v % prime != 0) co_await out.async_send(*v, csp::use_task);
}

}  // namespace

int main(int argc, char** argv) {
    const long n = argc > 1 ? std::atol(argv[1]) : 100;
    const auto start = std::chrono::steady_clock::now();

    csp::runtime rt;
    csp::task_group chain(rt);

    auto first = csp::make_chan<std::uint64_t>();
    chain.go(generate(first));
    csp::receiver<std::uint64_t> end = first;

    std::uint64_t last = 0;
    long found = 0;
    auto report = start;
    for (; found < n; ++found) {
        std::optional<std::uint64_t> prime = end.recv();  // main is a plain thread: a blocking receive
        if (!prime) break;
        last = *prime;
        if (const auto now = std::chrono::steady_clock::now(); now - report >= std::chrono::seconds(1)) {
            report = now;
            fmt::print(stderr, "sieve: {} primes so far\n", found);
        }
        fmt::print("{}\n", last);
        auto next = csp::make_chan<std::uint64_t>();
        chain.go(filter(end, next, last));
        end = next;
    }
    std::fflush(stdout);

    chain.cancel();  // the generator and every filter are parked in a send or a receive
    chain.wait();    // cancellation is not an error: this returns normally
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    fmt::print(stderr, "sieve: {} primes (the last {}), {} filter tasks, {:.3f} s\n", found, last, found, secs);
    return 0;
}
