// csp::detail::waiter — one blocked party, and its registrations on channels.
//
// A waiter is one blocked operation: a plain send or receive, or a whole
// select registered on several channels at once. Each registration is a
// wait_node linked into one channel's queue of senders or receivers.
//
// Claiming (the one rule that makes select correct): whoever wants to
// complete a waiter — a peer that matches it, close(), a timeout, a stop
// request — first moves `state` from `waiting` to a case index (or to
// `cancelled`) with one compare-and-swap. Only the winner may touch the
// waiter's slots and must then wake it exactly once. A loser leaves it
// alone, and a queue that meets a node whose waiter is already claimed
// simply drops the node.
//
// Who may write what:
//   state                 CAS by anyone; after the CAS only the winner writes
//   result, error         the claimer, before wake(); the owner after waking
//   wait_node::prev/next/queued   the lock of the channel whose queue holds it
//   wait_node::slot       fixed by the owner before the node is queued
//   wake_next             the claimer, while it holds the waiter claimed
//
// Two kinds of owner exist: a thread that parks (thread_waiter, here) and,
// in the runtime, an asynchronous operation whose wake() posts its completion.
#pragma once

#include <atomic>
#include <cstddef>
#include <exception>
#include <utility>

#include "parker.hpp"

namespace csp::detail {

// How a claimed case ended, written by its claimer.
enum class outcome : unsigned char {
    delivered,  // the value moved (into the receiver, or out of the sender)
    closed,     // the channel was closed
    retry,      // what we were claimed for went elsewhere (a lock-free party took
                // it, or a move threw): run the operation again
    failed,     // our own value failed to move: `error` holds the exception
};

class waiter {
public:
    static constexpr int kWaiting = -1;
    static constexpr int kCancelled = -2;

    waiter() = default;
    waiter(const waiter&) = delete;
    waiter& operator=(const waiter&) = delete;

    // Moves state waiting -> `to`; true when this call won the waiter.
    bool try_claim(int to) noexcept {
        int expected = kWaiting;
        return state.compare_exchange_strong(expected, to, std::memory_order_acq_rel,
                                             std::memory_order_acquire);
    }
    int claimed_case() const noexcept { return state.load(std::memory_order_acquire); }

    // Called once by the claimer, after it released every channel lock.
    // This is the claimer's last access: the owner may be gone right after.
    virtual void wake() noexcept = 0;

    std::atomic<int> state{kWaiting};
    outcome result = outcome::delivered;
    std::exception_ptr error;
    waiter* wake_next = nullptr;

protected:
    ~waiter() = default;
};

// The owner is a thread that parks until it is woken.
class thread_waiter final : public waiter {
public:
    void wake() noexcept override { parker_.unpark(); }
    parker& park() noexcept { return parker_; }

private:
    parker parker_;
};

// One registration of a waiter on one channel queue.
struct wait_node {
    // A node built `unset` holds no values until it is assigned a
    // wait_node{} (a select case's node, which most selects never register).
    enum unset_t { unset };
    wait_node() noexcept : prev(nullptr), next(nullptr), owner(nullptr), slot(nullptr), case_index(0), queued(false) {}
    explicit wait_node(unset_t) noexcept {}
    // A fresh node for `w`, its case `index`, and the value slot.
    wait_node(waiter& w, void* value_slot, int index) noexcept
        : prev(nullptr), next(nullptr), owner(&w), slot(value_slot), case_index(index), queued(false) {}

    wait_node* prev;
    wait_node* next;
    waiter* owner;
    void* slot;      // sender: the T to move from; receiver: the std::optional<T> to fill
    int case_index;  // what owner->state becomes when this node is claimed
    bool queued;
};

// An intrusive FIFO of wait_nodes. Guarded by the lock of the owning
// channel, except count(), which lock-free ring operations read without it.
class wait_queue {
public:
    bool empty() const noexcept { return head_ == nullptr; }

    // Nodes queued, dead ones included. Written under the lock only; read
    // by a lock-free push or pop after its seq_cst claim (chan_state.hpp):
    // seq_cst, the load of the Dekker pair (a plain load on x86).
    std::size_t count() const noexcept { return count_.load(std::memory_order_seq_cst); }

    void push_back(wait_node& n) noexcept {
        n.next = nullptr;
        n.prev = tail_;
        if (tail_) tail_->next = &n;
        else head_ = &n;
        tail_ = &n;
        n.queued = true;
        count_.store(count_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    }

    // Removes n if it is still queued here (a claimer may have removed it).
    void erase(wait_node& n) noexcept {
        if (!n.queued) return;
        if (n.prev) n.prev->next = n.next;
        else head_ = n.next;
        if (n.next) n.next->prev = n.prev;
        else tail_ = n.prev;
        n.prev = n.next = nullptr;
        n.queued = false;
        count_.store(count_.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
    }

    // Pops nodes from the front until one is claimed for its case; dead
    // nodes (waiters claimed elsewhere) are dropped on the way.
    wait_node* claim_front() noexcept {
        while (wait_node* n = head_) {
            erase(*n);
            if (n->owner->try_claim(n->case_index)) return n;
        }
        return nullptr;
    }

    // True when some node could still be claimed; drops dead nodes at the front.
    bool has_live() noexcept {
        while (head_ && head_->owner->state.load(std::memory_order_acquire) != waiter::kWaiting)
            erase(*head_);
        return head_ != nullptr;
    }

private:
    wait_node* head_ = nullptr;
    wait_node* tail_ = nullptr;
    std::atomic<std::size_t> count_{0};
};

// The channel whose waiters the calling thread is waking now, if a
// wake_list names one (null otherwise): a runtime's scheduler tells tasks
// readied by one channel (its consumers, all readied by its producer) from
// tasks readied by different channels (task_executor.hpp).
inline const void*& current_wake_source() noexcept {
    thread_local const void* source = nullptr;
    return source;
}

// Waiters claimed under a lock, woken once the lock is released. Declare it
// before the lock guard so that its destructor runs after the unlock, on
// every path, exceptions included. `source`: the channel they wait on, or
// null (a select's waiters may wait on several).
class wake_list {
public:
    wake_list() = default;
    explicit wake_list(const void* source) noexcept : source_(source) {}
    wake_list(const wake_list&) = delete;
    wake_list& operator=(const wake_list&) = delete;
    ~wake_list() { wake_all(); }

    void add(waiter& w, outcome r) noexcept {
        w.result = r;
        w.wake_next = head_;
        head_ = &w;
    }

    void wake_all() noexcept {
        if (!head_) return;
        const void* const outer = std::exchange(current_wake_source(), source_);
        while (waiter* w = head_) {
            head_ = w->wake_next;  // read before wake(): w may be gone after it
            w->wake();
        }
        current_wake_source() = outer;
    }

private:
    waiter* head_ = nullptr;
    const void* source_ = nullptr;
};

}  // namespace csp::detail
