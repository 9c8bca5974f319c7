// csp::detail::task_env — what a csp::task (runtime/task.hpp) gives the
// channel operations it awaits with csp::use_task (channels/task_ops.hpp).
//
// One env per running task: the root coroutine and every task it awaits
// share it. The runtime fills it in before the task first runs; the channel
// layer only reads it, so channels/ does not depend on runtime/.
//
// Threading: a task runs on one serial executor (the runtime's per-task
// context), and the runtime delivers cancellation on that same executor, so
// every field is read and written there only: no field needs to be atomic.
#pragma once

#include <asio/any_io_executor.hpp>

#include <chrono>
#include <coroutine>

#include "direct_completion.hpp"

namespace csp::detail {

// The operation of a task that waits now, and how to cancel it. Set by the
// operation when it starts to wait and cleared by its completion, read by the
// task's cancellation: all on the task's executor. (An Asio cancellation slot
// did this job for the price of an allocation from the thread's cache, a
// virtual destroy and its release per wait.)
struct waiting_operation {
    void* op = nullptr;
    void (*cancel)(void* op) noexcept = nullptr;
};

// Operations completed without suspending between two looks at the clock
// (runtime/task.hpp: awaiter_ref).
inline constexpr int kOpsPerCheck = 64;

struct task_env {
    // Where the task's coroutine resumes after an operation that waited
    // (its completion handler's associated executor), made when asked for:
    // a stored asio::any_io_executor cost every task's start a type-erased
    // move (8% of an empty task's life), and csp's own operations never ask.
    asio::any_io_executor (*executor_of)(const task_env&) = nullptr;
    asio::any_io_executor resume_on() const { return executor_of(*this); }
    // Queues a completion node on resume_on(), as a continuation of the
    // running task (direct_completion.hpp): how a waiting operation's
    // completion reaches the task without going through Asio's executor
    // properties. Any thread may call it.
    void (*post_completion)(task_env&, direct_completion&) = nullptr;
    // Called by the running task: queues c on the task's own queue and has
    // the task give its worker back once the current handler returns, so that
    // c runs after the work already waiting for the runtime's workers (a
    // yield). `stay_on_worker`: the task waits for this worker again, behind
    // what it has queued, instead of for any worker (an idle one is woken).
    // Null where the executor has no such queue.
    void (*post_behind)(task_env&, direct_completion&, bool stay_on_worker) = nullptr;
    // The operation that waits now, if any: at most one operation of a
    // task waits at a time.
    waiting_operation waiting;
    // Set when the task was cancelled: every later co_await of a channel
    // operation throws std::system_error(operation_aborted), as a co_await
    // in an Asio awaitable does once its cancellation state is set.
    bool cancelled = false;
    // Set by `co_await csp::ignore_cancellation`: the runtime's
    // cancellation no longer reaches this task.
    bool ignores_cancellation = false;
    // The cooperative yield of a task whose operations complete without
    // suspending (runtime/task.hpp: awaiter_ref), kept there: operations
    // left before the next look at the clock, and when the window of the
    // last look began (zero: none yet since the task last suspended).
    int ops_until_check = kOpsPerCheck;
    std::chrono::steady_clock::time_point window_start{};
    // The yield itself: set by the awaiter's await_ready, which completed
    // the operation, for its await_suspend, which queues `resume_later`.
    // Kept here, not in each awaiter, so that an awaiter is a bare pointer
    // (building the node on every co_await was a few instructions of every
    // operation); at most one operation of a task is awaited at a time.
    bool yielding = false;
    struct resume_node : direct_completion {
        resume_node() noexcept {
            finish = [](direct_completion* n, bool run) {
                if (run) static_cast<resume_node*>(n)->task.resume();
            };
        }
        std::coroutine_handle<> task;
    };
    resume_node resume_later;
};

}  // namespace csp::detail
