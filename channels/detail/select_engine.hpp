// csp::detail::select_engine — the blocking select loop over type-erased cases.
//
// The passes follow Go's selectgo, with one before them:
//   pass 0: without locks, try the cases in a random order up to the first
//           whose channel needs its lock (see select_plan::poll_unlocked);
//   pass 1: with every channel locked (in address order), try the cases in
//           a random order; the first ready one wins, so each ready case is
//           equally likely to be chosen.
//   pass 2: nothing ready and no default: register one node per case, all
//           owned by one waiter, then release the locks and park.
//   pass 3: woken (claimed for exactly one case by one compare-and-swap),
//           lock again and take back every node the claimer did not take.
// Handlers run last, with no lock held.
//
// Lock order: channels are locked in increasing address order, each once
// even when several cases name it, and unlocked in reverse. Two selects
// that share channels therefore never wait for each other's locks in a cycle.
#pragma once

#include <algorithm>
#include <chrono>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "backoff.hpp"
#include "random.hpp"
#include "select_case.hpp"

namespace csp::detail {

// Holds the given channel locks for a scope. `locks` is sorted and unique.
class lock_set {
public:
    lock_set(chan_base* const* locks, int n) : locks_(locks), n_(n) {
        for (int i = 0; i < n_; ++i) locks_[i]->lock();
    }
    lock_set(const lock_set&) = delete;
    lock_set& operator=(const lock_set&) = delete;
    ~lock_set() {
        for (int i = n_; i-- > 0;) locks_[i]->unlock();
    }

private:
    chan_base* const* locks_;
    int n_;
};

// What a select is made of, found once before its first pass.
struct select_plan {
    int fallback = -1, timeout = -1, stop = -1;  // case indices, -1 when absent
    int cases = 0;                               // cs[0..cases)
    int polled = 0;                              // order[0..polled): cases tried in passes 0 and 1
    // The timeout case's deadline is still to be set from its `relative`
    // duration. A select whose cases are all on_timeout() reads the clock
    // only once pass 1 found nothing ready: on a busy channel (a select with
    // a fresh timeout per value, Go's time.After) most selects never need
    // the clock, whose read costs 20-60 ns on a VM.
    bool deadline_pending = false;
    int nlocks_ = -1;  // see lock_count(); -1 until it ran

    // A select whose n > 0 cases are all sends and receives, as known from
    // their types (argument_cases): nothing to classify, every case polled.
    // The classifying loop below, a load of each case's kind and a jump per
    // case, was a tenth of a select over four busy channels: select4 without
    // it, paired medians of 9-11, 0.93x on the task face, 0.90x on one
    // worker, 0.90x on the thread face.
    struct channel_cases_only {};
    select_plan(channel_cases_only, int n, int* order) noexcept : cases(n), polled(n) {
        for (int i = 0; i < n; ++i) order[i] = i;
    }
    // The plan of cs[0..n): classified, unless the caller knows from the
    // cases' types that n > 0 and all are sends and receives.
    static select_plan of(case_base* const* cs, int n, int* order, bool channel_cases_only_known) {
        return channel_cases_only_known ? select_plan(channel_cases_only{}, n, order) : select_plan(cs, n, order);
    }

    // Classifies cs[0..n); `order` is a scratch array of n entries.
    select_plan(case_base* const* cs, int n, int* order) : cases(n) {
        if (n == 0) throw error("csp: select with no cases");
        // Counted in a local: `order` is an int* that could alias `polled`,
        // which would make every case a store and a reload of it.
        int count = 0;
        for (int i = 0; i < n; ++i) {
            switch (cs[i]->kind) {
                case case_kind::fallback:
                    if (fallback >= 0) throw error("csp: select with more than one default case");
                    fallback = i;
                    break;
                case case_kind::timeout:
                    if (timeout < 0) {
                        timeout = i;
                        deadline_pending = special(cs[i]).relative.has_value();
                    } else if (deadline_pending && special(cs[i]).relative) {
                        if (*special(cs[i]).relative < *special(cs[timeout]).relative) timeout = i;
                    } else {
                        // Absolute and relative deadlines mixed: set them all now.
                        const steady_time now = std::chrono::steady_clock::now();
                        for (int t : {timeout, i})
                            if (special(cs[t]).relative) special(cs[t]).deadline = after(now, *special(cs[t]).relative);
                        deadline_pending = false;
                        if (special(cs[i]).deadline < special(cs[timeout]).deadline) timeout = i;
                    }
                    break;
                case case_kind::stop:
                    if (stop >= 0) throw error("csp: select with more than one stop case");
                    stop = i;
                    order[count++] = i;
                    break;
                case case_kind::recv:
                case case_kind::send:
                    order[count++] = i;
                    break;
            }
        }
        polled = count;
    }

    // The number of channel locks, locks[0..n) sorted and unique, found on
    // the first call (`locks` is a scratch array of `cases` entries). Not in
    // the constructor: a select that pass 0 completes never needs them.
    // Throws if the select could never complete: only null channels, and no
    // default, timeout or stop case.
    int lock_count(case_base* const* cs, chan_base** locks) {
        if (nlocks_ >= 0) return nlocks_;
        int n = 0;
        for (int i = 0; i < cases; ++i)
            if (cs[i]->kind == case_kind::recv || cs[i]->kind == case_kind::send)
                if (chan_base* c = cs[i]->channel()) locks[n++] = c;
        if (n == 0 && fallback < 0 && timeout < 0 && stop < 0)
            throw error("csp: select on null channels only, with no default, timeout or stop "
                        "case, would block forever");
        // Insertion sort: a select has a handful of channels, and std::sort's
        // inlined large-array branch draws a false -Warray-bounds from g++ 12
        // on the small fixed arrays of a variadic select.
        for (int i = 1; i < n; ++i)
            for (int j = i; j > 0 && std::less<>{}(locks[j], locks[j - 1]); --j)
                std::swap(locks[j], locks[j - 1]);
        nlocks_ = static_cast<int>(std::unique(locks, locks + n) - locks);
        return nlocks_;
    }

    // The random order of the polled cases, so that each ready case is
    // equally likely to be found first, is drawn as it is needed (Fisher-
    // Yates, front to back): pick() fixes position j, uniformly among the
    // cases not placed yet. A select whose first case tried is ready (a busy
    // fan-in) draws one number instead of one per case.
    void pick(int* order, int j) const noexcept {
        if (const int left = polled - j; left > 1)
            std::swap(order[j], order[j + static_cast<int>(random_below(static_cast<std::uint32_t>(left)))]);
    }
    void shuffle_from(int* order, int j) const noexcept {
        for (; j < polled - 1; ++j) pick(order, j);
    }

    // Pass 0, before any lock: the cases in `order` are tried one by one
    // on their lock-free paths (a buffered channel's ring, a stop token), up
    // to the first case that has none. Returns the chosen case or -1.
    //
    // Why: a select over busy buffered channels (Go's fan-in) mostly finds
    // a value, and taking every channel's lock to pop one from a ring that
    // needs no lock made the locks the cost, shared with every producer's
    // hand-over. Each attempt is one atomic operation that completes the
    // case or changes nothing, so choosing the first ready one is the
    // choice pass 1 would make at that instant. Stopping at the first case
    // that needs a lock keeps the order fair: pass 1 then tries every case
    // in the same random order, so a case on an unbuffered channel is not
    // passed over because a buffered one came after it.
    //
    // Draws the random order as it goes; when it returns -1 all of `order`
    // is drawn, for pass 1 and the registrations of pass 2.
    //
    // `try_case(i)` makes case i's attempt (case_base::try_unlocked).
    template <class TryCase>
    int poll_unlocked(int* order, outcome& how, TryCase try_case) {
        for (int j = 0; j < polled; ++j) {
            pick(order, j);
            switch (try_case(order[j])) {
                case unlocked_poll::done: how = outcome::delivered; return order[j];
                case unlocked_poll::closed: how = outcome::closed; return order[j];
                case unlocked_poll::blocked: break;
                case unlocked_poll::needs_lock: shuffle_from(order, j + 1); return -1;
            }
        }
        return -1;
    }

    // Requires every lock in the plan. Pass 1, then the default or an expired
    // deadline; returns the chosen case or -1, and how it completed. Sets
    // the timeout case's deadline when it is pending, before any wait reads it.
    int poll_all(case_base* const* cs, const int* order, wake_list& woken, outcome& how) {
        for (int j = 0; j < polled; ++j) {
            switch (cs[order[j]]->try_now(woken)) {
                case poll::done: how = outcome::delivered; return order[j];
                case poll::closed: how = outcome::closed; return order[j];
                case poll::blocked: break;
            }
        }
        how = outcome::delivered;
        if (fallback >= 0) return fallback;
        if (timeout >= 0) {
            const steady_time now = std::chrono::steady_clock::now();
            if (deadline_pending) {
                special(cs[timeout]).deadline = after(now, *special(cs[timeout]).relative);
                deadline_pending = false;
            }
            if (now >= special(cs[timeout]).deadline) return timeout;
        }
        return -1;
    }
};

// Pass 0 over cs[0..n): select_plan::poll_unlocked, with each case's
// attempt a virtual call, or with cases whose types Cases... are known
// where the select is written (every case a final class): a direct call,
// into which the busy path of a channel case inlines. Why: the attempt
// through the virtual call passed its outcome through memory and paid a
// call per case. select4 on one worker under callgrind: 47.9 M
// instructions before, 41.7 M with the direct call, 40.3 M with the
// same-type path below; thread face, paired medians of 7: 0.89x.
using unlocked_poller = int (*)(select_plan&, case_base* const*, int*, outcome&);

inline int poll_unlocked_virtual(select_plan& plan, case_base* const* cs, int* order, outcome& how) {
    return plan.poll_unlocked(order, how, [cs](int i) { return cs[i]->try_unlocked(); });
}

// Cases of one type (a select over several channels of one type, each
// case made by one function) share one copy of the attempt: no branch on
// the case's index, which is drawn at random and would be mispredicted.
template <class First, class... Rest, std::size_t... I>
unlocked_poll try_unlocked_as(case_base* const* cs, int i, std::index_sequence<I...>) {
    if constexpr ((std::is_same_v<First, Rest> && ...)) {
        return static_cast<First*>(cs[i])->try_unlocked();
    } else {
        unlocked_poll r = unlocked_poll::needs_lock;
        (void)((i == static_cast<int>(I) &&
                ((r = static_cast<std::tuple_element_t<I, std::tuple<First, Rest...>>*>(cs[I])->try_unlocked()),
                 true)) ||
               ...);
        return r;
    }
}

template <class... Cases>
int poll_unlocked_as(select_plan& plan, case_base* const* cs, int* order, outcome& how) {
    return plan.poll_unlocked(order, how, [cs](int i) {
        return try_unlocked_as<Cases...>(cs, i, std::index_sequence_for<Cases...>{});
    });
}

// Runs a select over cs[0..n). `locks` and `order` are scratch arrays of n
// entries. `channel_cases_only`: n > 0 and every case is a send or a
// receive, as the caller knows from their types; `poll0`, pass 0 over them.
// Returns the index of the case whose handler ran.
inline int select_engine(case_base* const* cs, int n, chan_base** locks, int* order,
                         bool channel_cases_only = false, unlocked_poller poll0 = &poll_unlocked_virtual) {
    select_plan plan = select_plan::of(cs, n, order, channel_cases_only);
    const int polled = plan.polled, timeout = plan.timeout, stop = plan.stop;
    const steady_time* deadline = timeout >= 0 ? &special(cs[timeout]).deadline : nullptr;
    const std::stop_token* stop_token = stop >= 0 ? &special(cs[stop]).stop : nullptr;

    // Before registering, pass 1 is repeated for a moment (backoff.hpp): a
    // peer about to send then completes on its own fast path instead of
    // taking our registration's locks and waking us. Not with a default
    // case, which never waits.
    backoff patience;
    bool polling = plan.fallback < 0;
    for (;;) {
        int chosen;
        outcome how;
        if ((chosen = poll0(plan, cs, order, how)) >= 0) {  // the common case: no waiter built
            patience.paid();
            cs[chosen]->run(how);
            return chosen;
        }
        thread_waiter w;
        {
            wake_list woken;  // destroyed after `held`: wakes run unlocked
            lock_set held(locks, plan.lock_count(cs, locks));
            chosen = plan.poll_all(cs, order, woken, how);  // pass 1
            if (chosen < 0 && !polling) {  // pass 2
                for (int j = 0; j < polled; ++j) cs[order[j]]->enqueue(w, order[j]);
                for (int j = 0; j < polled; ++j) cs[order[j]]->recheck(woken);
            }
        }
        if (chosen >= 0) {
            patience.paid();
            cs[chosen]->run(how);
            return chosen;
        }
        if (polling) {
            polling = patience.snooze();
            continue;
        }

        int c = wait_claimed(w, deadline, timeout, stop_token, stop);

        {  // pass 3
            lock_set held(locks, plan.lock_count(cs, locks));
            for (int j = 0; j < polled; ++j) cs[order[j]]->dequeue();
        }
        if (c >= 0 && (c == timeout || c == stop)) {  // c >= 0: g++ 12 saw cs[-1] with neither case
            cs[c]->run(outcome::delivered);
            return c;
        }
        switch (w.result) {
            case outcome::delivered:
            case outcome::closed: cs[c]->run(w.result); return c;
            case outcome::failed: std::rethrow_exception(w.error);
            case outcome::retry: break;  // a sender's value failed to move into us
        }
    }
}

}  // namespace csp::detail
