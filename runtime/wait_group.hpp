// csp::wait_group — Go's sync.WaitGroup: wait until a count of things is done.
//
//   csp::wait_group wg;
//   wg.add(n);  ... each worker calls wg.done() ...
//   wg.wait();                                   // a thread blocks
//   co_await wg.async_wait(asio::use_awaitable);  // a coroutine suspends
//
// Built on a channel that is closed whenever the count reaches zero, so
// waiting threads and coroutines are woken by the same close, and a
// wait_group can be reused once it reached zero.
#pragma once

#include <cstddef>
#include <mutex>
#include <variant>

#include <channels/async.hpp>

namespace csp {

class wait_group {
public:
    wait_group() { zero_.close(); }
    wait_group(const wait_group&) = delete;
    wait_group& operator=(const wait_group&) = delete;

    // Adds n (may be negative) to the count. A count below zero is misuse
    // and throws csp::error.
    void add(std::ptrdiff_t n = 1) {
        std::lock_guard g(mu_);
        if (count_ + n < 0) throw error("csp: wait_group count below zero");
        if (count_ == 0 && n > 0) zero_ = make_chan<std::monostate>();
        count_ += n;
        if (count_ == 0 && n != 0) zero_.close();
    }
    void done() { add(-1); }

    // Blocks until the count is zero.
    void wait() const { (void)current().recv(); }

    // Completes with (error_code, std::optional<std::monostate>) once the
    // count is zero; the optional is always empty. Cancellable.
    template <class Token>
    auto async_wait(Token&& token) const {
        return current().async_recv(std::forward<Token>(token));
    }

private:
    channel<std::monostate> current() const {
        std::lock_guard g(mu_);
        return zero_;
    }

    mutable std::mutex mu_;
    std::ptrdiff_t count_ = 0;         // guarded by mu_
    channel<std::monostate> zero_{0};  // guarded by mu_: closed exactly when count_ == 0
};

}  // namespace csp
