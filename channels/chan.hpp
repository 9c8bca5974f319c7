// csp — typed channels with close, in the manner of Go's `chan`.
//
//   auto ch = csp::make_chan<int>();        // unbuffered: a send completes when a receiver took it
//   auto jobs = csp::make_chan<job>(64);    // buffered: up to 64 values wait in the channel
//   ch.send(1);  std::optional<int> v = ch.recv();  ch.close();
//   for (int v : ch) ...                    // receives until closed and drained
//
// Handles are cheap, copyable and refer to one shared channel, like a Go
// `chan`. A default-constructed handle is Go's nil channel: a select case on
// it is never ready, try_* report would_block, and a blocking or timed
// operation on it throws csp::error (it could only hang).
//   channel<T>         send and receive
//   sender<T>          send only (also close); the compiler refuses recv
//   receiver<T>        receive only
//   closing_sender<T>  a sender that closes the channel when its last copy is
//                      destroyed: hand these to producers and a forgotten
//                      close can no longer hang the consumers.
//
// Memory ordering: a send happens-before the receive that gets its value
// completes; close() happens-before a receive that reports closed.
//
// A blocking send on a closed channel throws csp::closed_error, as Go panics;
// every other operation reports closed as a status. No operation destroys a
// value it did not deliver: sends take `T&&` and move from it only on
// success, so after a failed send the value is still in the caller's object.
#pragma once

#include <chrono>
#include <cstddef>
#include <iterator>
#include <memory>
#include <optional>
#include <stop_token>
#include <type_traits>
#include <utility>

#include "detail/chan_state.hpp"
#include "errors.hpp"
#include "status.hpp"

namespace csp {

// Values move through a channel by move construction, possibly on another
// thread while a waiter is half handed off; destruction must not throw.
template <class T>
concept channel_value = std::move_constructible<T> && std::is_nothrow_destructible_v<T> &&
                        std::is_object_v<T> && !std::is_array_v<T>;

template <channel_value T> class channel;
template <channel_value T> class sender;
template <channel_value T> class receiver;
template <channel_value T> class closing_sender;

namespace detail {

template <class T>
using state_ptr = std::shared_ptr<chan_state<T>>;

// What every handle has: the shared state, and the questions anyone may ask.
template <class T>
class handle_base {
public:
    // The answers may be stale by the time they are returned.
    std::size_t size() const { return s_ ? s_->size() : 0; }
    std::size_t capacity() const noexcept { return s_ ? s_->capacity() : 0; }
    bool closed() const { return s_ && s_->closed(); }

    // False for a null (nil) handle.
    explicit operator bool() const noexcept { return s_ != nullptr; }

    // Handles are equal when they refer to the same channel.
    template <class U>
    bool operator==(const handle_base<U>& o) const noexcept { return s_ == o.s_; }

    chan_state<T>* state() const noexcept { return s_.get(); }
    const state_ptr<T>& shared_state() const noexcept { return s_; }

protected:
    handle_base() = default;
    explicit handle_base(state_ptr<T> s) noexcept : s_(std::move(s)) {}

    chan_state<T>& live(const char* op) const {
        if (!s_) throw error(std::string("csp: ") + op + " on a null channel");
        return *s_;
    }

    template <class> friend class handle_base;
    state_ptr<T> s_;
};

// The send half of the API, shared by channel<T> and sender<T>.
template <class T, class Self>
class send_api {
public:
    // Blocks until a receiver took the value (unbuffered) or it is in the
    // buffer. Throws closed_error if the channel is closed; v is untouched then.
    void send(T&& v) const {
        if (st("send").send(v, nullptr, nullptr) == status::closed)
            throw closed_error("csp: send on a closed channel");
    }
    void send(const T& v) const requires std::copy_constructible<T> { send(T(v)); }

    // Like send, but gives up when `stop` is requested. Returns ok,
    // closed or cancelled; moves from v only on ok.
    [[nodiscard]] status send(T&& v, std::stop_token stop) const {
        return st("send").send(v, nullptr, &stop);
    }

    // Sends only if that can complete now: ok, would_block or closed.
    // Moves from v only on ok.
    [[nodiscard]] status try_send(T&& v) const {
        auto* s = self().state();
        return s ? s->try_send(v) : status::would_block;
    }
    [[nodiscard]] status try_send(const T& v) const requires std::copy_constructible<T> {
        T copy(v);
        return try_send(std::move(copy));
    }

    // Blocks at most until the deadline: ok, closed or timeout. Moves from v only on ok.
    template <class Rep, class Period>
    [[nodiscard]] status send_for(T&& v, std::chrono::duration<Rep, Period> d) const {
        steady_time t = after_now(d);
        return st("send_for").send(v, &t, nullptr);
    }
    template <class Clock, class Dur>
    [[nodiscard]] status send_until(T&& v, std::chrono::time_point<Clock, Dur> t) const {
        steady_time deadline = to_steady(t);
        return st("send_until").send(v, &deadline, nullptr);
    }

    // Asynchronous sends, as Asio operations completing with (error_code):
    // empty, csp::errc::closed, or asio::error::operation_aborted when
    // cancelled through the handler's cancellation slot. With an rvalue the
    // operation owns the value; with an lvalue it moves from the caller's
    // object only on success, and the caller keeps the object alive until
    // the completion (as with an Asio buffer). Defined in <channels/async.hpp>.
    template <class Token>
    auto async_send(T&& v, Token&& token) const;
    template <class Token>
    auto async_send(T& v, Token&& token) const;
    template <class Token>
    auto async_send(const T& v, Token&& token) const requires std::copy_constructible<T>;

    // Ends the stream: receivers drain what was sent, then see closed;
    // blocked and later senders fail. Throws closed_error if already closed.
    void close() const { st("close").close(); }

private:
    const Self& self() const noexcept { return static_cast<const Self&>(*this); }
    chan_state<T>& st(const char* op) const { return self().live(op); }
};

// Receives until closed and drained. An input range: `for (T v : ch)`.
template <class T>
class recv_iterator {
public:
    using value_type = T;
    using difference_type = std::ptrdiff_t;

    recv_iterator() = default;
    explicit recv_iterator(chan_state<T>* s) : s_(s) { ++*this; }

    T& operator*() const noexcept { return *value_; }
    T* operator->() const noexcept { return &*value_; }
    recv_iterator& operator++() {
        value_.reset();
        (void)s_->recv(value_, nullptr, nullptr);  // the value lands in value_ directly
        return *this;
    }
    void operator++(int) { ++*this; }
    bool operator==(std::default_sentinel_t) const noexcept { return !value_.has_value(); }

private:
    chan_state<T>* s_ = nullptr;
    mutable std::optional<T> value_;
};

// The receive half of the API, shared by channel<T> and receiver<T>.
template <class T, class Self>
class recv_api {
public:
    // Blocks until a value arrives; empty once the channel is closed and drained.
    [[nodiscard]] std::optional<T> recv() const {
        std::optional<T> out;
        (void)st("recv").recv(out, nullptr, nullptr);
        return out;
    }

    // Like recv, but gives up when `stop` is requested: ok, closed or cancelled.
    [[nodiscard]] recv_result<T> recv(std::stop_token stop) const {
        return st("recv").recv_result_of(nullptr, &stop);
    }

    // Receives only if a value is there now: ok, would_block or closed.
    [[nodiscard]] recv_result<T> try_recv() const {
        recv_result<T> r(status::would_block);
        if (auto* s = self().state()) s->try_recv(r);
        return r;
    }

    // Blocks at most until the deadline: ok, closed or timeout.
    template <class Rep, class Period>
    [[nodiscard]] recv_result<T> recv_for(std::chrono::duration<Rep, Period> d) const {
        steady_time t = after_now(d);
        return st("recv_for").recv_result_of(&t, nullptr);
    }
    template <class Clock, class Dur>
    [[nodiscard]] recv_result<T> recv_until(std::chrono::time_point<Clock, Dur> t) const {
        steady_time deadline = to_steady(t);
        return st("recv_until").recv_result_of(&deadline, nullptr);
    }

    // An asynchronous receive, as an Asio operation completing with
    // (error_code, std::optional<T>): the value, or nullopt once the channel
    // is closed and drained; operation_aborted when cancelled (then nothing
    // was taken). Defined in <channels/async.hpp>.
    template <class Token>
    auto async_recv(Token&& token) const;

    // Range-for receives until the channel is closed and drained. The
    // iteration is consumed by whoever ranges over the channel.
    recv_iterator<T> begin() const { return recv_iterator<T>(&st("range-for")); }
    std::default_sentinel_t end() const noexcept { return {}; }

private:
    const Self& self() const noexcept { return static_cast<const Self&>(*this); }
    chan_state<T>& st(const char* op) const { return self().live(op); }
};

}  // namespace detail

// A send-only handle.
template <channel_value T>
class sender : public detail::handle_base<T>, public detail::send_api<T, sender<T>> {
public:
    using value_type = T;
    sender() = default;  // nil

private:
    explicit sender(detail::state_ptr<T> s) noexcept : detail::handle_base<T>(std::move(s)) {}
    friend class detail::send_api<T, sender<T>>;
    friend class channel<T>;
    friend class closing_sender<T>;
};

// A receive-only handle.
template <channel_value T>
class receiver : public detail::handle_base<T>, public detail::recv_api<T, receiver<T>> {
public:
    using value_type = T;
    receiver() = default;  // nil

private:
    explicit receiver(detail::state_ptr<T> s) noexcept : detail::handle_base<T>(std::move(s)) {}
    friend class detail::recv_api<T, receiver<T>>;
    friend class channel<T>;
};

// A send-only handle that closes the channel when the last closing_sender
// of that channel is destroyed (unless it is closed already). Copies count.
template <channel_value T>
class closing_sender : public sender<T> {
public:
    closing_sender() = default;  // nil
    closing_sender(const closing_sender& o) noexcept : sender<T>(o) { join(); }
    closing_sender(closing_sender&& o) noexcept : sender<T>(std::move(o)) {}
    closing_sender& operator=(closing_sender o) noexcept {
        std::swap(this->s_, o.s_);
        return *this;
    }
    ~closing_sender() {
        if (this->s_) this->s_->drop_closer();
    }

private:
    explicit closing_sender(detail::state_ptr<T> s) noexcept : sender<T>(std::move(s)) { join(); }
    void join() noexcept {
        if (this->s_) this->s_->add_closer();
    }
    friend class channel<T>;
};

// A handle that can both send and receive. Converts to either direction.
template <channel_value T>
class channel : public detail::handle_base<T>,
                public detail::send_api<T, channel<T>>,
                public detail::recv_api<T, channel<T>> {
public:
    using value_type = T;

    // A null (nil) channel: see the top of this file.
    channel() = default;

    // A new channel that buffers up to `capacity` values; 0 is unbuffered.
    // A negative capacity throws csp::error.
    explicit channel(std::ptrdiff_t capacity)
        : detail::handle_base<T>(std::make_shared<detail::chan_state<T>>(checked(capacity))) {}

    sender<T> as_sender() const noexcept { return sender<T>(this->s_); }
    receiver<T> as_receiver() const noexcept { return receiver<T>(this->s_); }
    closing_sender<T> as_closing_sender() const noexcept { return closing_sender<T>(this->s_); }

    operator sender<T>() const noexcept { return as_sender(); }
    operator receiver<T>() const noexcept { return as_receiver(); }

private:
    static std::size_t checked(std::ptrdiff_t capacity) {
        if (capacity < 0) throw error("csp: negative channel capacity");
        return static_cast<std::size_t>(capacity);
    }
    friend class detail::send_api<T, channel<T>>;
    friend class detail::recv_api<T, channel<T>>;
};

// Go's make(chan T, capacity).
template <channel_value T>
channel<T> make_chan(std::ptrdiff_t capacity = 0) {
    return channel<T>(capacity);
}

}  // namespace csp
