// csp::detail::parker — how a blocked thread waits for the one who wakes it.
//
// Policy (measured on 2-vCPU machines, see README "Waiting"): waking a thread
// that sleeps in the kernel costs ~20 us across CPUs, so a waiter first spins
// for a while in case its peer answers soon, then yields a few times (which
// only helps when the peer shares its CPU), then sleeps on a futex. A fixed
// spin is a disaster when both threads share one CPU (the spinner holds the
// CPU its peer needs), so the spin budget adapts per thread: it doubles when
// a spin ended in success and halves when it did not, and it is zero when the
// process may use only one CPU.
//
// Protocol: `word_` is 0 (not notified), 1 (notified) or 2 (the owner sleeps).
// unpark() exchanges in 1 and calls the kernel only if the old value was 2,
// so a waker pays no syscall when its peer is still spinning.
//
// Lifetime: unpark() is the waker's last access to the parker. Once the
// owner sees 1 it may return and free the parker; the futex wake that may
// follow the exchange takes only the address and never reads the memory.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>

#if defined(__linux__)
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <cerrno>
#else
#include <condition_variable>
#include <mutex>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CSP_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define CSP_CPU_RELAX() asm volatile("yield" ::: "memory")
#else
#define CSP_CPU_RELAX() ((void)0)
#endif

namespace csp::detail {

// Spinning pays only when another CPU can run the peer meanwhile.
inline bool may_spin() noexcept {
    static const bool spin = [] {
#if defined(__linux__)
        cpu_set_t set;
        if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set) > 1;
#endif
        return std::thread::hardware_concurrency() > 1;
    }();
    return spin;
}

class parker {
public:
    using clock = std::chrono::steady_clock;

    // Wakes the owner. Safe to call once per park cycle from any thread.
    void unpark() noexcept {
#if defined(__linux__)
        if (word_.exchange(kNotified, std::memory_order_acq_rel) == kSleeping)
            syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word_), FUTEX_WAKE_PRIVATE, 1,
                    nullptr, nullptr, 0);
#else
        std::lock_guard<std::mutex> g(mu_);
        word_.store(kNotified, std::memory_order_release);
        cv_.notify_one();
#endif
    }

    bool notified() const noexcept { return word_.load(std::memory_order_acquire) == kNotified; }

    // True while this thread's recent spins ended in success: its peers run
    // on other CPUs and answer within a spin.
    static bool spinning_pays() noexcept { return spin_budget() >= kMaxSpin; }

    // Waits until unpark() was called.
    void park() noexcept { (void)park_until(nullptr); }

    // Waits until unpark() was called (true) or the deadline passed (false).
    bool park_until(clock::time_point deadline) noexcept { return park_until(&deadline); }

private:
    static constexpr std::uint32_t kIdle = 0, kNotified = 1, kSleeping = 2;
    static constexpr int kMaxSpin = 1000, kMinSpin = 4, kYields = 16;

    static int& spin_budget() noexcept {
        thread_local int budget = 128;
        return budget;
    }

    bool park_until(const clock::time_point* deadline) noexcept {
        if (may_spin()) {
            int& budget = spin_budget();
            for (int i = 0; i < budget; ++i) {
                if (notified()) {
                    budget = budget * 2 + 4 > kMaxSpin ? kMaxSpin : budget * 2 + 4;
                    return true;
                }
                CSP_CPU_RELAX();
            }
            budget = budget / 2 < kMinSpin ? kMinSpin : budget / 2;
        }
        for (int i = 0; i < kYields; ++i) {
            if (notified()) return true;
            std::this_thread::yield();
        }
        return sleep(deadline);
    }

#if defined(__linux__)
    bool sleep(const clock::time_point* deadline) noexcept {
        for (;;) {
            std::uint32_t w = word_.load(std::memory_order_acquire);
            if (w == kNotified) return true;
            if (w == kIdle &&
                !word_.compare_exchange_weak(w, kSleeping, std::memory_order_acq_rel))
                continue;
            timespec rel{};
            if (deadline) {
                auto left = *deadline - clock::now();
                if (left <= clock::duration::zero()) {
                    // Leave the sleeping mark off so a later unpark() skips the syscall.
                    std::uint32_t s = kSleeping;
                    word_.compare_exchange_strong(s, kIdle, std::memory_order_acq_rel);
                    return word_.load(std::memory_order_acquire) == kNotified;
                }
                auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
                rel.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
                rel.tv_nsec = static_cast<long>(ns % 1'000'000'000);
            }
            long r = syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word_),
                             FUTEX_WAIT_PRIVATE, kSleeping, deadline ? &rel : nullptr, nullptr, 0);
            (void)r;  // EAGAIN, EINTR, ETIMEDOUT: the loop re-reads the word and the clock
        }
    }
    std::atomic<std::uint32_t> word_{kIdle};
    static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));
#else
    bool sleep(const clock::time_point* deadline) noexcept {
        std::unique_lock<std::mutex> l(mu_);
        auto done = [&] { return word_.load(std::memory_order_acquire) == kNotified; };
        if (!deadline) {
            cv_.wait(l, done);
            return true;
        }
        return cv_.wait_until(l, *deadline, done);
    }
    std::atomic<std::uint32_t> word_{kIdle};
    std::mutex mu_;
    std::condition_variable cv_;
#endif
};

}  // namespace csp::detail
