// csp::detail::chan_state — the state that all handles of one channel share.
//
// One lock guards the queues of waiting senders and receivers and the
// closed flag (Go's hchan: "lock protects all fields"). The buffer is one of
// two kinds:
//
//   - A lock-free ring (lf_ring.hpp) for a buffered channel whose values
//     move without throwing (ints, pointers, strings, unique_ptrs: nearly
//     all). A send or receive that finds room or a value completes without
//     the lock; the lock is taken only to meet a waiting party.
//   - A plain ring under the lock (ring.hpp) otherwise: an unbuffered
//     channel (capacity 0: the ring is always "full", so a sender hands its
//     value straight to a waiting receiver or waits until one claims it),
//     or a T whose move may throw.
//
// With the lock-free ring, nobody must sleep while the ring could serve
// them, though pushes and pops do not take the lock. The rule that keeps
// this (Dekker's):
//   - a party that registers as waiting does so under the lock, then,
//     after a seq_cst fence and still under the lock, looks at the ring
//     again (recheck_locked): values for waiting receivers, room for
//     waiting senders are handed over there, possibly to itself;
//   - a lock-free push (pop) claims its slot with a seq_cst CAS of the
//     ring's tail (head), then reads the number of waiting receivers
//     (senders) with a seq_cst load; if any, it takes the lock and hands
//     over the same way.
// Either the pusher sees the registration or the registrant sees the claim
// (the ring's hints count claims: lf_ring::has_value, has_room). A ring end
// owned by one thread (ring_owner.hpp) claims with a plain store, no CAS:
// the registrant's hints first take such an end back through a process-wide
// barrier, which orders the owner's claims and reads with its own; a claimed
// value still being written is waited for by the pop that hands it over.
// A waiter claimed for a value that a lock-free party took first is woken
// with outcome::retry and runs its operation again.
//
// Invariants (under mu_), for the plain ring:
//   !buf_.empty()  implies no live receiver waits (a send hands off first).
//   !buf_.full()   implies no live sender waits (a receive refills first).
// For the lock-free ring these hold once every hand-over due has run.
//   closed_        implies no live waiter of either kind (close claimed them)
//                  and, with the lock-free ring, its close mark set.
//   A queue may hold dead nodes (waiters claimed elsewhere); they are dropped
//   by whoever meets them and never count as waiting.
//
// Values move under the lock for the plain ring, as in Go (the element copy
// in chan.go happens under c.lock): a T whose move constructor uses a
// channel would deadlock. If a move throws, the exception goes to the
// operation that owned the value (the sender, or a receiver taking from the
// ring) and nothing else changes: a receiver that was about to get the value
// runs its operation again.
#pragma once

#include <atomic>
#include <cstddef>
#include <mutex>
#include <optional>
#include <stop_token>
#include <type_traits>
#include <utility>

#include "../errors.hpp"
#include "../status.hpp"
#include "backoff.hpp"
#include "chan_lock.hpp"
#include "lf_ring.hpp"
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

// The lock-free ring exists only for T whose move cannot throw.
template <class T, bool LockFree>
struct lf_ring_of {
    using storage = std::optional<lf_ring<T>>;
    using result = typename lf_ring<T>::result;
};
template <class T>
struct lf_ring_of<T, false> {
    enum class result { ok, full_or_empty, closed };
    // Never used (lock_free() is false): the ring's interface, so that the
    // code that uses the ring compiles for every T.
    struct storage {
        result push(T&) noexcept { return result::full_or_empty; }
        result pop(std::optional<T>&) noexcept { return result::full_or_empty; }
        result quick_push(T&) noexcept { return result::full_or_empty; }
        result quick_pop(std::optional<T>&) noexcept { return result::full_or_empty; }
        bool try_push(T&) noexcept { return false; }
        bool try_pop(std::optional<T>&) noexcept { return false; }
        bool close() noexcept { return false; }
        void wait_for_claimed_pushes() const noexcept {}
        bool has_value() noexcept { return false; }
        bool has_room() noexcept { return false; }
        bool has_room_for(std::size_t) const noexcept { return true; }
        std::size_t size() noexcept { return 0; }
        std::size_t capacity() const noexcept { return 0; }
    };
};

// What an attempt made under the lock found.
enum class poll { done, closed, blocked };

// Waiter states for the plain operations, which have one case (0).
inline constexpr int kTimedOut = -2;
inline constexpr int kStopped = -3;

template <class T>
class chan_state : public chan_base {
    // Whether a buffered channel of T uses the lock-free ring.
    static constexpr bool kLockFreeType = std::is_nothrow_move_constructible_v<T>;

public:
    explicit chan_state(std::size_t capacity) : buf_(kLockFreeType ? 0 : capacity) {
        if constexpr (kLockFreeType)
            if (capacity > 0) lf_.emplace(capacity);
    }

    std::size_t capacity() const noexcept {  // immutable
        if (lock_free()) return lf().capacity();
        return buf_.capacity();
    }
    std::size_t size() {
        if (lock_free()) return lf().size();
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
        if (lock_free()) {
            // Straight to a waiting receiver only when the ring holds no
            // older value that is due to it first.
            if (!lf().has_value())
                if (wait_node* r = receivers_.claim_front()) {
                    static_cast<std::optional<T>*>(r->slot)->emplace(std::move(v));
                    woken.add(*r->owner, outcome::delivered);
                    return poll::done;
                }
            switch (lf().push(v)) {
                case ring_result::ok: kick_locked(woken); return poll::done;
                case ring_result::closed: return poll::closed;
                case ring_result::full_or_empty: return poll::blocked;
            }
        }
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
        if (lock_free()) {
            switch (lf().pop(out)) {
                case ring_result::ok: refill_locked(woken); return poll::done;
                case ring_result::closed: return poll::closed;
                case ring_result::full_or_empty: break;
            }
            // Empty: a sender still waiting (its hand-over is due) is the oldest.
            if (wait_node* s = senders_.claim_front()) {
                out.emplace(std::move(*static_cast<T*>(s->slot)));
                woken.add(*s->owner, outcome::delivered);
                return poll::done;
            }
            return closed_ ? poll::closed : poll::blocked;
        }
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

    // Requires mu_, after this call (or a select) registered a waiter here
    // and before it releases the lock: hands over what the lock-free ring
    // can give the waiters now (see the top of this file).
    void recheck_locked(wake_list& woken) {
        if (!lock_free()) return;
        std::atomic_thread_fence(std::memory_order_seq_cst);
        kick_locked(woken);
    }

    // Requires mu_. Throws closed_error if already closed.
    void close_locked(wake_list& woken) {
        if (closed_) throw closed_error("csp: close of a closed channel");
        closed_ = true;
        if (lock_free()) {
            lf().close();                    // no push gets in after this
            lf().wait_for_claimed_pushes();  // and those already in have landed
            kick_locked(woken);              // values already in the ring go to who waits
        }
        while (wait_node* r = receivers_.claim_front()) woken.add(*r->owner, outcome::closed);
        while (wait_node* s = senders_.claim_front()) woken.add(*s->owner, outcome::closed);
    }

    void enqueue_send_locked(wait_node& n) noexcept { senders_.push_back(n); }
    void enqueue_recv_locked(wait_node& n) noexcept { receivers_.push_back(n); }
    void dequeue_send_locked(wait_node& n) noexcept { senders_.erase(n); }
    void dequeue_recv_locked(wait_node& n) noexcept { receivers_.erase(n); }

    // ---- whole operations ----

    void close() {
        wake_list woken(this);
        std::lock_guard g(mu_);
        close_locked(woken);
    }

    // Closes unless already closed; true if this call closed it.
    bool close_if_open() {
        wake_list woken(this);
        std::lock_guard g(mu_);
        if (closed_) return false;
        close_locked(woken);
        return true;
    }

    // A send or receive that completes now or not at all, reporting what it
    // found; peers it completes are woken once the lock is released.
    poll send_now(T& v) { return send_now_or_wait(v, no_wait); }

    // Whether several tasks share an end of this channel: true once two
    // different tasks (`who`: their env) were seen waiting to send, or two
    // to receive; a select's wait is not noted. A hint for the scheduler
    // (runtime/detail/task_executor.hpp): tasks that share a ring end are
    // best kept on one worker; where each end has one task, on two. Noted
    // only where an operation could not complete at once, so the busy path
    // of the ring never writes these lines; each note reads before it
    // writes, so one task waiting again and again does not move the line
    // either. Sticky: once shared, always shared.
    void note_waiting_sender(const void* who) noexcept { note_waiting(last_waiting_sender_, who); }
    void note_waiting_receiver(const void* who) noexcept { note_waiting(last_waiting_receiver_, who); }
    bool ends_shared() const noexcept { return ends_shared_.load(std::memory_order_relaxed); }
    poll recv_now(std::optional<T>& out) { return recv_now_or_wait(out, no_wait); }

    // As send_now and recv_now, but on a channel without the lock-free ring
    // an operation that must wait is registered while the lock is still
    // held, by wait(wake_list&) (which may throw: nothing is registered
    // then). With the lock-free ring the caller is told `blocked` and starts
    // its operation itself, which attempts once more before it registers,
    // as before: registering at once measured pipeline_par 1.10x slower,
    // though within the 10% by which unrelated changes of code layout move
    // it on the same machine, so the long-measured path stays.
    template <class Wait>
    poll send_now_or_wait(T& v, Wait&& wait) {
        if (lock_free()) return send_quick(v);
        return locked_or_wait([&](wake_list& woken) { return send_locked(v, woken); }, wait);
    }
    template <class Wait>
    poll recv_now_or_wait(std::optional<T>& out, Wait&& wait) {
        auto attempt = [&](wake_list& woken) { return recv_locked(out, woken); };
        if (!lock_free()) return locked_or_wait(attempt, wait);
        if (poll p = recv_quick(out); p != poll::blocked) return p;
        return locked_or_wait(attempt, no_wait);  // a sender may wait with the ring empty
    }

    // The busy path of a task's send or receive, inline in its awaiter
    // (task_ops.hpp), and of a select case's attempt without locks
    // (select_case.hpp): true when the value went into (came out of) the
    // lock-free ring; the other side's waiters, if any, are then handed
    // theirs out of line. False when nothing was done: the caller goes on
    // with send_now_or_wait (recv_now_or_wait).
    [[gnu::always_inline]] bool send_at_once(T& v) {
        if (!lock_free() || !lf().try_push(v)) return false;
        if (receivers_.count() != 0) [[unlikely]] hand_over(&chan_state::kick_locked);
        return true;
    }
    [[gnu::always_inline]] bool recv_at_once(std::optional<T>& out) {
        if (!lock_free() || !lf().try_pop(out)) return false;
        if (senders_.count() != 0) [[unlikely]] hand_over(&chan_state::refill_locked);
        return true;
    }

    // A hint for a sender that found the lock-free ring full: whether half
    // of it is free again (or it is closed). True for other channels.
    bool has_half_room() const noexcept { return !lock_free() || lf().has_room_for((lf().capacity() + 1) / 2); }

    // Without the lock, for select's first pass: false when this channel
    // has no lock-free path (its operations need the lock); otherwise the
    // outcome of one lock-free attempt in `p`.
    bool send_unlocked(T& v, poll& p) {
        if (!lock_free()) return false;
        p = send_fast(v);
        return true;
    }
    bool recv_unlocked(std::optional<T>& out, poll& p) {
        if (!lock_free()) return false;
        p = recv_fast(out);
        return true;
    }

    status try_send(T& v) {
        if (lock_free()) {
            switch (send_fast(v)) {
                case poll::done: return status::ok;
                case poll::closed: return status::closed;
                case poll::blocked: return status::would_block;
            }
        }
        wake_list woken(this);
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
        if (lock_free()) {
            switch (recv_quick(r.value())) {
                case poll::done: r.set_state(status::ok); return;
                case poll::closed: r.set_state(status::closed); return;
                case poll::blocked: break;  // a sender may wait with the ring empty
            }
        }
        wake_list woken(this);
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
        if (lock_free()) {
            switch (poll_briefly([&] { return send_quick(v); })) {
                case poll::done: return status::ok;
                case poll::closed: return status::closed;
                case poll::blocked: break;
            }
        }
        for (;;) {
            thread_waiter w;
            wait_node n(w, &v, 0);
            {
                wake_list woken(this);
                std::lock_guard g(mu_);
                switch (send_locked(v, woken)) {
                    case poll::done: return status::ok;
                    case poll::closed: return status::closed;
                    case poll::blocked: break;
                }
                if (status s = gave_up(deadline, stop); s != status::ok) return s;
                senders_.push_back(n);
                recheck_locked(woken);
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
        if (lock_free()) {
            switch (poll_briefly([&] { return recv_quick(out); })) {
                case poll::done: return status::ok;
                case poll::closed: return status::closed;
                case poll::blocked: break;
            }
        }
        for (;;) {
            thread_waiter w;
            wait_node n(w, &out, 0);
            {
                wake_list woken(this);
                std::lock_guard g(mu_);
                switch (recv_locked(out, woken)) {
                    case poll::done: return status::ok;
                    case poll::closed: return status::closed;
                    case poll::blocked: break;
                }
                if (status s = gave_up(deadline, stop); s != status::ok) return s;
                receivers_.push_back(n);
                recheck_locked(woken);
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
    static constexpr auto no_wait = [](wake_list&) noexcept {};

    // One attempt under the lock; when it finds that the operation must
    // wait, wait(woken) registers it before the lock is released.
    template <class Attempt, class Wait>
    poll locked_or_wait(Attempt&& attempt, Wait&& wait) {
        wake_list woken(this);
        std::lock_guard g(mu_);
        const poll p = attempt(woken);
        if (p == poll::blocked) wait(woken);
        return p;
    }

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

    using ring_result = typename lf_ring_of<T, kLockFreeType>::result;

    void note_waiting(std::atomic<const void*>& last, const void* who) noexcept {
        if (ends_shared_.load(std::memory_order_relaxed) || last.load(std::memory_order_relaxed) == who) return;
        const void* before = last.exchange(who, std::memory_order_relaxed);
        if (before != nullptr && before != who) ends_shared_.store(true, std::memory_order_relaxed);
    }

    bool lock_free() const noexcept {
        if constexpr (kLockFreeType) return lf_.has_value();
        else return false;
    }
    auto& lf() noexcept {
        if constexpr (kLockFreeType) return *lf_;
        else return lf_;
    }
    const auto& lf() const noexcept {
        if constexpr (kLockFreeType) return *lf_;
        else return lf_;
    }

    // Lock-free ring only: runs `fast` (send_fast or recv_fast) again for a
    // moment while it finds the ring full or empty, before the caller
    // registers as a waiter (backoff.hpp).
    template <class Fast>
    static poll poll_briefly(Fast fast) {
        for (backoff b;;) {
            const poll p = fast();
            if (p == poll::done) b.paid();
            if (p != poll::blocked || !b.snooze()) return p;
        }
    }

    // Without the lock, lock-free ring only: a push or pop, then the
    // hand-over to waiters if any registered (see the top of this file).
    // send_fast and recv_fast report `blocked` exactly, for callers that
    // conclude from it: try_send (would_block) and select's pass 0, where a
    // blocked case sends the select to the locks of pass 1 (with the quick
    // report there, paired medians of 9: select4 1.07x slower on the task
    // face, 1.14x on the thread face).
    poll send_fast(T& v) { return after_lock_free(lf().push(v), receivers_, &chan_state::kick_locked); }
    poll recv_fast(std::optional<T>& out) {
        return after_lock_free(lf().pop(out), senders_, &chan_state::refill_locked);
    }
    // As send_fast and recv_fast, but `blocked` also while a peer is just
    // freeing the slot, or the ring is closed and drained (recv_quick), for
    // callers that attempt again under the lock before they wait or report
    // (lf_ring.hpp: quick_push). Polling a full ring this way instead of with
    // send_fast stops taking head_'s line from the receivers' core (paired
    // medians of 9, thread face: select4 0.70x, pipeline_par 0.53x, pipeline
    // 0.87x; task face: spawn, whose main thread polls an empty ring, 0.52x;
    // the others within 5%).
    poll send_quick(T& v) { return after_lock_free(lf().quick_push(v), receivers_, &chan_state::kick_locked); }
    poll recv_quick(std::optional<T>& out) {
        return after_lock_free(lf().quick_pop(out), senders_, &chan_state::refill_locked);
    }

    // What a lock-free push or pop found; after one that went through, the
    // hand-over to the other side's waiters under the lock, if any
    // registered. No fence: the push's (pop's) claim was a seq_cst CAS, and
    // count() is a seq_cst load (see the top of this file). A fence here
    // cost each operation a wait until its slot's stores were visible to
    // the other core.
    poll after_lock_free(ring_result r, const wait_queue& other_side,
                         void (chan_state::*hand_over_locked)(wake_list&)) {
        switch (r) {
            case ring_result::ok: break;
            case ring_result::closed: return poll::closed;
            case ring_result::full_or_empty: return poll::blocked;
        }
        if (other_side.count() != 0) hand_over(hand_over_locked);
        return poll::done;
    }

    [[gnu::noinline]] void hand_over(void (chan_state::*hand_over_locked)(wake_list&)) {
        wake_list woken(this);
        std::lock_guard g(mu_);
        (this->*hand_over_locked)(woken);
    }

    // Requires mu_, lock-free ring: values in the ring go to waiting
    // receivers, oldest to oldest, then room goes to waiting senders. A
    // receiver claimed for a value that a lock-free receiver took first runs
    // its operation again (retry).
    void kick_locked(wake_list& woken) {
        while (lf().has_value()) {
            wait_node* r = receivers_.claim_front();
            if (!r) break;
            switch (lf().pop(*static_cast<std::optional<T>*>(r->slot))) {
                case ring_result::ok: woken.add(*r->owner, outcome::delivered); continue;
                case ring_result::closed: woken.add(*r->owner, outcome::closed); break;
                case ring_result::full_or_empty: woken.add(*r->owner, outcome::retry); break;
            }
            break;
        }
        refill_locked(woken);
    }

    // Requires mu_ and a free slot: moves the oldest live waiting sender's
    // value into the ring (lock-free ring: as many as there is room for; a
    // sender claimed for a slot that a lock-free sender took first sends
    // again).
    void refill_locked(wake_list& woken) {
        if (lock_free()) {
            while (lf().has_room()) {
                wait_node* s = senders_.claim_front();
                if (!s) return;
                switch (lf().push(*static_cast<T*>(s->slot))) {
                    case ring_result::ok: woken.add(*s->owner, outcome::delivered); continue;
                    case ring_result::closed: woken.add(*s->owner, outcome::closed); return;
                    case ring_result::full_or_empty: woken.add(*s->owner, outcome::retry); return;
                }
            }
            return;
        }
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

    ring<T> buf_;             // guarded by mu_; capacity 0 when the lock-free ring is used
    typename lf_ring_of<T, kLockFreeType>::storage lf_;  // buffered channels of nothrow-movable T
    wait_queue senders_;      // guarded by mu_
    wait_queue receivers_;    // guarded by mu_
    bool closed_ = false;     // guarded by mu_
    std::atomic<std::size_t> closers_{0};
    // See ends_shared(); relaxed: a hint, ordered with nothing.
    std::atomic<const void*> last_waiting_sender_{nullptr};
    std::atomic<const void*> last_waiting_receiver_{nullptr};
    std::atomic<bool> ends_shared_{false};
};

}  // namespace csp::detail
