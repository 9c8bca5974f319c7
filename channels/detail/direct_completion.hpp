// csp::detail::direct_completion — a completion that an executor can queue
// as it is, without wrapping it.
//
// Posting a completion through asio::any_io_executor costs three type-erased
// property conversions (never-blocking, continuation, allocator), each a copy
// of the executor, and an allocation of the wrapped function, on the waker's
// thread, freed on the thread that runs it. An executor that keeps a linked
// queue of its own can take the node built into the operation instead.
//
// A runtime whose executors can do that installs direct_post_hook once, for
// the life of the program: given the executor of a completion, the hook
// either queues the node there, as a never-blocking continuation, and
// returns true, or returns false (not one of its executors) and the
// completion goes through Asio as usual. The node is the operation's: it
// stays valid until `finish` ran, and `finish(node, false)` (the executor
// shut down with it queued) does what destroying an unrun Asio completion of
// it would do.
#pragma once

#include <asio/any_io_executor.hpp>

#include <atomic>

namespace csp::detail {

struct direct_completion {
    direct_completion* next = nullptr;
    void (*finish)(direct_completion*, bool run) = nullptr;  // runs it, or only lets it go
};

using direct_post_fn = bool (*)(const asio::any_io_executor& ex, direct_completion& c);

inline std::atomic<direct_post_fn> direct_post_hook{nullptr};

}  // namespace csp::detail
