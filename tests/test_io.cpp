// MNIST IDX reading (plain and gzip), errors for bad files, npy and PNG round trips,
// tile_raster_images.
#include <doctest/doctest.h>

#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>

#include <filesystem>
#include <functional>
#include <fstream>

#include <zlib.h>

#include "examples/io/files.hpp"
#include "examples/io/metrics.hpp"
#include "examples/io/mnist.hpp"
#include "examples/io/npy.hpp"
#include "examples/io/png.hpp"
#include "examples/io/tile.hpp"
#include "support/fixtures.hpp"
#include "support/helpers.hpp"

using namespace theanine;
using namespace theanine::testing;
namespace fs = std::filesystem;

namespace {
fs::path temp_dir() {
    fs::path p = fs::temp_directory_path() / ("theanine_io_" + std::to_string(::getpid()));
    fs::create_directories(p);
    return p;
}

// The files the tests write there are removed when the process exits.
struct RemoveTempDir {
    ~RemoveTempDir() {
        std::error_code ec;
        fs::remove_all(fs::temp_directory_path() / ("theanine_io_" + std::to_string(::getpid())), ec);
    }
} remove_temp_dir;

std::vector<unsigned char> idx_bytes(const std::vector<std::uint32_t>& dims, const std::vector<unsigned char>& data) {
    std::vector<unsigned char> b = {0, 0, 8, static_cast<unsigned char>(dims.size())};
    for (auto d : dims) {
        for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<unsigned char>(d >> s));
    }
    b.insert(b.end(), data.begin(), data.end());
    return b;
}

void write_file(const fs::path& p, const std::vector<unsigned char>& b) {
    std::ofstream f(p, std::ios::binary);
    f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

void write_gz(const fs::path& p, const std::vector<unsigned char>& b) {
    gzFile g = gzopen(p.c_str(), "wb");
    gzwrite(g, b.data(), static_cast<unsigned>(b.size()));
    gzclose(g);
}

}  // namespace

TEST_CASE("IDX files read plain and gzip-compressed") {
    fs::path dir = temp_dir();
    std::vector<unsigned char> pix = {0, 255, 128, 1, 2, 3, 4, 5};
    write_file(dir / "a.idx", idx_bytes({2, 2, 2}, pix));
    write_gz(dir / "a.idx.gz", idx_bytes({2, 2, 2}, pix));
    for (auto name : {"a.idx", "a.idx.gz"}) {
        Tensor t = io::read_idx((dir / name).string());
        CHECK(t.shape() == Shape{2, 2, 2});
        CHECK(t.to_doubles() == std::vector<double>{0, 255, 128, 1, 2, 3, 4, 5});
    }
    // Pixels as the tutorial stores them: float32(byte / 255).
    Tensor px = io::mnist_pixels(io::read_idx((dir / "a.idx").string()), 1, 2, DType::float64);
    CHECK(px.shape() == Shape{1, 4});
    CHECK(px.at({0, 3}) == static_cast<double>(static_cast<float>(5 / 255.0)));
}

TEST_CASE("bad IDX files give errors with the file, the offset and what was expected") {
    fs::path dir = temp_dir();
    write_file(dir / "short", {0, 0});
    CHECK(error_of([&] { io::read_idx((dir / "short").string()); }).find("file is 2 bytes, too short for the 4-byte IDX magic number at offset 0") !=
          std::string::npos);
    write_file(dir / "magic", {1, 2, 3, 4, 0, 0, 0, 1, 9});
    CHECK(error_of([&] { io::read_idx((dir / "magic").string()); }).find("bad IDX magic number at offset 0: bytes 01 02 03 04") !=
          std::string::npos);
    auto trunc = idx_bytes({3, 2}, {1, 2, 3, 4});
    write_file(dir / "trunc", trunc);
    std::string e = error_of([&] { io::read_idx((dir / "trunc").string()); });
    CHECK(e.find("the header (dimensions (3, 2)) promises 6 data bytes from offset 12, but the file has 4 (truncated)") != std::string::npos);
    CHECK(e.find("scripts/fetch-mnist.sh") != std::string::npos);
    // A gzip file cut in half.
    std::vector<unsigned char> big(4000);
    for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<unsigned char>(i * 7919 % 251);
    write_gz(dir / "full.gz", idx_bytes({4000}, big));
    std::ifstream in(dir / "full.gz", std::ios::binary);
    std::vector<unsigned char> gz((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    gz.resize(gz.size() / 2);
    write_file(dir / "cut.gz", gz);
    std::string cut = error_of([&] { io::read_idx((dir / "cut.gz").string()); });
    CAPTURE(cut);
    CHECK(cut.find("corrupt gzip data after") != std::string::npos);
    CHECK(error_of([&] { io::load_mnist((dir / "nowhere").string()); }).find("does not exist; fetch the data with scripts/fetch-mnist.sh") !=
          std::string::npos);
    fs::create_directories(dir / "empty");
    CHECK(error_of([&] { io::load_mnist((dir / "empty").string()); }).find("train-images-idx3-ubyte.gz) not found") != std::string::npos);
    fs::create_directories(dir / "wrongdims");
    write_file(dir / "wrongdims" / "train-images-idx3-ubyte", idx_bytes({1, 2, 2}, {1, 2, 3, 4}));
    CHECK(error_of([&] { io::load_mnist((dir / "wrongdims").string()); }).find("do not look like MNIST (expected (n, (28, 28)))") !=
          std::string::npos);
}

TEST_CASE(".npy files round-trip and carry numpy's header") {
    fs::path dir = temp_dir();
    Tensor t = T64({2, 3}, {1, 2, 3, 4, 5, 6.5});
    io::save_npy((dir / "t.npy").string(), t);
    CHECK(bit_equal(io::load_npy((dir / "t.npy").string()), t));
    std::ifstream f(dir / "t.npy", std::ios::binary);
    std::string head(128, '\0');
    f.read(head.data(), 128);
    CHECK(head.substr(1, 5) == "NUMPY");
    CHECK(head.find("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }") != std::string::npos);
    CHECK((fs::file_size(dir / "t.npy") - 6 * 8) % 64 == 0);
    Tensor v = Tensor::from_vector<float>({3}, {1.5f, -2, 3});
    io::save_npy((dir / "v.npy").string(), v.transpose());
    CHECK(io::load_npy((dir / "v.npy").string()).dtype() == DType::float32);
    CHECK(io::load_npy((dir / "v.npy").string()).to_doubles() == std::vector<double>{1.5, -2, 3});
}

TEST_CASE("PNG files round-trip 8-bit grayscale pixels") {
    fs::path dir = temp_dir();
    Tensor img = Tensor::from_vector<std::uint8_t>({2, 3}, {0, 10, 255, 128, 7, 1});
    io::write_png_gray((dir / "i.png").string(), img);
    Tensor back = io::read_png_gray((dir / "i.png").string());
    CHECK(back.shape() == Shape{2, 3});
    CHECK(back.to_doubles() == img.to_doubles());
    CHECK(error_of([&] { io::read_png_gray((dir / "t.npy").string()); }).find("is not a readable PNG") != std::string::npos);
}

TEST_CASE("tile_raster_images lays out scaled tiles with spacing") {
    // Two 2x2 images in a 1x3 grid with spacing 1: width 3*3-1 = 8, height 2.
    Tensor X = T64({2, 4}, {0, 1, 2, 4, 5, 5, 5, 7});
    Tensor out = io::tile_raster_images(X, {2, 2}, {1, 3}, {1, 1});
    CHECK(out.shape() == Shape{2, 8});
    // Image 0 scaled: (v - 0) / (4 + 1e-8) * 255, truncated.
    CHECK(out.at({0, 0}) == 0);
    CHECK(out.at({0, 1}) == static_cast<int>(1 / (4 + 1e-8) * 255));
    CHECK(out.at({1, 0}) == static_cast<int>(2 / (4 + 1e-8) * 255));
    CHECK(out.at({1, 1}) == 254);  // 4 / (4 + 1e-8) * 255 = 254.99999..., truncated
    CHECK(out.at({0, 2}) == 0);    // spacing
    CHECK(out.at({1, 4}) == 254);  // image 1: (7-5)/(2+1e-8)*255
    CHECK(out.at({0, 6}) == 0);    // the third tile is empty
    // The dA's layout: 100 tiles of 28x28 with spacing 1 make 289x289.
    CHECK(io::tile_raster_images(Tensor::zeros(DType::float64, {500, 784}), {28, 28}, {10, 10}, {1, 1}).shape() ==
          Shape{289, 289});
}

namespace {
// Files in dir whose name starts with prefix (temporary files left behind would show here).
int files_starting_with(const fs::path& dir, const std::string& prefix) {
    int n = 0;
    for (const auto& e : fs::directory_iterator(dir)) n += e.path().filename().string().rfind(prefix, 0) == 0;
    return n;
}

// Runs f with the process's file size limit set to bytes (a disk that fills up after that
// many bytes of one file): writes past it fail with EFBIG instead of raising SIGXFSZ.
void with_file_size_limit(rlim_t bytes, const std::function<void()>& f) {
    struct rlimit old {};
    REQUIRE(getrlimit(RLIMIT_FSIZE, &old) == 0);
    auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = old;
    lim.rlim_cur = bytes;
    REQUIRE(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    try {
        f();
    } catch (...) {
        setrlimit(RLIMIT_FSIZE, &old);
        std::signal(SIGXFSZ, old_handler);
        throw;
    }
    setrlimit(RLIMIT_FSIZE, &old);
    std::signal(SIGXFSZ, old_handler);
}
}  // namespace

TEST_CASE("files are written whole or not at all: a full disk never destroys a good file") {
    fs::path dir = temp_dir() / "atomic";
    fs::create_directories(dir);
    const std::string npy = (dir / "W.npy").string();
    const std::string png = (dir / "filters.png").string();
    Tensor good = random_tensor({50, 40}, 7);
    io::save_npy(npy, good);
    Tensor image = Tensor::zeros(DType::uint8, {200, 300});
    io::write_png_gray(png, image);
    const auto npy_size = fs::file_size(npy), png_size = fs::file_size(png);
    CHECK(files_starting_with(dir, ".") == 0);

    // A later, larger write that does not fit: an error naming the file, the old file intact.
    Tensor big = random_tensor({400, 400}, 8);
    with_file_size_limit(4096, [&] {
        CHECK_THROWS_WITH_AS(io::save_npy(npy, big), doctest::Contains(("cannot write " + npy).c_str()), UsageError);
    });
    CHECK(fs::file_size(npy) == npy_size);
    CHECK(io::load_npy(npy).to_doubles() == good.to_doubles());
    CHECK(files_starting_with(dir, ".") == 0);

    Tensor noisy = Tensor::empty(DType::uint8, {400, 400});
    for (std::int64_t i = 0; i < noisy.size(); ++i) noisy.data<std::uint8_t>()[i] = static_cast<std::uint8_t>(i * 7919 % 251);
    with_file_size_limit(2048, [&] {
        CHECK_THROWS_WITH_AS(io::write_png_gray(png, noisy), doctest::Contains(png.c_str()), UsageError);
    });
    CHECK(fs::file_size(png) == png_size);
    CHECK(io::read_png_gray(png).shape() == Shape{200, 300});
    CHECK(files_starting_with(dir, ".") == 0);

    // A small write whose failure shows only at the final flush is still reported.
    with_file_size_limit(100, [&] {
        CHECK_THROWS_WITH_AS(io::save_npy(npy, random_tensor({3, 3}, 9)), doctest::Contains("cannot write"), UsageError);
    });
    CHECK(io::load_npy(npy).to_doubles() == good.to_doubles());

    // A successful write replaces the file.
    io::save_npy(npy, big);
    CHECK(io::load_npy(npy).to_doubles() == big.to_doubles());
    CHECK(files_starting_with(dir, ".") == 0);
    fs::remove_all(dir);
}

TEST_CASE("an unwritable output folder is found before any work") {
    fs::path dir = temp_dir() / "writable";
    io::check_writable_dir(dir.string(), "--output");  // creates it
    CHECK(fs::is_directory(dir));
    CHECK(files_starting_with(dir, ".") == 0);
    fs::path file = dir / "plain_file";
    std::ofstream(file) << "x";
    CHECK_THROWS_WITH_AS(io::check_writable_dir(file.string(), "--output"),
                         doctest::Contains(("--output " + file.string() + ": cannot create the folder").c_str()), UsageError);
    CHECK_THROWS_WITH_AS(io::check_writable_dir((file / "sub").string(), "--save-params"),
                         doctest::Contains(("--save-params " + (file / "sub").string()).c_str()), UsageError);
    CHECK_THROWS_WITH_AS(io::save_npy(dir.string(), Tensor::zeros(DType::float64, {2})),
                         ("cannot write " + dir.string() + ": it is a directory").c_str(), UsageError);
    if (::geteuid() != 0) {  // root may write anywhere
        fs::permissions(dir, fs::perms::owner_read | fs::perms::owner_exec);
        CHECK_THROWS_WITH_AS(io::check_writable_dir(dir.string(), "--output"),
                             doctest::Contains("cannot create files there"), UsageError);
        fs::permissions(dir, fs::perms::owner_all);
    }
    fs::remove_all(dir);
}

namespace {
void write_text(const fs::path& p, const std::string& s) {
    std::ofstream f(p, std::ios::binary);
    f << s;
}

// A .npy file with the given header dictionary (padded as numpy pads it) and data bytes.
void write_npy(const fs::path& p, std::string dict, std::size_t data_bytes) {
    std::string s = "\x93NUMPY";
    s += '\x01';
    s += '\x00';
    const std::size_t total = 10 + dict.size() + 1;
    dict.append((64 - total % 64) % 64, ' ');
    dict += '\n';
    s += static_cast<char>(dict.size() & 0xff);
    s += static_cast<char>(dict.size() >> 8);
    s += dict;
    s.append(data_bytes, '\0');
    write_text(p, s);
}
}  // namespace

TEST_CASE("readers check headers against the file before allocating, and refuse special files") {
    fs::path dir = temp_dir() / "hostile";
    fs::create_directories(dir);
    // IDX dimensions whose product passes 2^63, and a header promising far more than the file.
    write_file(dir / "huge", idx_bytes({0xffffffff, 0xffffffff, 0xffffffff}, {}));
    CHECK(error_of([&] { io::read_idx((dir / "huge").string()); }).find("has more than 2^63 - 1 elements") != std::string::npos);
    write_file(dir / "big", idx_bytes({0x10000, 0x10000, 0x100}, {1, 2, 3}));
    CHECK(error_of([&] { io::read_idx((dir / "big").string()); })
              .find("promises 1099511627776 data bytes from offset 16, but the file has 3 (truncated)") != std::string::npos);
    write_gz(dir / "big.gz", idx_bytes({0x10000, 0x10000, 0x100}, {1, 2, 3}));
    CHECK(error_of([&] { io::read_idx((dir / "big.gz").string()); }).find("more than a file of this size can hold") !=
          std::string::npos);
    write_gz(dir / "trail.gz", idx_bytes({3}, {1, 2, 3, 4}));
    CHECK(error_of([&] { io::read_idx((dir / "trail.gz").string()); }).find("(trailing bytes)") != std::string::npos);
    write_gz(dir / "short.gz", idx_bytes({5}, {1, 2, 3}));
    CHECK(error_of([&] { io::read_idx((dir / "short.gz").string()); }).find("but the file has 3 (truncated)") !=
          std::string::npos);

    // .npy: a huge shape with no data, a malformed shape, bad header syntax.
    write_npy(dir / "huge.npy", "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000, 1000000000), }", 0);
    CHECK(error_of([&] { io::load_npy((dir / "huge.npy").string()); })
              .find("0 data bytes at offset 128, shape (1000000000, 1000000000) needs 8000000000000000000") != std::string::npos);
    write_npy(dir / "over.npy", "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", 0);
    CHECK(error_of([&] { io::load_npy((dir / "over.npy").string()); }).find("has more than 2^63 - 1 elements") != std::string::npos);
    write_npy(dir / "float.npy", "{'descr': '<f8', 'fortran_order': False, 'shape': (3.5, 4), }", 8 * 12);
    CHECK(error_of([&] { io::load_npy((dir / "float.npy").string()); })
              .find("malformed header at byte offset 62: expected ',' or ')' in the shape") != std::string::npos);
    write_npy(dir / "neg.npy", "{'descr': '<f8', 'fortran_order': False, 'shape': (-3,), }", 0);
    CHECK(error_of([&] { io::load_npy((dir / "neg.npy").string()); }).find("a shape entry must be a non-negative integer") !=
          std::string::npos);
    write_npy(dir / "word.npy", "{'descr': '<f8', 'fortran_order': False, 'shape': (abc,), }", 0);
    CHECK(error_of([&] { io::load_npy((dir / "word.npy").string()); }).find("malformed header") != std::string::npos);
    write_npy(dir / "nokey.npy", "{'descr': '<f8', 'shape': (2,), }", 16);
    CHECK(error_of([&] { io::load_npy((dir / "nokey.npy").string()); }).find("needs 'descr', 'fortran_order' and 'shape'") !=
          std::string::npos);
    write_npy(dir / "twice.npy", "{'descr': '<f8', 'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", 16);
    CHECK(error_of([&] { io::load_npy((dir / "twice.npy").string()); }).find("unexpected or repeated key 'descr'") !=
          std::string::npos);
    write_text(dir / "cut.npy", std::string("\x93NUMPY\x01\x00\x76\x00{'descr'", 17));
    CHECK(error_of([&] { io::load_npy((dir / "cut.npy").string()); }).find("truncated header: 118 bytes at offset 10") !=
          std::string::npos);
    write_npy(dir / "ok.npy", "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }", 16);
    CHECK(io::load_npy((dir / "ok.npy").string()).to_doubles() == std::vector<double>{0, 0});

    // A directory, a FIFO and a device are refused before anything is read (a FIFO would
    // hang a reader, /dev/zero would fill memory).
    CHECK(error_of([&] { io::read_idx(dir.string()); }).find("it is a directory") != std::string::npos);
    CHECK(error_of([&] { io::load_npy(dir.string()); }).find("it is a directory") != std::string::npos);
    const fs::path fifo = dir / "fifo";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    CHECK(error_of([&] { io::read_idx(fifo.string()); }).find("it is a FIFO") != std::string::npos);
    CHECK(error_of([&] { io::load_npy(fifo.string()); }).find("it is a FIFO") != std::string::npos);
    CHECK(error_of([&] { io::read_png_gray(fifo.string()); }).find("it is a FIFO") != std::string::npos);
    fs::create_symlink("/dev/zero", dir / "zero.gz");
    fs::create_symlink("/dev/zero", dir / "zero");
    CHECK(error_of([&] { io::read_idx((dir / "zero").string()); }).find("it is a character device") != std::string::npos);
    CHECK(error_of([&] { io::read_idx((dir / "zero.gz").string()); }).find("it is a character device") != std::string::npos);
    CHECK(error_of([&] { io::read_idx((dir / "missing").string()); }).find("No such file or directory") != std::string::npos);
    fs::remove_all(dir);
}

TEST_CASE("metrics: the CSV keeps every number exactly and reads back; bad lines are named") {
    io::Metrics m;
    m.add("cost", "corruption 30%", 0, 0.1 + 0.2);
    m.add("error (%)", "validation error", 1.5, 9.23);
    m.add("a, \"quoted\" panel", "s", 2, -1e-300);
    CHECK(m.csv() == "panel,series,epoch,value\n"
                     "cost,corruption 30%,0,0.30000000000000004\n"
                     "error (%),validation error,1.5,9.23\n"
                     "\"a, \"\"quoted\"\" panel\",s,2,-1e-300\n");
    CHECK(io::Metrics::parse_csv(m.csv(), "m") == m.rows());
    io::Metrics back;
    back.restore(m.to_tensor());
    CHECK(back.rows() == m.rows());
    CHECK_THROWS_WITH_AS(io::Metrics::parse_csv("panel,series,epoch,value\ncost,a,1,x\n", "f.csv"),
                         "f.csv: line 2 ('cost,a,1,x') is not panel,series,epoch,value", UsageError);
    CHECK_THROWS_WITH_AS(io::Metrics::parse_csv("epoch,cost\n", "f.csv"),
                         "f.csv: line 1 is 'epoch,cost', expected the header panel,series,epoch,value", UsageError);
    CHECK_THROWS_WITH_AS(io::Metrics::parse_csv("panel,series,epoch,value\n\"open,a,1,2\n", "f.csv"),
                         doctest::Contains("line 2"), UsageError);
    CHECK_THROWS_WITH_AS(back.restore(Tensor::zeros(DType::float64, {3})),
                         "checkpoint: the metrics are float64 (3,), expected a uint8 vector", UsageError);
}

TEST_CASE("metrics: write() puts metrics.csv, curves.png and curves.svg in the folder, whole") {
    const fs::path dir = temp_dir() / "metrics";
    fs::remove_all(dir);
    fs::create_directories(dir);
    io::Metrics m(dir.string());
    m.write();  // no rows yet: nothing
    CHECK(fs::is_empty(dir));
    for (int e = 0; e < 6; ++e) {
        m.add("cost", "corruption 0%", e, 100.0 / (e + 1));
        m.add("cost", "corruption 30%", e, 120.0 / (e + 1));
        m.add("error (%)", "validation error", e + 1, 10.0 - e);
    }
    m.add("error (%)", "test error of best model", 6, 3.5);
    m.write();
    std::ifstream f(dir / "metrics.csv");
    const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    CHECK(io::Metrics::parse_csv(text, "metrics.csv") == m.rows());
    // Two panels, 330 pixels each, 900 wide; the image decodes whole and is not blank: the
    // first curve's colour (31, 119, 180) is drawn.
    Tensor png = io::read_png_rgba((dir / "curves.png").string());
    CHECK(png.shape() == Shape{660, 900, 4});
    const std::uint8_t* px = png.data<std::uint8_t>();
    std::int64_t blue = 0, white = 0;
    for (std::int64_t i = 0; i < 660 * 900; ++i) {
        blue += px[4 * i] == 31 && px[4 * i + 1] == 119 && px[4 * i + 2] == 180;
        white += px[4 * i] == 255 && px[4 * i + 1] == 255 && px[4 * i + 2] == 255;
    }
    CHECK(blue > 100);
    CHECK(white > 660 * 900 / 2);
    std::ifstream s(dir / "curves.svg");
    const std::string svg((std::istreambuf_iterator<char>(s)), std::istreambuf_iterator<char>());
    CHECK(svg.find("<svg") != std::string::npos);
    CHECK(svg.find("width=\"900pt\" height=\"660pt\"") != std::string::npos);
    CHECK(svg.rfind("</svg>") != std::string::npos);
    // Only the three files: no temporary file stays behind.
    int files = 0;
    for (const auto& e : fs::directory_iterator(dir)) {
        ++files;
        const std::string name = e.path().filename().string();
        CHECK((name == "metrics.csv" || name == "curves.png" || name == "curves.svg"));
    }
    CHECK(files == 3);
    CHECK_THROWS_WITH_AS(io::plot_curves(m.rows(), (dir / "c.gif").string(), "gif"),
                         doctest::Contains("format 'gif'"), UsageError);
    CHECK_THROWS_WITH_AS(io::read_png_rgba((dir / "metrics.csv").string()), doctest::Contains("is not a readable PNG"),
                         UsageError);
}

TEST_CASE("npy files of the new integer dtypes round-trip") {
    const auto dir = std::filesystem::temp_directory_path() / "theanine_npy_small_ints";
    std::filesystem::create_directories(dir);
    const Tensor a = Tensor::from_vector<std::int8_t>({3}, {-128, 0, 127});
    const Tensor b = Tensor::from_vector<std::int16_t>({2}, {-32768, 32767});
    const Tensor c = Tensor::from_vector<std::uint16_t>({2}, {0, 65535});
    for (const Tensor& t : {a, b, c}) {
        const std::string path = (dir / "t.npy").string();
        io::save_npy(path, t);
        const Tensor back = io::load_npy(path);
        CHECK(back.dtype() == t.dtype());
        CHECK(back.to_doubles() == t.to_doubles());
    }
    std::filesystem::remove_all(dir);
}
