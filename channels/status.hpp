// csp — the outcome of a channel operation that may not complete.
#pragma once

#include <optional>
#include <utility>

namespace csp {

// What happened to a non-blocking, timed or cancellable operation.
enum class status {
    ok,           // the value was sent / received
    would_block,  // try_*: it could not complete now (full, empty, or a null channel)
    closed,       // the channel is closed (for a receive: closed and drained)
    timeout,      // *_for / *_until: the deadline passed first
    cancelled,    // a std::stop_token asked the operation to stop first
};

constexpr const char* to_string(status s) noexcept {
    switch (s) {
        case status::ok: return "ok";
        case status::would_block: return "would_block";
        case status::closed: return "closed";
        case status::timeout: return "timeout";
        case status::cancelled: return "cancelled";
    }
    return "unknown";
}

// The result of a receive that may not complete: a status, and the value
// when the status is ok. Contextually true exactly when a value was received.
template <class T>
class [[nodiscard]] recv_result {
public:
    explicit recv_result(status s) noexcept : status_(s) {}
    explicit recv_result(T&& v) : status_(status::ok), value_(std::move(v)) {}
    explicit recv_result(std::optional<T>&& v, status if_empty)
        : status_(v ? status::ok : if_empty), value_(std::move(v)) {}

    status state() const noexcept { return status_; }
    void set_state(status s) noexcept { status_ = s; }
    bool ok() const noexcept { return status_ == status::ok; }
    explicit operator bool() const noexcept { return ok(); }

    // Requires ok().
    T& operator*() & noexcept { return *value_; }
    const T& operator*() const& noexcept { return *value_; }
    T&& operator*() && noexcept { return std::move(*value_); }
    T* operator->() noexcept { return &*value_; }
    const T* operator->() const noexcept { return &*value_; }

    // The value as an optional: empty unless ok().
    std::optional<T>& value() & noexcept { return value_; }
    std::optional<T>&& value() && noexcept { return std::move(value_); }

private:
    status status_;
    std::optional<T> value_;
};

}  // namespace csp
