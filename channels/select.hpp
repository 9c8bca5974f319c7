// csp::select — wait on several channel operations at once, as Go's select.
//
//   int ran = csp::select(
//       csp::on_recv(jobs, [&](std::optional<job> j) { /* nullopt: jobs is closed */ }),
//       csp::on_send(results, r, [&] { /* r was taken */ }),
//       csp::on_timeout(100ms, [&] { /* nothing was ready in time */ }));
//
// Semantics are Go's: among the cases ready now one is chosen uniformly at
// random; a default case runs only when none is ready; a receive case on a
// closed channel is ready and its handler gets std::nullopt; a send case
// chosen on a closed channel throws csp::closed_error; a case on a null
// channel is never ready (that is how a case is switched off); the same
// channel may appear in several cases. select returns the index of the case
// whose handler ran. Exactly one case completes: a select that times out or
// loses a race takes nothing from any channel and gives nothing to any.
//
// on_send(ch, v, ...) with an lvalue v moves from v only if that case is
// chosen; with an rvalue the case holds the value, and it is destroyed with
// the case if another case wins.
//
// Cases refer to their channels without owning them: keep the channels alive
// while the cases are used (in one select call they always are).
//
// A select over cases built at run time takes any range of cases, e.g. a
// std::vector of one case type or of csp::any_case, and returns the index in
// that range. Such cases may be reused from one select to the next.
#pragma once

#include <array>
#include <concepts>
#include <memory>
#include <ranges>
#include <stop_token>
#include <type_traits>
#include <utility>
#include <vector>

#include "chan.hpp"
#include "detail/select_engine.hpp"

namespace csp {

namespace detail {
template <class H, template <class, class> class Api, template <class> class... Selves>
concept has_api = requires { typename H::value_type; } &&
                  (std::derived_from<H, Api<typename H::value_type, Selves<typename H::value_type>>> ||
                   ...);
template <class H>
concept recv_handle = has_api<H, recv_api, channel, receiver>;
template <class H>
concept send_handle = has_api<H, send_api, channel, sender>;
template <class C>
concept select_case = std::derived_from<std::remove_cvref_t<C>, case_base>;
}  // namespace detail

// Receive from ch; f(std::optional<T>) gets the value, or nullopt if ch is closed.
template <detail::recv_handle H, std::invocable<std::optional<typename H::value_type>> F>
auto on_recv(const H& ch, F f) {
    return detail::recv_case<typename H::value_type, F>(ch.state(), std::move(f));
}

// Send v on ch, then run f(). v is moved from only if this case is chosen.
template <detail::send_handle H, std::invocable F = detail::no_op>
auto on_send(const H& ch, typename H::value_type& v, F f = {}) {
    return detail::send_case<typename H::value_type, F, false>(ch.state(), &v, std::move(f));
}
template <detail::send_handle H, std::invocable F = detail::no_op>
auto on_send(const H& ch, typename H::value_type&& v, F f = {}) {
    return detail::send_case<typename H::value_type, F, true>(ch.state(), std::move(v),
                                                              std::move(f));
}
template <detail::send_handle H, std::invocable F = detail::no_op>
auto on_send(const H& ch, const typename H::value_type& v, F f = {})
    requires std::copy_constructible<typename H::value_type>
{
    return detail::send_case<typename H::value_type, F, true>(
        ch.state(), typename H::value_type(v), std::move(f));
}

// Runs f() if no other case is ready when the select starts.
template <std::invocable F>
auto on_default(F f) {
    return detail::plain_case<F>(detail::case_kind::fallback, std::move(f));
}

// Runs f() if no other case became ready within d of the select's start
// (measured anew each time a reused case takes part in a select).
template <class Rep, class Period, std::invocable F>
auto on_timeout(std::chrono::duration<Rep, Period> d, F f) {
    detail::plain_case<F> c(detail::case_kind::timeout, std::move(f));
    c.relative = detail::saturated(d);
    return c;
}

// Runs f() if no other case became ready before t.
template <class Clock, class Dur, std::invocable F>
auto on_deadline(std::chrono::time_point<Clock, Dur> t, F f) {
    detail::plain_case<F> c(detail::case_kind::timeout, std::move(f));
    c.deadline = detail::to_steady(t);
    return c;
}

// Ready once a stop is requested on `token` (Go's `case <-ctx.Done()`).
template <std::invocable F>
auto on_stop(std::stop_token token, F f) {
    detail::plain_case<F> c(detail::case_kind::stop, std::move(f));
    c.stop = std::move(token);
    return c;
}

// Any case, type-erased, for a select over cases of different kinds built at
// run time. Allocates once when built; a select over it allocates nothing
// for up to 16 cases.
class any_case {
public:
    template <detail::select_case C>
    any_case(C&& c) : p_(std::make_unique<std::remove_cvref_t<C>>(std::forward<C>(c))) {}
    detail::case_base* get() const noexcept { return p_.get(); }

private:
    std::unique_ptr<detail::case_base> p_;
};

template <detail::select_case... C>
    requires(sizeof...(C) > 0)
int select(C&&... cases) {
    constexpr int n = static_cast<int>(sizeof...(C));
    std::array<detail::case_base*, n> cs{static_cast<detail::case_base*>(&cases)...};
    std::array<detail::chan_base*, n> locks;
    std::array<int, n> order;
    return detail::select_engine(cs.data(), n, locks.data(), order.data(),
                                 (detail::is_channel_case_v<std::remove_cvref_t<C>> && ...),
                                 &detail::poll_unlocked_as<std::remove_cvref_t<C>...>);
}

namespace detail {
inline case_base* as_case(case_base& c) noexcept { return &c; }
inline case_base* as_case(const any_case& c) noexcept { return c.get(); }
}  // namespace detail

// A select over a range of cases; returns the index in the range.
template <std::ranges::forward_range R>
    requires requires(std::ranges::range_reference_t<R> c) { detail::as_case(c); }
int select(R&& cases) {
    constexpr std::size_t small = 16;
    std::size_t n = static_cast<std::size_t>(std::ranges::distance(cases));
    std::array<detail::case_base*, small> cs_small{};
    std::array<detail::chan_base*, small> locks_small{};
    std::array<int, small> order_small{};
    std::vector<detail::case_base*> cs_big;
    std::vector<detail::chan_base*> locks_big;
    std::vector<int> order_big;
    detail::case_base** cs = cs_small.data();
    detail::chan_base** locks = locks_small.data();
    int* order = order_small.data();
    if (n > small) {
        cs_big.resize(n);
        locks_big.resize(n);
        order_big.resize(n);
        cs = cs_big.data();
        locks = locks_big.data();
        order = order_big.data();
    }
    std::size_t i = 0;
    for (auto&& c : cases) cs[i++] = detail::as_case(c);
    return detail::select_engine(cs, static_cast<int>(n), locks, order);
}

}  // namespace csp
