// csp::detail::ring — the fixed-capacity FIFO buffer of a buffered channel.
//
// Raw storage, so T needs no default constructor; the capacity is fixed at
// construction and nothing allocates afterwards. Not synchronised: the
// owning channel's lock guards it. push/pop give the strong guarantee when
// T's move constructor does: if the move throws, the ring is unchanged.
#pragma once

#include <cstddef>
#include <memory>
#include <new>
#include <utility>

namespace csp::detail {

template <class T>
class ring {
public:
    explicit ring(std::size_t capacity)
        : cap_(capacity), slots_(capacity ? std::make_unique<slot[]>(capacity) : nullptr) {}
    ring(const ring&) = delete;
    ring& operator=(const ring&) = delete;
    ~ring() {
        while (size_) pop_front();
    }

    std::size_t size() const noexcept { return size_; }
    std::size_t capacity() const noexcept { return cap_; }
    bool empty() const noexcept { return size_ == 0; }
    bool full() const noexcept { return size_ == cap_; }

    // Requires !full().
    void push_back(T&& v) {
        std::size_t tail = head_ + size_;
        if (tail >= cap_) tail -= cap_;
        ::new (static_cast<void*>(slots_[tail].bytes)) T(std::move(v));
        ++size_;
    }

    // Requires !empty().
    T& front() noexcept { return *std::launder(reinterpret_cast<T*>(slots_[head_].bytes)); }

    // Requires !empty().
    void pop_front() noexcept {
        front().~T();
        if (++head_ == cap_) head_ = 0;
        --size_;
    }

private:
    struct slot {
        alignas(T) unsigned char bytes[sizeof(T)];
    };
    std::size_t cap_;
    std::size_t head_ = 0;
    std::size_t size_ = 0;
    std::unique_ptr<slot[]> slots_;
};

}  // namespace csp::detail
