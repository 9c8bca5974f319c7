// csp::detail::async_op — the waiter of an asynchronous operation.
//
// The same waiter protocol as a parked thread (waiter.hpp), with another way
// to wake: wake() posts the operation's completion to the executor
// associated with its handler, and the completion, running there, takes the
// operation's nodes back where needed, frees the operation and only then
// invokes the handler (so the memory is back in Asio's per-thread recycling
// cache before the handler starts the next operation).
//
// Lifetime: the operation is allocated with the handler's associated
// allocator (Asio's recycling allocator by default) when it has to wait,
// and freed by its completion. Until then every queue that holds one of its
// nodes and every party that may claim it (peers under a channel lock, a
// cancellation handler, a timer, a stop callback) can reach it; wake() is the
// claimer's last access. The completion is never invoked inline: it always
// goes through the executor with blocking.never, so a ping-pong between two
// coroutines cannot grow the stack.
//
// Cancellation (Asio per-operation cancellation slots): the cancellation
// handler claims the operation for `kCancelled` with the same CAS as a peer.
// If the peer won, the value was delivered and the cancellation is a no-op;
// otherwise the operation took nothing and gave nothing. The slot is cleared
// in the completion, on the handler's executor, before the handler runs. A
// csp::task's operations are reached the same way through the task's env
// instead of a slot (env_cancelled_handler).
#pragma once

#include <asio/any_io_executor.hpp>
#include <asio/associated_allocator.hpp>
#include <asio/associated_cancellation_slot.hpp>
#include <asio/associated_executor.hpp>
#include <asio/cancellation_type.hpp>
#include <asio/error.hpp>
#include <asio/execution.hpp>
#include <asio/prefer.hpp>
#include <asio/recycling_allocator.hpp>
#include <asio/require.hpp>
#include <asio/system_executor.hpp>
#include <asio/use_awaitable.hpp>

#include <atomic>
#include <concepts>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

#include "direct_completion.hpp"
#include "park_hooks.hpp"
#include "task_env.hpp"
#include "waiter.hpp"

namespace csp::detail {

// Where and how a handler's completion runs. A handler with no associated
// executor completes on asio::system_executor.
template <class Handler>
struct completion_traits {
    using executor = asio::associated_executor_t<Handler, asio::system_executor>;
    using work = std::decay_t<
        typename asio::prefer_result<executor, asio::execution::outstanding_work_t::tracked_t>::type>;
    using allocator = asio::associated_allocator_t<Handler, asio::recycling_allocator<void>>;

    static work track(const Handler& h) {
        return asio::prefer(asio::get_associated_executor(h, asio::system_executor()),
                            asio::execution::outstanding_work.tracked);
    }

    // Runs f on the handler's executor, never inline. Marked a continuation:
    // when the waker is itself a thread of the target io_context (a task of
    // the runtime waking another), Asio queues f on that thread instead of
    // waking an idle one, so a hand-off between two tasks stays on one
    // thread, as Go's `runnext` keeps it on one processor; another thread
    // joins in only when more work is queued than this one can take.
    template <class F>
    static void post(const work& ex, const Handler& h, F&& f) {
        asio::execution::execute(
            asio::prefer(asio::require(ex, asio::execution::blocking.never),
                         asio::execution::relationship.continuation,
                         asio::execution::allocator(asio::get_associated_allocator(h))),
            std::forward<F>(f));
    }
};

// A handler that queues its operation's completion node itself: a
// csp::task's (task_ops.hpp), whose executor is the runtime's, kept alive by
// the runtime (no work to track) and able to take the node as it is. Its
// operations skip Asio's executor machinery altogether.
template <class H>
concept direct_posting_handler = requires(const H& h, direct_completion& c) { h.post_direct(c); };

// A handler whose task is cancelled through its env (task_env.hpp): a
// csp::task's, instead of an Asio cancellation slot.
template <class H>
concept env_cancelled_handler = requires(const H& h) {
    { h.waiting_operation_slot() } -> std::same_as<waiting_operation&>;
};

// Runs Op::complete on the handler's executor.
template <class Op>
struct run_completion {
    Op* op;
    void operator()() { op->complete(); }
};

// Base of the operations: the handler, its executor (work tracked until the
// completion ran), and the hooks of the runtime it parked in.
template <class Handler>
class async_waiter : public waiter {
protected:
    using traits = completion_traits<Handler>;

    explicit async_waiter(Handler&& h) : handler_(std::move(h)) {}
    ~async_waiter() = default;

    // Called first when the operation is going to wait, before anyone can
    // claim it: from here on it keeps its executor's work tracked (an
    // operation that completes at once never pays for that).
    void track_work() noexcept {
        if constexpr (!direct_posting_handler<Handler>)
            if (!work_) work_.emplace(traits::track(handler_));
    }

    // Counts this operation as parked in the current runtime, if any, when
    // only a peer can complete it (no timeout, no stop case).
    void note_parked(bool only_a_peer_can_wake = true) noexcept {
        hooks_ = only_a_peer_can_wake ? current_park_hooks() : nullptr;
        if (hooks_) hooks_->parked();
    }

    // Installs the cancellation handler, if the handler has a slot. Called
    // before the operation is published on any queue.
    void connect_cancellation() {
        if constexpr (env_cancelled_handler<Handler>) {
            handler_.waiting_operation_slot() = {this, [](void* self) noexcept {
                                                     static_cast<async_waiter*>(self)->cancel();
                                                 }};
        } else {
            slot_ = asio::get_associated_cancellation_slot(handler_);
            if (slot_.is_connected()) slot_.template emplace<cancel_claim>(this);
        }
    }
    void disconnect_cancellation() noexcept {
        if constexpr (env_cancelled_handler<Handler>) {
            if (waiting_operation& w = handler_.waiting_operation_slot(); w.op == this) w = {};
        } else {
            if (slot_.is_connected()) slot_.clear();
        }
    }

    // A cancellation that came while a peer held the claim. Asio emits a
    // cancellation once: if that claim turns out to be a retry (the value it
    // was for went to a lock-free party), registering again would wait past
    // the cancellation forever, so the retry completes as cancelled instead.
    bool cancellation_missed() const noexcept { return cancel_missed_.load(std::memory_order_relaxed); }

    template <class Op>
    void post(run_completion<Op> f) noexcept {
        if (park_hooks* h = std::exchange(hooks_, nullptr)) h->unparked();  // once per park, retries included
        direct_.target = f.op;
        direct_.finish = &finish_direct<Op>;
        if constexpr (direct_posting_handler<Handler>) {
            handler_.post_direct(direct_);
            return;
        }
        // Unset only for an operation that completed at once, on its own thread.
        if (!work_) work_.emplace(traits::track(handler_));
        if constexpr (std::is_same_v<typename traits::work, asio::any_io_executor>) {
            if (direct_post_fn direct = direct_post_hook.load(std::memory_order_acquire))
                if (direct(*work_, direct_)) return;
        }
        traits::post(*work_, handler_, std::move(f));
    }

    Handler handler_;
    std::optional<typename traits::work> work_;  // engaged once the operation parks or posts

private:
    // Any cancellation type is honoured: a cancelled operation has no
    // effect at all, which is what even `total` asks for.
    void cancel() noexcept {
        if (this->try_claim(waiter::kCancelled)) this->wake();
        else cancel_missed_.store(true, std::memory_order_relaxed);
    }
    struct cancel_claim {
        explicit cancel_claim(async_waiter* w) noexcept : w_(w) {}
        void operator()(asio::cancellation_type_t) const noexcept { w_->cancel(); }
        async_waiter* w_;
    };

    // The completion as an executor's queue node (direct_completion.hpp);
    // used once per post, after the operation was claimed.
    struct direct_node : direct_completion {
        void* target = nullptr;  // the Op
    };
    template <class Op>
    static void finish_direct(direct_completion* c, bool run) {
        // Not run: the operation stays allocated, as it does when Asio
        // destroys an unrun run_completion.
        if (run) static_cast<Op*>(static_cast<direct_node*>(c)->target)->complete();
    }

    direct_node direct_;
    asio::cancellation_slot slot_;
    park_hooks* hooks_ = nullptr;
    // Set by the cancellation handler, read by the completion: both run
    // serialised (Asio requires emission to be serialised with the
    // operation's handler); atomic only so that a caller who breaks that
    // rule gets a missed cancellation, not undefined behaviour.
    std::atomic<bool> cancel_missed_{false};
};

// The handler of `co_await op(asio::use_awaitable)`: invoking it resumes the
// coroutine, which Asio allows from inside the operation's initiation.
template <class Handler>
inline constexpr bool is_coroutine_handler_v = false;
template <class Executor, class... Args>
inline constexpr bool is_coroutine_handler_v<asio::detail::awaitable_handler<Executor, Args...>> = true;

// An operation that completes at once completes inline when its handler is a
// coroutine's (the coroutine goes on without a trip through the scheduler,
// as a goroutine does after a channel operation that did not block) and the
// thread is not already this many inline completions deep; otherwise it
// posts, so that a loop of operations that never block cannot grow the
// stack without bound.
class inline_completion {
public:
    static constexpr int kMaxDepth = 16;

    template <class Handler>
    static bool allowed() noexcept {
        return is_coroutine_handler_v<Handler> && depth() < kMaxDepth;
    }

    // Held while an operation completes inline.
    class scope {
    public:
        scope() noexcept { ++depth(); }
        ~scope() { --depth(); }
        scope(const scope&) = delete;
        scope& operator=(const scope&) = delete;
    };

private:
    static int& depth() noexcept {
        thread_local int d = 0;
        return d;
    }
};

// Allocates and frees Op with the allocator associated with its handler.
template <class Op, class Handler>
struct op_memory {
    using alloc = typename std::allocator_traits<
        typename completion_traits<Handler>::allocator>::template rebind_alloc<Op>;

    template <class... Args>
    static Op* create(Handler& h, Args&&... args) {
        alloc a(asio::get_associated_allocator(h, asio::recycling_allocator<void>()));
        Op* p = std::allocator_traits<alloc>::allocate(a, 1);
        try {
            std::allocator_traits<alloc>::construct(a, p, std::forward<Args>(args)...);
        } catch (...) {
            std::allocator_traits<alloc>::deallocate(a, p, 1);
            throw;
        }
        return p;
    }

    // Moves the handler out, frees op, and returns the handler.
    static Handler release(Op* op) noexcept {
        Handler h(std::move(op->handler_));
        alloc a(asio::get_associated_allocator(h, asio::recycling_allocator<void>()));
        std::allocator_traits<alloc>::destroy(a, op);
        std::allocator_traits<alloc>::deallocate(a, op, 1);
        return h;
    }
};

}  // namespace csp::detail
