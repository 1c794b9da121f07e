// Files the programs read and write, with the checks that keep data safe.
//
// InputFile opens only regular files (a directory, a FIFO or a device such as /dev/zero is
// refused before anything is read), knows the file's size before the reader allocates, and
// names the byte offset where a read falls short. AtomicFile writes to a temporary file in the target's own folder, and commit() flushes it,
// checks every write, the flush, fsync and close, then renames it over the target and syncs
// the folder. A crash, a full disk or an exception before commit() leaves the old target as
// it was and removes the temporary file: no reader ever sees a partial file. The temporary
// file's name carries the writer's process id, so the next write of the same target removes
// what a killed writer left.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

namespace theanine::io {

class InputFile {
public:
    // Throws UsageError naming the path when it is missing, unreadable or not a regular file.
    explicit InputFile(std::string path);
    ~InputFile();
    InputFile(const InputFile&) = delete;
    InputFile& operator=(const InputFile&) = delete;

    std::uint64_t size() const { return size_; }
    std::uint64_t offset() const { return offset_; }
    // Reads exactly n bytes; throws UsageError "<path>: <what> needs n bytes at offset k, the
    // file ends after m" when the file is shorter.
    void read(void* data, std::size_t n, const std::string& what);
    const std::string& path() const { return path_; }

private:
    std::string path_;
    int fd_ = -1;
    std::uint64_t size_ = 0, offset_ = 0;
};

// Checks that path names a regular file (following links); throws UsageError saying what it
// is otherwise. Readers that open a file through another library (zlib) call it first.
void check_regular_file(const std::string& path);

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
// The same for the folder a file is to be written into.
void check_writable_file_dir(const std::string& file, const std::string& what);

}  // namespace theanine::io
