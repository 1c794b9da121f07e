// Files written whole or not at all.
//
// AtomicFile writes to a temporary file in the target's own folder, and commit() flushes it,
// checks every write, the flush, fsync and close, then renames it over the target and syncs
// the folder. A crash, a full disk or an exception before commit() leaves the old target as
// it was and removes the temporary file: no reader ever sees a partial file.
#pragma once

#include <cstddef>
#include <cstdio>
#include <string>

namespace theanine::io {

class AtomicFile {
public:
    explicit AtomicFile(std::string path);  // throws UsageError naming the path and the cause
    ~AtomicFile();                          // removes the temporary file unless committed
    AtomicFile(const AtomicFile&) = delete;
    AtomicFile& operator=(const AtomicFile&) = delete;

    // The open temporary file, for writers that take a FILE* (libpng).
    std::FILE* stream() { return f_; }
    // Writes n bytes; throws UsageError (with the byte offset) when they cannot be written.
    void write(const void* data, std::size_t n);
    // Flushes, syncs, closes and renames over the target; throws UsageError on any failure,
    // leaving the target untouched.
    void commit();
    const std::string& path() const { return path_; }

private:
    [[noreturn]] void fail(const std::string& what, int err);
    std::string path_, tmp_;
    std::FILE* f_ = nullptr;
    std::size_t written_ = 0;
    bool committed_ = false;
};

// Creates dir (and its parents) when missing and checks that a file can be created in it;
// throws UsageError naming what (e.g. "--output") and the cause. Programs call it before
// training, so an unwritable destination is found before hours of work.
void check_writable_dir(const std::string& dir, const std::string& what);

}  // namespace theanine::io
