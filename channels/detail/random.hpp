// csp::detail::fast_random — a per-thread generator for select's fairness.
// Not for cryptography; uniform enough for choosing among ready cases.
#pragma once

#include <cstdint>
#include <functional>
#include <thread>

namespace csp::detail {

inline std::uint64_t next_random() noexcept {
    // xorshift64*: a few shifts and one multiply, seeded from the thread's identity.
    thread_local std::uint64_t state =
        0x9E3779B97F4A7C15ull ^ (std::hash<std::thread::id>{}(std::this_thread::get_id()) << 1) ^
        reinterpret_cast<std::uintptr_t>(&state);
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545F4914F6CDD1Dull;
}

// A uniform integer in [0, n), n > 0 (Lemire's multiply-shift).
inline std::uint32_t random_below(std::uint32_t n) noexcept {
    return static_cast<std::uint32_t>((static_cast<std::uint64_t>(static_cast<std::uint32_t>(next_random() >> 32)) * n) >> 32);
}

}  // namespace csp::detail
