#include "examples/io/metrics.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>

#include <unistd.h>

#include <fmt/format.h>
#include <plplot.h>

#include "examples/io/files.hpp"
#include "graph/error.hpp"

namespace theanine::io {

namespace {

std::string csv_field(const std::string& s) {
    if (s.find_first_of(",\"\n") == std::string::npos) return s;
    std::string q = "\"";
    for (char c : s) {
        if (c == '"') q += '"';
        q += c;
    }
    return q + "\"";
}

// The fields of one CSV line (quoted fields may hold commas and doubled quotes).
bool split_csv_line(const std::string& line, std::vector<std::string>& fields) {
    fields.assign(1, "");
    bool quoted = false;
    for (std::size_t i = 0; i < line.size(); ++i) {
        const char c = line[i];
        if (quoted) {
            if (c != '"') {
                fields.back() += c;
            } else if (i + 1 < line.size() && line[i + 1] == '"') {
                fields.back() += '"';
                ++i;
            } else {
                quoted = false;
            }
        } else if (c == '"' && fields.back().empty()) {
            quoted = true;
        } else if (c == ',') {
            fields.emplace_back();
        } else {
            fields.back() += c;
        }
    }
    return !quoted;
}

bool to_double(const std::string& s, double* v) {
    if (s.empty()) return false;
    char* end = nullptr;
    *v = std::strtod(s.c_str(), &end);
    return end == s.c_str() + s.size();
}

}  // namespace

void Metrics::add(std::string panel, std::string series, double epoch, double value) {
    rows_.push_back({std::move(panel), std::move(series), epoch, value});
}

std::string Metrics::csv() const {
    std::string s = "panel,series,epoch,value\n";
    for (const auto& r : rows_) {
        s += fmt::format("{},{},{},{}\n", csv_field(r.panel), csv_field(r.series), r.epoch, r.value);
    }
    return s;
}

std::vector<MetricRow> Metrics::parse_csv(const std::string& text, const std::string& source) {
    std::vector<MetricRow> rows;
    std::vector<std::string> f;
    std::size_t at = 0;
    int line_no = 0;
    while (at < text.size()) {
        std::size_t eol = text.find('\n', at);
        if (eol == std::string::npos) eol = text.size();
        const std::string line = text.substr(at, eol - at);
        at = eol + 1;
        ++line_no;
        if (line_no == 1) {
            if (line != "panel,series,epoch,value") {
                throw UsageError(fmt::format("{}: line 1 is '{}', expected the header panel,series,epoch,value", source, line));
            }
            continue;
        }
        MetricRow r;
        if (!split_csv_line(line, f) || f.size() != 4 || !to_double(f[2], &r.epoch) || !to_double(f[3], &r.value)) {
            throw UsageError(fmt::format("{}: line {} ('{}') is not panel,series,epoch,value", source, line_no, line));
        }
        r.panel = f[0];
        r.series = f[1];
        rows.push_back(std::move(r));
    }
    if (line_no == 0) throw UsageError(fmt::format("{}: empty, expected the header panel,series,epoch,value", source));
    return rows;
}

Tensor Metrics::to_tensor() const {
    const std::string s = csv();
    Tensor t = Tensor::empty(DType::uint8, {static_cast<std::int64_t>(s.size())});
    std::memcpy(t.raw_data(), s.data(), s.size());
    return t;
}

void Metrics::restore(const Tensor& saved) {
    if (saved.dtype() != DType::uint8 || saved.ndim() != 1) {
        throw UsageError(fmt::format("checkpoint: the metrics are {} {}, expected a uint8 vector",
                                     dtype_name(saved.dtype()), shape_string(saved.shape())));
    }
    const Tensor c = saved.contiguous();
    rows_ = parse_csv(std::string(static_cast<const char*>(c.raw_data()), static_cast<std::size_t>(c.size())),
                      "checkpoint metrics");
}

void Metrics::write() const {
    if (dir_.empty() || rows_.empty()) return;
    const std::string s = csv();
    AtomicFile f(dir_ + "/metrics.csv");
    f.write(s.data(), s.size());
    f.commit();
    plot_curves(rows_, dir_ + "/curves.png", "png");
    plot_curves(rows_, dir_ + "/curves.svg", "svg");
}

namespace {

struct Curve {
    std::string name;
    std::vector<PLFLT> x, y;
};
struct Panel {
    std::string name;
    std::vector<Curve> curves;
};

std::vector<Panel> panels_of(const std::vector<MetricRow>& rows) {
    std::vector<Panel> panels;
    for (const auto& r : rows) {
        auto p = std::find_if(panels.begin(), panels.end(), [&](const Panel& q) { return q.name == r.panel; });
        if (p == panels.end()) p = panels.insert(panels.end(), Panel{r.panel, {}});
        auto c = std::find_if(p->curves.begin(), p->curves.end(), [&](const Curve& q) { return q.name == r.series; });
        if (c == p->curves.end()) c = p->curves.insert(p->curves.end(), Curve{r.series, {}, {}});
        c->x.push_back(r.epoch);
        c->y.push_back(r.value);
    }
    return panels;
}

// The range of values with a margin; a single value gets a range around it.
std::pair<PLFLT, PLFLT> padded_range(const std::vector<Curve>& curves, bool x, double margin) {
    double lo = HUGE_VAL, hi = -HUGE_VAL;
    for (const auto& c : curves) {
        for (double v : x ? c.x : c.y) {
            if (!std::isfinite(v)) continue;
            lo = std::min(lo, v);
            hi = std::max(hi, v);
        }
    }
    if (lo > hi) return {0, 1};
    if (lo == hi) {
        const double d = std::max(std::abs(lo) * 0.05, 0.5);
        return {lo - d, hi + d};
    }
    const double d = (hi - lo) * margin;
    return {lo - d, hi + d};
}

// Colours of the curves (cmap0 entries 2 .. 11), then the grid's grey.
constexpr int kPalette[10][3] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44},  {214, 39, 40},   {148, 103, 189},
                                 {140, 86, 75},  {227, 119, 194}, {127, 127, 127}, {188, 189, 34}, {23, 190, 207}};
constexpr int kGrid = 12;

bool has_device(const char* name) {
    std::vector<const char*> menu(256), devs(256);
    const char** m = menu.data();
    const char** d = devs.data();
    int n = static_cast<int>(devs.size());
    plgDevs(&m, &d, &n);
    for (int i = 0; i < n; ++i) {
        if (devs[static_cast<std::size_t>(i)] && std::strcmp(devs[static_cast<std::size_t>(i)], name) == 0) return true;
    }
    return false;
}

std::mutex plplot_mutex;  // PLplot keeps its streams in global state

}  // namespace

void plot_curves(const std::vector<MetricRow>& rows, const std::string& path, const std::string& format, int width,
                 int height_per_panel) {
    if (format != "png" && format != "svg") {
        throw UsageError(fmt::format("plot_curves: format '{}' for {}, expected png or svg", format, path));
    }
    if (rows.empty()) throw UsageError(fmt::format("plot_curves: no rows to draw into {}", path));
    const std::vector<Panel> panels = panels_of(rows);
    const std::string device = format + "cairo";
    std::lock_guard lock(plplot_mutex);
    if (!has_device(device.c_str())) {
        throw UsageError(fmt::format("plot_curves: PLplot has no '{}' device to write {}; install its cairo driver "
                                     "(Debian package plplot-driver-cairo)", device, path));
    }
    AtomicFile file(path);
    // PLplot closes the stream it is given when it ends; it gets its own descriptor of the
    // temporary file, which the AtomicFile then syncs and renames.
    const int fd = ::dup(::fileno(file.stream()));
    std::FILE* out = fd < 0 ? nullptr : ::fdopen(fd, "wb");
    if (!out) {
        if (fd >= 0) ::close(fd);
        throw UsageError(fmt::format("plot_curves: cannot open a stream to write {}", path));
    }
    PLINT previous = 0, stream = 0;
    plgstrm(&previous);
    plmkstrm(&stream);
    plsdev(device.c_str());
    plsfile(out);
    plspage(0, 0, width, height_per_panel * static_cast<int>(panels.size()), 0, 0);
    plscmap0n(16);
    plscolbg(255, 255, 255);
    plscol0(1, 0, 0, 0);
    for (int i = 0; i < 10; ++i) plscol0(2 + i, kPalette[i][0], kPalette[i][1], kPalette[i][2]);
    plscol0(kGrid, 225, 225, 225);
    plssub(1, static_cast<PLINT>(panels.size()));
    plinit();
    for (std::size_t p = 0; p < panels.size(); ++p) {
        const Panel& panel = panels[p];
        pladv(0);
        // PLplot scales characters with the subpage; one panel would get larger ones.
        plschr(0, panels.size() == 1 ? 0.7 : 0.85);
        // Room on the right for the legend, outside the curves.
        plvpor(0.1, 0.68, 0.2, 0.88);
        const auto [x0, x1] = padded_range(panel.curves, true, 0.03);
        const auto [y0, y1] = padded_range(panel.curves, false, 0.08);
        plwind(x0, x1, y0, y1);
        // Whole epochs get a tick each when there are few of them (no "0.5 epochs").
        bool whole = true;
        for (const auto& c : panel.curves) {
            for (double v : c.x) whole = whole && v == std::floor(v);
        }
        const PLFLT xtick = whole && x1 - x0 <= 12 ? 1 : 0;
        plcol0(kGrid);
        plwidth(1);
        plbox("g", xtick, 0, "g", 0, 0);
        plcol0(1);
        plbox("bcnst", xtick, 0, "bcnstv", 0, 0);
        pllab("epoch", panel.name.c_str(), "");
        const auto n = static_cast<PLINT>(panel.curves.size());
        std::vector<PLINT> opts(n, PL_LEGEND_LINE | PL_LEGEND_SYMBOL), colors(n), styles(n, 1), symbol_numbers(n, 1);
        std::vector<PLFLT> widths(n, 2.0), symbol_scales(n, 0.8);
        std::vector<const char*> texts(n), symbols(n, "#(727)");
        for (PLINT c = 0; c < n; ++c) {
            const Curve& curve = panel.curves[static_cast<std::size_t>(c)];
            colors[c] = 2 + c % 10;
            texts[c] = curve.name.c_str();
            plcol0(colors[c]);
            plwidth(2);
            const auto m = static_cast<PLINT>(curve.x.size());
            if (m > 1) plline(m, curve.x.data(), curve.y.data());
            plstring(m, curve.x.data(), curve.y.data(), "#(727)");
        }
        PLFLT legend_w = 0, legend_h = 0;
        plwidth(1);
        pllegend(&legend_w, &legend_h, PL_LEGEND_BACKGROUND | PL_LEGEND_BOUNDING_BOX,
                 PL_POSITION_RIGHT | PL_POSITION_OUTSIDE | PL_POSITION_VIEWPORT, 0.03, 0.0, 0.06, 0, 1, 1, 0, 0, n,
                 opts.data(), 1.0, 0.9, 2.0, 0.0, colors.data(), texts.data(), nullptr, nullptr, nullptr, nullptr,
                 colors.data(), styles.data(), widths.data(), colors.data(), symbol_scales.data(),
                 symbol_numbers.data(), symbols.data());
    }
    plend1();
    plsstrm(previous);
    file.commit();
}

}  // namespace theanine::io
