// libFuzzer targets for the file readers: each input is written to a file and read back
// with read_idx (plain or gzip) or load_npy. A reader may refuse an input with
// theanine::Error; anything else (a crash, a hang, another exception, a sanitizer report,
// an allocation beyond the input's size) is a finding. One source, three targets, chosen
// by THEANINE_FUZZ_TARGET at compile time.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "examples/io/mnist.hpp"
#include "examples/io/npy.hpp"
#include "graph/error.hpp"

namespace {

const char* suffix() {
#if THEANINE_FUZZ_TARGET == 1
    return ".idx";
#elif THEANINE_FUZZ_TARGET == 2
    return ".idx.gz";
#else
    return ".npy";
#endif
}

std::string temp_path() {
    const char* dir = std::getenv("TMPDIR");
    return std::string(dir ? dir : "/tmp") + "/theanine_fuzz_" + std::to_string(::getpid()) + suffix();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const std::string path = temp_path();
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) return 0;
    std::fwrite(data, 1, size, f);
    std::fclose(f);
    try {
#if THEANINE_FUZZ_TARGET == 3
        theanine::io::load_npy(path);
#else
        theanine::io::read_idx(path);
#endif
    } catch (const theanine::Error&) {
    }
    return 0;
}
