#include "examples/io/files.hpp"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <system_error>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "graph/error.hpp"

namespace theanine::io {

namespace {

std::string folder_of(const std::string& path) {
    std::string dir = std::filesystem::path(path).parent_path().string();
    return dir.empty() ? "." : dir;
}

// Makes the rename itself durable.
void sync_folder(const std::string& dir) {
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
    if (fd < 0) return;
    ::fsync(fd);
    ::close(fd);
}

const char* kind_of(mode_t m) {
    if (S_ISDIR(m)) return "a directory";
    if (S_ISFIFO(m)) return "a FIFO";
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    if (S_ISSOCK(m)) return "a socket";
    return "not a regular file";
}

// Temporary files of this target left by writers that died (kill -9, power loss): the
// name carries the writer's process id; a process that no longer exists left it.
void remove_stale_temporaries(const std::string& dir, const std::string& name) {
    const std::string prefix = "." + name + ".tmp.";
    std::error_code ec;
    std::filesystem::directory_iterator it(dir, ec), end;
    for (; !ec && it != end; it.increment(ec)) {
        const std::string f = it->path().filename().string();
        if (f.rfind(prefix, 0) != 0) continue;
        const long pid = std::strtol(f.c_str() + prefix.size(), nullptr, 10);
        if (pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) {
            std::error_code ignored;
            std::filesystem::remove(it->path(), ignored);
        }
    }
}

}  // namespace

void check_regular_file(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
        const int err = errno;
        throw UsageError(fmt::format("cannot open {}: {}", path, std::strerror(err)));
    }
    if (!S_ISREG(st.st_mode)) throw UsageError(fmt::format("cannot read {}: it is {}", path, kind_of(st.st_mode)));
}

InputFile::InputFile(std::string path) : path_(std::move(path)) {
    check_regular_file(path_);
    // O_NONBLOCK: should the path have become a FIFO since the check, open does not hang.
    fd_ = ::open(path_.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd_ < 0) {
        const int err = errno;
        throw UsageError(fmt::format("cannot open {}: {}", path_, std::strerror(err)));
    }
    struct stat st {};
    if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd_);
        throw UsageError(fmt::format("cannot read {}: it is {}", path_, kind_of(st.st_mode)));
    }
    size_ = static_cast<std::uint64_t>(st.st_size);
}

InputFile::~InputFile() {
    if (fd_ >= 0) ::close(fd_);
}

void InputFile::read(void* data, std::size_t n, const std::string& what) {
    auto* p = static_cast<char*>(data);
    std::size_t done = 0;
    while (done < n) {
        const ssize_t r = ::read(fd_, p + done, n - done);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            const int err = errno;
            throw UsageError(fmt::format("{}: read error at byte offset {}: {}", path_, offset_ + done,
                                         std::strerror(err)));
        }
        if (r == 0) {
            throw UsageError(fmt::format("{}: {} needs {} bytes at byte offset {}, the file ends after {}", path_, what,
                                         n, offset_, offset_ + done));
        }
        done += static_cast<std::size_t>(r);
    }
    offset_ += n;
}

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
    std::error_code ec;
    if (std::filesystem::is_directory(path_, ec)) {
        throw UsageError(fmt::format("cannot write {}: it is a directory", path_));
    }
    const std::string name = std::filesystem::path(path_).filename().string();
    remove_stale_temporaries(folder_of(path_), name);
    std::string pattern = folder_of(path_) + "/." + name + ".tmp." + std::to_string(::getpid()) + ".XXXXXX";
    int fd = ::mkstemp(pattern.data());
    if (fd < 0) {
        const int err = errno;
        throw UsageError(fmt::format("cannot write {}: cannot create a file in {}: {}", path_, folder_of(path_),
                                     std::strerror(err)));
    }
    ::fchmod(fd, 0644);
    tmp_ = pattern;
    f_ = ::fdopen(fd, "wb");
    if (!f_) {
        const int err = errno;
        ::close(fd);
        ::unlink(tmp_.c_str());
        throw UsageError(fmt::format("cannot write {}: {}", path_, std::strerror(err)));
    }
}

AtomicFile::~AtomicFile() {
    if (committed_) return;
    if (f_) std::fclose(f_);
    ::unlink(tmp_.c_str());
}

void AtomicFile::fail(const std::string& what, int err) {
    if (f_) std::fclose(f_);
    f_ = nullptr;
    ::unlink(tmp_.c_str());
    committed_ = true;  // nothing left to clean up
    throw UsageError(fmt::format("cannot write {}: {} at byte offset {}: {}", path_, what, written_,
                                 err ? std::strerror(err) : "unknown error"));
}

void AtomicFile::write(const void* data, std::size_t n) {
    if (!f_) throw UsageError(fmt::format("cannot write {}: the file is already closed", path_));
    if (n == 0) return;
    if (std::fwrite(data, 1, n, f_) != n) fail("write failed", errno);
    written_ += n;
}

void AtomicFile::commit() {
    if (!f_) throw UsageError(fmt::format("cannot write {}: the file is already closed", path_));
    if (std::fflush(f_) != 0 || std::ferror(f_)) fail("flush failed", errno);
    if (::fsync(::fileno(f_)) != 0) fail("fsync failed", errno);
    std::FILE* f = f_;
    f_ = nullptr;
    if (std::fclose(f) != 0) fail("close failed", errno);
    if (std::rename(tmp_.c_str(), path_.c_str()) != 0) fail("rename over the target failed", errno);
    committed_ = true;
    sync_folder(folder_of(path_));
}

void check_writable_dir(const std::string& dir, const std::string& what) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) throw UsageError(fmt::format("{} {}: cannot create the folder: {}", what, dir, ec.message()));
    if (!std::filesystem::is_directory(dir, ec)) {
        throw UsageError(fmt::format("{} {}: not a folder", what, dir));
    }
    // The probe is a file without a name (O_TMPFILE), so a process killed while it checks
    // leaves nothing in the folder. Where the file system has no such files, a named one
    // carrying this process's id, unlinked at once; a killed process's is removed by the
    // next check.
    int fd = ::open(dir.c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
        const std::string name = "theanine-write-check";
        remove_stale_temporaries(dir, name);
        std::string probe = dir + "/." + name + ".tmp." + std::to_string(::getpid()) + ".XXXXXX";
        fd = ::mkstemp(probe.data());
        if (fd >= 0) ::unlink(probe.c_str());
    }
    if (fd < 0) {
        const int err = errno;
        throw UsageError(fmt::format("{} {}: cannot create files there: {}", what, dir, std::strerror(err)));
    }
    // A byte written and synced: a full disk shows here rather than after training.
    const char byte = 0;
    const bool ok = ::write(fd, &byte, 1) == 1 && ::fsync(fd) == 0;
    const int err = errno;
    ::close(fd);
    if (!ok) throw UsageError(fmt::format("{} {}: cannot write there: {}", what, dir, std::strerror(err)));
}

void check_writable_file_dir(const std::string& file, const std::string& what) {
    const std::string parent = std::filesystem::path(file).parent_path().string();
    check_writable_dir(parent.empty() ? "." : parent, what);
}

}  // namespace theanine::io
