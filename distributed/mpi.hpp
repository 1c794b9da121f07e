/// \file
/// MPI for theanine: the process environment and a communicator. Built when CMake finds MPI
/// (the theanine_distributed library); the engine itself never needs it.
///
/// Every collective a Communicator makes runs on its own duplicate of the MPI communicator it
/// was made from, so theanine's messages never mix with the user's, and with MPI errors
/// returned (not fatal): a failed call throws DistributedError naming the call and the rank.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <mpi.h>

#include "graph/error.hpp"
#include "graph/tensor.hpp"

namespace theanine::distributed {

/// An MPI call that failed, or processes that disagree (shapes, parameters).
class DistributedError : public Error {
public:
    using Error::Error;
};

/// Starts MPI for the life of the object (MPI_Init_thread, serialized threads: theanine makes
/// its MPI calls on the thread that calls a function). One per process, made first in main.
/// Ends MPI on destruction; when destroyed during an exception, or when abort() is called, the
/// whole job ends (MPI_Abort), so one failing process never leaves the others waiting.
class Environment {
public:
    Environment(int* argc, char*** argv);
    ~Environment();
    Environment(const Environment&) = delete;
    Environment& operator=(const Environment&) = delete;

    /// Prints "<program>: rank R of N: <message>" on stderr and ends every process of the job
    /// with status 1.
    [[noreturn]] static void abort(const std::string& program, const std::string& message);

private:
    int uncaught_ = 0;
};

/// Whether MPI has been started (an Environment exists) and not yet ended.
bool initialized();

enum class Reduce { sum, max, min };

/// A group of processes (MPI communicator): cheap to copy, all copies name the same one.
class Communicator {
public:
    /// All the processes of the job (a duplicate of MPI_COMM_WORLD).
    static Communicator world();
    /// A duplicate of an MPI communicator of the user's.
    static Communicator from(MPI_Comm comm);

    int rank() const;
    int size() const;
    MPI_Comm handle() const;

    void barrier() const;
    /// Replaces t's values with root's (same dtype and shape on every rank, checked first).
    void broadcast(Tensor& t, int root = 0) const;
    /// Reduces t over the ranks in place (same dtype and shape everywhere, not checked).
    void allreduce(Tensor& t, Reduce op) const;
    double allreduce(double x, Reduce op) const;
    /// Root's string on every rank.
    std::string broadcast(const std::string& s, int root = 0) const;

    /// The next number in this communicator's order of collectives (AllReduce ops take one when
    /// built, so every process schedules them in the same order).
    std::int64_t next_sequence() const;

    /// Seconds the AllReduce ops of this communicator spent starting their messages and
    /// waiting for them (the part of the exchange the steps between did not hide).
    double allreduce_seconds() const;
    void add_allreduce_seconds(double s) const;

    /// The same communicator (the same duplicate).
    bool same(const Communicator& other) const { return impl_ == other.impl_; }
    const void* id() const { return impl_.get(); }

    struct Impl;

private:
    explicit Communicator(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
    std::shared_ptr<Impl> impl_;
};

/// The MPI datatype of a dtype; throws UsageError naming `what` for one MPI cannot reduce.
MPI_Datatype mpi_type(DType dt, const std::string& what);
/// Throws DistributedError "<call> failed on rank R of N: <MPI's error string>" unless ok.
void check_mpi(int code, const char* call, MPI_Comm comm);

}  // namespace theanine::distributed
