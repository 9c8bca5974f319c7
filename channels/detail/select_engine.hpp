// csp::detail::select_engine — the blocking select loop over type-erased cases.
//
// The passes follow Go's selectgo:
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

// Runs a select over cs[0..n). `locks` and `order` are scratch arrays of n
// entries. Returns the index of the case whose handler ran.
inline int select_engine(case_base* const* cs, int n, chan_base** locks, int* order) {
    if (n == 0) throw error("csp: select with no cases");
    int fallback = -1, timeout = -1, stop = -1;
    int polled = 0, nlocks = 0;
    for (int i = 0; i < n; ++i) {
        switch (cs[i]->kind) {
            case case_kind::fallback:
                if (fallback >= 0) throw error("csp: select with more than one default case");
                fallback = i;
                break;
            case case_kind::timeout:
                if (timeout < 0 || cs[i]->deadline < cs[timeout]->deadline) timeout = i;
                break;
            case case_kind::stop:
                if (stop >= 0) throw error("csp: select with more than one stop case");
                stop = i;
                order[polled++] = i;
                break;
            case case_kind::recv:
            case case_kind::send:
                order[polled++] = i;
                if (chan_base* c = cs[i]->channel()) locks[nlocks++] = c;
                break;
        }
    }
    if (nlocks == 0 && fallback < 0 && timeout < 0 && stop < 0)
        throw error("csp: select on null channels only, with no default, timeout or stop "
                    "case, would block forever");
    std::sort(locks, locks + nlocks, std::less<>{});
    nlocks = static_cast<int>(std::unique(locks, locks + nlocks) - locks);

    const steady_time* deadline = timeout >= 0 ? &cs[timeout]->deadline : nullptr;
    const std::stop_token* stop_token = stop >= 0 ? &cs[stop]->stop : nullptr;

    for (;;) {
        for (int j = polled - 1; j > 0; --j)  // Fisher-Yates
            std::swap(order[j], order[random_below(static_cast<std::uint32_t>(j + 1))]);

        thread_waiter w;
        int chosen = -1;
        outcome how = outcome::delivered;
        {
            wake_list woken;  // destroyed after `held`: wakes run unlocked
            lock_set held(locks, nlocks);
            // pass 1
            for (int j = 0; j < polled && chosen < 0; ++j) {
                switch (cs[order[j]]->try_now(woken)) {
                    case poll::done: chosen = order[j]; break;
                    case poll::closed: chosen = order[j]; how = outcome::closed; break;
                    case poll::blocked: break;
                }
            }
            if (chosen < 0 && fallback >= 0) chosen = fallback;
            if (chosen < 0 && deadline && std::chrono::steady_clock::now() >= *deadline)
                chosen = timeout;
            // pass 2
            if (chosen < 0)
                for (int j = 0; j < polled; ++j) cs[order[j]]->enqueue(w, order[j]);
        }
        if (chosen >= 0) {
            cs[chosen]->run(how);
            return chosen;
        }

        int c = wait_claimed(w, deadline, timeout, stop_token, stop);

        {  // pass 3
            lock_set held(locks, nlocks);
            for (int j = 0; j < polled; ++j) cs[order[j]]->dequeue();
        }
        if (c == timeout || c == stop) {
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
