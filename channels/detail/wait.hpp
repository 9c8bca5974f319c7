// csp::detail::wait_claimed — the blocking face's wait: park a thread until
// its waiter is claimed, by a peer, by its deadline or by a stop request.
#pragma once

#include <chrono>
#include <optional>
#include <stop_token>

#include "park_hooks.hpp"
#include "waiter.hpp"

namespace csp::detail {

using steady_time = std::chrono::steady_clock::time_point;

inline steady_time to_steady(std::chrono::steady_clock::time_point t) { return t; }
template <class Clock, class Dur>
steady_time to_steady(std::chrono::time_point<Clock, Dur> t) {
    return std::chrono::steady_clock::now() +
           std::chrono::ceil<std::chrono::steady_clock::duration>(t - Clock::now());
}
// d in steady_clock ticks, saturated: duration::max() stays "forever".
template <class Rep, class Period>
std::chrono::steady_clock::duration saturated(std::chrono::duration<Rep, Period> d) {
    using sd = std::chrono::steady_clock::duration;
    if (std::chrono::duration<long double, std::nano>(d) >=
        std::chrono::duration<long double, std::nano>(sd::max()))
        return sd::max();
    if (d <= d.zero()) return sd::zero();
    return std::chrono::ceil<sd>(d);
}

// t + d, saturated at the end of time.
inline steady_time after(steady_time t, std::chrono::steady_clock::duration d) {
    return d >= steady_time::max() - t ? steady_time::max() : t + d;
}
// now + d, saturated at the end of time.
inline steady_time after_now(std::chrono::steady_clock::duration d) {
    return after(std::chrono::steady_clock::now(), d);
}
template <class Rep, class Period>
steady_time after_now(std::chrono::duration<Rep, Period> d) {
    return after_now(saturated(d));
}


// What a stop request does to a parked thread: claim it for `stop_case`, and
// wake it if that claim won. std::stop_callback's destructor waits for a
// callback that is running, so the waiter outlives every call of this.
struct stop_claim {
    thread_waiter* w;
    int stop_case;
    void operator()() const noexcept {
        if (w->try_claim(stop_case)) w->wake();
    }
};

// Parks until `w` is claimed and woken; returns the case it was claimed for.
// On a deadline the thread claims itself for `timeout_case`; if that CAS
// loses, a peer claimed it first and the thread waits for the peer's wake,
// so a value that was delivered is never dropped by a timeout.
inline int wait_claimed(thread_waiter& w, const steady_time* deadline, int timeout_case,
                        const std::stop_token* stop, int stop_case) {
    std::optional<std::stop_callback<stop_claim>> on_stop;
    if (stop && stop->stop_possible()) on_stop.emplace(*stop, stop_claim{&w, stop_case});
    if (park_hooks* h = current_park_hooks(); h && !w.park().notified()) h->thread_blocks();
    if (deadline && !w.park().park_until(*deadline)) {
        if (w.try_claim(timeout_case)) return timeout_case;
    }
    // On a runtime's thread, a wait that only a peer can end counts for the
    // runtime's deadlock detector.
    park_hooks* hooks = deadline || on_stop ? nullptr : current_park_hooks();
    if (hooks && !w.park().notified()) hooks->parked();
    else hooks = nullptr;
    w.park().park();
    if (hooks) hooks->unparked();
    return w.claimed_case();
}

}  // namespace csp::detail
