// csp timers as channels: after(d) delivers once, tick(d) every period.
//
//   csp::select(csp::on_recv(data, ...), csp::on_recv(csp::after(1s), [](auto) { /* late */ }));
//   csp::ticker t = csp::tick(100ms);
//   for (auto when : t.chan()) { ... if (enough) t.stop(); }   // stop() closes the channel
//
// Both run on the runtime's Asio steady timers and deliver into a channel of
// capacity 1, so they work in either face of select and never block the
// runtime: a tick that finds the previous one still unread is dropped, as
// Go's ticker drops ticks for a slow receiver. Unlike Go's, stop() closes a
// ticker's channel, so a range-for over it ends.
#pragma once

#include <asio/steady_timer.hpp>

#include <chrono>
#include <memory>
#include <mutex>

#include "runtime.hpp"

namespace csp {

using clock_time = std::chrono::steady_clock::time_point;

namespace detail {
// Keeps the runtime's count of pending timers, which its deadlock detector reads.
struct timer_access {
    static void armed(runtime& rt) noexcept { rt.timer_armed(); }
    static void done(runtime& rt) noexcept { rt.timer_done(); }
};
}  // namespace detail

// A channel that receives the time once, d from now.
template <class Rep, class Period>
receiver<clock_time> after(std::chrono::duration<Rep, Period> d,
                           runtime& rt = runtime::default_runtime()) {
    auto ch = make_chan<clock_time>(1);
    auto timer = std::make_shared<asio::steady_timer>(rt.executor(), d);
    detail::timer_access::armed(rt);
    timer->async_wait([timer, tx = ch.as_sender(), &rt](const std::error_code& ec) {
        if (!ec) (void)tx.try_send(std::chrono::steady_clock::now());
        detail::timer_access::done(rt);
    });
    return ch;
}

// Sends the time every period until stop() or destruction. Destroy it
// before its runtime.
class ticker {
public:
    ticker(std::chrono::steady_clock::duration period, runtime& rt)
        : state_(std::make_shared<state>(rt, period)) {
        detail::timer_access::armed(rt);
        state::arm(state_);
    }
    ticker(ticker&&) = default;
    ticker& operator=(ticker&& o) noexcept {
        stop();
        state_ = std::move(o.state_);
        return *this;
    }
    ~ticker() { stop(); }

    receiver<clock_time> chan() const { return state_->ch.as_receiver(); }

    // Stops the ticks and closes the channel (once the timer has seen it).
    void stop() {
        if (!state_) return;
        asio::post(state_->timer.get_executor(), [s = state_] {
            s->stopped = true;  // a tick already queued must not re-arm
            s->timer.cancel();
        });
        state_.reset();
    }

private:
    struct state {
        state(runtime& r, std::chrono::steady_clock::duration p)
            : rt(r), period(p), timer(r.executor()), next(std::chrono::steady_clock::now() + p) {}

        static void arm(const std::shared_ptr<state>& s) {
            s->timer.expires_at(s->next);
            s->timer.async_wait([s](const std::error_code& ec) {
                if (ec || s->stopped) {  // stopped: the last tick has been sent
                    s->ch.close();
                    detail::timer_access::done(s->rt);
                    return;
                }
                (void)s->ch.try_send(std::chrono::steady_clock::now());
                s->next += s->period;
                arm(s);
            });
        }

        runtime& rt;
        std::chrono::steady_clock::duration period;
        asio::steady_timer timer;  // used on its strand only
        clock_time next;
        bool stopped = false;  // used on the timer's strand only
        channel<clock_time> ch{1};
    };
    std::shared_ptr<state> state_;
};

template <class Rep, class Period>
ticker tick(std::chrono::duration<Rep, Period> period, runtime& rt = runtime::default_runtime()) {
    if (period <= period.zero()) throw error("csp: tick with a period that is not positive");
    return ticker(std::chrono::duration_cast<std::chrono::steady_clock::duration>(period), rt);
}

}  // namespace csp
