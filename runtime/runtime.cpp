#include "runtime.hpp"

#include <fmt/core.h>

#include <asio/post.hpp>

#include <channels/detail/deadline_queue.hpp>

#include <chrono>

namespace csp {

namespace {
// Timers pending in every runtime together: a task of one runtime may wait
// on a timer of another (csp::after() defaults to the default runtime), so a
// pending timer anywhere means that a parked task may still be woken.
std::atomic<std::ptrdiff_t> all_timers{0};
}  // namespace

namespace {
unsigned resolve_workers(unsigned workers) {
    return workers != 0 ? workers : std::max(1u, std::thread::hardware_concurrency());
}
}  // namespace

// The io_context is made for one thread (concurrency hint 1) and run by
// every worker: Asio keeps its locking but then wakes no idle worker for
// work that a worker queued, and keeps every post made on a worker on that
// worker's private queue; the task executor decides what goes to another
// worker (task_executor.hpp: post_runner). Posts from other threads still
// wake an idle worker.
runtime::runtime(unsigned workers)
    : ctx_(1),
      blocking_([this] { install_thread_hooks(plain_hooks_); }) {
    detail::direct_post_hook.store(&detail::post_direct_to_task, std::memory_order_release);
    // The workers run until the runtime ends: the deadline queue's timer
    // may wait for a deadline that has left (deadline_queue.hpp).
    asio::use_service<detail::deadline_queue>(ctx_).run_on_and_linger(ctx_.get_executor());
    workers = resolve_workers(workers);
    worker_tallies_ = std::make_unique<park_tally[]>(workers);
    workers_.reserve(workers);
    for (unsigned i = 0; i < workers; ++i) {
        workers_.emplace_back([this, &tally = worker_tallies_[i]] {
            install_thread_hooks(coroutine_hooks_);
            coroutine_hooks_.adopt_on_this_thread(tally);
            ctx_.run();
        });
    }
}

runtime::~runtime() {
    closing_.store(true, std::memory_order_release);
    root_.cancel();
    {
        std::lock_guard g(groups_mu_);
        for (detail::task_scope* s : groups_) s->cancel();
    }
    {
        std::unique_lock l(idle_mu_);
        idle_.wait(l, [&] { return no_live_tasks(); });
    }
    // Every task has ended. Run what is still queued (a completion, or a
    // cancelled timer's handler, holds a reference) instead of dropping it unrun;
    // a timer still pending (an after() nobody reads) is destroyed unrun
    // with the io_context, so its count leaves the process-wide one here.
    ctx_.stop();
    for (auto& t : workers_) t.join();
    blocking_.stop();
    ctx_.restart();
    ctx_.poll();
    all_timers.fetch_sub(timers_.exchange(0, std::memory_order_relaxed), std::memory_order_relaxed);
    if (std::exception_ptr e = root_.take_error()) detail::report_uncollected(e, "a task");
}

runtime& runtime::default_runtime() {
    static runtime rt;
    return rt;
}

void runtime::install_thread_hooks(hooks& h) { detail::current_park_hooks() = &h; }

thread_local const runtime::hooks* runtime::hooks::this_thread_owner_ = nullptr;
thread_local runtime::park_tally* runtime::hooks::this_thread_tally_ = nullptr;

void runtime::hooks::adopt_on_this_thread(park_tally& tally) noexcept {
    this_thread_owner_ = this;
    this_thread_tally_ = &tally;
}

void runtime::hooks::thread_blocks() noexcept {
    if (this_thread_owner_ == this) detail::wake_idle_worker(rt_.ctx_);  // else not a worker: nothing waits behind it
}

void runtime::hooks::count(std::ptrdiff_t delta) noexcept {
    if (this_thread_owner_ == this) {
        this_thread_tally_->add(delta);
        return;
    }
    parked_.fetch_add(delta, std::memory_order_relaxed);
    rt_.note_activity();
}

// A sum of counters each written by one thread, read without stopping them:
// wait() trusts it only when it stays the same over several checks, each
// after every worker took a probe (workers_idle(): a mutex, so the counts a
// worker made before its probe are seen).
std::uint64_t runtime::activity() const noexcept {
    std::uint64_t sum = epoch_.load(std::memory_order_relaxed) +
                        ended_of(tasks_.load(std::memory_order_relaxed));
    for (std::size_t i = 0; i < workers_.size(); ++i)
        sum += worker_tallies_[i].moves.load(std::memory_order_relaxed);
    return sum;
}

void runtime::timer_armed() noexcept {
    timers_.fetch_add(1, std::memory_order_relaxed);
    all_timers.fetch_add(1, std::memory_order_relaxed);
}
void runtime::timer_done() noexcept {
    timers_.fetch_sub(1, std::memory_order_relaxed);
    all_timers.fetch_sub(1, std::memory_order_relaxed);
    note_activity();
}

void runtime::task_started(detail::task_scope& scope, detail::task_record& r) {
    tasks_.fetch_add(kTaskStart, std::memory_order_relaxed);
    if (!r.executor) plain_live_.fetch_add(1, std::memory_order_relaxed);
    scope.add(r);
}

void runtime::task_ended(detail::task_record& r, std::exception_ptr e) {
    bool last = false;
    r.scope->finish(r, std::move(e), [&] {
        if (!r.executor) plain_live_.fetch_sub(1, std::memory_order_relaxed);
        last = live_of(tasks_.fetch_add(kTaskEnd, std::memory_order_acq_rel)) == 1;
    });
    // The record may go now; nothing below touches it.
    std::shared_ptr<detail::task_record> keep = std::move(r.self);
    // The destructor may see no live task before this notify; it joins this
    // thread (a worker or a pool thread) before idle_mu_ goes away.
    if (last) {
        std::lock_guard g(idle_mu_);
        idle_.notify_all();
    }
}

asio::any_io_executor runtime::executor() { return asio::make_strand(ctx_); }

// True when every worker is idle: each takes one of `workers` probes, and
// the probes wait for each other for a moment (a busy worker never takes
// its probe, and an idle one cannot take two). Run only when everything
// else already looks deadlocked, so the pause costs nothing in normal runs.
bool runtime::workers_idle() {
    struct probe_state {
        std::mutex mu;
        std::condition_variable all_in;
        std::size_t arrived = 0;  // guarded by mu
        bool over = false;        // guarded by mu: late probes do not count
    };
    using namespace std::chrono_literals;
    const std::size_t n = workers_.size();
    auto st = std::make_shared<probe_state>();
    for (std::size_t i = 0; i < n; ++i) {
        asio::post(ctx_, [this, st, n] {
            std::unique_lock l(st->mu);
            if (st->over) return;
            // Another worker takes the next probe while this one waits:
            // posts from this thread woke one worker each, but a worker
            // signalled twice before it woke takes both in turn (runtime's
            // one-thread mode: it wakes no other for the second).
            if (st->arrived + 1 < n) detail::wake_idle_worker(ctx_);
            if (++st->arrived == n) st->all_in.notify_all();
            else st->all_in.wait_for(l, 2ms, [&] { return st->over || st->arrived == n; });
            st->over = true;
        });
    }
    std::unique_lock l(st->mu);
    const bool idle = st->all_in.wait_for(l, 5ms, [&] { return st->arrived == n; });
    st->over = true;
    st->all_in.notify_all();
    return idle;
}

bool runtime::looks_deadlocked() {
    const auto live = static_cast<std::ptrdiff_t>(live_tasks());
    const auto plain = plain_live_.load(std::memory_order_relaxed);
    std::ptrdiff_t coroutine_parked = coroutine_parked_.load(std::memory_order_relaxed);
    for (std::size_t i = 0; i < workers_.size(); ++i)
        coroutine_parked += worker_tallies_[i].parked.load(std::memory_order_relaxed);
    return live > 0 && plain_parked_.load(std::memory_order_relaxed) >= plain &&
           coroutine_parked >= live - plain &&
           all_timers.load(std::memory_order_relaxed) == 0;
}

void runtime::wait() {
    using namespace std::chrono_literals;
    constexpr int kStableChecks = 5;  // 5 x 20 ms without any movement
    std::unique_lock l(idle_mu_);
    int stable = 0;
    std::uint64_t last_epoch = activity() + 1;
    for (;;) {
        if (idle_.wait_for(l, 20ms, [&] { return no_live_tasks(); }))
            break;
        const std::uint64_t epoch = activity();
        stable = epoch == last_epoch && looks_deadlocked() && workers_idle() ? stable + 1 : 0;
        last_epoch = epoch;
        if (stable >= kStableChecks)
            throw deadlock_error(fmt::format(
                "csp: all tasks are asleep - deadlock! ({} tasks parked on channel operations "
                "that nothing can complete)",
                live_tasks()));
    }
    l.unlock();
    if (std::exception_ptr e = root_.take_error()) std::rethrow_exception(e);
}

}  // namespace csp
