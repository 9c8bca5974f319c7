// csp::detail::chan_lock — the lock of a channel: spin briefly, then sleep.
//
// A channel's critical sections are a few dozen nanoseconds (a ring slot, a
// queue link, one CAS on a waiter), and on a busy channel the two sides take
// the lock millions of times a second. std::mutex (glibc) puts a contending
// thread to sleep in the kernel almost at once, and waking it costs
// microseconds: on buf_spsc that made lock hand-offs, not the channel, the
// cost (perf: futex syscalls and __lll_lock_wait on top). Like Go's runtime
// lock (lock_futex.go), this lock first spins a little, since the holder
// will be out within nanoseconds, then yields once, and only then sleeps.
//
// Protocol (Drepper, "Futexes are tricky", mutex #3): `word_` is 0 (free),
// 1 (held, nobody sleeps) or 2 (held, someone may sleep). A sleeper marks 2
// before it sleeps; unlock() pays the wake syscall only when the mark is there.
// Spinning is skipped when the process may use a single CPU: the holder
// cannot run meanwhile (the single-core cliff, README "Waiting").
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>

#include "parker.hpp"  // may_spin(), CSP_CPU_RELAX()

namespace csp::detail {

class chan_lock {
public:
    chan_lock() = default;
    chan_lock(const chan_lock&) = delete;
    chan_lock& operator=(const chan_lock&) = delete;

    void lock() noexcept {
        std::uint32_t expected = kFree;
        if (word_.compare_exchange_strong(expected, kHeld, std::memory_order_acquire,
                                          std::memory_order_relaxed))
            return;
        lock_contended();
    }

    bool try_lock() noexcept {
        std::uint32_t expected = kFree;
        return word_.compare_exchange_strong(expected, kHeld, std::memory_order_acquire,
                                             std::memory_order_relaxed);
    }

    void unlock() noexcept {
        if (word_.exchange(kFree, std::memory_order_release) == kContended) wake_one();
    }

private:
    static constexpr std::uint32_t kFree = 0, kHeld = 1, kContended = 2;
    // ~100 pauses (a few microseconds here): far longer than any critical
    // section, far shorter than a sleep and a wake-up.
    static constexpr int kSpins = 100;

    void lock_contended() noexcept {
        if (may_spin()) {
            for (int i = 0; i < kSpins; ++i) {
                // Read before the CAS, so spinning waiters do not steal the
                // line from the holder with writes.
                if (word_.load(std::memory_order_relaxed) == kFree && try_lock()) return;
                CSP_CPU_RELAX();
            }
        }
        std::this_thread::yield();
        if (try_lock()) return;
        // From here on the word says "someone may sleep" while we hold it, so
        // our unlock() wakes the next sleeper even if we never slept ourselves.
        while (word_.exchange(kContended, std::memory_order_acquire) != kFree) sleep();
    }

#if defined(__linux__)
    void sleep() noexcept {
        syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word_), FUTEX_WAIT_PRIVATE,
                kContended, nullptr, nullptr, 0);
    }
    void wake_one() noexcept {
        syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word_), FUTEX_WAKE_PRIVATE, 1,
                nullptr, nullptr, 0);
    }
#else
    void sleep() noexcept { word_.wait(kContended, std::memory_order_relaxed); }
    void wake_one() noexcept { word_.notify_one(); }
#endif

    std::atomic<std::uint32_t> word_{kFree};
};

}  // namespace csp::detail
