// csp::runtime — tasks on a small pool of threads, on Asio.
//
//   csp::runtime rt;                       // one worker per core
//   rt.go([&]() -> csp::task<> {           // a coroutine task: channel operations suspend it
//       while (auto v = co_await in.async_recv(csp::use_task))
//           co_await out.async_send(f(*v), csp::use_task);
//       out.close();
//   });
//   rt.go([&] { blocking_work(); });       // a plain task: runs on a thread of its own
//   rt.wait();                             // all tasks done; rethrows the first exception
//
// Workers. One asio::io_context run by `workers` threads. Each coroutine
// task runs on an executor of its own (detail/task_executor.hpp), which
// serialises its resumptions, its completions and the cancellations aimed
// at it, while any worker may run it. A task woken by another task runs
// next on the waker's thread, in a per-worker `runnext` slot as in Go, so a
// hand-off between two tasks costs no queue and no thread wake-up; when a
// task readies two, the one pushed out of the slot goes to the shared queue
// and wakes an idle worker, so ready work spreads to every thread (unless
// both were readied through one channel: detail/task_executor.hpp). A task
// parked in a channel operation holds no thread: 100 000 of them cost only
// their coroutine frames and contexts.
//
// Tasks. go() takes a coroutine (a csp::task<void> (task.hpp) or an
// asio::awaitable<void>, or a callable returning either) or a plain
// callable. A callable may take a std::stop_token as its only parameter;
// it is stopped when its group (or the runtime) is cancelled. Plain callables run on a separate elastic pool of threads
// (blocking_pool.hpp), never on a coroutine worker: a plain task may block
// in a channel operation without stalling coroutines, and a plain task
// never waits for a thread behind blocked ones, so plain tasks that wait for
// each other cannot deadlock the runtime.
//
// Errors. An exception escaping a task is kept; wait() rethrows the first
// one. One that nobody collected is printed to stderr when the runtime is
// destroyed: never swallowed silently.
//
// Deadlock. wait() throws csp::deadlock_error ("all tasks are asleep") when,
// for several checks in a row and with nothing moving in between: every
// plain task is parked in a channel operation that has neither a timeout
// nor a stop case; at least as many such operations of coroutine tasks are
// parked as coroutine tasks live; every worker is idle (all of them take a
// probe at once); and no timer of any runtime is pending. It assumes that
// threads outside the runtimes no longer feed its tasks while someone waits
// on it. A coroutine task with several operations parked at once (Asio's
// awaitable operators) counts once per operation, which the idle-worker
// probe covers unless another coroutine keeps yielding without channel
// operations for the whole window.
//
// Destruction cancels what is still running: it emits terminal cancellation
// on every coroutine task (a parked channel operation completes with
// operation_aborted and takes nothing), requests stop on every stop token,
// waits for every task to end, then joins its threads. A plain task must
// return for that: one blocked forever without a stop token blocks the
// destructor (it cannot be interrupted from outside). Handlers already
// queued when the tasks have ended (a cancelled timer's, a completion) still
// run, so that they release what they hold; timers still pending (an
// after() nobody reads) are destroyed without running.
#pragma once

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>
#include <asio/bind_cancellation_slot.hpp>
#include <asio/co_spawn.hpp>
#include <asio/dispatch.hpp>
#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/recycling_allocator.hpp>
#include <asio/strand.hpp>

#include <atomic>
#include <concepts>
#include <cstdint>
#include <memory>
#include <optional>
#include <stop_token>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <channels/async.hpp>

#include "detail/blocking_pool.hpp"
#include "detail/task_scope.hpp"
#include "task.hpp"

namespace csp {

class runtime;
class task_group;
namespace detail {
struct timer_access;
}

// Raised by runtime::wait() when no task can ever make progress again.
class deadlock_error : public error {
public:
    using error::error;
};

namespace detail {
template <class F>
concept takes_stop_token = std::invocable<F, std::stop_token>;

// Calls a task's callable, with its scope's stop token if it takes one (a
// copy of the token is two locked instructions on its shared state, paid
// only by the callables that ask for it).
template <class F>
decltype(auto) invoke_task(F& f, const task_scope& scope) {
    if constexpr (takes_stop_token<F>) return f(scope.stop_token());
    else return f();
}

template <class F>
using task_result_t = decltype(invoke_task(std::declval<F&>(), std::declval<const task_scope&>()));

template <class T>
inline constexpr bool is_awaitable_v = false;
template <class T, class E>
inline constexpr bool is_awaitable_v<asio::awaitable<T, E>> = true;

// The record of a csp::task given to go(): the task's env lives here, and
// the record keeps itself alive until the task has ended.
struct native_task_record : task_record, task_root_env {
    virtual ~native_task_record() = default;
    // Destroys what the task's frame referred to, once the frame is gone.
    virtual void release_callable() noexcept {}

    runtime* rt = nullptr;
};

// The runtime's cancellation of a csp::task (task_scope.hpp: run on the
// task's executor): later operations throw, the waiting one is cancelled.
// (Not through the record's Asio cancellation signal: a handler installed
// in its slot cost every task an allocation and a release.)
inline void cancel_native_task(task_record& base) noexcept {
    auto& r = static_cast<native_task_record&>(base);
    if (r.ignores_cancellation) return;
    r.cancelled = true;
    if (waiting_operation& w = r.waiting; w.op) w.cancel(w.op);
}

// The record of a task made by a callable: the callable (a lambda's
// captures, which its coroutine refers to) lives here until the task ends.
// The captures go with the task's end, before the runtime counts it as
// ended: a wait() that returns has seen every capture destroyed.
template <class F>
struct callable_task_record final : native_task_record {
    explicit callable_task_record(F&& fn) : f(std::move(fn)) {}
    void release_callable() noexcept override { f.reset(); }
    std::optional<F> f;
};
}  // namespace detail

class runtime {
public:
    // `workers` coroutine workers; 0 means one per core.
    explicit runtime(unsigned workers = 0);
    runtime(const runtime&) = delete;
    runtime& operator=(const runtime&) = delete;
    ~runtime();

    // The process-wide runtime, created on first use and destroyed at exit.
    static runtime& default_runtime();

    // Starts a task. F is a csp::task<void> (task.hpp), an
    // asio::awaitable<void>, a callable returning either, or a plain
    // callable (see the top of this file).
    template <class F>
    void go(F&& f) {
        spawn(root_, std::forward<F>(f));
    }

    // Blocks until every task has ended; rethrows the first exception a task
    // of the root (not of a task_group) ended with. Throws deadlock_error
    // when no task can make progress. Call it from outside the runtime.
    void wait();

    // A new strand on the workers: where to co_spawn your own Asio work, or
    // to build timers and sockets that live on the runtime.
    asio::any_io_executor executor();

    unsigned workers() const noexcept { return static_cast<unsigned>(workers_.size()); }
    std::size_t live_tasks() const noexcept { return live_of(tasks_.load(std::memory_order_acquire)); }
    // Threads of the plain-task pool (started so far and not yet retired).
    std::size_t blocking_threads() { return blocking_.threads(); }

private:
    friend class task_group;
    friend struct detail::timer_access;

    // The parks and wakes counted on one coroutine worker, written only by
    // that worker: a load and a store each, no locked instruction, and no
    // cache line that the workers take from each other (one shared counter
    // cost a task hand-off on one worker 16% of its time, and bounced between
    // workers on every park). The detector sums the tallies; the park of an
    // operation and its wake may be counted on different workers.
    struct alignas(64) park_tally {
        std::atomic<std::ptrdiff_t> parked{0};
        std::atomic<std::uint64_t> moves{0};
        void add(std::ptrdiff_t delta) noexcept {
            parked.store(parked.load(std::memory_order_relaxed) + delta, std::memory_order_relaxed);
            moves.store(moves.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
        }
    };

    // Counts the operations parked on one kind of thread (coroutine workers
    // or the plain-task pool) with no way out but a peer: in the calling
    // worker's tally when it has one of these hooks' own, otherwise in the
    // shared counter (a plain-task thread, or a thread outside the runtime
    // waking a task).
    class hooks final : public detail::park_hooks {
    public:
        hooks(runtime& rt, std::atomic<std::ptrdiff_t>& parked) : rt_(rt), parked_(parked) {}
        void parked() noexcept override { count(+1); }
        void unparked() noexcept override { count(-1); }
        // On a worker: another worker runs what is queued meanwhile.
        void thread_blocks() noexcept override;
        // Gives the calling thread `tally` for what it counts in these hooks.
        void adopt_on_this_thread(park_tally& tally) noexcept;

    private:
        void count(std::ptrdiff_t delta) noexcept;
        // The calling worker's hooks and tally (none on other threads).
        static thread_local const hooks* this_thread_owner_;
        static thread_local park_tally* this_thread_tally_;
        runtime& rt_;
        std::atomic<std::ptrdiff_t>& parked_;
    };


    template <class F>
    void spawn(detail::task_scope& scope, F&& f) {
        using fn = std::decay_t<F>;
        if (closing_.load(std::memory_order_acquire))
            throw error("csp: go() on a runtime that is shutting down");
        if constexpr (detail::is_task_v<fn>) {
            static_assert(std::is_same_v<fn, task<void>>, "csp: go() takes a csp::task<void>");
            start_task(scope, std::allocate_shared<detail::native_task_record>(asio::recycling_allocator<void>()),
                       std::forward<F>(f));
        } else if constexpr (detail::is_awaitable_v<fn>) {
            start_coroutine(scope, std::make_shared<detail::task_record>(),
                            [a = std::make_shared<fn>(std::forward<F>(f))](std::stop_token) mutable {
                                return std::move(*a);
                            });
        } else if constexpr (detail::is_task_v<detail::task_result_t<fn>>) {
            static_assert(std::is_same_v<detail::task_result_t<fn>, task<void>>,
                          "csp: go() takes a callable returning csp::task<void>");
            // The record from the thread's recycling cache, as the frame.
            auto record = std::allocate_shared<detail::callable_task_record<fn>>(
                asio::recycling_allocator<void>(), fn(std::forward<F>(f)));
            task<void> t = detail::invoke_task(*record->f, scope);
            start_task(scope, std::move(record), std::move(t));
        } else if constexpr (detail::is_awaitable_v<detail::task_result_t<fn>>) {
            start_coroutine(scope, std::make_shared<detail::task_record>(), fn(std::forward<F>(f)));
        } else {
            start_plain(scope, std::make_shared<detail::task_record>(), fn(std::forward<F>(f)));
        }
    }

    template <class F>
    void start_coroutine(detail::task_scope& scope, std::shared_ptr<detail::task_record> record,
                         F f) {
        record->executor.emplace(contexts_.acquire());
        record->self = record;
        task_started(scope, *record);
        detail::task_record& r = *record;
        asio::co_spawn(
            *r.executor,
            // The scope outlives its tasks (a group waits for them).
            [f = std::move(f), &scope]() mutable { return detail::invoke_task(f, scope); },
            asio::bind_cancellation_slot(
                r.signal.slot(), [this, record = std::move(record)](std::exception_ptr e) {
                    record->done = true;
                    contexts_.give_back(record->executor->context());
                    task_ended(*record, e);
                }));
    }

    // A csp::task runs on a pooled context like a co_spawned coroutine; its
    // end comes through the record (task_ended below) instead of a
    // completion handler.
    void start_task(detail::task_scope& scope, std::shared_ptr<detail::native_task_record> record,
                    task<void> t) {
        detail::native_task_record& r = *record;
        r.executor.emplace(contexts_.acquire());
        r.executor_of = [](const detail::task_env& env) {
            return asio::any_io_executor(*static_cast<const detail::native_task_record&>(env).executor);
        };
        r.post_completion = [](detail::task_env& env, detail::direct_completion& c) {
            static_cast<detail::native_task_record&>(env).executor->context().post_continuation(c);
        };
        r.post_behind = [](detail::task_env& env, detail::direct_completion& c, bool stay_on_worker) {
            static_cast<detail::native_task_record&>(env).executor->context().post_behind(c, stay_on_worker);
        };
        r.rt = this;
        r.ended = &runtime::task_ended_native;
        r.on_cancel = &detail::cancel_native_task;
        r.self = std::move(record);
        task_started(scope, r);
        auto h = t.release();
        h.promise().start_as_root(r);
        // As co_spawn does: from a worker the task runs at once, to its first wait.
        asio::dispatch(*r.executor, [h] { h.resume(); });
    }

    static void task_ended_native(detail::task_root_env& env, std::exception_ptr e) {
        auto& r = static_cast<detail::native_task_record&>(env);
        r.release_callable();
        r.done = true;
        r.rt->contexts_.give_back(r.executor->context());
        r.rt->task_ended(r, std::move(e));
    }

    template <class F>
    void start_plain(detail::task_scope& scope, std::shared_ptr<detail::task_record> record, F f) {
        record->self = record;
        task_started(scope, *record);
        blocking_.submit([this, record = std::move(record), &scope,
                          f = std::make_shared<F>(std::move(f))] {
            std::exception_ptr e;
            try {
                detail::invoke_task(*f, scope);
            } catch (...) {
                e = std::current_exception();
            }
            record->done = true;
            task_ended(*record, e);
        });
    }

    void task_started(detail::task_scope& scope, detail::task_record& r);
    void task_ended(detail::task_record& r, std::exception_ptr e);
    void timer_armed() noexcept;
    void timer_done() noexcept;
    void note_activity() noexcept { epoch_.fetch_add(1, std::memory_order_relaxed); }
    std::uint64_t activity() const noexcept;  // changes with every park, wake, task end and timer
    bool no_live_tasks() const noexcept { return live_tasks() == 0; }
    void install_thread_hooks(hooks& h);
    bool looks_deadlocked();
    bool workers_idle();

    hooks coroutine_hooks_{*this, coroutine_parked_};
    hooks plain_hooks_{*this, plain_parked_};
    detail::task_scope root_{false};
    detail::task_context_pool contexts_{ctx_};  // outlives ctx_: a runner queued there refers to its context
    asio::io_context ctx_;
    asio::executor_work_guard<asio::io_context::executor_type> guard_{ctx_.get_executor()};
    std::unique_ptr<park_tally[]> worker_tallies_;  // one per worker, built before the workers start
    std::vector<std::thread> workers_;
    detail::blocking_pool blocking_;

    // For live_tasks() and the deadlock detector. A task counts as live from
    // go() until its scope has recorded its end, so that when a group's
    // wait() returns the runtime no longer counts the group's tasks.
    // One word for two counts, so that a task's end is one locked
    // instruction: the low half counts the live tasks (a start adds 1), the
    // high half the ended ones, for activity() (an end adds 2^32 - 1: one up
    // there, one down here; the low half is at least 1, so nothing borrows).
    // 2^32 live tasks would take hundreds of gigabytes of records.
    static constexpr std::uint64_t kTaskStart = 1, kTaskEnd = (std::uint64_t{1} << 32) - 1;
    static std::size_t live_of(std::uint64_t tasks) noexcept { return tasks & 0xffff'ffffu; }
    static std::uint64_t ended_of(std::uint64_t tasks) noexcept { return tasks >> 32; }
    std::atomic<std::uint64_t> tasks_{0};
    std::atomic<std::ptrdiff_t> plain_live_{0};      // of which plain tasks
    std::atomic<std::ptrdiff_t> coroutine_parked_{0};  // operations parked with no way out but a peer,
                                                       // counted off the workers (plus worker_tallies_)
    std::atomic<std::ptrdiff_t> plain_parked_{0};      // the same, on plain-task threads
    std::atomic<std::ptrdiff_t> timers_{0};          // this runtime's timers pending
    std::atomic<std::uint64_t> epoch_{0};            // bumped by every timer, and by the parks and
                                                     // wakes counted off the workers' tallies
    std::atomic<bool> closing_{false};
    std::mutex groups_mu_;
    std::vector<detail::task_scope*> groups_;  // guarded by groups_mu_: cancelled at destruction
    std::mutex idle_mu_;
    std::condition_variable idle_;             // notified when no task is live
};

// Starts a task on the default runtime.
template <class F>
void go(F&& f) {
    runtime::default_runtime().go(std::forward<F>(f));
}

}  // namespace csp
