// csp::task<T> — csp's own coroutine type for runtime tasks.
//
//   csp::task<> stage(csp::receiver<int> in, csp::sender<int> out) {
//       while (auto v = co_await in.async_recv(csp::use_task))
//           co_await out.async_send(*v * 2, csp::use_task);
//   }
//   rt.go(stage(in, out));                       // or rt.go([&]() -> csp::task<> { ... })
//   int n = co_await count(in);                  // a task awaits another: task<int> count(...)
//
// The same tasks as asio::awaitable ones (runtime.hpp: scheduling, errors,
// cancellation, deadlock detection), at a fraction of the cost per channel
// operation: a channel operation awaited with csp::use_task that can
// complete now runs in await_ready and the task does not suspend, and one
// that waits resumes the task straight from its completion
// (channels/detail/task_ops.hpp). Inside a csp::task only csp's awaiters and
// other csp::tasks can be awaited; Asio's own operations (timers, sockets)
// belong in asio::awaitable tasks.
//
// A task starts when it is awaited or given to go(), not when called (it is
// lazy), and is move-only. A task awaited by another runs on the same
// serial executor, in the same cancellation scope: the awaiting task resumes
// where the awaited one returns (symmetric transfer, no queue). An exception
// leaving a task is rethrown by the co_await that awaited it, or, for a task
// given to go(), kept by the runtime for wait().
//
// Cancellation: when the task's group (or the runtime) is cancelled, the
// operation the task waits in completes with operation_aborted and takes
// nothing, and every later co_await of a channel operation in that task
// throws std::system_error(operation_aborted), as in an asio::awaitable task.
// `co_await csp::ignore_cancellation;` takes the task out of that (a sink
// that must drain its input to the end): a cancellation already received
// is forgotten and later ones do not reach it; like a plain task, it must
// then end on its own (its input closing) for its group's wait to return.
#pragma once

#include <chrono>
#include <coroutine>
#include <exception>
#include <optional>
#include <system_error>
#include <type_traits>
#include <utility>

#include <asio/detail/thread_context.hpp>
#include <asio/detail/thread_info_base.hpp>
#include <asio/error.hpp>

#include <channels/async.hpp>

namespace csp {

template <class T = void>
class task;

struct ignore_cancellation_t {
    constexpr ignore_cancellation_t() noexcept = default;
};
inline constexpr ignore_cancellation_t ignore_cancellation{};

namespace detail {

// How a root task (one given to go()) reports its end to the runtime: the
// runtime's task_env carries it. A task awaited by another has a
// continuation instead.
struct task_root_env : task_env {
    void (*ended)(task_root_env&, std::exception_ptr) = nullptr;
};

// What co_await sees of a channel operation's awaiter: a pointer to it
// (see task_promise_base::await_transform), and the task's turn given back
// now and then when its operations complete without suspending.
//
// Why: a task whose channel operations all complete at once never suspends,
// and holds its worker; the tasks readied meanwhile on that worker's private
// queue wait behind it, where no idle worker takes them. Four busy workers
// of a parallel stage (tests/bench: pipeline_par_cpu, a few microseconds
// of work per value) ran on one core of two: 7 100 ns per value, as on one
// worker. So every kOpsPerCheck operations completed without suspending, a
// task reads the clock; when those took longer than kSlowWindow (the task
// mostly computes between them), it yields (post_behind): its worker's queue
// goes to the shared one, where the idle worker takes it (3 300 ns per value
// on two workers). A task whose operations are cheap and frequent (a busy
// ring) does not yield: yielding every 200 microseconds of running, whatever
// the rate, made buf_mpmc 1.43x and select4 1.11x slower, by scattering
// tasks that share a channel over both workers.
inline constexpr std::chrono::microseconds kSlowWindow{100};

template <class A>
struct awaiter_ref {
    awaiter_ref(A* p) noexcept : a(p) {}
    A* a;

    [[gnu::always_inline]] bool await_ready() {
        if (!a->await_ready()) return false;
        if (--a->env->ops_until_check > 0) [[likely]] return true;
        return !(a->env->yielding = slow_window_ended(*a->env));
    }
    void await_suspend(std::coroutine_handle<> h) {
        task_env& env = *a->env;
        env.ops_until_check = kOpsPerCheck;  // a new run of operations starts after this suspension
        env.window_start = {};
        if (!env.yielding) {
            a->await_suspend(h);
            return;
        }
        env.yielding = false;
        env.resume_later.task = h;  // the operation is complete: only the resumption waits
        env.post_behind(env, env.resume_later, false);
    }
    decltype(auto) await_resume() { return a->await_resume(); }

private:
    // Every kOpsPerCheck operations: true when the last kOpsPerCheck took
    // longer than kSlowWindow. The first check of a run only starts the window.
    static bool slow_window_ended(task_env& env) {
        env.ops_until_check = kOpsPerCheck;
        const auto now = std::chrono::steady_clock::now();
        const auto start = std::exchange(env.window_start, now);
        return start != std::chrono::steady_clock::time_point{} && now - start > kSlowWindow &&
               env.post_behind != nullptr;
    }
};

class task_promise_base {
public:
    // Frames come from the thread's recycling cache, the one Asio keeps for
    // its own coroutine frames (an internal of Asio, as asio::awaitable
    // uses it): a task that ends on the worker that started it (a short
    // task, started from a task) leaves its frame for the next one there,
    // without a malloc and a free per task.
    // Neither is inlined: g++ 12 (-O2 with ASan) otherwise pairs the
    // global operator new or delete inside Asio's cache with this class's
    // operator delete or new and warns (-Wmismatched-new-delete), though
    // both go through the cache.
    [[gnu::noinline]] static void* operator new(std::size_t size) {
        return asio::detail::thread_info_base::allocate(
            asio::detail::thread_info_base::awaitable_frame_tag(),
            asio::detail::thread_context::top_of_thread_call_stack(), size);
    }
    [[gnu::noinline]] static void operator delete(void* frame, std::size_t size) noexcept {
        asio::detail::thread_info_base::deallocate(
            asio::detail::thread_info_base::awaitable_frame_tag(),
            asio::detail::thread_context::top_of_thread_call_stack(), frame, size);
    }

    std::suspend_always initial_suspend() const noexcept { return {}; }

    struct final_awaiter {
        bool await_ready() const noexcept { return false; }
        template <class Promise>
        std::coroutine_handle<> await_suspend(std::coroutine_handle<Promise> h) noexcept {
            task_promise_base& p = h.promise();
            if (p.continuation_) return p.continuation_;
            // A root: the frame goes first (its locals and captures are
            // destroyed before the runtime counts the task as ended), then
            // the runtime hears of the end.
            task_root_env* env = p.root_;
            std::exception_ptr e = std::move(p.error_);
            h.destroy();
            env->ended(*env, std::move(e));
            return std::noop_coroutine();
        }
        void await_resume() const noexcept {}
    };
    final_awaiter final_suspend() const noexcept { return {}; }

    void unhandled_exception() noexcept { error_ = std::current_exception(); }

    // csp's awaiters get the task's env; a cancelled task throws at its next
    // channel operation.
    // Returns a pointer to the operation's awaiter, not the awaiter: g++ 12
    // copies (moves) an awaiter that await_transform returns by reference
    // into a temporary of its own, and a select's awaiter holds all its
    // cases, whose every move costs as much as a pass 0 that finds a value.
    // The operand outlives the co_await: it is a temporary of the same
    // full-expression, or the caller's object.
    // Always inlined: g++ 12 otherwise calls it out of line from a large
    // coroutine body, a call, a throw check and a return per operation.
    template <class A>
        requires std::is_base_of_v<task_awaiter, std::remove_cvref_t<A>>
    [[gnu::always_inline]] awaiter_ref<std::remove_reference_t<A>> await_transform(A&& a) const {
        static_assert(!std::is_lvalue_reference_v<A> || !std::remove_cvref_t<A>::refers_to_operands,
                      "co_await csp::async_select(csp::use_task, ...) where it is made: the awaiter "
                      "refers to its cases, temporaries of that expression");
        if (env_->cancelled) throw std::system_error(asio::error::operation_aborted);
        a.env = env_;
        return {&a};
    }
    template <class U>
    auto await_transform(task<U>&& t) const noexcept;
    std::suspend_never await_transform(ignore_cancellation_t) const noexcept {
        env_->ignores_cancellation = true;
        env_->cancelled = false;
        return {};
    }

    // Set before the task first runs.
    void start_as_root(task_root_env& env) noexcept {
        env_ = &env;
        root_ = &env;
    }
    void start_awaited(task_env& env, std::coroutine_handle<> continuation) noexcept {
        env_ = &env;
        continuation_ = continuation;
    }
    task_env& env() const noexcept { return *env_; }

protected:
    std::exception_ptr error_;

private:
    task_env* env_ = nullptr;
    task_root_env* root_ = nullptr;        // a root's, for its end
    std::coroutine_handle<> continuation_;  // the awaiting task's, if any
};

template <class T>
class task_promise : public task_promise_base {
public:
    task<T> get_return_object() noexcept;
    template <class V>
        requires std::convertible_to<V&&, T>
    void return_value(V&& v) {
        value_.emplace(std::forward<V>(v));
    }
    T take() {
        if (error_) std::rethrow_exception(error_);
        return std::move(*value_);
    }

private:
    std::optional<T> value_;
};

template <>
class task_promise<void> : public task_promise_base {
public:
    task<void> get_return_object() noexcept;
    void return_void() const noexcept {}
    void take() const {
        if (error_) std::rethrow_exception(error_);
    }
};

}  // namespace detail

template <class T>
class [[nodiscard]] task {
public:
    using promise_type = detail::task_promise<T>;
    using handle_type = std::coroutine_handle<promise_type>;

    task(task&& o) noexcept : h_(std::exchange(o.h_, {})) {}
    task& operator=(task&& o) noexcept {
        if (this != &o) {
            if (h_) h_.destroy();
            h_ = std::exchange(o.h_, {});
        }
        return *this;
    }
    ~task() {
        if (h_) h_.destroy();  // never started, or awaited and finished
    }

    // The runtime takes the frame of a task given to go().
    handle_type release() noexcept { return std::exchange(h_, {}); }

private:
    friend promise_type;
    friend detail::task_promise_base;
    explicit task(handle_type h) noexcept : h_(h) {}

    struct awaiter {
        handle_type h;
        bool await_ready() const noexcept { return false; }
        template <class Promise>
        std::coroutine_handle<> await_suspend(std::coroutine_handle<Promise> parent) noexcept {
            h.promise().start_awaited(parent.promise().env(), parent);
            return h;
        }
        T await_resume() { return h.promise().take(); }
    };

    handle_type h_;
};

namespace detail {

template <class T>
task<T> task_promise<T>::get_return_object() noexcept {
    return task<T>(std::coroutine_handle<task_promise>::from_promise(*this));
}
inline task<void> task_promise<void>::get_return_object() noexcept {
    return task<void>(std::coroutine_handle<task_promise>::from_promise(*this));
}

// The awaited task's frame stays owned by the task object, a temporary of
// the co_await expression, which destroys it once the result is taken.
template <class U>
auto task_promise_base::await_transform(task<U>&& t) const noexcept {
    return typename task<U>::awaiter{t.h_};
}

template <class T>
inline constexpr bool is_task_v = false;
template <class T>
inline constexpr bool is_task_v<task<T>> = true;

}  // namespace detail

}  // namespace csp
