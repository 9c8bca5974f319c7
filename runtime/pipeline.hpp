// csp::pipeline — chained stages that read like their diagram.
//
//   csp::pipeline p(rt);
//   auto files   = p.source(walk(root));                                  // a range, a generator or a channel
//   auto digests = p.map(files, sha256_file, {.workers = 8, .capacity = 64});
//   for (auto& d : p.drain(digests)) fmt::print("{}  {}\n", d.hex, d.path);
//
// Every stage is one or more tasks of the pipeline's task_group, connected by
// bounded channels, so memory stays bounded whatever the input size
// (backpressure: a fast stage waits on the full channel of a slow one).
//
// How a pipeline ends, whichever way it ends:
//   - Close flows downstream: a stage's output closes when its input is
//     closed and all its workers have finished (each worker holds a
//     closing_sender of the output; the last one to go closes it).
//   - Errors flow downstream: the first exception in any stage cancels the
//     whole pipeline (its task_group), and is rethrown by wait(), by the
//     sinks, and at the end of a drain() loop.
//   - Cancellation flows upstream: when the consumer stops early (breaks out
//     of a drain() loop and destroys the pipeline, or calls cancel()), every
//     stage's parked channel operation completes as cancelled and its task
//     ends; the destructor waits until none is left running or blocked.
//
// Stage functions are plain functions (CPU work, file reading) or
// coroutines returning asio::awaitable<U>. A stage's workers are coroutine
// tasks on the runtime's workers (csp::task, or asio::awaitable for a
// coroutine stage function); a plain function runs there directly (like
// a goroutine doing CPU work or a file read). A function that may wait for
// something else for a long time (another channel, a lock, the network)
// should be given `.blocking = true`: its workers then run on the runtime's
// elastic pool of threads, never holding a coroutine worker.
#pragma once

#include <asio/use_awaitable.hpp>

#include <chrono>
#include <cstddef>
#include <iterator>
#include <map>
#include <optional>
#include <ranges>
#include <stop_token>
#include <type_traits>
#include <utility>
#include <vector>

#include "runtime.hpp"
#include "task_group.hpp"

namespace csp {

struct stage_options {
    unsigned workers = 1;          // tasks running the function in parallel
    std::ptrdiff_t capacity = 64;  // of the stage's output channel
    bool ordered = false;          // map: results in input order (bounded reorder window)
    bool blocking = false;         // run on threads that may block (see the top of this file)
};

namespace detail {

template <class T>
struct awaited {
    using type = T;
};
template <class T, class E>
struct awaited<asio::awaitable<T, E>> {
    using type = T;
};

template <class H>
inline constexpr bool is_channel_handle_v = false;
template <class T>
inline constexpr bool is_channel_handle_v<channel<T>> = true;
template <class T>
inline constexpr bool is_channel_handle_v<receiver<T>> = true;

// The value of f(x) once awaited, for plain functions and coroutines alike.
template <class F, class T>
using stage_result_t = typename awaited<std::invoke_result_t<F&, T>>::type;

// The blocking form of a step exists only for plain functions.
template <class F, class T, class Step>
auto if_plain(Step step) {
    if constexpr (is_awaitable_v<std::invoke_result_t<F&, T>>) return nullptr;
    else return step;
}

template <class F, class T>
asio::awaitable<stage_result_t<F, T>> call_stage(F& f, T&& x) {
    if constexpr (is_awaitable_v<std::invoke_result_t<F&, T>>) co_return co_await f(std::forward<T>(x));
    else co_return f(std::forward<T>(x));
}

}  // namespace detail

// A receive loop that ends at close and then rethrows the pipeline's first
// error, if any: `for (auto v : p.drain(ch))`.
template <class T>
class drain_range;

class pipeline {
public:
    explicit pipeline(runtime& rt = runtime::default_runtime()) : rt_(rt), group_(rt) {}
    pipeline(const pipeline&) = delete;
    pipeline& operator=(const pipeline&) = delete;
    // Cancels every stage still running and waits for all of them.
    ~pipeline() = default;

    runtime& rt() noexcept { return rt_; }

    // ---- sources ----

    // Sends every element of the range, then closes.
    template <std::ranges::input_range R>
        requires(!detail::is_channel_handle_v<std::remove_cvref_t<R>>)
    receiver<std::ranges::range_value_t<R>> source(R&& range, std::ptrdiff_t capacity = 64) {
        using T = std::ranges::range_value_t<R>;
        auto out = make_chan<T>(capacity);
        group_.go([r = std::forward<R>(range), tx = out.as_closing_sender()]() mutable -> task<> {
            for (auto&& v : r) co_await tx.async_send(T(std::forward<decltype(v)>(v)), use_task);
        });
        return out;
    }

    // Sends gen() while it returns a value (std::optional<T>), then closes.
    template <class G>
        requires std::invocable<G&> && requires(G& g) { g().has_value(); }
    auto source(G gen, std::ptrdiff_t capacity = 64) {
        using T = typename std::invoke_result_t<G&>::value_type;
        auto out = make_chan<T>(capacity);
        group_.go([gen = std::move(gen), tx = out.as_closing_sender()]() mutable -> task<> {
            while (auto v = gen()) co_await tx.async_send(std::move(*v), use_task);
        });
        return receiver<T>(out);
    }

    // An existing channel, as it is.
    template <class T>
    receiver<T> source(receiver<T> in) {
        return in;
    }

    // ---- stages ----

    // f applied to every value, by o.workers workers. Unordered (results as
    // they finish) unless o.ordered, which keeps input order with a reorder
    // window of o.capacity values.
    template <class T, class F>
    auto map(receiver<T> in, F f, stage_options o = {}) {
        using U = detail::stage_result_t<F, T>;
        if (o.ordered && o.workers > 1) return ordered_map<T, U>(std::move(in), std::move(f), o);
        return run_stage<T, U>(
            std::move(in), o,
            [f](T x, auto emit) mutable -> asio::awaitable<void> {
                // No co_await inside a call's arguments: g++ 12 may destroy
                // such temporaries twice.
                U u = co_await detail::call_stage(f, std::move(x));
                co_await emit(std::move(u));
            },
            detail::if_plain<F, T>([f](T x, auto emit) mutable { return emit(f(std::move(x))); }),
            detail::if_plain<F, T>([f](auto x) mutable -> std::optional<U> { return f(std::move(x)); }));
    }

    // The values for which pred(value) is true.
    template <class T, class P>
    receiver<T> filter(receiver<T> in, P pred, stage_options o = {}) {
        return run_stage<T, T>(
            std::move(in), o,
            [pred](T x, auto emit) mutable -> asio::awaitable<void> {
                const bool keep = co_await detail::call_stage(pred, static_cast<const T&>(x));
                if (keep) co_await emit(std::move(x));
            },
            detail::if_plain<P, const T&>([pred](T x, auto emit) mutable {
                return pred(static_cast<const T&>(x)) ? emit(std::move(x)) : true;
            }),
            detail::if_plain<P, const T&>([pred](auto x) mutable -> std::optional<T> {
                if (!pred(std::as_const(x))) return std::nullopt;
                return std::optional<T>(std::move(x));
            }));
    }

    // f(value) returns a range (or an awaitable of one); each element goes on.
    template <class T, class F>
    auto flat_map(receiver<T> in, F f, stage_options o = {}) {
        using Range = detail::stage_result_t<F, T>;
        using U = std::ranges::range_value_t<Range>;
        return run_stage<T, U>(
            std::move(in), o,
            [f](T x, auto emit) mutable -> asio::awaitable<void> {
                auto us = co_await detail::call_stage(f, std::move(x));
                for (auto&& u : us) co_await emit(U(std::forward<decltype(u)>(u)));
            },
            detail::if_plain<F, T>([f](T x, auto emit) mutable {
                for (auto&& u : f(std::move(x)))
                    if (!emit(U(std::forward<decltype(u)>(u)))) return false;
                return true;
            }));
    }

    // Groups of up to k values; a group is sent early when max_wait has
    // passed since its first value arrived. The last group may be shorter.
    template <class T, class Rep, class Period>
    receiver<std::vector<T>> batch(receiver<T> in, std::size_t k, std::chrono::duration<Rep, Period> max_wait,
                                   std::ptrdiff_t capacity = 64) {
        if (k == 0) throw error("csp: batch of size 0");
        auto out = make_chan<std::vector<T>>(capacity);
        group_.go([in, k, max_wait, tx = out.as_closing_sender()]() -> task<> {
            for (;;) {
                auto first = co_await in.async_recv(use_task);
                if (!first) co_return;
                std::vector<T> group;
                group.reserve(k);
                group.push_back(std::move(*first));
                const auto deadline = std::chrono::steady_clock::now() + max_wait;
                bool open = true, late = false;
                while (open && !late && group.size() < k) {
                    co_await async_select(use_task,
                                          on_recv(in, [&](std::optional<T> v) {
                                              if (v) group.push_back(std::move(*v));
                                              else open = false;
                                          }),
                                          on_deadline(deadline, [&] { late = true; }));
                }
                co_await tx.async_send(std::move(group), use_task);
                if (!open) co_return;
            }
        });
        return out;
    }

    // Fan-in: every value of every input, in one channel that closes when
    // all inputs are closed.
    template <class T>
    receiver<T> merge(std::vector<receiver<T>> ins, std::ptrdiff_t capacity = 64) {
        auto out = make_chan<T>(capacity);
        // One closing_sender held across the loop: a forwarder that ends
        // before the next one starts must not close `out` under it.
        const auto tx = out.as_closing_sender();
        for (auto& in : ins) {
            group_.go([in, tx]() -> task<> {
                while (auto v = co_await in.async_recv(use_task))
                    co_await tx.async_send(std::move(*v), use_task);
            });
        }
        return out;
    }

    // Every value to each of n outputs (copies); the slowest output sets the pace.
    template <class T>
        requires std::copy_constructible<T>
    std::vector<receiver<T>> broadcast(receiver<T> in, std::size_t n, std::ptrdiff_t capacity = 64) {
        std::vector<channel<T>> outs;
        std::vector<receiver<T>> result;
        for (std::size_t i = 0; i < n; ++i) {
            outs.push_back(make_chan<T>(capacity));
            result.push_back(outs.back());
        }
        std::vector<closing_sender<T>> txs;
        for (auto& o : outs) txs.push_back(o.as_closing_sender());
        group_.go([in, txs = std::move(txs)]() -> task<> {
            while (auto v = co_await in.async_recv(use_task)) {
                for (std::size_t i = 0; i + 1 < txs.size(); ++i)
                    co_await txs[i].async_send(T(*v), use_task);
                if (!txs.empty()) co_await txs.back().async_send(std::move(*v), use_task);
            }
        });
        return result;
    }

    // ---- sinks: each rethrows the pipeline's first error ----
    //
    // for_each, collect and reduce consume in a task of the pipeline (one
    // call of f at a time, in arrival order) while the calling thread waits
    // for the whole pipeline: each value then passes from task to task, as
    // between two goroutines, instead of waking a parked thread per value.
    // So f runs on a runtime worker, like a stage function: it should not
    // block for long. drain() is the sink that runs on the calling thread.
    // Like drain(), the sink task is not cancelled with the pipeline: it
    // takes every value sent before a failure and ends when its input
    // closes, which the cancelled upstream stages do.

    template <class T, class F>
    void for_each(receiver<T> in, F f) {
        group_.go([in = std::move(in), &f]() -> task<> {
            co_await ignore_cancellation;
            while (auto v = co_await in.async_recv(use_task)) f(std::move(*v));
        });
        wait();
    }

    template <class T>
    std::vector<T> collect(receiver<T> in) {
        std::vector<T> all;
        for_each(std::move(in), [&all](T v) { all.push_back(std::move(v)); });
        return all;
    }

    template <class T, class A, class F>
    A reduce(receiver<T> in, A init, F f) {
        for_each(std::move(in), [&](T v) { init = f(std::move(init), std::move(v)); });
        return init;
    }

    // Receives until `in` is closed, then waits for the pipeline and
    // rethrows its first error. Breaking out early and destroying the
    // pipeline cancels every stage.
    template <class T>
    drain_range<T> drain(receiver<T> in) {
        return drain_range<T>(*this, std::move(in));
    }

    // Waits for every stage; rethrows the first error.
    void wait() { group_.wait(); }

    // Stops every stage (as the consumer stopping early does).
    void cancel() { group_.cancel(); }

    std::stop_token stop_token() const noexcept { return group_.stop_token(); }

private:
    // Runs a step for every x of `in` on o.workers workers. The coroutine
    // step is `co_await step(x, emit)` with `co_await emit(u)` sending u; the
    // blocking one (o.blocking, plain functions only) is `step(x, emit)` with
    // emit(u) returning false once the pipeline is cancelled.
    //
    // A plain map or filter also gives an inline step, x -> std::optional<U>
    // (nullopt: nothing to send), which its workers call directly: a
    // coroutine step costs a coroutine frame per value. The steps are
    // generic lambdas, so that a body is compiled only where it is used.
    template <class T, class U, class AsyncStep, class BlockingStep, class InlineStep = std::nullptr_t>
    receiver<U> run_stage(receiver<T> in, const stage_options& o, AsyncStep async_step,
                          BlockingStep blocking_step, InlineStep inline_step = nullptr) {
        auto out = make_chan<U>(o.capacity);
        // Workers close `out` when the last of them ends; the copy held here
        // until all have started keeps an early finisher from closing it.
        const auto closer = out.as_closing_sender();
        const unsigned n = o.workers ? o.workers : 1;
        for (unsigned i = 0; i < n; ++i) {
            if (o.blocking) {
                if constexpr (!std::is_null_pointer_v<BlockingStep>) {
                    group_.go([in, tx = closer, blocking_step](std::stop_token st) mutable {
                        auto emit = [&](U u) { return tx.send(std::move(u), st) == status::ok; };
                        while (auto v = in.recv(st))
                            if (!blocking_step(std::move(*v), emit)) return;
                    });
                } else {
                    throw error("csp: a stage with .blocking = true needs a plain function");
                }
            } else if constexpr (!std::is_null_pointer_v<InlineStep>) {
                group_.go([in, tx = closer, inline_step]() mutable -> task<> {
                    while (auto v = co_await in.async_recv(use_task)) {
                        std::optional<U> u = inline_step(std::move(*v));
                        if (u) co_await tx.async_send(std::move(*u), use_task);
                    }
                });
            } else {
                group_.go([in, tx = closer, async_step]() mutable -> asio::awaitable<void> {
                    auto emit = [&tx](U u) { return tx.async_send(std::move(u), asio::use_awaitable); };
                    while (auto v = co_await in.async_recv(asio::use_awaitable))
                        co_await async_step(std::move(*v), emit);
                });
            }
        }
        return out;
    }

    // Input order kept with per-value result slots: the dispatcher hands
    // (value, slot) to the workers and the slots, in input order, to the
    // collector, through a channel of o.capacity slots: that bounds the
    // values in flight whatever the workers' speed.
    template <class T, class U, class F>
    receiver<U> ordered_map(receiver<T> in, F f, const stage_options& o) {
        struct job {
            T value;
            sender<U> slot;
        };
        auto out = make_chan<U>(o.capacity);
        auto jobs = make_chan<job>(static_cast<std::ptrdiff_t>(o.workers));
        auto order = make_chan<channel<U>>(o.capacity);
        group_.go([in, jtx = jobs.as_closing_sender(), otx = order.as_closing_sender()]() -> task<> {
            while (auto v = co_await in.async_recv(use_task)) {
                auto slot = make_chan<U>(1);
                job next{std::move(*v), slot.as_sender()};
                co_await otx.async_send(std::move(slot), use_task);
                co_await jtx.async_send(std::move(next), use_task);
            }
        });
        for (unsigned i = 0; i < o.workers; ++i) {
            if constexpr (detail::is_awaitable_v<std::invoke_result_t<F&, T>>) {
                group_.go([jobs, f]() mutable -> asio::awaitable<void> {
                    while (auto j = co_await jobs.async_recv(asio::use_awaitable)) {
                        U u = co_await f(std::move(j->value));
                        co_await j->slot.async_send(std::move(u), asio::use_awaitable);
                    }
                });
            } else {
                group_.go([jobs, f]() mutable -> task<> {
                    while (auto j = co_await jobs.async_recv(use_task)) {
                        U u = f(std::move(j->value));
                        co_await j->slot.async_send(std::move(u), use_task);
                    }
                });
            }
        }
        group_.go([order, tx = out.as_closing_sender()]() -> task<> {
            while (auto slot = co_await order.async_recv(use_task)) {
                auto v = co_await slot->async_recv(use_task);
                if (!v) co_return;  // a worker ended without a result: the pipeline is failing
                co_await tx.async_send(std::move(*v), use_task);
            }
        });
        return out;
    }

    runtime& rt_;
    task_group group_;
};

template <class T>
class drain_range {
public:
    drain_range(pipeline& p, receiver<T> in) : p_(p), in_(std::move(in)) {}

    class iterator {
    public:
        using value_type = T;
        using difference_type = std::ptrdiff_t;
        iterator() = default;
        explicit iterator(drain_range* r) : r_(r) { ++*this; }
        T& operator*() const noexcept { return *value_; }
        iterator& operator++() {
            value_ = r_->in_.recv();
            if (!value_) r_->p_.wait();  // closed: the stream ended, or the pipeline failed
            return *this;
        }
        void operator++(int) { ++*this; }
        bool operator==(std::default_sentinel_t) const noexcept { return !value_; }

    private:
        drain_range* r_ = nullptr;
        mutable std::optional<T> value_;
    };

    iterator begin() { return iterator(this); }
    std::default_sentinel_t end() const noexcept { return {}; }

private:
    pipeline& p_;
    receiver<T> in_;
};

}  // namespace csp
