// csp::detail::park_hooks — how a runtime learns that one of its threads or
// tasks waits on a channel with no way out but a peer (no deadline, no stop
// token). Its deadlock detector counts these. Set per thread by the runtime
// on its own threads; null elsewhere, where waiting costs nothing extra.
#pragma once

namespace csp::detail {

class park_hooks {
public:
    virtual void parked() noexcept = 0;
    virtual void unparked() noexcept = 0;
    // The calling thread is about to block on a channel (any blocking wait,
    // with or without a way out). A runtime's worker then has another worker
    // woken for the work queued behind it (runtime.cpp).
    virtual void thread_blocks() noexcept {}

protected:
    ~park_hooks() = default;
};

inline park_hooks*& current_park_hooks() noexcept {
    thread_local park_hooks* hooks = nullptr;
    return hooks;
}

}  // namespace csp::detail
