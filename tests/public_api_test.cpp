// Compile-time promises of the public API. This file includes only the
// public umbrella header: if it needs anything from detail/ to compile, the
// public API is incomplete.
//
// Not checkable in the language, so checked by hand when this file was
// written: discarding the result of try_send, try_recv, recv(), send(v, stop),
// recv(stop), send_for/until and recv_for/until warns (-Wunused-result) on
// gcc 12 and clang 14, which werror turns into a build failure.
#include <doctest/doctest.h>

#include <channels/channels.hpp>

#include <chrono>
#include <concepts>
#include <memory>
#include <optional>
#include <ranges>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using namespace std::chrono_literals;

// ---- direction: the compiler refuses what a handle must not do ----

template <class H>
concept can_send = requires(const H h, typename H::value_type v) {
    h.send(std::move(v));
};
template <class H>
concept can_try_send = requires(const H h, typename H::value_type v) {
    { h.try_send(std::move(v)) } -> std::same_as<csp::status>;
};
template <class H>
concept can_recv = requires(const H h) {
    { h.recv() } -> std::same_as<std::optional<typename H::value_type>>;
};
template <class H>
concept can_try_recv = requires(const H h) {
    { h.try_recv() } -> std::same_as<csp::recv_result<typename H::value_type>>;
};
template <class H>
concept can_close = requires(const H h) {
    h.close();
};
template <class H>
concept can_recv_stop = requires(const H h) {
    h.recv(std::stop_token{});
};
template <class H>
concept can_recv_for = requires(const H h) {
    h.recv_for(1ms);
};
template <class H>
concept can_send_stop = requires(const H h, typename H::value_type v) {
    h.send(std::move(v), std::stop_token{});
};
template <class H>
concept can_send_for = requires(const H h, typename H::value_type v) {
    h.send_for(std::move(v), 1ms);
};
// The copying overloads, which must vanish for move-only values.
template <class H>
concept can_send_copy = requires(const H h, const typename H::value_type& v) {
    h.send(v);
    h.try_send(v);
};
template <class H>
concept can_select_send = requires(const H h, typename H::value_type& v) {
    csp::on_send(h, v);
    csp::on_send(h, std::move(v));
};
template <class H>
concept can_select_send_copy = requires(const H h, const typename H::value_type& v) {
    csp::on_send(h, v);
};
template <class H, class F>
concept can_select_recv = requires(const H h, F f) {
    csp::on_recv(h, f);
};
template <class R>
concept can_select_over = requires(R&& r) {
    csp::select(std::forward<R>(r));
};
template <class H>
concept can_range = requires(const H h) {
    h.begin();
    h.end();
};

static_assert(can_send<csp::channel<int>> && can_recv<csp::channel<int>>);
static_assert(can_try_send<csp::channel<int>> && can_try_recv<csp::channel<int>>);
static_assert(can_close<csp::channel<int>> && can_range<csp::channel<int>>);
static_assert(can_recv_stop<csp::channel<int>> && can_recv_for<csp::channel<int>>);
static_assert(can_send_stop<csp::channel<int>> && can_send_for<csp::channel<int>>);

static_assert(can_send<csp::sender<int>> && can_try_send<csp::sender<int>>);
static_assert(can_close<csp::sender<int>>);  // closing is the sender's job, as in Go
static_assert(!can_recv<csp::sender<int>> && !can_try_recv<csp::sender<int>>);
static_assert(!can_range<csp::sender<int>>);
static_assert(!can_recv_stop<csp::sender<int>> && !can_recv_for<csp::sender<int>>);

static_assert(can_recv<csp::receiver<int>> && can_try_recv<csp::receiver<int>>);
static_assert(can_range<csp::receiver<int>>);
static_assert(!can_send<csp::receiver<int>> && !can_try_send<csp::receiver<int>>);
static_assert(!can_close<csp::receiver<int>>);  // Go: close of a receive-only channel is an error
static_assert(!can_send_stop<csp::receiver<int>> && !can_send_for<csp::receiver<int>>);

static_assert(can_send<csp::closing_sender<int>> && !can_recv<csp::closing_sender<int>>);

// Select cases respect direction too.
static_assert(can_select_send<csp::channel<int>> && can_select_send<csp::sender<int>>);
static_assert(!can_select_send<csp::receiver<int>>);
static_assert(can_select_recv<csp::channel<int>, void (*)(std::optional<int>)>);
static_assert(can_select_recv<csp::receiver<int>, void (*)(std::optional<int>)>);
static_assert(!can_select_recv<csp::sender<int>, void (*)(std::optional<int>)>);
// A receive handler must accept std::optional<T>: nullopt means closed.
static_assert(!can_select_recv<csp::channel<int>, void (*)(int)>);

// ---- handles: cheap, copyable, default-constructible (nil), convertible ----

template <class H>
constexpr bool is_handle = std::regular<H>&& std::is_nothrow_move_constructible_v<H>;
static_assert(is_handle<csp::channel<int>>);
static_assert(is_handle<csp::sender<int>>);
static_assert(is_handle<csp::receiver<int>>);
static_assert(std::copyable<csp::closing_sender<int>>);
static_assert(std::default_initializable<csp::closing_sender<int>>);

static_assert(std::is_convertible_v<csp::channel<int>, csp::sender<int>>);
static_assert(std::is_convertible_v<csp::channel<int>, csp::receiver<int>>);
static_assert(std::is_convertible_v<csp::closing_sender<int>, csp::sender<int>>);
static_assert(!std::is_convertible_v<csp::sender<int>, csp::channel<int>>);
static_assert(!std::is_convertible_v<csp::receiver<int>, csp::channel<int>>);
static_assert(!std::is_convertible_v<csp::sender<int>, csp::receiver<int>>);
static_assert(!std::is_convertible_v<csp::receiver<int>, csp::sender<int>>);
// A plain sender must not silently become one that closes the channel.
static_assert(!std::is_convertible_v<csp::sender<int>, csp::closing_sender<int>>);
// Element types do not convert, as in Go.
static_assert(!std::is_convertible_v<csp::channel<int>, csp::channel<long>>);
static_assert(!std::is_convertible_v<csp::channel<int>, csp::sender<long>>);
// A capacity is not a channel: `channel<int> c = 5;` must not compile.
static_assert(!std::is_convertible_v<int, csp::channel<int>>);
static_assert(std::is_constructible_v<csp::channel<int>, int>);

static_assert(std::is_same_v<csp::channel<std::string>::value_type, std::string>);
static_assert(std::is_same_v<decltype(csp::make_chan<int>()), csp::channel<int>>);

// ---- element types ----

struct move_only {
    move_only() = default;
    move_only(move_only&&) = default;
    move_only& operator=(move_only&&) = default;
};
struct no_default {
    explicit no_default(int) {}
};
struct throwing_dtor {
    ~throwing_dtor() noexcept(false) {}
};

static_assert(csp::channel_value<std::unique_ptr<int>>);
static_assert(csp::channel_value<move_only>);
static_assert(csp::channel_value<no_default>);
static_assert(csp::channel_value<std::string>);
static_assert(!csp::channel_value<int&>);
static_assert(!csp::channel_value<int[4]>);
static_assert(!csp::channel_value<void>);
static_assert(!csp::channel_value<throwing_dtor>);

// Move-only values: the rvalue operations exist, the copying overloads do not.
using up = std::unique_ptr<int>;
static_assert(can_send<csp::channel<up>> && can_recv<csp::channel<up>>);
static_assert(!can_send_copy<csp::channel<up>> && can_send_copy<csp::channel<int>>);
static_assert(can_select_send<csp::channel<up>>);
static_assert(!can_select_send_copy<csp::channel<up>> && can_select_send_copy<csp::channel<int>>);

// ---- results ----

static_assert(std::is_same_v<decltype(std::declval<csp::channel<int>>().try_send(1)), csp::status>);
static_assert(
    std::is_same_v<decltype(std::declval<csp::channel<int>>().send_for(1, 1ms)), csp::status>);
static_assert(std::is_same_v<decltype(std::declval<csp::channel<int>>().send(1, std::stop_token{})),
                             csp::status>);
static_assert(std::is_same_v<decltype(std::declval<csp::channel<int>>().recv_for(1ms)),
                             csp::recv_result<int>>);
static_assert(std::is_same_v<decltype(std::declval<csp::channel<int>>().recv_until(
                                 std::chrono::system_clock::now())),
                             csp::recv_result<int>>);
// A blocking send either succeeds or throws: there is nothing to ignore.
static_assert(std::is_void_v<decltype(std::declval<csp::channel<int>>().send(1))>);

// recv_result tests true only with a value, and never converts to bool silently
// (so `int n = ch.try_recv();` cannot compile by accident).
static_assert(std::is_constructible_v<bool, csp::recv_result<int>>);
static_assert(!std::is_convertible_v<csp::recv_result<int>, bool>);
static_assert(!std::is_convertible_v<csp::status, csp::recv_result<int>>);
static_assert(
    std::is_same_v<decltype(std::declval<csp::recv_result<int>&>().value()), std::optional<int>&>);

// The five outcomes, with names.
static_assert(csp::to_string(csp::status::ok) == std::string_view("ok"));
static_assert(csp::to_string(csp::status::would_block) == std::string_view("would_block"));
static_assert(csp::to_string(csp::status::closed) == std::string_view("closed"));
static_assert(csp::to_string(csp::status::timeout) == std::string_view("timeout"));
static_assert(csp::to_string(csp::status::cancelled) == std::string_view("cancelled"));
static_assert(std::is_enum_v<csp::status> && !std::is_convertible_v<csp::status, int>);

// ---- errors: misuse is a csp::error, which is a std::logic_error ----

static_assert(std::is_base_of_v<std::logic_error, csp::error>);
static_assert(std::is_base_of_v<csp::error, csp::closed_error>);

// ---- ranges: a channel or receiver is an input range ----

static_assert(std::ranges::input_range<csp::channel<int>>);
static_assert(std::ranges::input_range<const csp::receiver<std::string>&>);
static_assert(std::same_as<std::ranges::range_value_t<csp::channel<std::string>>, std::string>);

// ---- select ----

static_assert(std::same_as<decltype(csp::select(csp::on_default([] {}))), int>);
static_assert(requires(std::vector<csp::any_case> & v) {
    { csp::select(v) } -> std::same_as<int>;
});
// One case type in a vector; the case type comes from on_recv.
using int_case = decltype(csp::on_recv(std::declval<csp::channel<int>&>(),
                                       std::declval<void (*)(std::optional<int>)>()));
static_assert(requires(std::vector<int_case> & v) { csp::select(v); });
static_assert(std::movable<csp::any_case> && !std::copyable<csp::any_case>);
static_assert(std::is_convertible_v<int_case, csp::any_case>);
// select wants cases, not channels or plain callables.
static_assert(!can_select_over<csp::channel<int>&>);
static_assert(!can_select_over<void (*)()>);
static_assert(can_select_over<std::vector<csp::any_case>&>);

}  // namespace

TEST_CASE("public header alone is enough to use a channel, a select and a range-for") {
    auto ch = csp::make_chan<std::string>(2);
    csp::sender<std::string> tx = ch;
    csp::receiver<std::string> rx = ch;
    tx.send("a");
    CHECK(tx.try_send(std::string("b")) == csp::status::ok);
    tx.close();

    std::optional<std::string> got;
    int which =
        csp::select(csp::on_recv(rx, [&](std::optional<std::string> v) { got = std::move(v); }),
                    csp::on_default([] {}));
    CHECK(which == 0);
    CHECK(got == "a");

    std::vector<std::string> rest;
    for (std::string v : rx) rest.push_back(v);
    CHECK(rest == std::vector<std::string>{"b"});
}

TEST_CASE("recv_result reports status and value") {
    csp::recv_result<int> none(csp::status::timeout);
    CHECK_FALSE(none);
    CHECK_FALSE(none.ok());
    CHECK(none.state() == csp::status::timeout);
    CHECK_FALSE(none.value().has_value());

    csp::recv_result<int> some(42);
    REQUIRE(some);
    CHECK(some.state() == csp::status::ok);
    CHECK(*some == 42);
    CHECK(some.value() == 42);

    csp::recv_result<std::string> s(std::string("hi"));
    CHECK(s->size() == 2);
    std::string moved = *std::move(s);
    CHECK(moved == "hi");

    csp::recv_result<int> from_empty(std::optional<int>{}, csp::status::closed);
    CHECK(from_empty.state() == csp::status::closed);
    csp::recv_result<int> from_full(std::optional<int>{7}, csp::status::closed);
    CHECK(from_full.state() == csp::status::ok);
    CHECK(*from_full == 7);
}

TEST_CASE("csp errors are caught as csp::error and as std::logic_error") {
    csp::channel<int> ch(0);
    ch.close();
    CHECK_THROWS_AS(ch.close(), csp::closed_error);
    CHECK_THROWS_AS(ch.close(), csp::error);
    CHECK_THROWS_AS(ch.close(), std::logic_error);
    CHECK_THROWS_AS(ch.send(1), csp::closed_error);
}
