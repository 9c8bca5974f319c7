// csp::detail::backoff — how long a blocking send, receive or select keeps
// retrying before it registers as a waiter.
//
// Registering is what makes a wait expensive for both sides: the waiter
// takes the lock and parks, and from then on every push (pop) of its peer
// sees a waiter, takes the lock too and hands over with a wake-up. When the
// peer is only a little behind (a producer a few hundred nanoseconds
// slower than its consumer), retrying for a moment instead lets the peer
// finish on its lock-free path, and neither side touches the lock.
// crossbeam does the same before it blocks (spin rounds that double, then a
// few yields). Measured here (thread face, 2 vCPUs, paired medians against
// no polling): buf_mpmc 0.64x, select4 0.73x, pipeline 0.71x, pipeline_par
// 0.31x with at most 1+2+4+8+16 pauses; crossbeam's longer budget (127
// pauses, then yields) lost on the pipelines, whose five or six threads
// share two CPUs, so that the peer a poller waits for is often not running.
//
// The budget also adapts per thread, as the parker's spin does: it halves
// each time polling ran out and grows by a round each time it paid. With a
// single CPU there is no spinning (the peer cannot run meanwhile): each
// round is a yield, which hands the CPU to the peer.
//
// Three rounds more (up to 255 pauses) while this thread's parker spins pay
// (parker::spinning_pays(): its recent waits ended during the spin, so its
// peers run on other CPUs). Such a thread would spin after registering
// anyway, so polling first costs no more CPU, and it spares the peer the
// lock and the hand-over that a registered waiter costs on every value. The
// case: a thread receiving from tasks that send a value every ~500 ns
// (spawn: 1.87x faster); stage threads that share two CPUs rarely have
// their spins pay, and keep the short budget (thread pipelines unchanged).
#pragma once

#include <thread>

#include "parker.hpp"  // may_spin(), CSP_CPU_RELAX()

namespace csp::detail {

class backoff {
public:
    // Waits a little longer than the previous call did; false (without
    // waiting) once this thread's budget is spent and it is time to register.
    bool snooze() noexcept {
        int& limit = budget();
        if (round_ >= limit + (parker::spinning_pays() ? kExtraRounds : 0)) {
            limit = limit / 2 > kMinRounds ? limit / 2 : kMinRounds;
            return false;
        }
        if (may_spin()) {
            for (int i = 0; i < (1 << round_); ++i) CSP_CPU_RELAX();
        } else {
            std::this_thread::yield();
        }
        ++round_;
        return true;
    }

    // The operation went through after at least one snooze: polling paid.
    void paid() noexcept {
        int& limit = budget();
        if (round_ > 0 && limit < kMaxRounds) ++limit;
    }

private:
    static constexpr int kMaxRounds = 5, kMinRounds = 1, kExtraRounds = 3;
    static int& budget() noexcept {
        thread_local int limit = kMaxRounds;
        return limit;
    }

    int round_ = 0;
};

}  // namespace csp::detail
