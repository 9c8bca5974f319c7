// csp::detail::deadline_queue — the deadlines of the waiting asynchronous
// selects of one execution context, on one Asio timer.
//
// Why not a steady_timer per select: a select with a timeout case that
// waits, and is then completed by a value (the common case: Go's
// `time.After` inside a select, reset for every item), would arm a timer
// and cancel it. Both change the reactor's earliest deadline (a
// timerfd_settime system call each), and the cancelled wait's handler must
// still run, which wakes a worker that sleeps in the reactor. Measured in
// fanin_timeout (one producer, one consumer selecting over the data and a
// 1 ms timeout): 159 ns per item with the timeout case against 48 ns without.
//
// Here arming is a heap insertion under a mutex and disarming a heap
// removal; the one timer is re-armed only when a deadline comes that is
// earlier than the one it waits for. When it expires, everything due is
// fired and the timer waits for the new earliest deadline. On a csp
// runtime's context (linger_when_empty) deadlines that keep moving later
// (a timeout reset for every item) cost one expiry per timeout period,
// however many selects waited meanwhile; elsewhere the timer is cancelled
// when the last deadline leaves, so that io_context::run() can return.
//
// Invariants (mu_ guards all of the state):
//   - an entry is in heap_ exactly while its heap_index is not npos;
//   - `fire` runs under mu_, after the entry left the heap; disarm() takes
//     mu_, so once it has returned the queue never touches the entry again
//     and its owner may free it;
//   - `fire` must not call back into this queue (it claims the select and
//     posts its completion, which never runs inline);
//   - a wait is pending on timer_ exactly while waiting_; generation_
//     tells the handler of a wait that expires_at() superseded or that
//     disarm() cancelled (it still runs, with operation_aborted) from the
//     current one.
#pragma once

#include <asio/any_io_executor.hpp>
#include <asio/execution_context.hpp>
#include <asio/query.hpp>
#include <asio/steady_timer.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <system_error>
#include <vector>

namespace csp::detail {

class deadline_queue final : public asio::execution_context::service {
public:
    using time_point = std::chrono::steady_clock::time_point;
    static constexpr std::size_t npos = static_cast<std::size_t>(-1);

    struct entry {
        time_point deadline{};
        void (*fire)(void* owner) noexcept = nullptr;  // runs under the queue's mutex
        void* owner = nullptr;                         // what fire() is given
        std::size_t heap_index = npos;             // guarded by the queue's mutex
    };

    inline static asio::execution_context::id id;

    explicit deadline_queue(asio::execution_context& ctx) : service(ctx) {}

    // The queue of the context that `ex` belongs to.
    static deadline_queue& of(const asio::any_io_executor& ex) {
        return asio::use_service<deadline_queue>(asio::query(ex, asio::execution::context));
    }

    // Fires `e` once its deadline has passed, unless disarm() comes first.
    // `ex` is an executor of this context, for the timer if it has none yet.
    // Throws what arming the timer throws; then `e` is not queued.
    void arm(entry& e, const asio::any_io_executor& ex) {
        std::lock_guard g(mu_);
        if (!timer_) timer_.emplace(ex);
        heap_.push_back(&e);
        e.heap_index = heap_.size() - 1;
        sift_up(e.heap_index);
        if (!waiting_ || e.deadline < armed_at_) {
            try {
                wait_for(e.deadline);
            } catch (...) {
                remove(e);
                throw;
            }
        }
    }

    // After this returns, the queue no longer refers to `e`.
    void disarm(entry& e) noexcept {
        std::lock_guard g(mu_);
        if (e.heap_index != npos) remove(e);
        // Otherwise the timer stays armed: when it expires with nothing due
        // it waits for the new earliest deadline, if any (cheaper than
        // re-arming now).
        if (heap_.empty() && waiting_ && !linger_) {
            ++generation_;  // the cancelled wait's handler does nothing
            waiting_ = false;
            timer_->cancel();
        }
    }

    // For a context that is kept running anyway (a csp::runtime's): the
    // timer runs on `ex` (the context's own executor, where otherwise it
    // would take the executor of the first select that arms it), and with
    // no deadline left it may still wait for an old one instead of being
    // cancelled. On other contexts a pending wait is outstanding work that
    // would keep io_context::run() from returning.
    void run_on_and_linger(const asio::any_io_executor& ex) {
        std::lock_guard g(mu_);
        if (!timer_) timer_.emplace(ex);
        linger_ = true;
    }

private:
    // The timer goes here, while every service still exists: the timer's
    // own service, made after this one (by the first arm), is destroyed
    // before it, so the timer must not outlive this call. Its pending wait's
    // handler is destroyed unrun, as the context's shutdown does with all.
    void shutdown() override {
        std::lock_guard g(mu_);
        for (entry* e : heap_) e->heap_index = npos;
        heap_.clear();
        waiting_ = false;
        timer_.reset();
    }

    // Requires mu_.
    void wait_for(time_point t) {
        timer_->expires_at(t);  // a pending wait completes with operation_aborted
        waiting_ = false;       // until the new wait is in: async_wait may throw
        const std::uint64_t gen = ++generation_;
        timer_->async_wait([this, gen](const std::error_code&) { expired(gen); });
        waiting_ = true;
        armed_at_ = t;
    }

    void expired(std::uint64_t gen) noexcept {
        std::lock_guard g(mu_);
        if (gen != generation_) return;  // superseded by a later wait_for
        waiting_ = false;
        const time_point now = std::chrono::steady_clock::now();
        while (!heap_.empty() && heap_.front()->deadline <= now) fire_earliest();
        if (!heap_.empty()) {
            try {
                wait_for(heap_.front()->deadline);
            } catch (...) {
                // Out of memory for the wait: fire what is queued now rather
                // than let a select wait past its deadline forever.
                while (!heap_.empty()) fire_earliest();
            }
        }
    }

    // Requires mu_ and a non-empty heap. The entry leaves before it fires:
    // fire() may end with its owner's completion under way elsewhere.
    void fire_earliest() noexcept {
        entry* e = heap_.front();
        remove(*e);
        e->fire(e->owner);
    }

    // A binary min-heap of deadlines; every entry knows its index.
    void remove(entry& e) noexcept {
        const std::size_t i = e.heap_index;
        const std::size_t last = heap_.size() - 1;
        e.heap_index = npos;
        if (i != last) {
            heap_[i] = heap_[last];
            heap_[i]->heap_index = i;
            heap_.pop_back();
            sift_down(i);
            sift_up(i);
        } else {
            heap_.pop_back();
        }
    }
    void sift_up(std::size_t i) noexcept {
        while (i > 0) {
            const std::size_t parent = (i - 1) / 2;
            if (!(heap_[i]->deadline < heap_[parent]->deadline)) break;
            swap_at(i, parent);
            i = parent;
        }
    }
    void sift_down(std::size_t i) noexcept {
        for (;;) {
            const std::size_t l = 2 * i + 1, r = l + 1;
            std::size_t least = i;
            if (l < heap_.size() && heap_[l]->deadline < heap_[least]->deadline) least = l;
            if (r < heap_.size() && heap_[r]->deadline < heap_[least]->deadline) least = r;
            if (least == i) break;
            swap_at(i, least);
            i = least;
        }
    }
    void swap_at(std::size_t a, std::size_t b) noexcept {
        std::swap(heap_[a], heap_[b]);
        heap_[a]->heap_index = a;
        heap_[b]->heap_index = b;
    }

    std::mutex mu_;
    std::vector<entry*> heap_;
    std::optional<asio::steady_timer> timer_;  // made by the first arm()
    bool waiting_ = false;
    bool linger_ = false;
    time_point armed_at_{};
    std::uint64_t generation_ = 0;
};

}  // namespace csp::detail
