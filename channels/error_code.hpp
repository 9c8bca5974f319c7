// csp — error codes for the asynchronous face, where Asio reports outcomes
// as std::error_code (cancellation is asio::error::operation_aborted).
#pragma once

#include <string>
#include <system_error>

namespace csp {

enum class errc {
    closed = 1,   // send on a closed channel
    move_failed,  // the value's move constructor threw while it was handed over
};

inline const std::error_category& channel_category() noexcept {
    struct category final : std::error_category {
        const char* name() const noexcept override { return "csp.channel"; }
        std::string message(int c) const override {
            switch (static_cast<errc>(c)) {
                case errc::closed: return "send on a closed channel";
                case errc::move_failed: return "the value's move constructor threw";
            }
            return "unknown channel error";
        }
    };
    static const category instance;
    return instance;
}

inline std::error_code make_error_code(errc e) noexcept {
    return {static_cast<int>(e), channel_category()};
}

}  // namespace csp

template <>
struct std::is_error_code_enum<csp::errc> : std::true_type {};
