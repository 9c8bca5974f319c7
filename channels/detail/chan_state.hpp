// csp::detail::chan_state — the state that all handles of one channel share.
//
// One mutex guards everything mutable (Go's hchan: "lock protects all fields").
// Buffered (capacity >= 1): a ring; receivers take from it, senders wait
// while it is full, and a receiver that frees a slot moves the oldest waiting
// sender's value into it, so each sender's values stay in FIFO order.
// Unbuffered (capacity 0): the ring is always "full", so a sender hands its
// value straight to a waiting receiver or waits until one claims it.
//
// Invariants (under mu_):
//   !buf_.empty()  implies no live receiver waits (a send hands off first).
//   !buf_.full()   implies no live sender waits (a receive refills first).
//   closed_        implies no live waiter of either kind (close claimed them).
//   A queue may hold dead nodes (waiters claimed elsewhere); they are dropped
//   by whoever meets them and never count as waiting.
//
// Values move under the lock, as in Go (the element copy in chan.go happens
// under c.lock): a T whose move constructor uses a channel would deadlock.
// If a move throws, the exception goes to the operation that owned the value
// (the sender, or a receiver taking from the ring) and nothing else changes:
// a receiver that was about to get the value runs its operation again.
#pragma once

#include <atomic>
#include <cstddef>
#include <mutex>
#include <optional>
#include <stop_token>
#include <utility>

#include "../errors.hpp"
#include "../status.hpp"
#include "chan_lock.hpp"
#include "ring.hpp"
#include "wait.hpp"
#include "waiter.hpp"

namespace csp::detail {

// The part of a channel that select needs without knowing T: its lock.
class chan_base {
public:
    void lock() noexcept { mu_.lock(); }
    void unlock() noexcept { mu_.unlock(); }

protected:
    chan_lock mu_;
};

// What an attempt made under the lock found.
enum class poll { done, closed, blocked };

// Waiter states for the plain operations, which have one case (0).
inline constexpr int kTimedOut = -2;
inline constexpr int kStopped = -3;

template <class T>
class chan_state : public chan_base {
public:
    explicit chan_state(std::size_t capacity) : buf_(capacity) {}

    std::size_t capacity() const noexcept { return buf_.capacity(); }  // immutable
    std::size_t size() {
        std::lock_guard g(mu_);
        return buf_.size();
    }
    bool closed() {
        std::lock_guard g(mu_);
        return closed_;
    }

    // ---- steps under the lock, shared by the plain operations and select ----

    // Requires mu_. Sends v now if a receiver waits or the ring has room.
    // Moves from v only when it returns done.
    poll send_locked(T& v, wake_list& woken) {
        if (closed_) return poll::closed;
        if (wait_node* r = receivers_.claim_front()) {
            try {
                static_cast<std::optional<T>*>(r->slot)->emplace(std::move(v));
            } catch (...) {
                woken.add(*r->owner, outcome::retry);  // the receiver tries again
                throw;
            }
            woken.add(*r->owner, outcome::delivered);
            return poll::done;
        }
        if (!buf_.full()) {
            buf_.push_back(std::move(v));
            return poll::done;
        }
        return poll::blocked;
    }

    // Requires mu_. Receives into `out` now if the ring or a waiting sender
    // has a value; reports closed only once the ring is drained.
    poll recv_locked(std::optional<T>& out, wake_list& woken) {
        if (!buf_.empty()) {
            out.emplace(std::move(buf_.front()));  // a throw leaves the ring unchanged
            buf_.pop_front();
            refill_locked(woken);
            return poll::done;
        }
        while (wait_node* s = senders_.claim_front()) {
            try {
                out.emplace(std::move(*static_cast<T*>(s->slot)));
            } catch (...) {
                fail_sender(*s, woken);
                continue;
            }
            woken.add(*s->owner, outcome::delivered);
            return poll::done;
        }
        return closed_ ? poll::closed : poll::blocked;
    }

    // Requires mu_. Throws closed_error if already closed.
    void close_locked(wake_list& woken) {
        if (closed_) throw closed_error("csp: close of a closed channel");
        closed_ = true;
        while (wait_node* r = receivers_.claim_front()) woken.add(*r->owner, outcome::closed);
        while (wait_node* s = senders_.claim_front()) woken.add(*s->owner, outcome::closed);
    }

    void enqueue_send_locked(wait_node& n) noexcept { senders_.push_back(n); }
    void enqueue_recv_locked(wait_node& n) noexcept { receivers_.push_back(n); }
    void dequeue_send_locked(wait_node& n) noexcept { senders_.erase(n); }
    void dequeue_recv_locked(wait_node& n) noexcept { receivers_.erase(n); }

    // ---- whole operations ----

    void close() {
        wake_list woken;
        std::lock_guard g(mu_);
        close_locked(woken);
    }

    // Closes unless already closed; true if this call closed it.
    bool close_if_open() {
        wake_list woken;
        std::lock_guard g(mu_);
        if (closed_) return false;
        close_locked(woken);
        return true;
    }

    // A send or receive that completes now or not at all, reporting what it
    // found; peers it completes are woken once the lock is released.
    poll send_now(T& v) {
        wake_list woken;
        std::lock_guard g(mu_);
        return send_locked(v, woken);
    }
    poll recv_now(std::optional<T>& out) {
        wake_list woken;
        std::lock_guard g(mu_);
        return recv_locked(out, woken);
    }

    status try_send(T& v) {
        wake_list woken;
        std::lock_guard g(mu_);
        switch (send_locked(v, woken)) {
            case poll::done: return status::ok;
            case poll::closed: return status::closed;
            case poll::blocked: break;
        }
        return status::would_block;
    }

    // Receives into the caller's final object, so that no move can throw
    // once the value has left the channel.
    void try_recv(recv_result<T>& r) {
        wake_list woken;
        std::lock_guard g(mu_);
        switch (recv_locked(r.value(), woken)) {
            case poll::done: r.set_state(status::ok); break;
            case poll::closed: r.set_state(status::closed); break;
            case poll::blocked: r.set_state(status::would_block); break;
        }
    }

    // Blocks until sent, closed, past the deadline or stopped. Moves from v
    // only when it returns ok.
    status send(T& v, const steady_time* deadline, const std::stop_token* stop) {
        for (;;) {
            thread_waiter w;
            wait_node n;
            n.owner = &w;
            n.slot = &v;
            {
                wake_list woken;
                std::lock_guard g(mu_);
                switch (send_locked(v, woken)) {
                    case poll::done: return status::ok;
                    case poll::closed: return status::closed;
                    case poll::blocked: break;
                }
                if (status s = gave_up(deadline, stop); s != status::ok) return s;
                senders_.push_back(n);
            }
            int c = wait_claimed(w, deadline, kTimedOut, stop, kStopped);
            if (c < 0) return withdraw(senders_, n, c);
            switch (w.result) {
                case outcome::delivered: return status::ok;
                case outcome::closed: return status::closed;
                case outcome::failed: std::rethrow_exception(w.error);
                case outcome::retry: break;
            }
        }
    }

    // Blocks until a value arrives in `out` (ok), the channel is closed and
    // drained, the deadline passes or a stop is requested. The value is
    // moved once, straight into `out`, the caller's final object: once it
    // has left the channel no further move can throw it away.
    status recv(std::optional<T>& out, const steady_time* deadline, const std::stop_token* stop) {
        for (;;) {
            thread_waiter w;
            wait_node n;
            n.owner = &w;
            n.slot = &out;
            {
                wake_list woken;
                std::lock_guard g(mu_);
                switch (recv_locked(out, woken)) {
                    case poll::done: return status::ok;
                    case poll::closed: return status::closed;
                    case poll::blocked: break;
                }
                if (status s = gave_up(deadline, stop); s != status::ok) return s;
                receivers_.push_back(n);
            }
            int c = wait_claimed(w, deadline, kTimedOut, stop, kStopped);
            if (c < 0) return withdraw(receivers_, n, c);
            switch (w.result) {
                case outcome::delivered: return status::ok;
                case outcome::closed: return status::closed;
                case outcome::retry:
                case outcome::failed: break;  // a sender's value failed to move: wait again
            }
        }
    }

    recv_result<T> recv_result_of(const steady_time* deadline, const std::stop_token* stop) {
        recv_result<T> r(status::would_block);
        r.set_state(recv(r.value(), deadline, stop));
        return r;
    }

    // Handles of kind closing_sender count here; the last one to go closes.
    void add_closer() noexcept { closers_.fetch_add(1, std::memory_order_relaxed); }
    void drop_closer() {
        if (closers_.fetch_sub(1, std::memory_order_acq_rel) == 1) close_if_open();
    }

private:
    static status gave_up(const steady_time* deadline, const std::stop_token* stop) {
        if (stop && stop->stop_requested()) return status::cancelled;
        if (deadline && std::chrono::steady_clock::now() >= *deadline) return status::timeout;
        return status::ok;
    }

    // The waiter claimed itself (timeout or stop): take its node back out.
    status withdraw(wait_queue& q, wait_node& n, int claimed) {
        std::lock_guard g(mu_);
        q.erase(n);
        return claimed == kTimedOut ? status::timeout : status::cancelled;
    }

    // Requires mu_ and a free slot: moves the oldest live waiting sender's
    // value into the ring.
    void refill_locked(wake_list& woken) {
        while (wait_node* s = senders_.claim_front()) {
            try {
                buf_.push_back(std::move(*static_cast<T*>(s->slot)));
            } catch (...) {
                fail_sender(*s, woken);
                continue;
            }
            woken.add(*s->owner, outcome::delivered);
            return;
        }
    }

    static void fail_sender(wait_node& s, wake_list& woken) noexcept {
        s.owner->error = std::current_exception();
        woken.add(*s.owner, outcome::failed);
    }

    ring<T> buf_;             // guarded by mu_
    wait_queue senders_;      // guarded by mu_
    wait_queue receivers_;    // guarded by mu_
    bool closed_ = false;     // guarded by mu_
    std::atomic<std::size_t> closers_{0};
};

}  // namespace csp::detail
