// csp::detail::select_case — one case of a select, as the select loop sees it.
//
// A case is a small protocol (the steps of Go's selectgo, one virtual call
// each): try it now under its channel's lock, register a node on the
// channel's queue, take the node back, and finally run the user's handler
// once the select has released every lock. Cases live on the caller's frame
// (or in the caller's vector) for the whole select, so their wait_nodes and
// value slots stay put while registered.
#pragma once

#include <functional>
#include <optional>
#include <stop_token>
#include <type_traits>
#include <utility>

#include "chan_state.hpp"

namespace csp::detail {

enum class case_kind { recv, send, fallback, timeout, stop };

// What a case's attempt without any lock found (select's pass 0):
// needs_lock when its channel's operations need the lock.
enum class unlocked_poll { done, closed, blocked, needs_lock };

inline unlocked_poll as_unlocked_poll(poll p) noexcept {
    switch (p) {
        case poll::done: return unlocked_poll::done;
        case poll::closed: return unlocked_poll::closed;
        case poll::blocked: break;
    }
    return unlocked_poll::blocked;
}

class case_base {
public:
    explicit case_base(case_kind k) noexcept : kind(k) {}
    virtual ~case_base() = default;

    // The channel whose lock try_now/enqueue/dequeue need; null if none.
    virtual chan_base* channel() const noexcept { return nullptr; }
    // Requires channel()'s lock. Completes the case now if it is ready.
    virtual poll try_now(wake_list&) { return poll::blocked; }
    // Without any lock: completes the case now if it is ready. The cases
    // are final classes: a select that knows their types calls this
    // directly, and the busy path inlines into it (select_engine.hpp,
    // poll_unlocked_as).
    virtual unlocked_poll try_unlocked() { return unlocked_poll::needs_lock; }
    // Requires channel()'s lock.
    virtual void enqueue(waiter&, int) noexcept {}
    // Requires channel()'s lock, after the waiter is registered everywhere
    // and claimable: hands over what the channel can give now
    // (chan_state::recheck_locked).
    virtual void recheck(wake_list&) {}
    virtual void dequeue() noexcept {}
    // Runs the handler after the case was chosen; no lock is held.
    virtual void run(outcome how) = 0;

    const case_kind kind;
};

// A default, timeout or stop case: the fields that only these need live
// here, not in every case. A select builds and moves its cases every time
// it runs, and each field of a receive case was stores (and a stop_token's
// branchy move and destructor) paid on every value a busy select takes.
class special_case_base : public case_base {
public:
    using case_base::case_base;

    steady_time deadline{};                 // timeout cases only
    std::optional<std::chrono::steady_clock::duration> relative;  // on_timeout: deadline = select start + this
    std::stop_token stop;                   // stop cases only
};

// Requires c->kind to be fallback, timeout or stop.
inline special_case_base& special(case_base* c) noexcept { return static_cast<special_case_base&>(*c); }
inline const special_case_base& special(const case_base* c) noexcept {
    return static_cast<const special_case_base&>(*c);
}

template <class T, class F>
class recv_case final : public case_base {
public:
    recv_case(chan_state<T>* ch, F f) : case_base(case_kind::recv), f_(std::move(f)), ch_(ch) {}
    recv_case(recv_case&& o) : case_base(case_kind::recv), f_(std::move(o.f_)), ch_(o.ch_) {}

    chan_base* channel() const noexcept override { return ch_; }
    poll try_now(wake_list& woken) override {
        return ch_ ? ch_->recv_locked(value_, woken) : poll::blocked;
    }
    unlocked_poll try_unlocked() override {
        if (!ch_) return unlocked_poll::blocked;  // a null channel is never ready
        if (ch_->recv_at_once(value_)) [[likely]] return unlocked_poll::done;  // the busy path
        return try_unlocked_exactly();
    }
    void enqueue(waiter& w, int index) noexcept override {
        if (!ch_) return;
        node_ = wait_node(w, &value_, index);
        ch_->enqueue_recv_locked(node_);
    }
    void recheck(wake_list& woken) override {
        if (ch_) ch_->recheck_locked(woken);
    }
    void dequeue() noexcept override {
        if (ch_) ch_->dequeue_recv_locked(node_);
    }
    void run(outcome) override {
        // Handed over as an rvalue: a handler taking `std::optional<T>&&` or
        // `const&` sees the value without another move. If the handler's own
        // by-value parameter throws while moving, the value stays in this case.
        struct reset_after {
            std::optional<T>& v;
            ~reset_after() { v.reset(); }  // the case can be used in the next select
        } reset{value_};
        std::invoke(f_, std::move(value_));
    }

private:
    [[gnu::noinline]] unlocked_poll try_unlocked_exactly() {
        poll p;
        return ch_->recv_unlocked(value_, p) ? as_unlocked_poll(p) : unlocked_poll::needs_lock;
    }

    F f_;
    chan_state<T>* ch_;
    std::optional<T> value_;
    wait_node node_{wait_node::unset};  // set by enqueue(); dequeue() only follows it
};

// Owned: the case holds the value (given as an rvalue); otherwise it refers
// to the caller's object and moves from it only if the case is chosen.
template <class T, class F, bool Owned>
class send_case final : public case_base {
    using stored = std::conditional_t<Owned, T, T*>;

public:
    send_case(chan_state<T>* ch, stored v, F f)
        : case_base(case_kind::send), ch_(ch), v_(std::move(v)), f_(std::move(f)) {}
    send_case(send_case&& o)
        : case_base(case_kind::send), ch_(o.ch_), v_(std::move(o.v_)), f_(std::move(o.f_)) {}

    chan_base* channel() const noexcept override { return ch_; }
    poll try_now(wake_list& woken) override {
        return ch_ ? ch_->send_locked(value(), woken) : poll::blocked;
    }
    unlocked_poll try_unlocked() override {
        if (!ch_) return unlocked_poll::blocked;
        if (ch_->send_at_once(value())) [[likely]] return unlocked_poll::done;  // the busy path
        return try_unlocked_exactly();
    }
    void enqueue(waiter& w, int index) noexcept override {
        if (!ch_) return;
        node_ = wait_node(w, &value(), index);
        ch_->enqueue_send_locked(node_);
    }
    void recheck(wake_list& woken) override {
        if (ch_) ch_->recheck_locked(woken);
    }
    void dequeue() noexcept override {
        if (ch_) ch_->dequeue_send_locked(node_);
    }
    void run(outcome how) override {
        if (how == outcome::closed) throw closed_error("csp: send on a closed channel (select)");
        std::invoke(f_);
    }

private:
    T& value() noexcept {
        if constexpr (Owned) return v_;
        else return *v_;
    }
    [[gnu::noinline]] unlocked_poll try_unlocked_exactly() {
        poll p;
        return ch_->send_unlocked(value(), p) ? as_unlocked_poll(p) : unlocked_poll::needs_lock;
    }
    chan_state<T>* ch_;
    stored v_;
    F f_;
    wait_node node_{wait_node::unset};  // set by enqueue(); dequeue() only follows it
};

// default, timeout and stop cases: no channel, only a handler.
template <class F>
class plain_case final : public special_case_base {
public:
    plain_case(case_kind k, F f) : special_case_base(k), f_(std::move(f)) {}
    plain_case(plain_case&& o) : special_case_base(o.kind), f_(std::move(o.f_)) {
        deadline = o.deadline;
        relative = o.relative;
        stop = o.stop;
    }
    poll try_now(wake_list&) override {
        return kind == case_kind::stop && stop.stop_requested() ? poll::done : poll::blocked;
    }
    unlocked_poll try_unlocked() override {
        return kind == case_kind::stop && stop.stop_requested() ? unlocked_poll::done : unlocked_poll::blocked;
    }
    void run(outcome) override { std::invoke(f_); }

private:
    F f_;
};

struct no_op {
    void operator()() const noexcept {}
};

// Whether a case type is a send or a receive (known without its kind).
template <class C>
inline constexpr bool is_channel_case_v = false;
template <class T, class F>
inline constexpr bool is_channel_case_v<recv_case<T, F>> = true;
template <class T, class F, bool Owned>
inline constexpr bool is_channel_case_v<send_case<T, F, Owned>> = true;

}  // namespace csp::detail
