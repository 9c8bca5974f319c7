// csp::detail::task_scope — the live tasks of a runtime's root or of one
// task_group, so that they can be waited for and cancelled together.
//
// A task_record lives as long as its task (it holds a reference to itself,
// `self`, until the task's end) and, while the task runs, is linked into its
// scope's list.
// Cancelling a scope requests its stop_source (plain tasks and stop tokens
// hear that) and posts, to the executor of each coroutine task, its cancel:
// for an asio::awaitable an emit of asio::cancellation_type::terminal on the
// task's cancellation signal, for a csp::task its record's `on_cancel`. The
// channel operation the task is parked in completes with operation_aborted
// and takes nothing. The cancel runs on the task's own executor, serialised
// with the task's resumptions as Asio requires, and is skipped once the task
// is done.
//
// The scope's lock is a chan_lock, not a std::mutex: every task takes it
// twice (start and end), uncontended almost always, and glibc's mutex spent
// 17% of an empty task's life in its lock and unlock calls.
#pragma once

#include <asio/cancellation_signal.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>

#include <channels/detail/chan_lock.hpp>

#include <condition_variable>
#include <cstddef>
#include <cstdio>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <system_error>

#include "task_executor.hpp"

namespace csp::detail {

class task_scope;

struct task_record {
    asio::cancellation_signal signal;  // asio::awaitable tasks; used on `executor` only
    // A csp::task's cancel, run on `executor` (an asio::awaitable's is an
    // emit on `signal`).
    void (*on_cancel)(task_record&) noexcept = nullptr;
    std::optional<task_executor> executor;  // a coroutine task's; empty for a plain task
    bool done = false;                      // set on `executor` by the task's completion
    task_scope* scope = nullptr;
    // The record's own reference: set before it is linked into its scope,
    // released (by runtime::task_ended) after it is unlinked, so that a
    // cancel, which copies it under the scope's lock, always finds it set.
    // (std::enable_shared_from_this cost every task a weak count up and
    // down: two locked instructions.)
    std::shared_ptr<task_record> self;
    task_record* prev = nullptr;  // guarded by scope->mu_
    task_record* next = nullptr;  // guarded by scope->mu_
};

// Prints an exception nobody will rethrow (a task's, a group's) to stderr:
// an error that nobody collected is never swallowed silently.
inline void report_uncollected(const std::exception_ptr& e, const char* whose) noexcept {
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& ex) {
        std::fprintf(stderr, "csp: %s ended with an exception nobody waited for: %s\n", whose, ex.what());
    } catch (...) {
        std::fprintf(stderr, "csp: %s ended with an exception nobody waited for\n", whose);
    }
}

// True for the exception a task ends with when its parked operation was
// cancelled: after a cancellation that is an expected ending, not an error.
inline bool is_cancellation(const std::exception_ptr& e) {
    try {
        std::rethrow_exception(e);
    } catch (const std::system_error& s) {
        return s.code() == std::errc::operation_canceled ||
               s.code() == asio::error::operation_aborted;
    } catch (...) {
        return false;
    }
}

class task_scope {
public:
    explicit task_scope(bool cancel_on_error) : cancel_on_error_(cancel_on_error) {}
    task_scope(const task_scope&) = delete;
    task_scope& operator=(const task_scope&) = delete;

    std::stop_token stop_token() const noexcept { return stop_.get_token(); }

    void add(task_record& r) {
        std::lock_guard<chan_lock> g(mu_);
        r.scope = this;
        r.prev = nullptr;
        r.next = head_;
        if (head_) head_->prev = &r;
        head_ = &r;
        ++live_;
    }

    // Called once per task when it has ended, with what it threw (or null).
    // `counted_out` runs under the scope's lock before a waiter of the scope
    // can return: the runtime's own count drops first.
    template <class F>
    void finish(task_record& r, std::exception_ptr e, F&& counted_out) {
        std::lock_guard<chan_lock> g(mu_);
        counted_out();
        if (r.prev) r.prev->next = r.next;
        else head_ = r.next;
        if (r.next) r.next->prev = r.prev;
        if (e && !(cancelled_ && is_cancellation(e))) {
            if (!first_error_) first_error_ = e;
            if (cancel_on_error_) cancel_locked();
        }
        if (--live_ == 0 && idle_waiters_ != 0) idle_.notify_all();
    }

    void cancel() {
        std::lock_guard<chan_lock> g(mu_);
        cancel_locked();
    }

    // Blocks until no task of the scope is live.
    void wait_idle() {
        std::unique_lock<chan_lock> l(mu_);
        ++idle_waiters_;
        idle_.wait(l, [&] { return live_ == 0; });
        --idle_waiters_;
    }

    std::size_t live() {
        std::lock_guard<chan_lock> g(mu_);
        return live_;
    }

    // The first error, handed out once.
    std::exception_ptr take_error() {
        std::lock_guard<chan_lock> g(mu_);
        return std::exchange(first_error_, nullptr);
    }

private:
    void cancel_locked() {
        cancelled_ = true;
        stop_.request_stop();
        for (task_record* r = head_; r; r = r->next) {
            if (!r->executor) continue;
            asio::post(*r->executor, [keep = r->self] {
                if (keep->done) return;
                if (keep->on_cancel) keep->on_cancel(*keep);
                else keep->signal.emit(asio::cancellation_type::terminal);
            });
        }
    }

    const bool cancel_on_error_;
    chan_lock mu_;
    std::condition_variable_any idle_;
    task_record* head_ = nullptr;         // guarded by mu_
    std::size_t live_ = 0;                // guarded by mu_
    std::size_t idle_waiters_ = 0;        // guarded by mu_: threads in wait_idle()
    bool cancelled_ = false;              // guarded by mu_
    std::exception_ptr first_error_;      // guarded by mu_
    std::stop_source stop_;
};

}  // namespace csp::detail
