// producer_consumer — the classic queue-and-sentinel program, without the sentinel.
//
// The Python version pushes 0..4 into a queue.Queue and then a `None` so the
// consumer knows to stop. Here the producer holds a closing_sender: when it
// is done (or if it throws), its handle goes away, the channel closes, and
// the consumer's range-for ends after it has received every value sent.
//
//   producer_consumer [count]      (default 5)
#include <channels/channels.hpp>

#include <fmt/core.h>

#include <cstdlib>
#include <thread>

int main(int argc, char** argv) {
    const int count = argc > 1 ? std::atoi(argv[1]) : 5;

    auto items = csp::make_chan<int>();  // unbuffered: each send waits for the consumer
    std::jthread producer([tx = items.as_closing_sender(), count] {
        for (int i = 0; i < count; ++i) {
            tx.send(i);
            fmt::print("produced {}\n", i);
        }
    });  // tx is destroyed when the producer ends: that closes `items`

    int received = 0;
    for (int v : items) {
        fmt::print("consumed {}\n", v);
        ++received;
    }
    fmt::print("done: {} items, channel closed\n", received);
    return received == count ? 0 : 1;
}
