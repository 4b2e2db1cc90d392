#pragma once
// Gradient-check helpers shared by the test binaries.
//
// check_grad compares an analytic gradient against central finite differences, in double:
//   L(x) = sum_i g[i] * out(x)[i]          (g: a fixed random upstream gradient)
//   dL/dx[j] ~= (L(x + h e_j) - L(x - h e_j)) / (2h)
// The analytic gradient is what the op's backward produces for dout = g. With h = 1e-6 the
// truncation error is O(h^2) ~ 1e-12 and the round-off error ~ eps * |L| / h ~ 1e-10 * |L|, so a
// correct backward agrees to ~1e-8 relative; a wrong one is off by O(1).
//
// The forward callback may refuse a point (return false): used where the function is only
// piecewise smooth (ReLU kinks, top-K routing), so a perturbation that crosses a boundary is
// skipped instead of producing a meaningless difference quotient.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cmath>
#include <cstdint>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "core/rng.h"

namespace moe::test {

using Vec = std::vector<double>;

// Forward in double: fills out from the flat input x; returns false to skip this point.
using ForwardFn = std::function<bool(const Vec& x, Vec& out)>;

struct GradCheckResult {
    double max_rel = 0;      // max over coordinates of |a - n| / max(|a|, |n|, floor)
    double max_abs = 0;      // max |a - n|
    int64_t worst = -1;      // coordinate of max_rel
    double worst_analytic = 0, worst_numeric = 0;
    int64_t checked = 0;     // coordinates compared
    int64_t skipped = 0;     // coordinates whose perturbation the forward refused

    std::string str() const {
        std::ostringstream os;
        os << "max_rel=" << max_rel << " max_abs=" << max_abs << " worst=" << worst
           << " (analytic " << worst_analytic << ", numeric " << worst_numeric << ") checked="
           << checked << " skipped=" << skipped;
        return os.str();
    }
};

constexpr double kTol = 1e-6;      // relative, double precision finite differences
constexpr double kAccTol = 1e-12;  // calling backward twice must give exactly twice the gradient

inline Vec zeros(int64_t n) { return Vec(n, 0.0); }

inline Vec randn(int64_t n, Rng& rng, double scale = 1.0) {
    Vec v(n);
    for (auto& x : v) x = scale * rng.normal();
    return v;
}

inline Vec uniform(int64_t n, Rng& rng, double lo, double hi) {
    Vec v(n);
    for (auto& x : v) x = lo + (hi - lo) * rng.uniform();
    return v;
}

// L = sum g * out, accumulated in long double to keep the difference quotient's round-off low.
inline long double dot_ld(const Vec& g, const Vec& out) {
    long double s = 0;
    for (size_t i = 0; i < out.size(); ++i) s += (long double)g[i] * (long double)out[i];
    return s;
}

// Central differences of L(x) = sum g * f(x) at x, compared with `analytic` (same size as x).
// `floor` keeps coordinates whose true gradient is ~0 from dominating the relative error: below it
// the comparison is absolute (|a - n| / floor). The difference quotient's own absolute error is
// ~1e-9 for the O(1) losses used here, so floor = 1e-2 leaves two orders of margin under a 1e-6
// tolerance, while any wrong gradient coordinate larger than ~1e-8 still fails.
inline GradCheckResult check_grad(const ForwardFn& f, const Vec& x0, const Vec& g, const Vec& analytic,
                                  double h = 1e-6, double floor = 1e-2) {
    GradCheckResult r;
    Vec x = x0, out;
    if (analytic.size() != x0.size()) {
        ADD_FAILURE() << "analytic gradient has size " << analytic.size() << ", input " << x0.size();
        return r;
    }
    for (size_t j = 0; j < x0.size(); ++j) {
        // the step actually taken, (x0 + h) - (x0 - h), is exact in floating point
        const double xp = x0[j] + h, xm = x0[j] - h;
        x[j] = xp;
        out.clear();
        const bool okp = f(x, out);
        const long double lp = okp ? dot_ld(g, out) : 0;
        x[j] = xm;
        out.clear();
        const bool okm = f(x, out);
        const long double lm = okm ? dot_ld(g, out) : 0;
        x[j] = x0[j];
        if (!okp || !okm) {
            ++r.skipped;
            continue;
        }
        if (out.size() != g.size()) {
            ADD_FAILURE() << "upstream gradient has size " << g.size() << ", output " << out.size();
            return r;
        }
        const double num = (double)((lp - lm) / (long double)(xp - xm));
        const double a = analytic[j];
        const double abs_err = std::fabs(a - num);
        const double rel = abs_err / std::max({std::fabs(a), std::fabs(num), floor});
        ++r.checked;
        r.max_abs = std::max(r.max_abs, abs_err);
        if (r.worst < 0 || rel > r.max_rel) {
            r.max_rel = rel;
            r.worst = (int64_t)j;
            r.worst_analytic = a;
            r.worst_numeric = num;
        }
    }
    return r;
}

// Normwise relative difference max|a - b| / max(max|b|, tiny): for comparing two implementations.
template <class A, class B>
double max_rel_diff(const A& a, const B& b) {
    double num = 0, den = 0;
    EXPECT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
        num = std::max(num, std::fabs((double)a[i] - (double)b[i]));
        den = std::max(den, std::fabs((double)b[i]));
    }
    return num / std::max(den, 1e-30);
}

// True when every element of `twice` is 2 * `once` (backward accumulates instead of overwriting).
inline double doubling_error(const Vec& once, const Vec& twice) {
    Vec two(once.size());
    for (size_t i = 0; i < once.size(); ++i) two[i] = 2 * once[i];
    return max_rel_diff(twice, two);
}

}  // namespace moe::test

// Fails the test with the check's details when max_rel exceeds tol (or nothing was checked).
#define EXPECT_GRAD_OK(res, tol, what)                                                        \
    do {                                                                                      \
        const auto& r_ = (res);                                                               \
        EXPECT_GT(r_.checked, 0) << what;                                                     \
        EXPECT_LE(r_.max_rel, (tol)) << what << ": " << r_.str();                             \
        std::printf("  [grad] %-28s %s\n", std::string(what).c_str(), r_.str().c_str());      \
    } while (0)
