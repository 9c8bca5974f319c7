// csp — the exceptions that report misuse.
//
// Outcomes that a correct program meets every day (a full buffer, a closed
// channel seen by a receiver, a timeout, a cancellation) are values, never
// exceptions. Exceptions are kept for programming errors, as Go keeps panics:
// closing a channel twice, a blocking send on a closed channel, a blocking
// operation on a null channel, a select with no cases, a negative capacity.
#pragma once

#include <stdexcept>
#include <string>

namespace csp {

// Base of every exception csp throws for misuse.
class error : public std::logic_error {
public:
    using std::logic_error::logic_error;
};

// A send on a closed channel (blocking send, or a select's send case), or a
// close of a closed channel. The value that was to be sent is left with the
// caller: csp never destroys a value it did not deliver.
class closed_error : public error {
public:
    using error::error;
};

}  // namespace csp
