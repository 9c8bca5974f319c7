// csp — the asynchronous face of channels: Asio operations.
//
//   std::optional<int> v = co_await ch.async_recv(asio::use_awaitable);
//   co_await out.async_send(std::move(x), asio::use_awaitable);
//   ch.async_recv([](std::error_code ec, std::optional<int> v) { ... });
//
// In a csp::task (runtime/task.hpp), the token is csp::use_task
// (detail/task_ops.hpp): an operation that completes now does not suspend.
//
// Every Asio completion token works (use_awaitable, callbacks, use_future,
// experimental::deferred, as_tuple, bind_cancellation_slot): the operations
// are written with asio::async_initiate. The completion runs on the
// handler's associated executor (asio::system_executor for a handler that
// has none), never inline, and keeps that executor's work tracked while it
// waits. Both faces share one waiter protocol, so a thread blocked in
// send() and a coroutine in async_recv() meet on the same channel, in
// selects on either side.
#pragma once

#include <asio/async_result.hpp>
#include <asio/awaitable.hpp>
#include <asio/use_awaitable.hpp>

#include <system_error>
#include <type_traits>

#include "chan.hpp"
#include "detail/async_chan_ops.hpp"
#include "detail/async_select_op.hpp"
#include "detail/task_ops.hpp"
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

[[noreturn, gnu::cold, gnu::noinline]] inline void throw_null_channel(const char* op) {
    throw error(std::string("csp: ") + op + " on a null channel");
}

// The message is built in a cold function of its own: built here, it kept
// this check, run by every asynchronous operation, from being inlined.
template <class T>
const std::shared_ptr<chan_state<T>>& live_shared(const std::shared_ptr<chan_state<T>>& s,
                                                  const char* op) {
    if (!s) [[unlikely]] throw_null_channel(op);
    return s;
}

// ---- co_await with use_awaitable: operations that complete now do not suspend ----
//
// With asio::use_awaitable the operations are coroutines of their own that
// first try to complete at once, under the channel's lock, and go through
// async_initiate (an operation node, a handler, a resumption through the
// task's executor) only when they must wait. A goroutine's channel operation
// that does not block costs a lock and a copy; so does this one, plus one
// awaitable frame from Asio's per-thread cache. Results, errors and
// cancellation are those of the general path: the caller's co_await checks
// its cancellation state first, as for any awaitable, and a send on a
// closed channel throws std::system_error(errc::closed).

template <class Token>
inline constexpr bool is_use_awaitable_v = false;
template <class Executor>
inline constexpr bool is_use_awaitable_v<asio::use_awaitable_t<Executor>> = true;

// When the operation must wait: Asio's async_initiate for use_awaitable is
// itself a coroutine (async_result::initiate) whose frame only suspends and
// starts the operation with a handler that resumes the caller. Where Asio
// offers that step on its own (async_result::do_init, Asio 1.22 and later),
// these coroutines take it themselves: the handler then completes this
// coroutine's frame directly, one frame and one resumption fewer per
// operation that waits. Otherwise they fall back to async_initiate.
template <class Result, class Executor, class Init, class... Args>
concept has_direct_init = requires(asio::detail::awaitable_frame_base<Executor>* frame, Init& init,
                                   asio::use_awaitable_t<Executor> token, Args&... args) {
    Result::do_init(frame, init, token, args...);
};

template <class T, class Executor>
asio::awaitable<std::optional<T>, Executor> awaitable_recv(std::shared_ptr<chan_state<T>> ch) {
    std::optional<T> out;
    switch (ch->recv_now(out)) {
        case poll::done: co_return out;
        case poll::closed: co_return std::nullopt;
        case poll::blocked: break;
    }
    // Named, not temporaries inside the co_await: g++ 12 may destroy an
    // aggregate temporary there twice (README, "A g++ 12 pitfall").
    initiate_chan_op<T, recv_kind<T>> init{std::move(ch)};
    const asio::use_awaitable_t<Executor> token;
    using result = asio::async_result<asio::use_awaitable_t<Executor>,
                                      void(std::error_code, std::optional<T>)>;
    if constexpr (has_direct_init<result, Executor, decltype(init)>) {
        co_await [&](auto* frame) { return result::do_init(frame, init, token); };
        for (;;) {}  // never reached: the handler completes this coroutine
    } else {
        auto op = asio::async_initiate<const asio::use_awaitable_t<Executor>&,
                                       void(std::error_code, std::optional<T>)>(std::move(init), token);
        co_return co_await std::move(op);
    }
}

// Sends v (the caller's object, or for an rvalue one the frame owns),
// moving from it only on success.
template <class T, class Executor, class V>
asio::awaitable<void, Executor> awaitable_send(std::shared_ptr<chan_state<T>> ch, V v) {
    T& value = [&]() -> T& {
        if constexpr (std::is_pointer_v<V>) return *v;
        else return v;
    }();
    switch (ch->send_now(value)) {
        case poll::done: co_return;
        case poll::closed: throw std::system_error(make_error_code(errc::closed));
        case poll::blocked: break;
    }
    initiate_chan_op<T, send_kind<T, false>> init{std::move(ch)};
    const asio::use_awaitable_t<Executor> token;
    T* where = &value;
    using result = asio::async_result<asio::use_awaitable_t<Executor>, void(std::error_code)>;
    if constexpr (has_direct_init<result, Executor, decltype(init), T*>) {
        co_await [&](auto* frame) { return result::do_init(frame, init, token, where); };
        for (;;) {}  // never reached: the handler completes this coroutine
    } else {
        auto op = asio::async_initiate<const asio::use_awaitable_t<Executor>&, void(std::error_code)>(
            std::move(init), token, where);
        co_await std::move(op);
    }
}

template <class Token>
struct awaitable_executor;
template <class Executor>
struct awaitable_executor<asio::use_awaitable_t<Executor>> {
    using type = Executor;
};

template <class T, class Self>
template <class Token>
auto send_api<T, Self>::async_send(T&& v, Token&& token) const {
    const auto& s = live_shared(self().shared_state(), "async_send");
    if constexpr (std::is_same_v<std::decay_t<Token>, use_task_t>) {
        return task_send_awaiter<T, T>(s, std::move(v));
    } else if constexpr (is_use_awaitable_v<std::decay_t<Token>>) {
        using ex = typename awaitable_executor<std::decay_t<Token>>::type;
        return awaitable_send<T, ex, T>(s, std::move(v));
    } else {
        return asio::async_initiate<Token, void(std::error_code)>(
            initiate_chan_op<T, send_kind<T, true>>{s}, token, std::move(v));
    }
}

template <class T, class Self>
template <class Token>
auto send_api<T, Self>::async_send(T& v, Token&& token) const {
    const auto& s = live_shared(self().shared_state(), "async_send");
    if constexpr (std::is_same_v<std::decay_t<Token>, use_task_t>) {
        return task_send_awaiter<T, T*>(s, &v);
    } else if constexpr (is_use_awaitable_v<std::decay_t<Token>>) {
        using ex = typename awaitable_executor<std::decay_t<Token>>::type;
        return awaitable_send<T, ex, T*>(s, &v);
    } else {
        return asio::async_initiate<Token, void(std::error_code)>(
            initiate_chan_op<T, send_kind<T, false>>{s}, token, &v);
    }
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
    if constexpr (std::is_same_v<std::decay_t<Token>, use_task_t>) {
        return task_recv_awaiter<T>(s);
    } else if constexpr (is_use_awaitable_v<std::decay_t<Token>>) {
        return awaitable_recv<T, typename awaitable_executor<std::decay_t<Token>>::type>(s);
    } else {
        return asio::async_initiate<Token, void(std::error_code, std::optional<T>)>(
            initiate_chan_op<T, recv_kind<T>>{s}, token);
    }
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

// co_await async_select(use_awaitable, ...): passes 0 and 1 (a ready case, the
// default, an expired deadline) runs without suspending, as a goroutine's
// select that finds a case ready does; only a select that must wait becomes
// an operation.
template <class Executor, class Storage>
asio::awaitable<std::size_t, Executor> awaitable_select(Storage cases) {
    outcome how;
    const int chosen = select_now(cases, how);
    if (chosen >= 0) {
        cases.cases()[chosen]->run(how);  // a handler's exception leaves through co_await
        co_return static_cast<std::size_t>(chosen);
    }
    initiate_select<Storage> init;
    const asio::use_awaitable_t<Executor> token;
    using result = asio::async_result<asio::use_awaitable_t<Executor>,
                                      void(std::exception_ptr, std::size_t)>;
    if constexpr (has_direct_init<result, Executor, decltype(init), Storage>) {
        co_await [&](auto* frame) { return result::do_init(frame, init, token, cases); };
        for (;;) {}  // never reached: the handler completes this coroutine
    } else {
        auto op = asio::async_initiate<const asio::use_awaitable_t<Executor>&,
                                       void(std::exception_ptr, std::size_t)>(init, token,
                                                                              std::move(cases));
        co_return co_await std::move(op);
    }
}
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
    if constexpr (std::is_same_v<std::decay_t<Token>, use_task_t>) {
        // Refers to the cases (argument_cases): co_await it where it is made.
        return detail::task_select_awaiter<detail::argument_cases<sizeof...(C)>>(std::in_place, cases...);
    } else if constexpr (detail::is_use_awaitable_v<std::decay_t<Token>>) {
        using ex = typename detail::awaitable_executor<std::decay_t<Token>>::type;
        return detail::awaitable_select<ex>(storage(std::forward<C>(cases)...));
    } else {
        return asio::async_initiate<Token, void(std::exception_ptr, std::size_t)>(
            detail::initiate_select<storage>{}, token, storage(std::forward<C>(cases)...));
    }
}

// The same over a range of cases built at run time; the caller keeps the
// cases alive until the completion. The index is the position in the range.
template <class Token, std::ranges::forward_range R>
    requires requires(std::ranges::range_reference_t<R> c) { detail::as_case(c); }
auto async_select(Token&& token, R& cases) {
    std::vector<detail::case_base*> cs;
    for (auto&& c : cases) cs.push_back(detail::as_case(c));
    if constexpr (std::is_same_v<std::decay_t<Token>, use_task_t>) {
        return detail::task_select_awaiter<detail::borrowed_cases>(std::in_place, std::move(cs));
    } else if constexpr (detail::is_use_awaitable_v<std::decay_t<Token>>) {
        using ex = typename detail::awaitable_executor<std::decay_t<Token>>::type;
        return detail::awaitable_select<ex>(detail::borrowed_cases(std::move(cs)));
    } else {
        return asio::async_initiate<Token, void(std::exception_ptr, std::size_t)>(
            detail::initiate_select<detail::borrowed_cases>{}, token,
            detail::borrowed_cases(std::move(cs)));
    }
}

}  // namespace csp
