// csp::task_group — tasks that succeed or fail together (Go's errgroup).
//
//   csp::task_group g(rt);
//   for (auto& url : urls) g.go([&, url]() -> asio::awaitable<void> { ... });
//   g.wait();   // all ended; rethrows the first exception
//
// The first exception thrown by a task of the group cancels the others: a
// coroutine task parked in a channel operation sees it complete with
// asio::error::operation_aborted (use_awaitable throws it as
// std::system_error), and tasks that take a std::stop_token see a stop
// request. Those endings are not errors: wait() rethrows the first real
// exception. A group destroyed without wait() cancels what still runs and
// waits for it, so no task outlives its group; a first exception that
// nobody collected with wait() is then printed to stderr.
#pragma once

#include <stop_token>
#include <utility>

#include "runtime.hpp"

namespace csp {

class task_group {
public:
    explicit task_group(runtime& rt = runtime::default_runtime()) : rt_(rt) {
        std::lock_guard g(rt_.groups_mu_);
        rt_.groups_.push_back(&scope_);
    }
    task_group(const task_group&) = delete;
    task_group& operator=(const task_group&) = delete;
    ~task_group() {
        scope_.cancel();
        scope_.wait_idle();
        {
            std::lock_guard g(rt_.groups_mu_);
            std::erase(rt_.groups_, &scope_);
        }
        if (std::exception_ptr e = scope_.take_error()) detail::report_uncollected(e, "a task_group");
    }

    template <class F>
    void go(F&& f) {
        rt_.spawn(scope_, std::forward<F>(f));
    }

    // Blocks until every task of the group has ended; rethrows the first
    // exception. Call it from outside the runtime's workers.
    void wait() {
        scope_.wait_idle();
        if (std::exception_ptr e = scope_.take_error()) std::rethrow_exception(e);
    }

    // Cancels every task of the group (as a first error would).
    void cancel() { scope_.cancel(); }

    // Stopped when the group is cancelled.
    std::stop_token stop_token() const noexcept { return scope_.stop_token(); }

private:
    runtime& rt_;
    detail::task_scope scope_{true};
};

}  // namespace csp
