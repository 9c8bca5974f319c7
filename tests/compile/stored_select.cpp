// Must not compile with -DCSP_STORED_SELECT: a task's select awaiter refers
// to its cases, temporaries of the expression that made it, so awaiting one
// kept in a variable would read them after they are gone. Without the
// define, the same select co_await'ed where it is made compiles.
#include <runtime/csp.hpp>

#include <optional>

csp::task<void> take_one(csp::channel<int> ch) {
#ifdef CSP_STORED_SELECT
    auto stored = csp::async_select(csp::use_task, csp::on_recv(ch, [](std::optional<int>) {}));
    co_await stored;
#else
    co_await csp::async_select(csp::use_task, csp::on_recv(ch, [](std::optional<int>) {}));
#endif
}
