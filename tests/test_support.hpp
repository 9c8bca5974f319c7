// Helpers shared by the channel unit tests: doctest printers, the stress
// multiplier, and the capacities every channel test runs over.
#pragma once

#include <doctest/doctest.h>

#include <channels/status.hpp>

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

namespace doctest {
template <>
struct StringMaker<std::vector<int>> {
    static String convert(const std::vector<int>& v) {
        std::string s = "{";
        for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
        return (s + "}").c_str();
    }
};
template <>
struct StringMaker<csp::status> {
    static String convert(csp::status s) { return csp::to_string(s); }
};
}  // namespace doctest

namespace csp_test {

// The integer in CSP_STRESS_ITERS (the test setups set it), at least 1.
inline int stress_iters() {
    static const int n = [] {
        const char* e = std::getenv("CSP_STRESS_ITERS");
        int v = e ? std::atoi(e) : 1;
        return v > 0 ? v : 1;
    }();
    return n;
}

inline constexpr int capacities[] = {0, 1, 2, 1024};

// Runs f(cap) once per capacity, naming the capacity in any failure.
template <class F>
void for_each_capacity(F f) {
    for (int cap : capacities) {
        CAPTURE(cap);
        f(cap);
    }
}

// Only makes it likely that a peer thread has parked; never needed for correctness.
inline void let_it_block() { std::this_thread::sleep_for(std::chrono::milliseconds(5)); }

}  // namespace csp_test
