// csp — the asynchronous face of channels: Asio operations.
//
//   std::optional<int> v = co_await ch.async_recv(asio::use_awaitable);
//   co_await out.async_send(std::move(x), asio::use_awaitable);
//   ch.async_recv([](std::error_code ec, std::optional<int> v) { ... });
//
// Every completion token works (use_awaitable, callbacks, use_future,
// experimental::deferred, as_tuple, bind_cancellation_slot): the operations
// are written with asio::async_initiate. The completion runs on the
// handler's associated executor (asio::system_executor for a handler that
// has none), never inline, and keeps that executor's work tracked while it
// waits. Both faces share one waiter protocol, so a thread blocked in
// send() and a coroutine in async_recv() meet on the same channel, in
// selects on either side.
#pragma once

#include <asio/async_result.hpp>

#include "chan.hpp"
#include "detail/async_chan_ops.hpp"
#include "detail/async_select_op.hpp"
#include "select.hpp"
#include "error_code.hpp"

namespace csp::detail {

// Asio invokes an initiation once, as an rvalue: the channel reference then
// moves on into the operation (one reference count pair per operation).
template <class T, class Kind, class... KindArgs>
struct initiate_chan_op {
    std::shared_ptr<chan_state<T>> ch;
    template <class Handler, class... Args>
    void operator()(Handler&& h, Args&&... args) && {
        using op = async_chan_op<T, std::decay_t<Handler>, Kind>;
        op::start(std::forward<Handler>(h), std::move(ch), std::forward<Args>(args)...);
    }
    template <class Handler, class... Args>
    void operator()(Handler&& h, Args&&... args) const& {
        using op = async_chan_op<T, std::decay_t<Handler>, Kind>;
        op::start(std::forward<Handler>(h), ch, std::forward<Args>(args)...);
    }
};

template <class T>
const std::shared_ptr<chan_state<T>>& live_shared(const std::shared_ptr<chan_state<T>>& s,
                                                  const char* op) {
    if (!s) throw error(std::string("csp: ") + op + " on a null channel");
    return s;
}

template <class T, class Self>
template <class Token>
auto send_api<T, Self>::async_send(T&& v, Token&& token) const {
    const auto& s = live_shared(self().shared_state(), "async_send");
    return asio::async_initiate<Token, void(std::error_code)>(
        initiate_chan_op<T, send_kind<T, true>>{s}, token, std::move(v));
}

template <class T, class Self>
template <class Token>
auto send_api<T, Self>::async_send(T& v, Token&& token) const {
    const auto& s = live_shared(self().shared_state(), "async_send");
    return asio::async_initiate<Token, void(std::error_code)>(
        initiate_chan_op<T, send_kind<T, false>>{s}, token, &v);
}

template <class T, class Self>
template <class Token>
auto send_api<T, Self>::async_send(const T& v, Token&& token) const
    requires std::copy_constructible<T>
{
    return async_send(T(v), std::forward<Token>(token));
}

template <class T, class Self>
template <class Token>
auto recv_api<T, Self>::async_recv(Token&& token) const {
    const auto& s = live_shared(self().shared_state(), "async_recv");
    return asio::async_initiate<Token, void(std::error_code, std::optional<T>)>(
        initiate_chan_op<T, recv_kind<T>>{s}, token);
}

}  // namespace csp::detail

namespace csp {

namespace detail {
template <class Storage>
struct initiate_select {
    template <class Handler>
    void operator()(Handler&& h, Storage&& cases) const {
        async_select_op<std::decay_t<Handler>, Storage>::start(std::forward<Handler>(h),
                                                               std::move(cases));
    }
};
}  // namespace detail

// An asynchronous select, as an Asio operation: the same cases and the same
// semantics as csp::select, without blocking a thread. It completes with
// (std::exception_ptr, std::size_t): the index of the case whose handler ran
// (handlers run on the completion's executor, just before the token's
// handler), or an exception: the handler's, csp::closed_error for a send
// case chosen on a closed channel, or std::system_error(operation_aborted)
// when cancelled (then nothing was taken). With use_awaitable, co_await
// returns the index and rethrows the exception.
//
//   std::size_t i = co_await csp::async_select(asio::use_awaitable,
//       csp::on_recv(in, [&](std::optional<int> v) { ... }),
//       csp::on_timeout(10ms, [&] { ... }));
//
// The cases are moved into the operation (an lvalue given to on_send is
// still referred to, and must outlive the operation).
template <class Token, detail::select_case... C>
    requires(sizeof...(C) > 0)
auto async_select(Token&& token, C&&... cases) {
    using storage = detail::owned_cases<std::remove_cvref_t<C>...>;
    return asio::async_initiate<Token, void(std::exception_ptr, std::size_t)>(
        detail::initiate_select<storage>{}, token, storage(std::forward<C>(cases)...));
}

// The same over a range of cases built at run time; the caller keeps the
// cases alive until the completion. The index is the position in the range.
template <class Token, std::ranges::forward_range R>
    requires requires(std::ranges::range_reference_t<R> c) { detail::as_case(c); }
auto async_select(Token&& token, R& cases) {
    std::vector<detail::case_base*> cs;
    for (auto&& c : cases) cs.push_back(detail::as_case(c));
    return asio::async_initiate<Token, void(std::exception_ptr, std::size_t)>(
        detail::initiate_select<detail::borrowed_cases>{}, token,
        detail::borrowed_cases(std::move(cs)));
}

}  // namespace csp
