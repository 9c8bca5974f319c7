// csp::detail::lf_ring — the buffer of a buffered channel, without a lock.
//
// A bounded multi-producer multi-consumer queue in the style of Dmitry
// Vyukov's, with the close mark of crossbeam's array channel: each slot has
// a stamp saying whose turn it is; a producer claims a slot by advancing
// `tail_` with one CAS, writes the value and publishes it with a release
// store of the stamp; a consumer does the same with `head_`. Producers and
// consumers touch different cache lines (head, tail, and the slots they
// reach), which is what lets a busy channel go faster than a lock that both
// sides take for every value.
//
// Positions. A position is (lap, index): index = pos & (mark_bit_ - 1),
// lap = pos & ~(one_lap_ - 1), with one_lap_ = 2 * mark_bit_ and mark_bit_ the
// smallest power of two above the capacity. A slot at index i is free for
// the producer at position p when its stamp is p, and holds a value for the
// consumer at position p when its stamp is p + 1. Going past the last index
// moves to index 0 of the next lap.
//
// Closing sets mark_bit_ in `tail_` (fetch_or), so a push's CAS against the
// unmarked tail fails: every push happens either before close or not at all,
// and a consumer that finds the ring empty with the mark set knows that it
// stays empty. Values already in the ring are still taken.
//
// No fence before a push reports "full" or a pop "empty" (crossbeam has
// a seq_cst one there): the report is of a moment, and each reader of it
// already orders itself. One that goes on to wait registers and looks again
// after its own fence (chan_state.hpp, Dekker's rule); one told by a
// happens-before that a push (pop) was done reads that claim, or a later
// one, by coherence. The fence cost every empty poll a drain of the
// caller's store buffer: a select polls its empty channels on every value
// (thread face, paired medians of 11: select4 0.79x, buf_spsc 0.89x).
//
// Two ways to report a slot not yet free (filled). push() and pop() are
// exact: they look at the other end's index to tell "full" ("empty") from
// a peer that is just emptying (filling) that slot, wait for such a peer,
// and a pop tells "closed" from "empty". quick_push() and quick_pop() report
// full_or_empty at once, without reading the other end's index: the line
// of head_ (tail_) belongs to the consumers' (producers') core, and a read
// from the other core takes it away, so that their next claim, a CAS on
// it, waits for it to come back. A sender polling a full ring (a receiver
// an empty one) did that on every poll. The quick report is for callers
// that make an exact attempt, under the channel's lock, before they
// conclude anything from it (chan_state.hpp).
//
// Owned ends (ring_owner.hpp). An end that one thread has used alone for a
// while becomes that thread's: kOwned is set in its index, and the owner
// claims with a plain store of the index instead of the CAS (positions are
// read with kOwned masked off). Any other thread that finds kOwned set
// revokes the ownership before it claims, and so do has_value(),
// has_room() and size() (settle()) for an end owned by another thread,
// which keeps them exact enough for Dekker's rule in chan_state.hpp; close()
// revokes the tail, whose mark an owner's store would otherwise overwrite.
//
// T's move constructor must not throw: once a slot is claimed it must be
// filled (or emptied), or the ring would wait for it forever. Channels of
// other types keep the ring under their lock (ring.hpp).
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <new>
#include <optional>
#include <thread>
#include <type_traits>
#include <utility>

#include "parker.hpp"  // CSP_CPU_RELAX()
#include "ring_owner.hpp"

namespace csp::detail {

template <class T>
class lf_ring {
    static_assert(std::is_nothrow_move_constructible_v<T>);

    enum class probe { exact, quick };  // see the top of this file

public:
    enum class result { ok, full_or_empty, closed };

    explicit lf_ring(std::size_t capacity)
        : cap_(capacity),
          mark_bit_(next_pow2(capacity + 1)),
          one_lap_(mark_bit_ * 2),
          slots_(std::make_unique<slot[]>(capacity)) {
        for (std::size_t i = 0; i < cap_; ++i) slots_[i].stamp.store(i, std::memory_order_relaxed);
    }
    lf_ring(const lf_ring&) = delete;
    lf_ring& operator=(const lf_ring&) = delete;
    ~lf_ring() {
        head_owner_.forget(head_);
        tail_owner_.forget(tail_);
        std::optional<T> drop;
        while (pop(drop) == result::ok) drop.reset();
    }

    std::size_t capacity() const noexcept { return cap_; }

    // As push and pop, but full_or_empty also while a peer is just emptying
    // (filling) the slot, and a quick_pop reports a closed, drained ring as
    // full_or_empty.
    result quick_push(T& v) noexcept { return push<probe::quick>(v); }
    result quick_pop(std::optional<T>& out) noexcept { return pop<probe::quick>(out); }

    // The busy path, inline in a task's channel operation (task_ops.hpp):
    // one claim, no waiting and no bookkeeping. True when v went into the
    // ring (out got the oldest value). False changes nothing and says
    // nothing (full or empty, closed, a slot still in a peer's hands, the
    // lap's first index and its count, an end another thread owns): the
    // caller then makes its usual attempt, push() or pop(). Why a path of
    // its own: push() and pop() carry their loops, the revocation and the
    // waits, and a function that big saves and restores six registers
    // around every claim; this one needs none of that.
    //
    // On an owned end, the index read before the claim is still the
    // index inside it: if the caller still owns the end there, nobody else
    // could have moved it, and the caller could not have lost and won the
    // end again meanwhile (only its own claims make it an owner).
    bool try_push(T& v) noexcept {
        std::size_t pos;
        slot* const s = try_claim(tail_, tail_owner_, 0, pos);
        return s && (write(*s, pos, v), true);
    }
    bool try_pop(std::optional<T>& out) noexcept {
        std::size_t pos;
        slot* const s = try_claim(head_, head_owner_, 1, pos);
        return s && (read(*s, pos, out), true);
    }

    // A hint for a producer that found the ring full: whether k slots from
    // the tail on are free now (1 <= k <= capacity), or the ring is
    // closed. One look, at the stamp of the k-th slot: consumers free the
    // slots in order, so the ones before it are free too. The tail is the
    // caller's view (stale if another thread owns it).
    bool has_room_for(std::size_t k) const noexcept {
        const std::size_t tail = tail_.load(std::memory_order_relaxed) & ~kOwned;
        if (tail & mark_bit_) return true;
        std::size_t index = (tail & (mark_bit_ - 1)) + k - 1;
        std::size_t lap = tail & ~(one_lap_ - 1);
        if (index >= cap_) {
            index -= cap_;
            lap += one_lap_;
        }
        return slots_[index].stamp.load(std::memory_order_acquire) == lap + index;
    }

    // Moves v into the ring, or reports full or closed (v untouched).
    template <probe How = probe::exact>
    result push(T& v) noexcept {
        std::size_t tail = tail_.load(std::memory_order_acquire);
        for (int spins = 0;; ++spins) {
            if (tail & kOwned) {  // ring_owner.hpp
                owner_token& me = this_thread_owner_token();
                std::size_t pos = 0, stamp = 0;
                slot* s = nullptr;
                if (tail_owner_.is(me) && tail_owner_.claim_owned(me, [&] {
                        pos = tail_.load(std::memory_order_relaxed) & ~kOwned;
                        const std::size_t index = pos & (mark_bit_ - 1);
                        s = &slots_[index];
                        stamp = s->stamp.load(std::memory_order_acquire);
                        if (stamp == pos) tail_.store(advance(pos, index) | kOwned, std::memory_order_relaxed);
                    })) {
                    if (stamp == pos) return write(*s, pos, v);
                    // Full, told here: the out-of-line path would claim again.
                    if (stamp + one_lap_ == pos + 1 && (How == probe::quick || is_full(pos)))
                        return result::full_or_empty;
                }
                if (const std::optional<result> r = push_owned<How>(v)) return *r;
                tail = tail_.load(std::memory_order_acquire);
                continue;
            }
            if (tail & mark_bit_) return result::closed;
            const std::size_t index = tail & (mark_bit_ - 1);
            slot& s = slots_[index];
            const std::size_t stamp = s.stamp.load(std::memory_order_acquire);
            if (stamp == tail) {
                const std::size_t next = advance(tail, index);
                if (index != 0) [[likely]] {
                    if (tail_.compare_exchange_weak(tail, next, std::memory_order_seq_cst, std::memory_order_acquire))
                        return write(s, tail, v);
                } else {
                    if (claim_at_lap(tail_, tail_owner_, tail, next)) return write(s, tail, v);
                    tail = tail_.load(std::memory_order_acquire);
                }
            } else if (stamp + one_lap_ == tail + 1) {
                // The slot still holds last lap's value: full, unless a
                // consumer is just taking it.
                if (How == probe::quick || is_full(tail)) return result::full_or_empty;
                backoff(spins);
                tail = tail_.load(std::memory_order_acquire);
            } else {
                // Another producer claimed this slot and is writing it.
                backoff(spins);
                tail = tail_.load(std::memory_order_acquire);
            }
        }
    }

    // Moves the oldest value into `out`, or reports empty or closed-and-empty.
    template <probe How = probe::exact>
    result pop(std::optional<T>& out) noexcept {
        std::size_t head = head_.load(std::memory_order_relaxed);
        for (int spins = 0;; ++spins) {
            if (head & kOwned) {
                owner_token& me = this_thread_owner_token();
                std::size_t pos = 0, stamp = 0;
                slot* s = nullptr;
                if (head_owner_.is(me) && head_owner_.claim_owned(me, [&] {
                        pos = head_.load(std::memory_order_relaxed) & ~kOwned;
                        const std::size_t index = pos & (mark_bit_ - 1);
                        s = &slots_[index];
                        stamp = s->stamp.load(std::memory_order_acquire);
                        if (stamp == pos + 1) head_.store(advance(pos, index) | kOwned, std::memory_order_relaxed);
                    })) {
                    if (stamp == pos + 1) return read(*s, pos, out);
                    // Empty (or closed), told here: a select polls its empty
                    // channels on every value, and the out-of-line path
                    // would claim again (one worker, paired: select4 0.93x).
                    if (stamp == pos) {
                        if (How == probe::quick) return result::full_or_empty;
                        if (const std::optional<result> r = empty_or_closed(pos)) return *r;
                    }
                }
                if (const std::optional<result> r = pop_owned<How>(out)) return *r;
                head = head_.load(std::memory_order_relaxed);
                continue;
            }
            const std::size_t index = head & (mark_bit_ - 1);
            slot& s = slots_[index];
            const std::size_t stamp = s.stamp.load(std::memory_order_acquire);
            if (stamp == head + 1) {
                const std::size_t next = advance(head, index);
                if (index != 0) [[likely]] {
                    if (head_.compare_exchange_weak(head, next, std::memory_order_seq_cst, std::memory_order_relaxed))
                        return read(s, head, out);
                } else {
                    if (claim_at_lap(head_, head_owner_, head, next)) return read(s, head, out);
                    head = head_.load(std::memory_order_relaxed);
                }
            } else if (stamp == head) {
                // Nothing written here yet: empty, unless a producer is
                // just writing it.
                if (How == probe::quick) return result::full_or_empty;
                if (const std::optional<result> r = empty_or_closed(head)) return *r;
                backoff(spins);
                head = head_.load(std::memory_order_relaxed);
            } else {
                backoff(spins);
                head = head_.load(std::memory_order_relaxed);
            }
        }
    }

    // Marks the ring closed; true if this call did.
    // The tail is revoked first, by whichever thread closes: an owner's
    // plain store would overwrite the mark.
    bool close() noexcept {
        tail_owner_.revoke(tail_, this_thread_owner_token());
        return (tail_.fetch_or(mark_bit_, std::memory_order_seq_cst) & mark_bit_) == 0;
    }

    // After close(): waits until every push that claimed its slot before the
    // mark has written it (a few instructions, unless its thread was
    // preempted there). Until then has_value() may say "empty" with a value
    // on its way in, and whoever concludes "closed and drained" from that
    // (a close waking the parked receivers) would lose it.
    void wait_for_claimed_pushes() const noexcept {
        // The tail is not owned (close() revoked it). A stale view of an
        // owned head only starts the walk at slots already taken, whose
        // stamps end the wait at once.
        const std::size_t tail = tail_.load(std::memory_order_acquire) & ~mark_bit_;
        std::size_t pos = head_.load(std::memory_order_acquire) & ~kOwned;
        while (pos != tail) {
            const std::size_t index = pos & (mark_bit_ - 1);
            // A stamp still equal to pos: claimed, not yet written. Written
            // (pos + 1) or already taken (pos + one_lap_) both end the wait.
            for (int spins = 0; slots_[index].stamp.load(std::memory_order_acquire) == pos; ++spins)
                backoff(spins);
            pos = advance(pos, index);
        }
    }

    // Hints, exact only when nobody pushes or pops meanwhile. They count
    // claimed positions, not written slots: a value whose push has claimed
    // its slot counts as there (a pop waits the few instructions until it is
    // written), a slot whose pop has claimed it counts as free (a push waits
    // until it is emptied). That is what makes the claim, a seq_cst CAS, the
    // store of the Dekker pair in chan_state.hpp, with no fence after it.
    // An end owned by another thread is revoked first (settle()): its
    // owner's plain stores are then seen, and its later claims are CASes.
    bool has_value() noexcept {
        settle();
        const std::size_t head = head_.load(std::memory_order_acquire) & ~kOwned;
        return (tail_.load(std::memory_order_acquire) & ~(mark_bit_ | kOwned)) != head;
    }
    bool has_room() noexcept {
        settle();
        const std::size_t tail = tail_.load(std::memory_order_acquire);
        if (tail & mark_bit_) return false;
        return (head_.load(std::memory_order_acquire) & ~kOwned) + one_lap_ != (tail & ~kOwned);
    }

    // Whether an end is owned now (ring_owner.hpp): for tests, a hint as size().
    bool tail_owned() const noexcept { return (tail_.load(std::memory_order_relaxed) & kOwned) != 0; }
    bool head_owned() const noexcept { return (head_.load(std::memory_order_relaxed) & kOwned) != 0; }

    std::size_t size() noexcept {
        settle();
        for (;;) {
            const std::size_t tail = tail_.load(std::memory_order_seq_cst) & ~kOwned;
            const std::size_t head = head_.load(std::memory_order_seq_cst) & ~kOwned;
            if ((tail_.load(std::memory_order_seq_cst) & ~kOwned) != tail) continue;
            const std::size_t hix = head & (mark_bit_ - 1), tix = tail & (mark_bit_ - 1);
            if (hix < tix) return tix - hix;
            if (hix > tix) return cap_ - hix + tix;
            return (tail & ~mark_bit_) == head ? 0 : cap_;
        }
    }

private:
    struct slot {
        std::atomic<std::size_t> stamp;
        alignas(T) unsigned char bytes[sizeof(T)];
    };

    static std::size_t next_pow2(std::size_t n) noexcept {
        std::size_t p = 1;
        while (p < n) p <<= 1;
        return p;
    }

    // A push on an owned tail: the owner's plain claim, or, for another
    // thread, the revocation. nullopt when the caller must look again (it
    // revoked, or its ownership was revoked meanwhile). The mark is never
    // set while the tail is owned: close() revokes first.
    template <probe How>
    [[gnu::noinline]] std::optional<result> push_owned(T& v) noexcept {
        owner_token& me = this_thread_owner_token();
        if (!tail_owner_.is(me)) {
            tail_owner_.revoke(tail_, me);
            return std::nullopt;
        }
        for (int spins = 0;; ++spins) {
            std::size_t pos = 0, stamp = 0;
            slot* s = nullptr;
            const bool owned = tail_owner_.claim_owned(me, [&] {
                pos = tail_.load(std::memory_order_relaxed) & ~kOwned;
                const std::size_t index = pos & (mark_bit_ - 1);
                s = &slots_[index];
                stamp = s->stamp.load(std::memory_order_acquire);
                if (stamp == pos) tail_.store(advance(pos, index) | kOwned, std::memory_order_relaxed);
            });
            if (!owned) return std::nullopt;
            if (stamp == pos) return write(*s, pos, v);
            if (stamp + one_lap_ == pos + 1 && (How == probe::quick || is_full(pos))) return result::full_or_empty;
            backoff(spins);  // a consumer is just emptying the slot
        }
    }

    template <probe How>
    [[gnu::noinline]] std::optional<result> pop_owned(std::optional<T>& out) noexcept {
        owner_token& me = this_thread_owner_token();
        if (!head_owner_.is(me)) {
            head_owner_.revoke(head_, me);
            return std::nullopt;
        }
        for (int spins = 0;; ++spins) {
            std::size_t pos = 0, stamp = 0;
            slot* s = nullptr;
            const bool owned = head_owner_.claim_owned(me, [&] {
                pos = head_.load(std::memory_order_relaxed) & ~kOwned;
                const std::size_t index = pos & (mark_bit_ - 1);
                s = &slots_[index];
                stamp = s->stamp.load(std::memory_order_acquire);
                if (stamp == pos + 1) head_.store(advance(pos, index) | kOwned, std::memory_order_relaxed);
            });
            if (!owned) return std::nullopt;
            if (stamp == pos + 1) return read(*s, pos, out);
            if (stamp == pos) {
                if (How == probe::quick) return result::full_or_empty;
                if (const std::optional<result> r = empty_or_closed(pos)) return *r;
            }
            backoff(spins);  // a producer is just writing the slot
        }
    }

    // The shared claim of index 0 (`pos`, one per lap) of an end: a CAS, as
    // for the other indices, plus the count of laps that one thread began
    // in a row, by which that thread becomes the end's owner: its claim then
    // sets kOwned too. Once a lap, so that the claims in between cost no
    // more than before ownership existed (counting every claim made the
    // shared claims of a task's channels 1.2x slower). False if the index
    // moved. `pos` by value: a reference would keep the caller's copy in
    // memory on every claim, not only at laps (thread face buf_mpmc 1.5x
    // slower).
    [[gnu::noinline]] static bool claim_at_lap(std::atomic<std::size_t>& index, ring_owner& owner,
                                               std::size_t pos, std::size_t next) noexcept {
        owner_token& me = this_thread_owner_token();
        if (owner.wants(me) && owner.reserve(me)) {
            if (index.compare_exchange_strong(pos, next | kOwned, std::memory_order_seq_cst,
                                              std::memory_order_acquire))
                return true;
            owner.cancel_reservation();
            return false;
        }
        if (!index.compare_exchange_strong(pos, next, std::memory_order_seq_cst, std::memory_order_acquire))
            return false;
        owner.note_lap(me);
        return true;
    }

    // try_push's and try_pop's one claim on an end (tail_ or head_): the
    // slot at the end's position `pos` if its stamp is pos + `ready` (0: free
    // for a push, 1: filled for a pop), with the end moved past it; null if
    // anything else (see try_push).
    [[gnu::always_inline]] slot* try_claim(std::atomic<std::size_t>& end, ring_owner& owner, std::size_t ready,
                                           std::size_t& pos) noexcept {
        const std::size_t at = end.load(std::memory_order_acquire);
        if (at & kOwned) {
            owner_token* const me = this_thread_token_;
            if (!me) return nullptr;
            pos = at & ~kOwned;
            const std::size_t index = pos & (mark_bit_ - 1);
            slot& s = slots_[index];
            bool claimed = false;
            owner.claim_owned(*me, [&] {
                claimed = s.stamp.load(std::memory_order_acquire) == pos + ready;
                if (claimed) end.store(advance(pos, index) | kOwned, std::memory_order_relaxed);
            });
            return claimed ? &s : nullptr;
        }
        pos = at;
        const std::size_t index = at & (mark_bit_ - 1);  // a tail's close mark, if set, fails the stamp's test
        slot& s = slots_[index];
        std::size_t expected = at;
        if (index == 0 || s.stamp.load(std::memory_order_acquire) != at + ready ||
            !end.compare_exchange_strong(expected, advance(at, index), std::memory_order_seq_cst,
                                         std::memory_order_relaxed))
            return nullptr;
        return &s;
    }

    result write(slot& s, std::size_t pos, T& v) noexcept {
        ::new (static_cast<void*>(s.bytes)) T(std::move(v));
        s.stamp.store(pos + 1, std::memory_order_release);
        return result::ok;
    }
    result read(slot& s, std::size_t pos, std::optional<T>& out) noexcept {
        T* v = std::launder(reinterpret_cast<T*>(s.bytes));
        out.emplace(std::move(*v));
        v->~T();
        s.stamp.store(pos + one_lap_, std::memory_order_release);
        return result::ok;
    }

    // Exact probes: the slot at the tail (`pos`) holds last lap's value;
    // full unless a consumer has claimed it and is just taking it. A stale
    // view of a head owned by another thread reports full: true of the
    // moment the slot was looked at.
    bool is_full(std::size_t pos) const noexcept {
        return (head_.load(std::memory_order_relaxed) & ~kOwned) + one_lap_ == pos;
    }
    // Nothing is written at the head (`pos`): empty (or closed and drained)
    // unless a producer has claimed the slot and is just writing it.
    // Acquire: a receiver that reports closed sees everything done before
    // close() (Go: a close is synchronized before a receive that returns
    // because the channel is closed).
    std::optional<result> empty_or_closed(std::size_t pos) const noexcept {
        const std::size_t tail = tail_.load(std::memory_order_acquire);
        if ((tail & ~(mark_bit_ | kOwned)) != pos) return std::nullopt;
        return tail & mark_bit_ ? result::closed : result::full_or_empty;
    }

    // Revokes the ends owned by other threads (see has_value()).
    void settle() noexcept {
        owner_token& me = this_thread_owner_token();
        if ((tail_.load(std::memory_order_acquire) & kOwned) && !tail_owner_.is(me)) tail_owner_.revoke(tail_, me);
        if ((head_.load(std::memory_order_acquire) & kOwned) && !head_owner_.is(me)) head_owner_.revoke(head_, me);
    }

    std::size_t advance(std::size_t pos, std::size_t index) const noexcept {
        return index + 1 < cap_ ? pos + 1 : (pos & ~(one_lap_ - 1)) + one_lap_;
    }

    // A peer is between its CAS and its stamp store: a few instructions,
    // unless it was preempted there.
    static void backoff(int spins) noexcept {
        if (spins < 64) CSP_CPU_RELAX();
        else std::this_thread::yield();
    }

    // Producers write tail_, consumers head_: apart, so that they do not
    // take the line from each other on every value. Each end's owner state
    // shares its index's line: it is read on every claim of that end.
    alignas(64) std::atomic<std::size_t> head_{0};
    ring_owner head_owner_;
    alignas(64) std::atomic<std::size_t> tail_{0};
    ring_owner tail_owner_;
    alignas(64) const std::size_t cap_;
    const std::size_t mark_bit_;
    const std::size_t one_lap_;
    std::unique_ptr<slot[]> slots_;
};

}  // namespace csp::detail
