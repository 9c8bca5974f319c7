// csp::detail::ring_owner — one end of a lock-free ring (lf_ring.hpp) owned
// by the one thread that uses it, which then claims slots without a locked
// instruction.
//
// Why. A claim in the shared ring is a compare-and-swap of the end's index,
// a locked instruction: about 10 ns on the 2-vCPU machines the benchmarks
// run on, whether or not another core ever touches the line. A channel
// whose producers (or consumers) all run on one thread, as the tasks of a
// one-worker runtime or the single producer of a stage, pays that on every
// value for nothing. Measured on one thread, a value passed through two
// rings (two pushes, two pops): 47 ns with the compare-and-swap claims, 5
// ns with plain stores.
//
// How (biased locking, as JVMs did for monitors). An end is shared (claims
// are compare-and-swaps) until one thread has begun kFirstStreak laps of
// the ring in a row (claimed index 0 each time); that thread then becomes
// its owner: it sets kOwned in the
// end's index with its next compare-and-swap claim, after which every
// other thread's compare-and-swap on that index fails (they expect it
// unset), and the owner alone moves the index, with plain stores. A thread
// that finds kOwned set and is not the owner revokes the ownership before
// it claims:
//
//   revoker                               owner, for each claim
//   owner_ := revoking                    busy := 1
//   process_barrier()                     (compiler fence)
//   wait until owner's busy == 0          if owner_ == me: load, check,
//   clear kOwned (read-modify-write)          store the index
//   owner_ := none                        busy := 0 (release)
//
// process_barrier() (Linux membarrier, private expedited) runs a full
// memory barrier on every running thread of the process. Either the
// owner's check of owner_ comes after that barrier, and sees `revoking`, so
// it claims the shared way; or its `busy := 1` came before it and is seen
// by the revoker, which waits for the claim to finish (the release of busy
// hands its index store over). The expensive side is the revoker's (a
// system call that interrupts the process's other CPUs), and it is rare:
// after each revocation an end needs a 16 times longer streak before it is
// owned again (up to kMaxStreak), so ends that threads keep sharing settle
// on the shared claims within two or three revocations. (Starting at 8 laps
// and doubling, a select's registrations revoked its four producers' tails
// about 100 times a run: select4 on the task face 1.11x slower; 64 laps and
// 16 times, 1.01x.) Where membarrier is missing (another OS, an
// old kernel, a sandbox that filters it), no end is ever owned.
//
// The same barrier keeps Dekker's rule of chan_state.hpp: a party that
// registers as a waiter looks at the ring afterwards through has_value() or
// has_room(), which first revoke any end owned by another thread, so that
// the owner's claims are seen, or the owner, claiming after the barrier,
// claims the shared way and then sees the registration.
//
// Invariants. kOwned is set in an index only by the compare-and-swap of a
// thread that has reserved the end (owner_ == that thread), and cleared only
// by a revoker that moved owner_ to `revoking`; so kOwned set implies
// owner_ is the thread that set it, or `revoking`. While it is set, only
// the owner writes the index. The owner leaves the busy window before any
// wait and before it moves a value, so a revoker waits for a few
// instructions only (unless the owner is preempted inside them).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <limits>
#include <mutex>
#include <new>
#include <thread>

#if defined(__linux__) && __has_include(<linux/membarrier.h>)
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>
#if defined(__NR_membarrier)
#define CSP_HAS_MEMBARRIER 1
#endif
#endif

#include "parker.hpp"  // CSP_CPU_RELAX()

namespace csp::detail {

// The bit of a ring end's index that says the end is owned.
inline constexpr std::size_t kOwned = std::size_t{1} << (std::numeric_limits<std::size_t>::digits - 1);

// A thread's identity as an owner, and its busy flag (set while it claims
// on an end it owns, any end). Tokens are never freed: a revoker may read
// the busy flag of a thread that has exited. A token freed by an exiting
// thread goes to the next new thread, which inherits the ends the old one
// owned; the pool's lock orders the old thread's claims before the new one's.
struct alignas(64) owner_token {
    std::atomic<std::uint32_t> busy{0};
    bool may_own = true;  // false for the fallback token of a thread that found the pool empty
};

// True where process_barrier() works (checked, and the process registered
// for it, once).
inline bool process_barrier_available() noexcept {
#if defined(CSP_HAS_MEMBARRIER)
    static const bool available = [] {
        const long commands = ::syscall(__NR_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
        if (commands < 0 || (commands & MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0) return false;
        return ::syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
    }();
    return available;
#else
    return false;
#endif
}

// A full memory barrier on every running thread of this process; requires
// process_barrier_available() (once registered, it cannot fail: if it did,
// an owner could be claiming unseen, so the process stops).
inline void process_barrier() noexcept {
#if defined(CSP_HAS_MEMBARRIER)
    if (::syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) != 0) std::terminate();
#else
    std::terminate();  // never called: nothing is owned without it
#endif
}

// The tokens of live threads. Fixed storage, never destroyed (a thread may
// exit after static destruction) and never allocated (a thread's first
// channel operation allocates nothing). Past kTokens live threads, a thread
// gets the shared fallback token, which never owns.
class owner_token_pool {
public:
    static owner_token_pool& instance() noexcept {
        alignas(owner_token_pool) static unsigned char storage[sizeof(owner_token_pool)];
        static owner_token_pool* const pool = ::new (storage) owner_token_pool;
        return *pool;
    }

    // For a thread past its thread_local destructors: never owns.
    owner_token& fallback() noexcept { return fallback_; }

    owner_token& take() noexcept {
        std::lock_guard g(mu_);
        if (free_count_ > 0) return tokens_[free_[--free_count_]];
        if (unused_ < kTokens) return tokens_[unused_++];
        return fallback_;
    }
    void give_back(owner_token& t) noexcept {
        if (&t == &fallback_) return;
        std::lock_guard g(mu_);
        free_[free_count_++] = static_cast<std::uint32_t>(&t - tokens_);
    }

private:
    owner_token_pool() noexcept { fallback_.may_own = false; }

    static constexpr std::size_t kTokens = 1024;
    std::mutex mu_;
    owner_token tokens_[kTokens];     // [0, unused_) handed out at least once
    std::uint32_t free_[kTokens];     // guarded by mu_: indices given back
    std::size_t free_count_ = 0;      // guarded by mu_
    std::size_t unused_ = 0;          // guarded by mu_
    owner_token fallback_;
};

inline constinit thread_local owner_token* this_thread_token_ = nullptr;
inline constinit thread_local bool this_thread_token_returned_ = false;

[[gnu::noinline]] inline owner_token& take_owner_token() noexcept {
    struct holder {
        owner_token* token = nullptr;
        ~holder() {
            owner_token_pool::instance().give_back(*token);
            this_thread_token_ = nullptr;
            this_thread_token_returned_ = true;
        }
    };
    // A channel used by a thread_local destructor that runs after ours.
    if (this_thread_token_returned_) return owner_token_pool::instance().fallback();
    static thread_local holder held;
    held.token = &owner_token_pool::instance().take();
    this_thread_token_ = held.token;
    return *held.token;
}

// The calling thread's token.
inline owner_token& this_thread_owner_token() noexcept {
    if (owner_token* t = this_thread_token_) return *t;
    return take_owner_token();
}

class ring_owner {
public:
    // In laps: 64 laps of a 128-value channel are 8192 values.
    static constexpr std::uint32_t kFirstStreak = 64;
    static constexpr std::uint32_t kMaxStreak = std::uint32_t{1} << 20;

    // Whether `me` owns this end (an owner's own view is exact; another
    // thread's may be stale, and only says that it must not claim blindly).
    bool is(const owner_token& me) const noexcept { return owner_.load(std::memory_order_relaxed) == &me; }

    // The owner's claim: runs `claim` (load, check, store of the index; no
    // wait, no user code) inside the busy window, if `me` still owns the
    // end once busy is set. False if it does not (the caller claims the
    // shared way).
    template <class Claim>
    bool claim_owned(owner_token& me, Claim&& claim) noexcept {
        me.busy.store(1, std::memory_order_relaxed);
        // The hardware half of this fence is the revoker's process_barrier().
        std::atomic_signal_fence(std::memory_order_seq_cst);
        const bool owned = owner_.load(std::memory_order_relaxed) == &me;
        if (owned) claim();
        me.busy.store(0, std::memory_order_release);
        return owned;
    }

    // After a shared claim of index 0 by `me`: the streak of laps that may
    // make `me` the owner.
    void note_lap(const owner_token& me) noexcept {
        if (last_.load(std::memory_order_relaxed) != &me) {
            last_.store(&me, std::memory_order_relaxed);
            streak_.store(1, std::memory_order_relaxed);
            return;
        }
        streak_.store(streak_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    }

    // Whether `me` began enough laps in a row to own the end.
    bool wants(const owner_token& me) const noexcept {
        return streak_.load(std::memory_order_relaxed) >= threshold_.load(std::memory_order_relaxed) &&
               last_.load(std::memory_order_relaxed) == &me;
    }

    // After wants(): reserves the end for `me` if nobody owns or reserves
    // it; the caller then claims with kOwned set, or calls
    // cancel_reservation().
    [[gnu::noinline]] bool reserve(owner_token& me) noexcept {
        if (!me.may_own || !process_barrier_available()) {
            streak_.store(0, std::memory_order_relaxed);  // not again for a while
            return false;
        }
        owner_token* none = nullptr;
        return owner_.compare_exchange_strong(none, &me, std::memory_order_acq_rel, std::memory_order_relaxed);
    }
    // The reserving claim failed (the index moved): the end stays shared.
    // kOwned was not set, so no revoker has touched owner_.
    void cancel_reservation() noexcept { owner_.store(nullptr, std::memory_order_release); }

    // Requires kOwned seen in `index`. Returns once kOwned is clear (by this
    // call or another revoker's). `me` may be the owner itself (close(), or
    // a destructor), which is not claiming meanwhile: no barrier then.
    void revoke(std::atomic<std::size_t>& index, const owner_token& me) noexcept {
        for (int spins = 0;; ++spins) {
            if ((index.load(std::memory_order_acquire) & kOwned) == 0) return;
            owner_token* owner = owner_.load(std::memory_order_acquire);
            // kOwned set: owner_ is its owner, or `revoking` (another
            // revocation is on its way: wait for it).
            if (owner == &revoking_ || owner == nullptr ||
                !owner_.compare_exchange_strong(owner, &revoking_, std::memory_order_acq_rel,
                                                std::memory_order_acquire)) {
                pause(spins);
                continue;
            }
            if (owner != &me) {
                process_barrier();
                for (int w = 0; owner->busy.load(std::memory_order_acquire) != 0; ++w) pause(w);
            }
            index.fetch_and(~kOwned, std::memory_order_acq_rel);
            // A longer streak before the next ownership: ends that threads
            // keep sharing stop paying for revocations.
            threshold_.store(std::min(threshold_.load(std::memory_order_relaxed) * 16, kMaxStreak),
                             std::memory_order_relaxed);
            last_.store(nullptr, std::memory_order_relaxed);
            streak_.store(0, std::memory_order_relaxed);
            owner_.store(nullptr, std::memory_order_release);
            return;
        }
    }

    // Without concurrent users (a ring's destructor): back to shared.
    void forget(std::atomic<std::size_t>& index) noexcept {
        index.fetch_and(~kOwned, std::memory_order_relaxed);
        owner_.store(nullptr, std::memory_order_relaxed);
    }

private:

    static void pause(int spins) noexcept {
        if (spins < 64) CSP_CPU_RELAX();
        else std::this_thread::yield();
    }

    // Marks an end whose ownership is being revoked.
    inline static owner_token revoking_{};

    std::atomic<owner_token*> owner_{nullptr};  // the owner, a reserver, &revoking_, or none
    std::atomic<const owner_token*> last_{nullptr};  // the thread that began the latest lap
    std::atomic<std::uint32_t> streak_{0};           // how many laps in a row
    std::atomic<std::uint32_t> threshold_{kFirstStreak};  // streak that makes an owner; written by revokers
};

}  // namespace csp::detail
