#include "examples/io/numpy_like.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>

#include <fmt/format.h>

#include "graph/error.hpp"

namespace theanine::io::numpy {

template <class T>
T pairwise_sum(const T* a, std::int64_t n, std::int64_t stride) {
    if (n < 8) {
        T res = 0;
        for (std::int64_t i = 0; i < n; ++i) res += a[i * stride];
        return res;
    }
    if (n <= 128) {
        T r[8];
        for (int j = 0; j < 8; ++j) r[j] = a[j * stride];
        std::int64_t i = 8;
        for (; i < n - (n % 8); i += 8) {
            for (int j = 0; j < 8; ++j) r[j] += a[(i + j) * stride];
        }
        T res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; ++i) res += a[i * stride];
        return res;
    }
    std::int64_t n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_sum(a, n2, stride) + pairwise_sum(a + n2 * stride, n - n2, stride);
}

template float pairwise_sum<float>(const float*, std::int64_t, std::int64_t);
template double pairwise_sum<double>(const double*, std::int64_t, std::int64_t);

namespace {

// Column-major n x n matrix helpers in LAPACK's terms (0-based).
template <class T>
struct ColMajor {
    T* a;
    int ld;
    T& operator()(int i, int j) const { return a[i + static_cast<std::ptrdiff_t>(j) * ld]; }
};

// Row interchanges ipiv[k1..k2) applied to ncols columns starting at column c0.
template <class T>
void laswp(ColMajor<T> A, int c0, int ncols, int k1, int k2, const std::vector<int>& ipiv) {
    for (int i = k1; i < k2; ++i) {
        const int ip = ipiv[static_cast<std::size_t>(i)];
        if (ip == i) continue;
        for (int j = c0; j < c0 + ncols; ++j) std::swap(A(i, j), A(ip, j));
    }
}

// dgetrf2 on rows [r0, r0 + m) and columns [c0, c0 + n); ipiv entries are absolute rows.
template <class T>
void getrf2(ColMajor<T> A, int r0, int c0, int m, int n, std::vector<int>& ipiv) {
    if (m == 1 || n == 1) {
        if (n == 1) {
            int p = 0;
            T best = std::abs(A(r0, c0));
            for (int i = 1; i < m; ++i) {
                if (std::abs(A(r0 + i, c0)) > best) {
                    best = std::abs(A(r0 + i, c0));
                    p = i;
                }
            }
            ipiv[static_cast<std::size_t>(r0)] = r0 + p;
            if (A(r0 + p, c0) == 0) throw UsageError("numpy.linalg.inv: the matrix is singular");
            if (p != 0) std::swap(A(r0, c0), A(r0 + p, c0));
            const T piv = A(r0, c0);
            if (std::abs(piv) >= std::numeric_limits<T>::min()) {
                const T r = T(1) / piv;
                for (int i = 1; i < m; ++i) A(r0 + i, c0) *= r;
            } else {
                for (int i = 1; i < m; ++i) A(r0 + i, c0) /= piv;
            }
        } else {
            ipiv[static_cast<std::size_t>(r0)] = r0;
            if (A(r0, c0) == 0) throw UsageError("numpy.linalg.inv: the matrix is singular");
        }
        return;
    }
    const int n1 = std::min(m, n) / 2, n2 = n - n1;
    getrf2(A, r0, c0, m, n1, ipiv);
    laswp(A, c0 + n1, n2, r0, r0 + n1, ipiv);
    // A12 = L11^-1 A12 (unit lower triangular solve, reference dtrsm order)
    for (int j = 0; j < n2; ++j) {
        for (int k = 0; k < n1; ++k) {
            const T b = A(r0 + k, c0 + n1 + j);
            if (b == 0) continue;
            for (int i = k + 1; i < n1; ++i) A(r0 + i, c0 + n1 + j) -= b * A(r0 + i, c0 + k);
        }
    }
    // A22 -= A21 A12 (reference dgemm order)
    for (int j = 0; j < n2; ++j) {
        for (int l = 0; l < n1; ++l) {
            const T temp = -A(r0 + l, c0 + n1 + j);
            for (int i = n1; i < m; ++i) A(r0 + i, c0 + n1 + j) += temp * A(r0 + i, c0 + l);
        }
    }
    getrf2(A, r0 + n1, c0 + n1, m - n1, n2, ipiv);
    laswp(A, c0, n1, r0 + n1, r0 + std::min(m, n), ipiv);
}

}  // namespace

template <class T>
std::vector<T> inv(const std::vector<T>& a, int n) {
    if (static_cast<std::int64_t>(a.size()) != static_cast<std::int64_t>(n) * n) {
        throw UsageError(fmt::format("numpy.linalg.inv: {} values for a {}x{} matrix", a.size(), n, n));
    }
    std::vector<T> lu(a.size()), b(a.size(), T(0));
    for (int i = 0; i < n; ++i) {
        for (int j = 0; j < n; ++j) lu[i + static_cast<std::size_t>(j) * n] = a[static_cast<std::size_t>(i) * n + j];
        b[i + static_cast<std::size_t>(i) * n] = T(1);
    }
    ColMajor<T> A{lu.data(), n}, B{b.data(), n};
    std::vector<int> ipiv(static_cast<std::size_t>(n));
    getrf2(A, 0, 0, n, n, ipiv);
    laswp(B, 0, n, 0, n, ipiv);
    for (int j = 0; j < n; ++j) {
        for (int k = 0; k < n; ++k) {  // unit lower
            if (B(k, j) == 0) continue;
            for (int i = k + 1; i < n; ++i) B(i, j) -= B(k, j) * A(i, k);
        }
        for (int k = n - 1; k >= 0; --k) {  // upper
            if (B(k, j) == 0) continue;
            B(k, j) /= A(k, k);
            for (int i = 0; i < k; ++i) B(i, j) -= B(k, j) * A(i, k);
        }
    }
    std::vector<T> out(a.size());
    for (int i = 0; i < n; ++i) {
        for (int j = 0; j < n; ++j) out[static_cast<std::size_t>(i) * n + j] = B(i, j);
    }
    return out;
}

template std::vector<float> inv<float>(const std::vector<float>&, int);
template std::vector<double> inv<double>(const std::vector<double>&, int);

std::vector<double> cov(const std::vector<double>& m, int vars, std::int64_t obs) {
    if (static_cast<std::int64_t>(m.size()) != vars * obs || obs < 2) {
        throw UsageError(fmt::format("numpy.cov: {} values for {} variables of {} observations", m.size(), vars, obs));
    }
    std::vector<double> x = m;
    for (int v = 0; v < vars; ++v) {
        double* row = x.data() + static_cast<std::size_t>(v) * obs;
        const double avg = mean(row, obs);
        for (std::int64_t k = 0; k < obs; ++k) row[k] -= avg;
    }
    const double scale = 1.0 / static_cast<double>(obs - 1);
    std::vector<double> c(static_cast<std::size_t>(vars) * vars);
    for (int i = 0; i < vars; ++i) {
        for (int j = i; j < vars; ++j) {
            double s = 0;
            const double* ri = x.data() + static_cast<std::size_t>(i) * obs;
            const double* rj = x.data() + static_cast<std::size_t>(j) * obs;
            for (std::int64_t k = 0; k < obs; ++k) s += ri[k] * rj[k];
            c[static_cast<std::size_t>(i) * vars + j] = s * scale;
            c[static_cast<std::size_t>(j) * vars + i] = s * scale;
        }
    }
    return c;
}

// ------------------------------------------------------------------ printing

namespace {

// The shortest positional text of v with at most `precision` fractional digits that reads
// back as v, or v rounded to that many digits (numpy's dragon4_positional, unique, trim '.').
std::string positional(double v, int precision, bool float32) {
    for (int q = 0; q <= precision; ++q) {
        std::string s = float32 ? fmt::format("{:.{}f}", static_cast<float>(v), q) : fmt::format("{:.{}f}", v, q);
        const bool same = float32 ? std::strtof(s.c_str(), nullptr) == static_cast<float>(v) : std::strtod(s.c_str(), nullptr) == v;
        if (same || q == precision) {
            if (s.find('.') == std::string::npos) s += '.';
            if (q == precision) {
                while (s.back() == '0') s.pop_back();
            }
            return s;
        }
    }
    return "";
}

// numpy's dragon4_scientific with unique digits, at most `precision` fractional ones:
// mantissa and exponent parts.
std::pair<std::string, int> scientific(double v, int precision, bool float32) {
    for (int q = 0; q <= precision; ++q) {
        std::string s = float32 ? fmt::format("{:.{}e}", static_cast<float>(v), q) : fmt::format("{:.{}e}", v, q);
        const bool same = float32 ? std::strtof(s.c_str(), nullptr) == static_cast<float>(v) : std::strtod(s.c_str(), nullptr) == v;
        if (same || q == precision) {
            const auto e = s.find('e');
            std::string mant = s.substr(0, e);
            const int ex = std::atoi(s.c_str() + e + 1);
            if (mant.find('.') == std::string::npos) mant += '.';
            while (q == precision && mant.back() == '0') mant.pop_back();
            return {mant, ex};
        }
    }
    return {"", 0};
}

struct FloatFormat {
    bool exp = false, float32 = false;
    int precision = 8, pad_left = 0, pad_right = 0, exp_size = 0;

    FloatFormat(const std::vector<double>& vals, bool f32) : float32(f32) {
        double lo = 0, hi = 0;
        bool any = false;
        for (double x : vals) {
            if (!std::isfinite(x) || x == 0) continue;
            const double a = std::abs(x);
            lo = any ? std::min(lo, a) : a;
            hi = any ? std::max(hi, a) : a;
            any = true;
        }
        exp = any && (hi >= 1e8 || lo < 0.0001 || hi / lo > 1000.0);
        if (exp) {
            int frac = 0, exp_len = 0;
            for (double x : vals) {
                if (!std::isfinite(x)) continue;
                auto [mant, ex] = scientific(x, precision, float32);
                const auto dot = mant.find('.');
                pad_left = std::max(pad_left, static_cast<int>(dot));
                frac = std::max(frac, static_cast<int>(mant.size() - dot - 1));
                exp_len = std::max(exp_len, static_cast<int>(fmt::format("{:02d}", std::abs(ex)).size()));
            }
            precision = frac;
            exp_size = exp_len;
        } else {
            for (double x : vals) {
                if (!std::isfinite(x)) continue;
                const std::string s = positional(x, precision, float32);
                const auto dot = s.find('.');
                pad_left = std::max(pad_left, static_cast<int>(dot));
                pad_right = std::max(pad_right, static_cast<int>(s.size() - dot - 1));
            }
        }
    }

    std::string operator()(double x) const {
        if (!std::isfinite(x)) {
            const std::string s = std::isnan(x) ? "nan" : x > 0 ? "inf" : "-inf";
            return std::string(static_cast<std::size_t>(std::max(0, pad_left + pad_right + 1 - static_cast<int>(s.size()))), ' ') + s;
        }
        if (exp) {
            auto [mant, ex] = scientific(x, precision, float32);
            const auto dot = mant.find('.');
            std::string frac = mant.substr(dot + 1);
            frac.resize(static_cast<std::size_t>(precision), '0');
            std::string s(static_cast<std::size_t>(std::max(0, pad_left - static_cast<int>(dot))), ' ');
            s += mant.substr(0, dot) + "." + frac;
            s += fmt::format("e{}{:0{}d}", ex < 0 ? '-' : '+', std::abs(ex), exp_size);
            return s;
        }
        const std::string p = positional(x, precision, float32);
        const auto dot = p.find('.');
        std::string s(static_cast<std::size_t>(std::max(0, pad_left - static_cast<int>(dot))), ' ');
        s += p;
        s += std::string(static_cast<std::size_t>(std::max(0, pad_right - static_cast<int>(p.size() - dot - 1))), ' ');
        return s;
    }
};

constexpr int kLineWidth = 75;

void extend_line(std::string& s, std::string& line, const std::string& word, int width, const std::string& prefix) {
    bool wrap = static_cast<int>(line.size() + word.size()) > width;
    if (line.size() <= prefix.size()) wrap = false;
    if (wrap) {
        while (!line.empty() && line.back() == ' ') line.pop_back();
        s += line + "\n";
        line = prefix;
    }
    line += word;
}

// numpy's _formatArray for the last axis: one bracketed row of words.
std::string format_row(const std::vector<std::string>& words, const std::string& hanging, int width) {
    std::string s, line = hanging;
    const int elem_width = width - 1;  // max(len(separator.rstrip()), len(']'))
    for (std::size_t i = 0; i + 1 < words.size(); ++i) {
        extend_line(s, line, words[i], elem_width, hanging);
        line += " ";
    }
    if (!words.empty()) extend_line(s, line, words.back(), elem_width, hanging);
    s += line;
    std::string out("[");
    out.append(s, hanging.size(), std::string::npos);
    out += ']';
    return out;
}

}  // namespace

std::string array_str(const std::vector<double>& values, const Shape& shape, bool float32) {
    const FloatFormat f(values, float32);
    std::vector<std::string> words;
    for (double v : values) words.push_back(f(v));
    if (shape.size() == 1) return format_row(words, " ", kLineWidth);
    if (shape.size() != 2) throw UsageError("array_str: 1-d and 2-d arrays only");
    const auto rows = static_cast<std::size_t>(shape[0]), cols = static_cast<std::size_t>(shape[1]);
    std::string s;
    for (std::size_t r = 0; r < rows; ++r) {
        std::vector<std::string> row(words.begin() + static_cast<std::ptrdiff_t>(r * cols),
                                     words.begin() + static_cast<std::ptrdiff_t>((r + 1) * cols));
        s += ' ';
        s += format_row(row, "  ", kLineWidth - 1);
        if (r + 1 < rows) s += '\n';
    }
    std::string out("[");
    out.append(s, 1, std::string::npos);
    out += ']';
    return out;
}

std::string scalar_str(double v, bool float32) {
    std::string s = float32 ? fmt::format("{}", static_cast<float>(v)) : fmt::format("{}", v);
    // Python writes an integral float with ".0"
    if (s.find_first_of(".eni") == std::string::npos) s += ".0";
    return s;
}

}  // namespace theanine::io::numpy
