#include "distributed/mpi.hpp"

#include <climits>
#include <cstdio>
#include <exception>
#include <vector>

#include <fmt/format.h>

namespace theanine::distributed {

struct Communicator::Impl {
    MPI_Comm comm = MPI_COMM_NULL;
    int rank = 0, size = 1;
    std::int64_t sequence = 0;
    double allreduce_seconds = 0;
    ~Impl() {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (!finalized && comm != MPI_COMM_NULL) MPI_Comm_free(&comm);
    }
};

namespace {

std::shared_ptr<Communicator::Impl> g_world;
bool g_started = false;

std::string rank_label(MPI_Comm comm) {
    int rank = 0, size = 1, init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (!init || fin) return "a process without MPI";
    if (comm == MPI_COMM_NULL) comm = MPI_COMM_WORLD;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    return fmt::format("rank {} of {}", rank, size);
}

void require_mpi(const char* what) {
    if (!initialized()) {
        throw UsageError(fmt::format("{}: MPI is not running; make a distributed::Environment first in main", what));
    }
}

}  // namespace

void check_mpi(int code, const char* call, MPI_Comm comm) {
    if (code == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) len = 0;
    throw DistributedError(fmt::format("{} failed on {}: {}", call, rank_label(comm),
                                       len ? std::string(text, static_cast<std::size_t>(len)) : "unknown MPI error"));
}

Environment::Environment(int* argc, char*** argv) : uncaught_(std::uncaught_exceptions()) {
    int init = 0;
    MPI_Initialized(&init);
    if (init) throw UsageError("distributed::Environment: MPI is already running (one Environment per process)");
    int provided = 0;
    check_mpi(MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread", MPI_COMM_NULL);
    if (provided < MPI_THREAD_SERIALIZED) {
        // theanine calls MPI from whichever thread calls a function, one call at a time.
        abort("theanine", fmt::format("MPI gives thread level {}, theanine needs MPI_THREAD_SERIALIZED", provided));
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    g_started = true;
}

Environment::~Environment() {
    if (std::uncaught_exceptions() > uncaught_) {
        abort("theanine", "an exception left main while MPI was running");
    }
    g_world.reset();
    g_started = false;
    MPI_Finalize();
}

void Environment::abort(const std::string& program, const std::string& message) {
    std::fprintf(stderr, "%s: %s: %s\n", program.c_str(), rank_label(MPI_COMM_WORLD).c_str(), message.c_str());
    std::fflush(stderr);
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (init && !fin) MPI_Abort(MPI_COMM_WORLD, 1);
    std::_Exit(1);
}

bool initialized() {
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    return g_started && init && !fin;
}

Communicator Communicator::from(MPI_Comm comm) {
    require_mpi("Communicator");
    auto impl = std::make_shared<Impl>();
    check_mpi(MPI_Comm_dup(comm, &impl->comm), "MPI_Comm_dup", comm);
    MPI_Comm_set_errhandler(impl->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(impl->comm, &impl->rank);
    MPI_Comm_size(impl->comm, &impl->size);
    return Communicator(std::move(impl));
}

Communicator Communicator::world() {
    if (!g_world) g_world = from(MPI_COMM_WORLD).impl_;
    return Communicator(g_world);
}

int Communicator::rank() const { return impl_->rank; }
int Communicator::size() const { return impl_->size; }
MPI_Comm Communicator::handle() const { return impl_->comm; }
std::int64_t Communicator::next_sequence() const { return impl_->sequence++; }
double Communicator::allreduce_seconds() const { return impl_->allreduce_seconds; }
void Communicator::add_allreduce_seconds(double s) const { impl_->allreduce_seconds += s; }

void Communicator::barrier() const {
    require_mpi("barrier");
    check_mpi(MPI_Barrier(impl_->comm), "MPI_Barrier", impl_->comm);
}

MPI_Datatype mpi_type(DType dt, const std::string& what) {
    switch (dt) {
        case DType::float32: return MPI_FLOAT;
        case DType::float64: return MPI_DOUBLE;
        case DType::int64: return MPI_INT64_T;
        case DType::int32: return MPI_INT32_T;
        case DType::uint8: return MPI_UINT8_T;
        case DType::int8: return MPI_INT8_T;
        case DType::int16: return MPI_INT16_T;
        case DType::uint16: return MPI_UINT16_T;
        case DType::uint32: return MPI_UINT32_T;
        case DType::boolean: break;
    }
    throw UsageError(fmt::format("{}: MPI reductions take float and integer tensors, got {}", what, dtype_name(dt)));
}

namespace {
int count_of(const Tensor& t, const char* what) {
    if (t.size() > INT_MAX) {
        throw UsageError(fmt::format("{}: {} elements are more than one MPI message holds ({})", what, t.size(), INT_MAX));
    }
    return static_cast<int>(t.size());
}
MPI_Op mpi_op(Reduce op) { return op == Reduce::sum ? MPI_SUM : op == Reduce::max ? MPI_MAX : MPI_MIN; }
}  // namespace

std::string Communicator::broadcast(const std::string& s, int root) const {
    require_mpi("broadcast");
    long long n = static_cast<long long>(s.size());
    check_mpi(MPI_Bcast(&n, 1, MPI_LONG_LONG, root, impl_->comm), "MPI_Bcast", impl_->comm);
    std::string out = rank() == root ? s : std::string(static_cast<std::size_t>(n), '\0');
    if (n > INT_MAX) throw UsageError("broadcast: the string is longer than one MPI message holds");
    check_mpi(MPI_Bcast(out.data(), static_cast<int>(n), MPI_CHAR, root, impl_->comm), "MPI_Bcast", impl_->comm);
    return out;
}

void Communicator::broadcast(Tensor& t, int root) const {
    require_mpi("broadcast");
    // Every rank checks its tensor against root's description before any data moves.
    std::string mine = fmt::format("{} {}", dtype_name(t.dtype()), shape_string(t.shape()));
    std::string roots = broadcast(mine, root);
    const double ok = allreduce(mine == roots ? 1.0 : 0.0, Reduce::min);
    if (ok == 0.0) {
        throw DistributedError(fmt::format("broadcast: the tensors differ between ranks (rank {} has {}, root {} has {})",
                                           rank(), mine, root, roots));
    }
    Tensor c = t.contiguous();
    check_mpi(MPI_Bcast(c.raw_data(), count_of(c, "broadcast"), mpi_type(c.dtype(), "broadcast"), root, impl_->comm),
              "MPI_Bcast", impl_->comm);
    if (c.raw_data() != t.raw_data()) t.copy_from(c);
}

void Communicator::allreduce(Tensor& t, Reduce op) const {
    require_mpi("allreduce");
    Tensor c = t.contiguous();
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, c.raw_data(), count_of(c, "allreduce"), mpi_type(c.dtype(), "allreduce"),
                            mpi_op(op), impl_->comm),
              "MPI_Allreduce", impl_->comm);
    if (c.raw_data() != t.raw_data()) t.copy_from(c);
}

double Communicator::allreduce(double x, Reduce op) const {
    require_mpi("allreduce");
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, &x, 1, MPI_DOUBLE, mpi_op(op), impl_->comm), "MPI_Allreduce", impl_->comm);
    return x;
}

}  // namespace theanine::distributed
