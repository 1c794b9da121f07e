/// \file
/// Configuration: floatX and the rewrite selection, as Theano users know them.
///
/// config() is the process-wide default. It starts as floatX=float64, all rewrites on, and is
/// overlaid once, on first use, by the THEANINE_FLAGS environment variable, a comma list of
/// key=value pairs:
///
///   floatX=float32|float64            dtype of matrix(), vector(), shared floats, ...
///   optimizer=fast_run|None           None compiles with no rewrites at all
///   optimizer_excluding=a:b           rewrite names or tags to leave out (':' separated)
///   optimizer_including=a:b           rewrite names or tags to add back
///   optimizer_verbose=True            print "rewrite X replaced A by B" while compiling
///   profile=True                      time every step of compiled functions
///                                     (Function::profile_summary())
///   nan_guard=True                    check every step's outputs for NaN and inf
///                                     (Theano's NanGuardMode; CompileOptions::nan_guard)
///   blas_kernel=measure|eigen|openblas|blocked
///                                     how matrix products pick their kernel: timed per
///                                     shape (the default), or one forced (ops/products.hpp)
///   kernel_cache=PATH|off             file of the kernels chosen by measurement, shared by
///                                     the processes of this machine (default
///                                     $XDG_CACHE_HOME/theanine/products.txt, else
///                                     $HOME/.cache/theanine/products.txt)
///
/// This is the only place environment variables are read. function() takes a
/// CompileOptions (compile/function.hpp) that starts from config() and can be changed in code.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "graph/tensor.hpp"

namespace theanine {

struct Config {
    DType floatX = DType::float64;
    bool optimizer_none = false;
    std::vector<std::string> optimizer_excluding;
    std::vector<std::string> optimizer_including;
    bool optimizer_verbose = false;
    bool profile = false;
    bool nan_guard = false;
    std::string blas_kernel = "measure";
    std::string kernel_cache;  ///< empty: none
};

/// The process-wide configuration (THEANINE_FLAGS applied on first call).
Config& config();

/// Applies a THEANINE_FLAGS-style string to cfg; throws UsageError naming a bad key or value.
void apply_flags(std::string_view flags, Config& cfg);

}  // namespace theanine
