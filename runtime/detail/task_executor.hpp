// csp::detail::task_context, task_executor — where a coroutine task runs.
//
// Every coroutine task has a task_context: a serial queue of the task's
// handlers (its resumptions, its completion, the cancellations aimed at it)
// that runs them one at a time, in order, on any worker of the runtime's
// io_context. task_executor is the Asio executor that feeds it; it is the
// executor of the task's awaitable frames, so every channel operation,
// timer or Asio operation of the task completes through it.
//
// It does a strand's job, for less: a strand takes a mutex (shared with
// other strands) three times per handler, allocates its invoker and is
// reference counted with a shared_ptr; a task_context is one lock-free
// stack with its runner built in (a channel operation's completion comes as
// the node built into the operation: direct_completion.hpp).
// And it keeps a hand-off on one thread as Go's `runnext` does: when a task
// running on a worker readies another task of the same runtime (a channel
// operation completing a parked peer: a continuation), the readied task does
// not go through the io_context's queue; it waits in the worker's `runnext`
// slot and runs on that worker as soon as the current task gives the thread
// back. A second readied task pushes the first out to the io_context's
// shared queue, where an idle worker picks it up. A chain of runnext hand-
// offs (two tasks ping-ponging) gives the thread back to the io_context
// after kMaxChain tasks, so that queued work is never starved by it.
//
// State of a context (head_):
//   nullptr        idle: no handler queued, no runner scheduled;
//   running_mark() a runner is scheduled or running and nothing is queued;
//   a node         a runner is scheduled or running; the nodes are queued,
//                  newest first.
// Whoever moves head_ out of nullptr schedules the one runner; only the
// runner moves it back to nullptr, and only when nothing is queued.
//
// Lifetime: contexts belong to their runtime's task_context_pool and live
// as long as the runtime. A task takes one when it starts and gives it back
// when it ends, and the next task reuses it. An executor is therefore a
// plain pointer, copied without touching shared memory (a channel hand-off
// copies it three or four times), and a copy that outlives its task stays
// valid: what is posted to it still runs, serialised with whichever task
// holds the context now, as Asio's pooled strands serialise unrelated
// handlers. Like an io_context's executor, it must not be used once its
// runtime is destroyed.
#pragma once

#include <asio/any_io_executor.hpp>
#include <asio/execution.hpp>
#include <asio/io_context.hpp>
#include <asio/prefer.hpp>
#include <asio/recycling_allocator.hpp>
#include <asio/require.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <new>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include <channels/detail/direct_completion.hpp>
#include <channels/detail/waiter.hpp>

namespace csp::detail {

class task_context {
public:
    task_context(asio::io_context& ctx, asio::detail::io_context_impl& scheduler) noexcept
        : ctx_(ctx), scheduler_(scheduler) {}
    task_context(const task_context&) = delete;
    task_context& operator=(const task_context&) = delete;
    ~task_context() { destroy_queued(head_.exchange(nullptr, std::memory_order_acquire)); }

    asio::io_context& context() const noexcept { return ctx_; }
    bool running_in_this_thread() const noexcept { return this_thread().current == this; }

    // Runs f after every handler queued before it, never concurrently with
    // another handler of this context. `may_run_inline`: f may run right
    // here when this thread already runs this context (blocking.possibly).
    // `continuation`: the caller is about to give its thread back (Asio's
    // relationship.continuation), so f may run next on this thread.
    template <class F>
    void execute(F&& f, bool may_run_inline, bool continuation) {
        if (may_run_inline && running_in_this_thread()) {
            std::decay_t<F> local(std::forward<F>(f));
            local();
            return;
        }
        if (may_run_inline && take_idle_turn_here()) {
            run_as_turn(std::forward<F>(f));
            return;
        }
        if (push(make_node(std::forward<F>(f)))) schedule(may_run_inline, continuation);
    }

    // A channel operation's completion, queued as execute() with
    // blocking.never and relationship.continuation would, without wrapping.
    void post_continuation(direct_completion& c) {
        if (push(&c)) schedule(false, true);
    }

    // From a handler of this context (the running task): queues c and ends
    // the turn once that handler returns, with the runner posted behind
    // what the io_context already has queued, as after kMaxHandlers. From
    // elsewhere it is post_continuation.
    // `stay_on_worker`: the runner goes on this worker's private queue
    // instead of the shared one, and no idle worker is woken for it.
    void post_behind(direct_completion& c, bool stay_on_worker) {
        if (!running_in_this_thread()) {
            post_continuation(c);
            return;
        }
        yield_requested_ = true;
        yield_stays_on_worker_ = stay_on_worker;
        push(&c);  // the turn is held here, so this does not schedule
    }

private:
    static constexpr int kMaxChain = 64;     // runnext hand-offs before the io_context gets the thread back
    static constexpr int kMaxHandlers = 64;  // handlers of one context per turn

    // A queued handler: runs (or only destroys) and frees itself. A channel
    // operation's completion comes as the node built into the operation.
    using node = direct_completion;

    template <class F>
    struct handler_node : node {
        using alloc = asio::recycling_allocator<handler_node>;
        explicit handler_node(F&& f) : fn(std::move(f)) { finish = &finish_impl; }
        static void finish_impl(node* n, bool run) {
            auto* self = static_cast<handler_node*>(n);
            F fn(std::move(self->fn));  // free before running: the memory is back for the next operation
            alloc a;
            std::allocator_traits<alloc>::destroy(a, self);
            std::allocator_traits<alloc>::deallocate(a, self, 1);
            if (run) fn();
        }
        F fn;
    };

    // Per thread: the context running here and the runnext slot (the slot
    // is used only while this thread runs a runner of `ctx`, whose loop
    // empties it).
    struct thread_state {
        task_context* current = nullptr;
        task_context* runnext = nullptr;
        const void* runnext_source = nullptr;  // the channel that readied `runnext`, if known
        asio::io_context* ctx = nullptr;
    };
    static thread_state& this_thread() noexcept {
        thread_local thread_state s;
        return s;
    }

    // The one scheduled runner of a context, built into it, so that
    // scheduling it allocates nothing. It is an operation of Asio's own
    // scheduler (the io_context's implementation, an internal type of Asio)
    // because an io_context executor would wrap it in a freshly allocated
    // operation on the posting thread, freed on the running one: across
    // threads, Asio's per-thread recycling caches do not help. At most one
    // is scheduled at a time: it is posted by whoever moved head_ out of
    // idle, or by the runner itself, and holds the context's turn until it ran.
    struct runner_op : asio::detail::scheduler_operation {
        explicit runner_op(task_context* c) noexcept : scheduler_operation(&do_complete), owner(c) {}
        static void do_complete(void* scheduler, scheduler_operation* base, const asio::error_code&, std::size_t) {
            task_context* c = static_cast<runner_op*>(base)->owner;
            if (scheduler) run_chain(c);
            else c->abandon();  // the io_context shuts down with it queued
        }
        task_context* owner;
    };

    template <class F>
    static node* make_node(F&& f) {
        using hn = handler_node<std::decay_t<F>>;
        typename hn::alloc a;
        hn* p = std::allocator_traits<typename hn::alloc>::allocate(a, 1);
        try {
            std::allocator_traits<typename hn::alloc>::construct(a, p, std::decay_t<F>(std::forward<F>(f)));
        } catch (...) {
            std::allocator_traits<typename hn::alloc>::deallocate(a, p, 1);
            throw;
        }
        return p;
    }

    node* running_mark() noexcept { return &running_mark_; }

    // A dispatch from a runner of the same io_context (a task starting
    // another) to an idle context: the caller takes the context's turn with
    // one CAS and runs f in it (run_as_turn), as the queued node and the
    // nested run_turn of schedule() would, less the node and one of the
    // three atomic exchanges on head_ (a task's start, measured: 126 -> 105
    // ns per empty task). False, changing nothing, otherwise.
    bool take_idle_turn_here() noexcept {
        if (this_thread().ctx != &ctx_) return false;
        node* idle = nullptr;
        return head_.compare_exchange_strong(idle, running_mark(), std::memory_order_acquire,
                                             std::memory_order_relaxed);
    }
    // Requires the turn taken by take_idle_turn_here(): runs f as its first
    // handler, then what was queued meanwhile (by f or by other threads). A
    // handler that throws ends the process, as in run_turn().
    template <class F>
    void run_as_turn(F&& f) noexcept {
        thread_state& t = this_thread();
        task_context* const outer = std::exchange(t.current, this);
        std::decay_t<F>(std::forward<F>(f))();
        t.current = outer;
        if (!end_turn_if_empty()) run_turn();
    }

    // The holder of the turn gives it up when nothing was queued since it
    // last looked (running_mark() -> idle); false when something was.
    bool end_turn_if_empty() noexcept {
        node* expected = running_mark();
        return head_.compare_exchange_strong(expected, nullptr, std::memory_order_acq_rel,
                                             std::memory_order_relaxed);
    }

    // True when this push moved the context out of idle: the caller schedules it.
    bool push(node* n) noexcept {
        node* old = head_.load(std::memory_order_relaxed);
        do {
            n->next = old == running_mark() ? nullptr : old;
        } while (!head_.compare_exchange_weak(old, n, std::memory_order_acq_rel, std::memory_order_relaxed));
        return old == nullptr;
    }

    void schedule(bool may_run_inline, bool continuation) {
        thread_state& t = this_thread();
        // A dispatch from a worker of the io_context runs the context right
        // here, as a strand would: a task that starts another (co_spawn
        // dispatches) runs it to its first suspension at once, without a
        // trip through the queue and a wake-up of another worker.
        if (may_run_inline && (t.ctx == &ctx_ || ctx_.get_executor().running_in_this_thread())) {
            run_chain(this);
            return;
        }
        if (continuation && t.ctx == &ctx_) {
            // The one pushed out goes to the shared queue and wakes an idle
            // worker: two tasks readied at once are work for two threads
            // (paired against keeping it on this thread's private queue:
            // pipeline 0.80x). Unless both were readied by the same channel
            // (consumers of one channel, readied one after the other by its
            // producer): on two workers they would take that channel's lines
            // from each other for every value, so the one pushed out stays
            // on this thread's private queue, where an idle worker does not
            // hear of it (paired: pipeline_par 0.62x).
            const void* const source = current_wake_source();
            if (task_context* pushed_out = std::exchange(t.runnext, this))
                pushed_out->post_runner(source != nullptr && source == t.runnext_source);
            t.runnext_source = source;
            return;
        }
        post_runner(continuation);
    }

    // Queues this context's runner on the io_context. A continuation stays
    // on this thread's private queue when this is a worker; otherwise it
    // goes to the shared queue and wakes an idle worker.
    //
    // The io_context runs in Asio's one-thread mode (runtime.cpp), where a
    // worker that takes a handler does not wake another for what is still
    // queued, and every post made on a worker stays on its private queue. So
    // work moves to another worker only where it is posted here as no
    // continuation: a task pushed out of runnext by one readied from another
    // channel, a yield (busy, or a send that found its ring full, unless the
    // channel's ends are shared), a turn cut at kMaxHandlers. Why: with
    // Asio's wake-ups, every handler taken with more queued woke the idle
    // worker, which took the next task, and tasks that share a channel's
    // ends (a parallel stage's workers: both channels' claims) ran on both
    // cores, their lines crossing on every value. Without those wake-ups:
    // pipeline_par 0.68-0.75x in four paired runs of 9-11 rounds (on one
    // core, as Boost.Fiber's program), select4, pipeline and fanin_timeout
    // within the machine's noise (0.94-1.06x; fanin_timeout once 1.24x),
    // and pipeline_par_cpu still on both cores (its yields wake a worker).
    void post_runner(bool continuation) {
        if (continuation) scheduler_.post_immediate_completion(&runner_, true);
        else scheduler_.do_dispatch(&runner_);  // the shared queue, and a wake-up, from any thread
    }

    // Runs `first`, then what its handlers put in this thread's runnext slot,
    // and so on, kMaxChain at most.
    static void run_chain(task_context* first) {
        thread_state& t = this_thread();
        asio::io_context* const outer = std::exchange(t.ctx, &first->ctx_);
        if (outer) {  // nested in another runner (a handler ran the io_context): leave runnext to it
            first->run_turn();
            t.ctx = outer;
            return;
        }
        task_context* c = first;
        for (int chained = 1; c; ++chained) {
            c->run_turn();
            c = std::exchange(t.runnext, nullptr);
            if (c && chained == kMaxChain) {
                // Behind what is already queued, but on this thread: a
                // ping-pong pair goes on here after the others had their turn,
                // without waking (and moving to) another worker.
                c->post_runner(true);
                c = nullptr;
            }
        }
        t.ctx = nullptr;
    }

    // One turn: the queued handlers, oldest first, until none is left
    // (the context goes idle) or kMaxHandlers ran (the runner is posted again).
    // A handler that throws ends the process, as an exception escaping
    // io_context::run() on a worker thread would (the runtime's own handlers
    // never throw); carrying on would lose the handlers taken for this turn.
    void run_turn() noexcept {
        thread_state& t = this_thread();
        task_context* const outer = std::exchange(t.current, this);
        int ran = 0;
        for (;;) {
            if (yield_requested_) {  // post_behind: something is queued, so the turn goes on later
                yield_requested_ = false;
                requeue_turn(yield_stays_on_worker_);
                break;
            }
            node* batch = head_.exchange(running_mark(), std::memory_order_acquire);
            if (batch == running_mark()) {
                if (end_turn_if_empty()) break;
                continue;
            }
            node* fifo = nullptr;
            while (batch) {
                node* n = batch;
                batch = n->next;
                n->next = fifo;
                fifo = n;
            }
            while (fifo) {
                node* n = fifo;
                fifo = n->next;
                n->finish(n, true);
                ++ran;
            }
            if (ran >= kMaxHandlers) {
                requeue_turn();
                break;
            }
        }
        t.current = outer;
    }

    // Ends the turn, or, when handlers are queued, posts the runner behind
    // what the io_context already has queued to run them later.
    void requeue_turn(bool stay_on_worker = false) {
        if (!end_turn_if_empty()) post_runner(stay_on_worker);
    }

    // A runner destroyed unrun (the io_context shut down with it queued):
    // its handlers are destroyed unrun too, as Asio does with its own.
    void abandon() noexcept { destroy_queued(head_.exchange(nullptr, std::memory_order_acquire)); }

    void destroy_queued(node* n) noexcept {
        while (n && n != running_mark()) {
            node* next = n->next;
            n->finish(n, false);
            n = next;
        }
    }

    asio::io_context& ctx_;
    asio::detail::io_context_impl& scheduler_;
    runner_op runner_{this};
    std::atomic<node*> head_{nullptr};
    // Set by post_behind, read by run_turn: only by the turn's holder.
    bool yield_requested_ = false;
    bool yield_stays_on_worker_ = false;
    node running_mark_;  // a node that is never queued: its address marks "scheduled, empty"
};

// Wakes one idle worker of `ctx` (or, with none waiting, interrupts the
// worker waiting in Asio's reactor), which then runs what waits in the
// shared queue: for a worker about to be held by something other than a
// task (a blocking wait), since in Asio's one-thread mode (runtime.cpp) no
// worker wakes another for queued work by itself. The wake-up is a queued
// no-op that frees itself; without memory for it, nobody is woken.
inline void wake_idle_worker(asio::io_context& ctx) noexcept {
    struct wake_op : asio::detail::scheduler_operation {
        wake_op() noexcept : scheduler_operation(&done) {}
        static void done(void*, scheduler_operation* op, const asio::error_code&, std::size_t) {
            delete static_cast<wake_op*>(op);
        }
    };
    try {
        if (auto* op = new (std::nothrow) wake_op) asio::use_service<asio::detail::io_context_impl>(ctx).do_dispatch(op);
    } catch (...) {  // use_service finds the io_context's own scheduler: it does not throw in practice
    }
}

// The executor of a coroutine task (see the top of this file): a pointer to
// its context and two properties:
// blocking.possibly (the default; dispatch runs inline when already on the
// task) or never; relationship.fork (default) or continuation. Work is not
// tracked per executor: the runtime keeps its io_context running until
// every task has ended.
class task_executor {
public:
    explicit task_executor(task_context& c) noexcept : c_(&c) {}

    asio::io_context& query(asio::execution::context_t) const noexcept { return c_->context(); }
    static constexpr asio::execution::mapping_t query(asio::execution::mapping_t) noexcept {
        return asio::execution::mapping.thread;
    }
    asio::execution::blocking_t query(asio::execution::blocking_t) const noexcept {
        return never_ ? asio::execution::blocking_t(asio::execution::blocking.never)
                      : asio::execution::blocking_t(asio::execution::blocking.possibly);
    }
    asio::execution::relationship_t query(asio::execution::relationship_t) const noexcept {
        return continuation_ ? asio::execution::relationship_t(asio::execution::relationship.continuation)
                             : asio::execution::relationship_t(asio::execution::relationship.fork);
    }
    static constexpr asio::execution::outstanding_work_t query(asio::execution::outstanding_work_t) noexcept {
        return asio::execution::outstanding_work.tracked;
    }

    task_executor require(asio::execution::blocking_t::never_t) const noexcept { return with(true, continuation_); }
    task_executor require(asio::execution::blocking_t::possibly_t) const noexcept { return with(false, continuation_); }
    task_executor require(asio::execution::relationship_t::continuation_t) const noexcept { return with(never_, true); }
    task_executor require(asio::execution::relationship_t::fork_t) const noexcept { return with(never_, false); }
    task_executor require(asio::execution::outstanding_work_t::tracked_t) const noexcept { return *this; }
    task_executor require(asio::execution::outstanding_work_t::untracked_t) const noexcept { return *this; }

    template <class F>
    void execute(F&& f) const {
        c_->execute(std::forward<F>(f), !never_, continuation_);
    }

    bool running_in_this_thread() const noexcept { return c_->running_in_this_thread(); }
    task_context& context() const noexcept { return *c_; }

    friend bool operator==(const task_executor& a, const task_executor& b) noexcept {
        return a.c_ == b.c_ && a.never_ == b.never_ && a.continuation_ == b.continuation_;
    }
    friend bool operator!=(const task_executor& a, const task_executor& b) noexcept { return !(a == b); }

private:
    task_executor with(bool never, bool continuation) const noexcept {
        task_executor e = *this;
        e.never_ = never;
        e.continuation_ = continuation;
        return e;
    }

    task_context* c_;
    bool never_ = false;
    bool continuation_ = false;
};

// direct_post_hook (channels/detail/direct_completion.hpp): a completion
// whose executor is a task's goes straight onto the task's queue.
inline bool post_direct_to_task(const asio::any_io_executor& ex, direct_completion& c) {
    // Asio 1.22's target<T>() does not check the type: target_type() does.
    if (!ex || ex.target_type() != typeid(task_executor)) return false;
    ex.target<task_executor>()->context().post_continuation(c);
    return true;
}

// The contexts of one runtime. A finished task's context is reused by the
// next task (most recently freed first: its memory is likely still in
// cache); all are freed with the pool, which the runtime destroys after its
// io_context (a runner still queued there refers to its context).
//
// A thread keeps the last few contexts it gave back for the next tasks it
// starts, without the pool's lock: a task that a worker starts and that
// ends on the same worker (a spawned task runs at once, to its first wait)
// takes no lock for its context (the lock and its line, taken by both
// workers, were two mutex round trips per spawned task).
class task_context_pool {
public:
    explicit task_context_pool(asio::io_context& ctx) : ctx_(ctx) {}

    task_context& acquire() {
        if (task_context* c = this_thread_cache().take(id_)) return *c;
        std::lock_guard g(mu_);
        if (!free_.empty()) {
            task_context* c = free_.back();
            free_.pop_back();
            return *c;
        }
        if (!scheduler_) scheduler_ = &asio::use_service<asio::detail::io_context_impl>(ctx_);
        all_.push_back(std::make_unique<task_context>(ctx_, *scheduler_));
        free_.reserve(all_.capacity());  // so that give_back never allocates
        return *all_.back();
    }

    // Called when the task that held `c` has ended; handlers still queued
    // on it (or posted later through an old executor) still run.
    void give_back(task_context& c) noexcept {
        if (this_thread_cache().put(id_, c)) return;
        std::lock_guard g(mu_);
        free_.push_back(&c);
    }

private:
    // One thread's kept contexts, all of one pool. Keyed by the pool's id,
    // not its address: a pool built where a destroyed one was must not take
    // the dead one's contexts (a thread that outlives a pool it cached for
    // keeps those entries, unused, and no longer caches).
    struct thread_cache {
        static constexpr std::size_t kSize = 16;
        std::uint64_t pool = 0;
        std::size_t count = 0;
        task_context* kept[kSize];

        task_context* take(std::uint64_t id) noexcept {
            return pool == id && count > 0 ? kept[--count] : nullptr;
        }
        bool put(std::uint64_t id, task_context& c) noexcept {
            if (pool != id) {
                if (count != 0) return false;
                pool = id;
            }
            if (count == kSize) return false;
            kept[count++] = &c;
            return true;
        }
    };
    static thread_cache& this_thread_cache() noexcept {
        thread_local thread_cache cache;
        return cache;
    }
    static std::uint64_t next_id() noexcept {
        static std::atomic<std::uint64_t> last{0};
        return last.fetch_add(1, std::memory_order_relaxed) + 1;
    }

    const std::uint64_t id_ = next_id();
    asio::io_context& ctx_;
    std::mutex mu_;
    asio::detail::io_context_impl* scheduler_ = nullptr;  // guarded by mu_; looked up once
    std::vector<std::unique_ptr<task_context>> all_;  // guarded by mu_
    std::vector<task_context*> free_;                 // guarded by mu_
};

}  // namespace csp::detail
