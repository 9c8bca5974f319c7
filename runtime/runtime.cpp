#include "runtime.hpp"

#include <fmt/core.h>

#include <chrono>
#include <cstdio>

namespace csp {

namespace {
thread_local runtime* current_runtime = nullptr;
}

runtime::runtime(unsigned workers)
    : blocking_([this] { install_thread_hooks(); }) {
    if (workers == 0) workers = std::max(1u, std::thread::hardware_concurrency());
    workers_.reserve(workers);
    for (unsigned i = 0; i < workers; ++i) workers_.push_back(std::make_unique<worker>());
    for (auto& w : workers_) {
        w->thread = std::thread([this, &ctx = w->ctx] {
            install_thread_hooks();
            ctx.run();
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
        idle_.wait(l, [&] { return live_.load(std::memory_order_acquire) == 0; });
    }
    // Every task has ended; what may still be queued (a timer that nobody
    // waits for, a cancellation aimed at a finished task) is dropped.
    for (auto& w : workers_) w->ctx.stop();
    for (auto& w : workers_) w->thread.join();
    blocking_.stop();
    if (std::exception_ptr e = root_.take_error()) {
        try {
            std::rethrow_exception(e);
        } catch (const std::exception& ex) {
            std::fprintf(stderr, "csp: a task ended with an exception nobody waited for: %s\n",
                         ex.what());
        } catch (...) {
            std::fprintf(stderr, "csp: a task ended with an exception nobody waited for\n");
        }
    }
}

runtime& runtime::default_runtime() {
    static runtime rt;
    return rt;
}

void runtime::install_thread_hooks() {
    current_runtime = this;
    detail::current_park_hooks() = &hooks_;
}

void runtime::hooks::parked() noexcept {
    rt_.parked_.fetch_add(1, std::memory_order_relaxed);
    rt_.note_activity();
}

void runtime::hooks::unparked() noexcept {
    rt_.parked_.fetch_sub(1, std::memory_order_relaxed);
    rt_.note_activity();
}

void runtime::timer_armed() noexcept { timers_.fetch_add(1, std::memory_order_relaxed); }
void runtime::timer_done() noexcept {
    timers_.fetch_sub(1, std::memory_order_relaxed);
    note_activity();
}

void runtime::task_started(detail::task_scope& scope, detail::task_record& r) {
    live_.fetch_add(1, std::memory_order_relaxed);
    scope.add(r);
}

void runtime::task_ended(detail::task_record& r, std::exception_ptr e) {
    r.scope->finish(r, std::move(e));
    note_activity();
    if (live_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard g(idle_mu_);
        idle_.notify_all();
    }
}

asio::any_io_executor runtime::executor() { return next_worker().ctx.get_executor(); }

void runtime::wait() {
    using namespace std::chrono_literals;
    constexpr int kStableChecks = 5;  // 5 x 20 ms without any movement
    std::unique_lock l(idle_mu_);
    int stable = 0;
    std::uint64_t last_epoch = epoch_.load(std::memory_order_relaxed) + 1;
    for (;;) {
        if (idle_.wait_for(l, 20ms, [&] { return live_.load(std::memory_order_acquire) == 0; }))
            break;
        const std::uint64_t epoch = epoch_.load(std::memory_order_relaxed);
        const auto live = static_cast<std::ptrdiff_t>(live_.load(std::memory_order_acquire));
        const bool all_parked = live > 0 && parked_.load(std::memory_order_relaxed) >= live &&
                                timers_.load(std::memory_order_relaxed) == 0;
        stable = all_parked && epoch == last_epoch ? stable + 1 : 0;
        last_epoch = epoch;
        if (stable >= kStableChecks)
            throw deadlock_error(fmt::format(
                "csp: all tasks are asleep - deadlock! ({} tasks parked on channel operations "
                "that nothing can complete)",
                live));
    }
    l.unlock();
    if (std::exception_ptr e = root_.take_error()) std::rethrow_exception(e);
}

}  // namespace csp
