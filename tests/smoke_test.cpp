#include <doctest/doctest.h>

#include <channels/channels.hpp>

#include <memory>
#include <thread>

TEST_CASE("smoke") {
    auto ch = csp::make_chan<int>();
    std::jthread p([tx = ch.as_closing_sender()] {
        for (int i = 0; i < 5; ++i) tx.send(i);
    });
    int sum = 0, n = 0;
    for (int v : ch) { sum += v; ++n; }
    CHECK(n == 5);
    CHECK(sum == 10);

    auto b = csp::make_chan<std::unique_ptr<int>>(2);
    b.send(std::make_unique<int>(7));
    int got = 0;
    int which = csp::select(csp::on_recv(b, [&](std::optional<std::unique_ptr<int>> v) { got = **v; }),
                            csp::on_default([] {}));
    CHECK(which == 0);
    CHECK(got == 7);
}
