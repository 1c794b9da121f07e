// The per-epoch numbers of a training program, kept for the user to look at: metrics.csv in
// the program's output folder and a plot of them, curves.png and curves.svg.
//
// A row is (panel, series, epoch, value). A panel is one plot with its own y axis (its name
// is the axis label: "cost", "error (%)"); a series is one curve in it ("corruption 30%",
// "validation error"). The plot stacks the panels, one curve per series with its points
// marked, epochs on the x axis, and a legend. PLplot draws it (its cairo driver writes both
// files); every file is written atomically (examples/io/files.hpp), after each epoch, so an
// interrupted run leaves the curves of what it did.
#pragma once

#include <string>
#include <vector>

#include "graph/tensor.hpp"

namespace theanine::io {

struct MetricRow {
    std::string panel, series;
    double epoch = 0;
    double value = 0;
    bool operator==(const MetricRow&) const = default;
};

class Metrics {
public:
    // dir: where write() puts the files; empty: nowhere (write() does nothing).
    explicit Metrics(std::string dir = "") : dir_(std::move(dir)) {}
    void add(std::string panel, std::string series, double epoch, double value);
    const std::vector<MetricRow>& rows() const { return rows_; }
    // "panel,series,epoch,value" and one line per row; numbers in the shortest form that reads
    // back to the same double; a field with a comma or a quote is quoted as CSV quotes it.
    std::string csv() const;
    // Rows back from csv(); throws UsageError naming the line of anything malformed.
    static std::vector<MetricRow> parse_csv(const std::string& text, const std::string& source);
    // metrics.csv, curves.png and curves.svg in the folder (nothing when it is empty or there
    // are no rows yet).
    void write() const;
    // For checkpoints: the rows as the CSV's bytes, and back.
    Tensor to_tensor() const;
    void restore(const Tensor& saved);

private:
    std::string dir_;
    std::vector<MetricRow> rows_;
};

// Draws rows as Metrics describes, into path as "png" or "svg", width x height pixels
// (points for svg). Throws UsageError when PLplot's cairo driver is missing or the file
// cannot be written.
void plot_curves(const std::vector<MetricRow>& rows, const std::string& path, const std::string& format,
                 int width = 900, int height_per_panel = 330);

}  // namespace theanine::io
