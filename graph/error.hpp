/// \file
/// Exceptions thrown by theanine. Every error derives from theanine::Error.
///
/// UsageError  - the caller did something wrong (bad types, shapes, arguments, files);
///               the message names the op or function, the offending input and, where
///               known, the line of user code that built the node.
/// InternalError - a broken invariant inside theanine (a bug in the library).
#pragma once

#include <source_location>
#include <stdexcept>
#include <string>

namespace theanine {

class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

class UsageError : public Error {
public:
    using Error::Error;
};

class InternalError : public Error {
public:
    using Error::Error;
};

#if defined(__cpp_lib_source_location)  // (clang 14 with libstdc++, which builds the fuzz targets, lacks it)
/// "file.cpp:42" for a source location; empty when the location is unknown.
std::string where_string(const std::source_location& loc);
/// Rethrows a kernel's error with "(node built at file.cpp:42)" appended: ops whose runtime
/// checks involve shapes the user declared or chose use it so the message names the line.
[[noreturn]] void rethrow_at(const UsageError& e, const std::source_location& loc);
#endif

/// Throws InternalError with the message when cond is false. The message is only built into
/// an error when the check fails (the literal form allocates nothing on the hot paths).
[[noreturn]] void internal_failure(const char* message);
inline void internal_check(bool cond, const char* message) {
    if (!cond) internal_failure(message);
}
void internal_check(bool cond, const std::string& message);

}  // namespace theanine
