// ThreadSanitizer suppressions for the test programs whose exceptions cross
// threads. Include it in exactly one file of a test program.
#pragma once

#if defined(__SANITIZE_THREAD__)
// libstdc++.so is not built with ThreadSanitizer, so the reference counts of
// an exception_ptr and of the message string inside a std::logic_error /
// std::runtime_error are atomic operations TSan cannot see. An exception
// thrown on one thread (a task, a use_future completion on the system
// executor) and caught on another then shows up as a false race between the
// catcher's read and the other thread's free of the exception object.
// Only those frees, inside libstdc++, are suppressed.
extern "C" const char* __tsan_default_suppressions() {
    return "race:std::__exception_ptr::exception_ptr::_M_release\n"
           "race:std::logic_error::~logic_error\n"
           "race:std::runtime_error::~runtime_error\n"
           "race:std::system_error::~system_error\n";
}
#endif
