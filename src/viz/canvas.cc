#include "viz/canvas.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "core/error.h"
#include "io/tensor_file.h"

// stb_easy_font: static functions in a header (some unused here). stb_image_write: declarations
// only; the implementation is Debian's libstb.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#include <stb/stb_easy_font.h>
#pragma GCC diagnostic pop
#include <stb/stb_image_write.h>

namespace moe::viz {

Rgb hex_rgb(uint32_t v) { return Rgb{(uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v}; }

Rgb mix(Rgb a, Rgb b, double t) {
    t = std::clamp(t, 0.0, 1.0);
    auto m = [t](uint8_t x, uint8_t y) { return (uint8_t)std::lround((1 - t) * x + t * y); };
    return Rgb{m(a.r, b.r), m(a.g, b.g), m(a.b, b.b)};
}

static Rgb hsv(double h, double s, double v) {
    h = (h - std::floor(h)) * 6;
    const int i = (int)h % 6;
    const double f = h - std::floor(h), p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f));
    double r = 0, g = 0, b = 0;
    switch (i) {
        case 0: r = v; g = t; b = p; break;
        case 1: r = q; g = v; b = p; break;
        case 2: r = p; g = v; b = t; break;
        case 3: r = p; g = q; b = v; break;
        case 4: r = t; g = p; b = v; break;
        default: r = v; g = p; b = q; break;
    }
    return Rgb{(uint8_t)std::lround(r * 255), (uint8_t)std::lround(g * 255), (uint8_t)std::lround(b * 255)};
}

Rgb categorical(int i, int n) {
    // tab10, then its light companions (tab20); the greys are replaced by colours from tab20b so
    // that no expert looks like the grey of a dense layer.
    static const uint32_t tab[20] = {0x1f77b4, 0xff7f0e, 0x2ca02c, 0xd62728, 0x9467bd, 0x8c564b, 0xe377c2,
                                     0x393b79, 0xbcbd22, 0x17becf, 0xaec7e8, 0xffbb78, 0x98df8a, 0xff9896,
                                     0xc5b0d5, 0xc49c94, 0xf7b6d2, 0x8c6d31, 0xdbdb8d, 0x9edae5};
    if (n <= 20 && i >= 0 && i < 20) return hex_rgb(tab[i]);
    // Golden-ratio hue steps (consecutive experts get far-apart hues), cycling through three
    // saturation/brightness levels.
    const int band = i % 3;
    const double h = 0.02 + i * 0.6180339887498949;
    static const double sat[3] = {0.80, 0.55, 0.95};
    static const double val[3] = {0.92, 0.97, 0.62};
    return hsv(h, sat[band], val[band]);
}

Rgb viridis(double t) {
    // 9 samples of matplotlib's viridis, linearly interpolated
    static const uint32_t v[9] = {0x440154, 0x472d7b, 0x3b528b, 0x2c728e, 0x21918c,
                                  0x28ae80, 0x5ec962, 0xaddc30, 0xfde725};
    if (!(t > 0)) t = 0;
    if (t > 1) t = 1;
    const double x = t * 8;
    const int i = std::min((int)x, 7);
    return mix(hex_rgb(v[i]), hex_rgb(v[i + 1]), x - i);
}

Canvas::Canvas(int width, int height, Rgb bg) : w_(width), h_(height) {
    MOE_ASSERT(width > 0 && height > 0);
    px_.resize((size_t)w_ * h_ * 3);
    for (size_t i = 0; i < px_.size(); i += 3) {
        px_[i] = bg.r;
        px_[i + 1] = bg.g;
        px_[i + 2] = bg.b;
    }
}

Rgb Canvas::get(int x, int y) const {
    if (x < 0 || y < 0 || x >= w_ || y >= h_) return Rgb{};
    const uint8_t* p = &px_[((size_t)y * w_ + x) * 3];
    return Rgb{p[0], p[1], p[2]};
}

void Canvas::set(int x, int y, Rgb c) {
    if (x < 0 || y < 0 || x >= w_ || y >= h_) return;
    uint8_t* p = &px_[((size_t)y * w_ + x) * 3];
    p[0] = c.r;
    p[1] = c.g;
    p[2] = c.b;
}

void Canvas::blend(int x, int y, Rgb c, double alpha) {
    if (alpha <= 0 || x < 0 || y < 0 || x >= w_ || y >= h_) return;
    set(x, y, alpha >= 1 ? c : mix(get(x, y), c, alpha));
}

void Canvas::fill_rect(int x, int y, int w, int h, Rgb c) {
    const int xa = std::max(x, 0), ya = std::max(y, 0);
    const int xb = std::min(x + w, w_), yb = std::min(y + h, h_);
    for (int j = ya; j < yb; ++j)
        for (int i = xa; i < xb; ++i) set(i, j, c);
}

void Canvas::outline_rect(int x, int y, int w, int h, Rgb c, int t) {
    fill_rect(x, y, w, t, c);
    fill_rect(x, y + h - t, w, t, c);
    fill_rect(x, y, t, h, c);
    fill_rect(x + w - t, y, t, h, c);
}

void Canvas::hatch_rect(int x, int y, int w, int h, Rgb c, int spacing) {
    spacing = std::max(spacing, 2);
    for (int j = y; j < y + h; ++j)
        for (int i = x; i < x + w; ++i)
            if (((i - x) + (j - y)) % spacing == 0) set(i, j, c);
}

// Coverage of a pixel centre by a segment of width `width` (1 px of anti-aliasing).
static double segment_coverage(double px, double py, double x0, double y0, double x1, double y1, double width) {
    const double dx = x1 - x0, dy = y1 - y0, len2 = dx * dx + dy * dy;
    double t = len2 > 0 ? ((px - x0) * dx + (py - y0) * dy) / len2 : 0;
    t = std::clamp(t, 0.0, 1.0);
    const double ex = px - (x0 + t * dx), ey = py - (y0 + t * dy);
    const double d = std::sqrt(ex * ex + ey * ey);
    return std::clamp(width / 2 + 0.5 - d, 0.0, 1.0);
}

void Canvas::polyline(const std::vector<double>& xs, const std::vector<double>& ys, Rgb c, double width) {
    const size_t n = std::min(xs.size(), ys.size());
    if (n == 0) return;
    if (n == 1) {
        dot(xs[0], ys[0], width / 2, c);
        return;
    }
    // One coverage value per pixel (the maximum over the segments), blended once, so that joints
    // are not drawn twice.
    const double r = width / 2 + 1;
    double bx0 = 1e300, by0 = 1e300, bx1 = -1e300, by1 = -1e300;
    for (size_t i = 0; i < n; ++i) {
        bx0 = std::min(bx0, xs[i]);
        bx1 = std::max(bx1, xs[i]);
        by0 = std::min(by0, ys[i]);
        by1 = std::max(by1, ys[i]);
    }
    const int X0 = std::max(0, (int)std::floor(bx0 - r)), X1 = std::min(w_ - 1, (int)std::ceil(bx1 + r));
    const int Y0 = std::max(0, (int)std::floor(by0 - r)), Y1 = std::min(h_ - 1, (int)std::ceil(by1 + r));
    if (X0 > X1 || Y0 > Y1) return;
    const int W = X1 - X0 + 1;
    std::vector<float> cov((size_t)W * (Y1 - Y0 + 1), 0.f);
    for (size_t s = 0; s + 1 < n; ++s) {
        const double ax = xs[s], ay = ys[s], bx = xs[s + 1], by = ys[s + 1];
        const int x0 = std::max(X0, (int)std::floor(std::min(ax, bx) - r));
        const int x1 = std::min(X1, (int)std::ceil(std::max(ax, bx) + r));
        const int y0 = std::max(Y0, (int)std::floor(std::min(ay, by) - r));
        const int y1 = std::min(Y1, (int)std::ceil(std::max(ay, by) + r));
        for (int j = y0; j <= y1; ++j)
            for (int i = x0; i <= x1; ++i) {
                const double v = segment_coverage(i + 0.5, j + 0.5, ax, ay, bx, by, width);
                float& cv = cov[(size_t)(j - Y0) * W + (i - X0)];
                if (v > cv) cv = (float)v;
            }
    }
    for (int j = Y0; j <= Y1; ++j)
        for (int i = X0; i <= X1; ++i) blend(i, j, c, cov[(size_t)(j - Y0) * W + (i - X0)]);
}

void Canvas::line(double x0, double y0, double x1, double y1, Rgb c, double width) {
    polyline({x0, x1}, {y0, y1}, c, width);
}

void Canvas::dot(double x, double y, double radius, Rgb c) {
    const int X0 = (int)std::floor(x - radius - 1), X1 = (int)std::ceil(x + radius + 1);
    const int Y0 = (int)std::floor(y - radius - 1), Y1 = (int)std::ceil(y + radius + 1);
    for (int j = Y0; j <= Y1; ++j)
        for (int i = X0; i <= X1; ++i) {
            const double d = std::hypot(i + 0.5 - x, j + 0.5 - y);
            blend(i, j, c, std::clamp(radius + 0.5 - d, 0.0, 1.0));
        }
}

// --- text ---

static std::string printable(const std::string& s) {
    std::string r = s;
    for (char& ch : r)
        if (ch != '\n' && ((unsigned char)ch < 32 || (unsigned char)ch > 126)) ch = '?';
    return r;
}

int text_width(const std::string& s, int scale) {
    if (s.empty()) return 0;
    std::string p = printable(s);
    return stb_easy_font_width(p.data()) * scale;
}

int text_height(const std::string& s, int scale) {
    int lines = 1;
    for (char ch : s) lines += ch == '\n';
    return (12 * (lines - 1) + 9) * scale;
}

int glyph_height(int scale) { return 9 * scale; }

// Calls f(x0, y0, x1, y1) for each quad of `s` laid out at the origin in font units.
template <class F>
static void for_each_quad(const std::string& s, F&& f) {
    std::string p = printable(s);
    std::vector<char> buf(p.size() * 64 * 12 + 64);  // at most 11 quads (64 bytes each) per character
    const int nq = stb_easy_font_print(0, 0, p.data(), nullptr, buf.data(), (int)buf.size());
    for (int q = 0; q < nq; ++q) {
        float v0[2], v2[2];
        std::memcpy(v0, buf.data() + q * 64, sizeof v0);
        std::memcpy(v2, buf.data() + q * 64 + 32, sizeof v2);
        f(v0[0], v0[1], v2[0], v2[1]);
    }
}

int Canvas::text(int x, int y, const std::string& s, Rgb c, int scale, Align ha, Align va) {
    const int tw = text_width(s, scale), th = text_height(s, scale);
    if (ha == Align::center) x -= tw / 2;
    if (ha == Align::end) x -= tw;
    if (va == Align::center) y -= th / 2;
    if (va == Align::end) y -= th;
    for_each_quad(s, [&](float x0, float y0, float x1, float y1) {
        const int a = x + (int)std::lround(x0 * scale), b = y + (int)std::lround(y0 * scale);
        fill_rect(a, b, (int)std::lround((x1 - x0) * scale), (int)std::lround((y1 - y0) * scale), c);
    });
    return tw;
}

void Canvas::text_vertical(int cx, int cy, const std::string& s, Rgb c, int scale) {
    const int tw = text_width(s, scale), th = text_height(s, scale);
    // text point (u, v) -> canvas (left + v, bottom - u)
    const int left = cx - th / 2, bottom = cy + tw / 2;
    for_each_quad(s, [&](float x0, float y0, float x1, float y1) {
        const int u0 = (int)std::lround(x0 * scale), u1 = (int)std::lround(x1 * scale);
        const int v0 = (int)std::lround(y0 * scale), v1 = (int)std::lround(y1 * scale);
        fill_rect(left + v0, bottom - u1, v1 - v0, u1 - u0, c);
    });
}

// --- PNG ---

static void append_bytes(void* ctx, void* data, int size) {
    static_cast<std::string*>(ctx)->append(static_cast<const char*>(data), (size_t)size);
}

std::string Canvas::encode_png() const {
    std::string out;
    if (!stbi_write_png_to_func(append_bytes, &out, w_, h_, 3, px_.data(), w_ * 3))
        fail("cannot encode a ", w_, "x", h_, " PNG image");
    return out;
}

void Canvas::write_png(const std::string& path) const { write_file_atomic(path, encode_png()); }

// --- axes ---

std::vector<double> nice_ticks(double lo, double hi, int target) {
    std::vector<double> t;
    if (!std::isfinite(lo) || !std::isfinite(hi)) return t;
    if (hi < lo) std::swap(lo, hi);
    if (hi == lo) {
        t.push_back(lo);
        return t;
    }
    const double raw = (hi - lo) / std::max(target, 1);
    const double p = std::pow(10.0, std::floor(std::log10(raw)));
    double step = 10 * p;
    for (double m : {1.0, 2.0, 2.5, 5.0})
        if (raw <= m * p * 1.0000001) {
            step = m * p;
            break;
        }
    const double first = std::ceil(lo / step - 1e-9) * step;
    for (int i = 0; i < 1000; ++i) {
        const double v = first + i * step;
        if (v > hi + step * 1e-9) break;
        t.push_back(std::fabs(v) < step * 1e-9 ? 0.0 : v);
    }
    return t;
}

std::string tick_label(double v, double spacing) {
    char b[64];
    const double a = std::fabs(v);
    if (a != 0 && (a >= 1e6 || a < 1e-4)) {
        std::snprintf(b, sizeof b, "%.3g", v);
        return b;
    }
    int dec = 0;
    if (spacing > 0) {
        // decimals needed to show the spacing exactly (e.g. 0.25 -> 2, 0.5 -> 1, 20 -> 0)
        for (dec = 0; dec < 8; ++dec) {
            const double m = spacing * std::pow(10.0, dec);
            if (std::fabs(m - std::round(m)) < 1e-6 * std::max(1.0, m)) break;
        }
    }
    std::snprintf(b, sizeof b, "%.*f", dec, v);
    return b;
}

double Axes::px(double x) const {
    const double d = xmax - xmin;
    return x0 + (d != 0 ? (x - xmin) / d : 0.5) * (x1 - x0);
}

double Axes::py(double y) const {
    const double d = ymax - ymin;
    return y1 - (d != 0 ? (y - ymin) / d : 0.5) * (y1 - y0);
}

void draw_axes(Canvas& c, Axes& a, const std::string& title, const std::string& xlabel, const std::string& ylabel,
               bool integer_x, bool snap) {
    if (a.xmax <= a.xmin) {
        a.xmin -= 1;
        a.xmax += 1;
    }
    if (a.ymax <= a.ymin) {
        const double d = std::max(std::fabs(a.ymin) * 0.1, 1e-3);
        a.ymin -= d;
        a.ymax += d;
    }
    const int xtarget = std::max(2, (a.x1 - a.x0) / 110), ytarget = std::max(2, (a.y1 - a.y0) / 60);
    std::vector<double> xt = nice_ticks(a.xmin, a.xmax, xtarget), yt = nice_ticks(a.ymin, a.ymax, ytarget);
    double xs = xt.size() > 1 ? xt[1] - xt[0] : 1, ys = yt.size() > 1 ? yt[1] - yt[0] : 1;
    if (integer_x && xs < 1) {
        xs = 1;
        xt.clear();
        for (double v = std::ceil(a.xmin); v <= a.xmax; v += 1) xt.push_back(v);
    }
    if (snap && yt.size() > 1) {
        a.ymin = std::floor(a.ymin / ys + 1e-9) * ys;
        a.ymax = std::ceil(a.ymax / ys - 1e-9) * ys;
        yt = nice_ticks(a.ymin, a.ymax, ytarget);
    }
    if (snap && xt.size() > 1) {
        a.xmin = std::floor(a.xmin / xs + 1e-9) * xs;
        a.xmax = std::ceil(a.xmax / xs - 1e-9) * xs;
        if (!integer_x || xs >= 1) xt = nice_ticks(a.xmin, a.xmax, xtarget);
    }
    // grid
    for (double v : yt) c.fill_rect(a.x0, (int)std::lround(a.py(v)), a.x1 - a.x0 + 1, 1, kGrid);
    for (double v : xt) c.fill_rect((int)std::lround(a.px(v)), a.y0, 1, a.y1 - a.y0 + 1, kGrid);
    // frame
    c.fill_rect(a.x0, a.y0, 1, a.y1 - a.y0 + 1, kAxis);
    c.fill_rect(a.x0, a.y1, a.x1 - a.x0 + 1, 1, kAxis);
    c.fill_rect(a.x1, a.y0, 1, a.y1 - a.y0 + 1, kGrid);
    c.fill_rect(a.x0, a.y0, a.x1 - a.x0 + 1, 1, kGrid);
    // ticks and labels
    int widest = 0;
    for (double v : yt) {
        const int y = (int)std::lround(a.py(v));
        c.fill_rect(a.x0 - 5, y, 5, 1, kAxis);
        widest = std::max(widest, c.text(a.x0 - 9, y, tick_label(v, ys), kText, 2, Align::end, Align::center));
    }
    for (double v : xt) {
        const int x = (int)std::lround(a.px(v));
        c.fill_rect(x, a.y1, 1, 5, kAxis);
        c.text(x, a.y1 + 10, tick_label(v, xs), kText, 2, Align::center);
    }
    if (!xlabel.empty()) c.text((a.x0 + a.x1) / 2, a.y1 + 38, xlabel, kText, 2, Align::center);
    if (!ylabel.empty()) c.text_vertical(a.x0 - 9 - widest - 16, (a.y0 + a.y1) / 2, ylabel, kText, 2);
    if (!title.empty()) c.text(a.x0, a.y0 - 12, title, kText, 2, Align::start, Align::end);
}

}  // namespace moe::viz
