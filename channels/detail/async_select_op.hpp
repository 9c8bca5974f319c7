// csp::detail::async_select_op — a native asynchronous select: one waiter
// registered on every channel of its cases, claimed once, like the blocking
// select (select_engine.hpp has the passes). Not Asio's `||`, which runs each
// branch as its own operation and can drop a value that a losing branch had
// already received.
//
// Completion signature: void(std::exception_ptr, std::size_t). The index is
// the case whose handler ran. The exception is that handler's, or
// closed_error for a send case chosen on a closed channel, or a
// std::system_error(operation_aborted) when the select was cancelled through
// its cancellation slot (then no case ran and nothing was taken).
//
// A timeout case puts the select's deadline on the deadline_queue of its
// handler's execution context (deadline_queue.hpp: one Asio timer for all
// of them), which claims the select for the timeout case when it is due;
// the completion takes it off the queue, after which the queue no longer
// refers to the operation. A stop case registers a std::stop_callback,
// whose destructor (in the completion) waits for a callback that is
// running.
#pragma once

#include <asio/steady_timer.hpp>

#include <array>
#include <atomic>
#include <mutex>
#include <optional>
#include <stop_token>
#include <system_error>
#include <tuple>
#include <type_traits>
#include <vector>

#include "async_op.hpp"
#include "deadline_queue.hpp"
#include "select_engine.hpp"

namespace csp::detail {

// The cases of `co_await async_select(use_task, cases...)`: referred to,
// not moved. They are temporaries of the co_await's full-expression (or the
// caller's objects), so they outlive the select, waiting included. Why: a
// case is built just before the select, and moving it copies its handler
// with wide loads of the narrow stores that have just built it, a store-
// forwarding stall per case; a select over four busy channels (select4)
// ran 1.23x faster referring to them (paired, medians of 7).
template <std::size_t N>
class argument_cases {
public:
    argument_cases() = default;  // refer_to() before use
    template <class... Cases>
    explicit argument_cases(Cases&&... cs) noexcept {
        refer_to(cs...);
    }
    case_base* const* cases() const noexcept { return ptrs_.data(); }
    static constexpr int size() noexcept { return static_cast<int>(N); }
    chan_base** locks() noexcept { return locks_.data(); }
    int* order() noexcept { return order_.data(); }

    // One store per element: assigning a braced array builds a temporary
    // and copies it with wide loads of narrow stores just made (a store-
    // forwarding stall on every select).
    template <class... Cases>
    void refer_to(Cases&... cs) noexcept {
        std::size_t i = 0;
        ((ptrs_[i++] = static_cast<case_base*>(&cs)), ...);
        channel_cases_only_ = sizeof...(Cases) > 0 && (is_channel_case_v<std::remove_cvref_t<Cases>> && ...);
        poll0_ = &poll_unlocked_as<std::remove_cvref_t<Cases>...>;
    }
    // Every case is a send or a receive (select_plan::channel_cases_only).
    bool channel_cases_only() const noexcept { return channel_cases_only_; }
    // Pass 0, knowing the cases' types.
    int poll_unlocked(select_plan& plan, outcome& how) { return poll0_(plan, ptrs_.data(), order_.data(), how); }

private:
    std::array<case_base*, N> ptrs_;
    bool channel_cases_only_ = false;
    unlocked_poller poll0_ = &poll_unlocked_virtual;
    std::array<chan_base*, N> locks_;
    std::array<int, N> order_;
};

// The cases of a select given as arguments: the operation owns them.
template <class... Cases>
class owned_cases {
    static constexpr std::size_t N = sizeof...(Cases);

public:
    explicit owned_cases(Cases&&... cs) : cases_(std::move(cs)...) { point(); }
    owned_cases(owned_cases&& o) : cases_(std::move(o.cases_)) { point(); }
    case_base* const* cases() const noexcept { return table_.cases(); }
    static constexpr int size() noexcept { return static_cast<int>(N); }
    chan_base** locks() noexcept { return table_.locks(); }
    int* order() noexcept { return table_.order(); }
    bool channel_cases_only() const noexcept { return table_.channel_cases_only(); }
    int poll_unlocked(select_plan& plan, outcome& how) { return table_.poll_unlocked(plan, how); }

private:
    void point() noexcept {
        std::apply([this](auto&... c) { table_.refer_to(c...); }, cases_);
    }
    std::tuple<Cases...> cases_;
    argument_cases<N> table_;  // refers to cases_
};

template <class Storage>
inline constexpr bool is_argument_cases_v = false;
template <std::size_t N>
inline constexpr bool is_argument_cases_v<argument_cases<N>> = true;

// The cases of a select over a range: the caller owns them and keeps them
// alive until the completion.
class borrowed_cases {
public:
    explicit borrowed_cases(std::vector<case_base*> cs)
        : ptrs_(std::move(cs)), locks_(ptrs_.size()), order_(ptrs_.size()) {}
    case_base* const* cases() const noexcept { return ptrs_.data(); }
    int size() const noexcept { return static_cast<int>(ptrs_.size()); }
    chan_base** locks() noexcept { return locks_.data(); }
    int* order() noexcept { return order_.data(); }
    static constexpr bool channel_cases_only() noexcept { return false; }
    int poll_unlocked(select_plan& plan, outcome& how) {
        return poll_unlocked_virtual(plan, ptrs_.data(), order_.data(), how);
    }

private:
    std::vector<case_base*> ptrs_;
    std::vector<chan_base*> locks_;
    std::vector<int> order_;
};

// Passes 0 and 1 of a select that is awaited (co_await with use_awaitable
// or use_task): the case chosen now (its handler not yet run) and how it
// completed, or -1 when the select must wait, which an async_select_op
// then does.
template <class Storage>
int select_now(Storage& cases, outcome& how) {
    select_plan plan = select_plan::of(cases.cases(), cases.size(), cases.order(), cases.channel_cases_only());
    int chosen = cases.poll_unlocked(plan, how);
    if (chosen < 0) {
        wake_list woken;  // destroyed after `held`: wakes run unlocked
        lock_set held(cases.locks(), plan.lock_count(cases.cases(), cases.locks()));
        chosen = plan.poll_all(cases.cases(), cases.order(), woken, how);
    }
    return chosen;
}

template <class Handler, class Storage>
class async_select_op final : public async_waiter<Handler> {
    using alloc = typename std::allocator_traits<
        typename completion_traits<Handler>::allocator>::template rebind_alloc<async_select_op>;

public:
    async_select_op(Handler&& h, Storage&& cases, const alloc& a)
        : async_waiter<Handler>(std::move(h)),
          alloc_(a),
          cases_(std::move(cases)),
          plan_(cases_.cases(), cases_.size(), cases_.order()) {}

    static void start(Handler&& h, Storage&& cases) {
        alloc a(asio::get_associated_allocator(h, asio::recycling_allocator<void>()));
        async_select_op* op = std::allocator_traits<alloc>::allocate(a, 1);
        try {
            std::allocator_traits<alloc>::construct(a, op, std::move(h), std::move(cases), a);
        } catch (...) {
            std::allocator_traits<alloc>::deallocate(a, op, 1);
            throw;
        }
        bool done_now;
        try {
            done_now = op->attempt();
        } catch (...) {
            op->drop_ref();
            throw;
        }
        if (done_now) {  // outside the try: the completion owns op now
            inline_completion::scope in;
            op->complete();
        }
    }

    void wake() noexcept override { this->post(run_completion<async_select_op>{this}); }

    void complete() {
        this->disconnect_cancellation();
        int c = this->claimed_case();
        if (registered_) {  // pass 3
            lock_set held(cases_.locks(), plan_.lock_count(cases_.cases(), cases_.locks()));
            for (int j = 0; j < plan_.polled; ++j) cases_.cases()[cases_.order()[j]]->dequeue();
            registered_ = false;
        }
        if (c >= 0 && c != plan_.timeout && c != plan_.stop && this->result == outcome::retry) {
            // The value or room we were claimed for went elsewhere: select
            // again, unless a cancellation came meanwhile (async_op.hpp,
            // cancellation_missed). The state stays claimed through pass 1,
            // so the armed timer or stop callback cannot claim us while
            // attempt() completes a case itself; it goes back to waiting
            // only when pass 2 registers.
            if (!this->cancellation_missed()) {
                if (attempt()) complete();
                return;
            }
            c = waiter::kCancelled;
        }
        disarm();

        std::exception_ptr failure;
        if (c == waiter::kCancelled) {
            failure = std::make_exception_ptr(
                std::system_error(asio::error::operation_aborted, "csp: select cancelled"));
        } else if (this->result == outcome::failed) {
            failure = this->error;
        } else {
            try {
                cases_.cases()[c]->run(c == plan_.timeout || c == plan_.stop ? outcome::delivered
                                                                            : this->result);
            } catch (...) {
                failure = std::current_exception();
            }
        }
        Handler h(std::move(this->handler_));
        drop_ref();
        std::move(h)(failure, static_cast<std::size_t>(c < 0 ? 0 : c));
    }

private:
    static void deadline_due(void* owner) noexcept {
        auto* op = static_cast<async_select_op*>(owner);
        if (op->try_claim(op->plan_.timeout)) op->wake();
    }
    struct stop_requested {
        async_select_op* op;
        void operator()() const noexcept {
            if (op->try_claim(op->plan_.stop)) op->wake();
        }
    };

    // Passes 0 and 1, then either a completion (inline when the caller is
    // to run it: true; otherwise posted) or pass 2 (registration).
    // Once a node is published, or the timer or stop callback is armed, the
    // completion may run on another thread before this returns: the
    // reference taken here keeps the memory alive until then, and arm_mu_
    // keeps the completion off deadlines_ and stop_callback_ while they are armed.
    bool attempt() {
        refs_.fetch_add(1, std::memory_order_relaxed);
        struct unref {
            async_select_op* op;
            ~unref() { op->drop_ref(); }
        } keep{this};
        outcome how;
        int chosen = cases_.poll_unlocked(plan_, how);
        if (chosen >= 0) {
            this->state.store(chosen, std::memory_order_relaxed);
            this->result = how;
        } else {
            wake_list woken;
            lock_set held(cases_.locks(), plan_.lock_count(cases_.cases(), cases_.locks()));
            chosen = plan_.poll_all(cases_.cases(), cases_.order(), woken, how);
            if (chosen < 0) {  // pass 2
                registered_ = true;
                this->track_work();
                this->connect_cancellation();
                this->note_parked(plan_.timeout < 0 && plan_.stop < 0);
                for (int j = 0; j < plan_.polled; ++j)
                    cases_.cases()[cases_.order()[j]]->enqueue(*this, cases_.order()[j]);
                // Claimable from here on (after a retry it was still claimed):
                // everything above happens-before any claimer's CAS.
                this->state.store(waiter::kWaiting, std::memory_order_release);
                for (int j = 0; j < plan_.polled; ++j) cases_.cases()[cases_.order()[j]]->recheck(woken);
                arm();
            } else {
                this->state.store(chosen, std::memory_order_relaxed);
                this->result = how;
            }
        }
        if (chosen < 0) {
            claim_if_due();
            return false;
        }
        if (inline_completion::allowed<Handler>()) return true;
        wake();
        return false;
    }

    // A retry registers again with the timer and the stop callback still
    // armed from the first attempt. One that fired while the state was still
    // claimed lost its CAS and will not fire again, so now that kWaiting is
    // published, claim for it here if it is due. (On a first attempt this
    // only repeats what arm() did; the CAS makes the second claim a no-op.)
    void claim_if_due() noexcept {
        const case_base* const* cs = cases_.cases();
        if (plan_.stop >= 0 && special(cs[plan_.stop]).stop.stop_requested() &&
            this->try_claim(plan_.stop)) {
            wake();
        } else if (plan_.timeout >= 0 &&
                   std::chrono::steady_clock::now() >= special(cs[plan_.timeout]).deadline &&
                   this->try_claim(plan_.timeout)) {
            wake();
        }
    }

    void arm() {
        std::lock_guard g(arm_mu_);
        if (plan_.timeout >= 0 && !deadlines_) {
            const asio::any_io_executor ex = timer_executor();
            deadline_queue& q = deadline_queue::of(ex);
            deadline_.deadline = special(cases_.cases()[plan_.timeout]).deadline;
            deadline_.fire = &deadline_due;
            deadline_.owner = this;
            q.arm(deadline_, ex);
            deadlines_ = &q;
        }
        if (plan_.stop >= 0 && !stop_callback_)
            stop_callback_.emplace(special(cases_.cases()[plan_.stop]).stop, stop_requested{this});
    }

    // The deadline goes to the queue of the handler's executor's context
    // when that is an I/O executor; otherwise (asio::use_future's, for one)
    // to the system executor's: the expiry only claims and posts the
    // completion, which goes to the handler's executor anyway.
    asio::any_io_executor timer_executor() const {
        auto ex = asio::get_associated_executor(this->handler_, asio::system_executor());
        if constexpr (std::is_constructible_v<asio::any_io_executor, decltype(ex)>)
            return asio::any_io_executor(ex);
        else
            return asio::any_io_executor(asio::system_executor());
    }

    void disarm() noexcept {
        std::lock_guard g(arm_mu_);
        stop_callback_.reset();  // waits for a stop callback that is running
        if (deadlines_) deadlines_->disarm(deadline_);
    }

    void drop_ref() noexcept {
        if (refs_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
        alloc a(alloc_);
        std::allocator_traits<alloc>::destroy(a, this);
        std::allocator_traits<alloc>::deallocate(a, this, 1);
    }

    alloc alloc_;
    Storage cases_;
    select_plan plan_;
    bool registered_ = false;  // nodes are on queues (pass 2 ran, pass 3 not yet)
    std::atomic<int> refs_{1};  // the completion's, and attempt()'s while it runs
    std::mutex arm_mu_;         // guards deadlines_ and stop_callback_
    deadline_queue* deadlines_ = nullptr;  // where deadline_ is armed, once it is
    deadline_queue::entry deadline_;
    std::optional<std::stop_callback<stop_requested>> stop_callback_;
};

}  // namespace csp::detail
