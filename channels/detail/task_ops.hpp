// csp::detail — the awaiters of channel operations awaited in a csp::task
// with the csp::use_task token:
//
//   std::optional<int> v = co_await in.async_recv(csp::use_task);
//   co_await out.async_send(std::move(x), csp::use_task);
//   std::size_t i = co_await csp::async_select(csp::use_task, cases...);
//
// Why a token of our own: with asio::use_awaitable every operation is an
// asio::awaitable, a coroutine frame of its own that Asio's awaitable
// thread pushes, resumes, pops and frees even when the operation completes
// at once, and a wait resumes the task through that thread's pump. These
// awaiters are plain objects in the task's frame: an operation that can
// complete now does so in await_ready, under the channel's lock or on its
// lock-free ring, and the task never suspends (a goroutine's channel
// operation that does not block costs the same: a lock and a copy). Only an
// operation that must wait becomes an asynchronous operation
// (async_chan_ops.hpp, async_select_op.hpp), whose handler stores the
// result in the awaiter and resumes the task; the handler's executor is the
// task's, so the completion arrives as a direct node on the task's queue.
//
// Results and errors are those of use_awaitable: a send on a closed channel
// throws std::system_error(errc::closed), a cancelled wait throws
// std::system_error(operation_aborted), a select rethrows its handler's
// exception. An awaiter refers to the channel handle it was made from: await
// it in the expression that made it (the handle must outlive it).
#pragma once

#include <coroutine>
#include <exception>
#include <memory>
#include <optional>
#include <system_error>
#include <type_traits>
#include <utility>

#include "../error_code.hpp"
#include "async_chan_ops.hpp"
#include "async_select_op.hpp"
#include "task_env.hpp"

namespace csp {

// The completion token for channel operations awaited in a csp::task.
struct use_task_t {
    constexpr use_task_t() noexcept = default;
};
inline constexpr use_task_t use_task{};

}  // namespace csp

namespace csp::detail {

// The error an awaited operation ended with, if any. Not a std::error_code:
// its default constructor calls std::system_category(), out of line in
// libstdc++, in every awaiter, and almost every operation ends without one
// (one call per channel operation, about a twentieth of a busy stage's
// instructions under callgrind).
class operation_error {
public:
    operation_error& operator=(const std::error_code& ec) noexcept {
        category_ = ec ? &ec.category() : nullptr;
        value_ = ec.value();
        return *this;
    }
    void throw_if_set() const {
        if (category_) [[unlikely]] throw_it();
    }

private:
    [[noreturn, gnu::noinline]] void throw_it() const {
        throw std::system_error(std::error_code(value_, *category_));
    }

    const std::error_category* category_ = nullptr;  // null: no error
    int value_ = 0;
};

// Base of the awaiters. `env` is set by the task's await_transform before
// await_ready runs. An awaiter is moved only before it is awaited (returned
// from async_recv and the like); once awaited it stays where it is, in the
// task's frame, for the operation to write into.
class task_awaiter {
public:
    task_env* env = nullptr;
    // True for an awaiter that refers to temporaries of the expression that
    // made it: the task's await_transform then rejects it as an lvalue.
    static constexpr bool refers_to_operands = false;

protected:
    std::coroutine_handle<> waiting_;  // the suspended task, while an operation waits
};

// The handler of the operation that an awaiter waits for: it completes on
// the task's executor (Asio's associated executor), with the task's
// cancellation slot, stores the results in the awaiter and resumes the task.
template <class Awaiter>
struct task_resume_handler {
    Awaiter* aw;

    using executor_type = asio::any_io_executor;
    executor_type get_executor() const noexcept { return aw->env->resume_on(); }
    // async_op.hpp: the task's cancellation reaches the operation through
    // the task's env, not through an Asio cancellation slot.
    waiting_operation& waiting_operation_slot() const noexcept { return aw->env->waiting; }
    // async_op.hpp: the completion goes straight onto the task's queue.
    void post_direct(direct_completion& c) const { aw->env->post_completion(*aw->env, c); }

    template <class... Args>
    void operator()(Args&&... args) {
        aw->set_result(std::forward<Args>(args)...);
        aw->resume();
    }
};

template <class T>
class task_recv_awaiter : public task_awaiter {
    using handler = task_resume_handler<task_recv_awaiter>;
    friend handler;

public:
    explicit task_recv_awaiter(const std::shared_ptr<chan_state<T>>& ch) noexcept : ch_(&ch) {}

    // The busy path (a value taken from the lock-free ring) is inlined in
    // the task; any other attempt is made out of line. On a channel
    // without the lock-free ring, an operation that must wait is
    // registered there, under the lock its attempt took
    // (start_waiting_locked); await_suspend then only records the task,
    // which suspends before the completion can run (it is queued behind it).
    [[gnu::always_inline]] bool await_ready() { return (*ch_)->recv_at_once(value_) || attempt(); }
    void await_suspend(std::coroutine_handle<> h) {
        waiting_ = h;
        (*ch_)->note_waiting_receiver(env);
        if (!registered_) async_chan_op<T, handler, recv_kind<T>>::start_borrowed(handler{this}, **ch_);
    }
    std::optional<T> await_resume() {
        ec_.throw_if_set();
        return std::move(value_);
    }

private:
    [[gnu::noinline]] bool attempt() {
        chan_state<T>& ch = **ch_;
        return ch.recv_now_or_wait(value_, [&](wake_list& woken) {
            async_chan_op<T, handler, recv_kind<T>>::start_waiting_locked(handler{this}, ch, woken);
            registered_ = true;
        }) != poll::blocked;
    }
    void set_result(std::error_code ec, std::optional<T> v) {
        ec_ = ec;
        value_ = std::move(v);
    }
    void resume() { waiting_.resume(); }

    const std::shared_ptr<chan_state<T>>* ch_;
    std::optional<T> value_;
    operation_error ec_;
    bool registered_ = false;  // the operation was started in await_ready
};

// V is T (the awaiter owns the value: it was given as an rvalue) or T* (the
// caller's object, moved from only on success).
template <class T, class V>
class task_send_awaiter : public task_awaiter {
    using handler = task_resume_handler<task_send_awaiter>;
    friend handler;

public:
    task_send_awaiter(const std::shared_ptr<chan_state<T>>& ch, V v) : ch_(&ch), v_(std::move(v)) {}

    // As the receive's.
    [[gnu::always_inline]] bool await_ready() { return (*ch_)->send_at_once(value()) || attempt(); }
    // A send that found the ring full first gives its worker back once and
    // tries again after the work queued meanwhile (post_behind), and only
    // then registers as a waiter. Why: a registered sender costs its
    // receiver, on every value, the lock, the hand-over of the sender's
    // value and a wake-up, and a resumed sender finds the ring full again
    // after one value; when the receiver is the bottleneck (a select over
    // four producers) that was most of its time. Paired medians of 7, task
    // face: select4 0.51x (about Boost.Fiber's single-thread time),
    // pipeline 0.80x; slower: buf_mpmc 1.6x, pipeline_par 1.16x,
    // fanin_timeout 1.12x (the thread face stays the faster one on the
    // first two). Four yields gained nothing over one. The yielded task
    // goes to the shared queue and wakes an idle worker; kept on its
    // worker's private queue instead, buf_mpmc, pipeline_par and
    // fanin_timeout gained (0.83x, 0.76x, 0.92x) but select4 lost 1.25x and
    // pipeline 1.56x. So it stays on its worker only when several tasks
    // share the channel's ends (chan_state::ends_shared: a parallel stage's
    // workers, whose claims on one ring would cross cores), and goes to the
    // shared queue where each end is one task's (select4's producers, a
    // chain of stages), which run best a core apart.
    void await_suspend(std::coroutine_handle<> h) {
        waiting_ = h;
        if (registered_) return;
        if (env->post_behind) {
            retry_.self = this;
            chan_state<T>& ch = **ch_;
            ch.note_waiting_sender(env);
            env->post_behind(*env, retry_, ch.ends_shared());
            return;
        }
        wait();
    }
    void await_resume() const {
        ec_.throw_if_set();
    }

private:
    [[gnu::noinline]] bool attempt() {
        chan_state<T>& ch = **ch_;
        return settled(ch.send_now_or_wait(value(), [&](wake_list& woken) {
            async_chan_op<T, handler, send_kind<T, false>>::start_waiting_locked(handler{this}, ch, woken,
                                                                                 &value());
            registered_ = true;
        }));
    }
    T& value() noexcept {
        if constexpr (std::is_pointer_v<V>) return *v_;
        else return v_;
    }
    void set_result(std::error_code ec) { ec_ = ec; }
    void resume() { waiting_.resume(); }

    // An attempt's outcome: true when the send is over (sent, or closed,
    // which await_resume reports).
    bool settled(poll p) {
        if (p == poll::closed) ec_ = make_error_code(errc::closed);
        return p != poll::blocked;
    }

    void wait() { async_chan_op<T, handler, send_kind<T, false>>::start_borrowed(handler{this}, **ch_, &value()); }

    // After the yield, on the task's queue: the second attempt, then the wait.
    // Where the sending end is one task's, the attempt waits, yielding
    // again, until half the ring is free (at most kFullRingYields times;
    // then it attempts and registers as before). Why: a sender resumed into
    // a ring with a slot or two free writes right behind its receiver, so
    // on two cores each value moved its slot's line from core to core and
    // back and cost a yield (select4: a yield per 4.4 values), and the
    // receiver, the bottleneck, waited for the line. Refilling half a ring
    // at once, the lines move once per batch. Paired medians of 7 against
    // the yield once: select4 0.82x, buf_spsc 0.79x, fanin_timeout 0.87x,
    // others within 5% (one worker: all within 3%); 4 yields gained half as
    // much, 64 no more than 16. Where several tasks share the end (a
    // parallel stage's workers, many one-shot senders) they refill the ring
    // together anyway, and each waiting out half a ring would only add
    // yields. While the receiver is stalled the sender registers after a
    // few microseconds of these yields, which run behind any queued work.
    void retry() {
        if (env->cancelled) {  // cancelled meanwhile: no operation was waiting to be cancelled
            ec_ = asio::error::operation_aborted;
            waiting_.resume();
            return;
        }
        chan_state<T>& ch = **ch_;
        if (yields_left_ > 0 && !ch.ends_shared() && !ch.has_half_room()) {
            --yields_left_;
            env->post_behind(*env, retry_, false);  // as the first yield of an unshared end
            return;
        }
        if (settled(ch.send_now(value()))) waiting_.resume();
        else wait();
    }
    static constexpr int kFullRingYields = 16;

    struct retry_node : direct_completion {
        retry_node() noexcept {
            finish = [](direct_completion* n, bool run) {
                if (run) static_cast<retry_node*>(n)->self->retry();
            };
        }
        task_send_awaiter* self = nullptr;
    };

    retry_node retry_;
    const std::shared_ptr<chan_state<T>>* ch_;
    V v_;
    operation_error ec_;
    bool registered_ = false;  // the operation was started in await_ready
    int yields_left_ = kFullRingYields;
};

// Passes 0 and 1 in await_ready, as a goroutine's select that finds a case
// ready; only a select that must wait becomes an async_select_op.
template <class Storage>
class task_select_awaiter : public task_awaiter {
    using handler = task_resume_handler<task_select_awaiter>;
    friend handler;

public:
    // The storage is built in place (argument_cases refers to the cases;
    // the others hold them), never moved before the select waits.
    template <class... Cases>
    explicit task_select_awaiter(std::in_place_t, Cases&&... cases) : cases_(std::forward<Cases>(cases)...) {}

    // An awaiter that refers to the cases given to async_select must be
    // co_await'ed in the full-expression that made it, where they live.
    static constexpr bool refers_to_operands = is_argument_cases_v<Storage>;

    bool await_ready() {
        chosen_ = select_now(cases_, how_);
        return chosen_ >= 0;
    }
    void await_suspend(std::coroutine_handle<> h) {
        waiting_ = h;
        async_select_op<handler, Storage>::start(handler{this}, std::move(cases_));
    }
    std::size_t await_resume() {
        if (!waiting_) {  // chosen in await_ready: the handler runs here, unlocked
            cases_.cases()[chosen_]->run(how_);
            return static_cast<std::size_t>(chosen_);
        }
        if (error_) std::rethrow_exception(error_);
        return index_;
    }

private:
    void set_result(std::exception_ptr e, std::size_t index) {
        error_ = std::move(e);
        index_ = index;
    }
    void resume() { waiting_.resume(); }

    Storage cases_;  // moved into the operation when the select waits
    int chosen_ = -1;
    outcome how_ = outcome::delivered;
    std::exception_ptr error_;
    std::size_t index_ = 0;
};

}  // namespace csp::detail
