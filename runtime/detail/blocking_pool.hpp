// csp::detail::blocking_pool — the threads that run plain-function tasks.
//
// A plain function may block in a channel operation for as long as it likes,
// so it never runs on a coroutine worker (it would stall every coroutine
// queued there). It runs here, and this pool never lets a submitted job wait
// behind busy threads: whenever more jobs are queued than threads are idle,
// it starts another thread. So a plain task that blocks until another plain
// task starts can never deadlock the runtime, whatever the number of cores
// (Go gets the same by handing its processor to a new thread when a
// goroutine blocks in a system call). Idle threads retire after a while.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

namespace csp::detail {

class blocking_pool {
public:
    using job = std::function<void()>;

    // `on_thread_start` runs first on every new thread (the runtime installs
    // its thread-local hooks there).
    explicit blocking_pool(std::function<void()> on_thread_start)
        : on_thread_start_(std::move(on_thread_start)) {}
    blocking_pool(const blocking_pool&) = delete;
    blocking_pool& operator=(const blocking_pool&) = delete;
    ~blocking_pool() { stop(); }

    void submit(job j) {
        std::vector<std::thread> finished;
        {
            std::lock_guard g(mu_);
            jobs_.push_back(std::move(j));
            if (jobs_.size() > idle_) {
                std::thread t([this] { loop(); });
                const auto id = t.get_id();
                threads_.emplace(id, std::move(t));
            } else {
                wake_.notify_one();
            }
            finished.swap(retired_);
        }
        join_all(finished);
    }

    // Lets queued jobs finish, then joins every thread.
    void stop() {
        std::vector<std::thread> threads;
        {
            std::lock_guard g(mu_);
            stopping_ = true;
            wake_.notify_all();
            for (auto& [id, t] : threads_) threads.push_back(std::move(t));
            threads_.clear();
            for (auto& t : retired_) threads.push_back(std::move(t));
            retired_.clear();
        }
        join_all(threads);
    }

    // Threads started and not yet retired.
    std::size_t threads() {
        std::lock_guard g(mu_);
        return threads_.size();
    }

private:
    void loop() {
        on_thread_start_();
        std::unique_lock l(mu_);
        for (;;) {
            while (!jobs_.empty()) {
                job j = std::move(jobs_.front());
                jobs_.pop_front();
                l.unlock();
                j();
                l.lock();
            }
            if (stopping_) return;
            ++idle_;
            bool woken = wake_.wait_for(l, kIdleRetire, [&] { return stopping_ || !jobs_.empty(); });
            --idle_;
            if (!woken) return retire(l);
        }
    }

    // A thread cannot join itself: a retiring thread hands its std::thread to
    // retired_, and whoever comes next (a submit, the next retiring thread,
    // stop) joins it, so retired threads never pile up in a long-lived pool.
    void retire(std::unique_lock<std::mutex>& l) {
        std::vector<std::thread> earlier;
        earlier.swap(retired_);
        auto self = threads_.find(std::this_thread::get_id());
        retired_.push_back(std::move(self->second));
        threads_.erase(self);
        l.unlock();
        join_all(earlier);
    }

    static void join_all(std::vector<std::thread>& threads) {
        for (auto& t : threads) t.join();
    }

    static constexpr std::chrono::seconds kIdleRetire{30};

    std::function<void()> on_thread_start_;
    std::mutex mu_;
    std::condition_variable wake_;
    std::deque<job> jobs_;              // guarded by mu_
    std::size_t idle_ = 0;              // guarded by mu_
    bool stopping_ = false;             // guarded by mu_
    std::unordered_map<std::thread::id, std::thread> threads_;  // guarded by mu_: running
    std::vector<std::thread> retired_;  // guarded by mu_: returned or returning, not joined
};

}  // namespace csp::detail
