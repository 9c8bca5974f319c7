// csp::detail::async_send_op / async_recv_op — one asynchronous send or
// receive on one channel, built on the waiter protocol of async_op.hpp.
//
// An operation is allocated (from the recycling cache) when it starts. It
// first tries to complete under the channel's lock, exactly as the blocking
// face does; if it cannot, it registers its node and waits to be claimed.
// A completion caused by a peer is posted; one that happens at once runs
// inline for a coroutine's handler (inline_completion in async_op.hpp).
#pragma once

#include <mutex>
#include <optional>
#include <system_error>

#include "../error_code.hpp"
#include "async_op.hpp"
#include "chan_state.hpp"

namespace csp::detail {

// What a receive or a send does under the lock; Kind supplies it.
template <class T, class Handler, class Kind>
class async_chan_op final : public async_waiter<Handler>, Kind {
    using base = async_waiter<Handler>;
    using memory = op_memory<async_chan_op, Handler>;
    friend memory;

public:
    // `owner` keeps the channel alive until the operation has completed; it
    // is empty when the caller guarantees that (start_borrowed,
    // start_waiting_locked).
    template <class... KindArgs>
    async_chan_op(Handler&& h, chan_state<T>& ch, std::shared_ptr<chan_state<T>> owner, KindArgs&&... args)
        : base(std::move(h)),
          Kind(std::forward<KindArgs>(args)...),
          ch_(&ch),
          owner_(std::move(owner)),
          node_(*this, this->slot(), 0) {}

    static void start(Handler&& h, std::shared_ptr<chan_state<T>> ch, auto&&... kind_args) {
        chan_state<T>& state = *ch;
        start_on(std::move(h), state, std::move(ch), std::forward<decltype(kind_args)>(kind_args)...);
    }

    // As start, for a caller whose handle on the channel outlives the
    // operation's completion (a csp::task's awaiter: the task is suspended
    // in the co_await that made it until the handler has run): the
    // operation takes no reference of its own, two locked instructions
    // fewer per wait.
    static void start_borrowed(Handler&& h, chan_state<T>& ch, auto&&... kind_args) {
        start_on(std::move(h), ch, nullptr, std::forward<decltype(kind_args)>(kind_args)...);
    }

    // For a csp::task's awaiter that has just found, under the channel's
    // lock, that it must wait: registers the operation under that same lock
    // (one lock round trip per wait instead of two), borrowing the channel
    // as start_borrowed does. Requires the lock; the peers in `woken` are
    // woken after it is released. The completion is posted to the task's
    // queue, which runs it only after the task has suspended: the task runs
    // on that queue now, and the queue runs one handler at a time.
    static void start_waiting_locked(Handler&& h, chan_state<T>& ch, wake_list& woken, auto&&... kind_args) {
        async_chan_op* op =
            memory::create(h, std::move(h), ch, nullptr, std::forward<decltype(kind_args)>(kind_args)...);
        try {
            op->register_locked(woken);
        } catch (...) {
            memory::release(op);  // nothing was queued
            throw;
        }
    }

    void wake() noexcept override { this->post(run_completion<async_chan_op>{this}); }

    void complete() {
        this->disconnect_cancellation();
        int claimed = this->claimed_case();
        if (claimed == waiter::kCancelled) {
            std::lock_guard g(*ch_);
            Kind::dequeue(*ch_, node_);
        } else if (this->result == outcome::retry) {
            // The value or room we were claimed for went elsewhere (a
            // lock-free party, or a move that threw): run the operation again,
            // unless a cancellation came meanwhile (the claimer took our node
            // off the queue already).
            if (this->cancellation_missed()) {
                claimed = waiter::kCancelled;
            } else {
                this->state.store(waiter::kWaiting, std::memory_order_relaxed);
                if (attempt()) complete();
                return;
            }
        }
        auto args = Kind::results(claimed, this->result);
        Handler h = memory::release(this);
        std::apply(std::move(h), std::move(args));
    }

private:
    static void start_on(Handler&& h, chan_state<T>& ch, std::shared_ptr<chan_state<T>> owner,
                         auto&&... kind_args) {
        async_chan_op* op = memory::create(h, std::move(h), ch, std::move(owner),
                                           std::forward<decltype(kind_args)>(kind_args)...);
        bool done_now;
        try {
            done_now = op->attempt();
        } catch (...) {
            memory::release(op);  // a move threw at initiation: nothing was queued
            throw;
        }
        // Outside the try: from here the completion owns op, and what the
        // resumed coroutine throws is not a failure of the initiation.
        if (done_now) {
            inline_completion::scope in;
            op->complete();
        }
    }

    // Completes now or registers the node. True when it completed now and
    // the caller is to run the completion inline; when it completed now but
    // may not run inline, the completion is posted.
    bool attempt() {
        {
            wake_list woken(ch_);  // peers are woken (posted) before we go on
            std::lock_guard g(*ch_);
            poll p = Kind::try_now(*ch_, woken);
            if (p == poll::blocked) {
                register_locked(woken);
                return false;
            }
            this->state.store(0, std::memory_order_relaxed);  // claimed by ourselves
            this->result = p == poll::done ? outcome::delivered : outcome::closed;
        }
        if (inline_completion::allowed<Handler>()) return true;
        wake();
        return false;
    }

    // Requires the channel's lock: the operation waits from here on.
    void register_locked(wake_list& woken) {
        this->track_work();
        this->connect_cancellation();
        this->note_parked();
        Kind::enqueue(*ch_, node_);
        ch_->recheck_locked(woken);
    }

    chan_state<T>* ch_;
    std::shared_ptr<chan_state<T>> owner_;  // keeps *ch_ alive while we wait on it, unless borrowed
    wait_node node_;
};

// A receive: completes with (error_code, optional<T>); nullopt means closed.
template <class T>
class recv_kind {
protected:
    void* slot() noexcept { return &value_; }
    poll try_now(chan_state<T>& ch, wake_list& woken) { return ch.recv_locked(value_, woken); }
    static void enqueue(chan_state<T>& ch, wait_node& n) noexcept { ch.enqueue_recv_locked(n); }
    static void dequeue(chan_state<T>& ch, wait_node& n) noexcept { ch.dequeue_recv_locked(n); }
    std::tuple<std::error_code, std::optional<T>> results(int claimed, outcome how) {
        if (claimed == waiter::kCancelled) return {asio::error::operation_aborted, std::nullopt};
        if (how == outcome::delivered) return {std::error_code(), std::move(value_)};
        return {std::error_code(), std::nullopt};
    }

private:
    std::optional<T> value_;
};

// A send of a value the operation owns (given as an rvalue: on failure it is
// destroyed with the operation) or of the caller's object (moved from only on
// success; the caller keeps it alive until the completion, as with an Asio
// buffer). Completes with (error_code): errc::closed, operation_aborted.
template <class T, bool Owned>
class send_kind {
protected:
    using stored = std::conditional_t<Owned, T, T*>;
    explicit send_kind(stored v) : v_(std::move(v)) {}
    void* slot() noexcept { return &value(); }
    poll try_now(chan_state<T>& ch, wake_list& woken) { return ch.send_locked(value(), woken); }
    static void enqueue(chan_state<T>& ch, wait_node& n) noexcept { ch.enqueue_send_locked(n); }
    static void dequeue(chan_state<T>& ch, wait_node& n) noexcept { ch.dequeue_send_locked(n); }
    static std::tuple<std::error_code> results(int claimed, outcome how) {
        if (claimed == waiter::kCancelled) return {asio::error::operation_aborted};
        switch (how) {
            case outcome::delivered: return {std::error_code()};
            case outcome::closed: return {make_error_code(errc::closed)};
            case outcome::failed: return {make_error_code(errc::move_failed)};
            case outcome::retry: break;
        }
        return {std::error_code()};
    }

private:
    T& value() noexcept {
        if constexpr (Owned) return v_;
        else return *v_;
    }
    stored v_;
};

}  // namespace csp::detail
