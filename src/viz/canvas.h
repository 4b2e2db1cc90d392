#pragma once
// A small raster drawing module for moe's pictures (`moe routing`, `moe plot`): an RGB canvas with
// filled rectangles, anti-aliased lines and dots, bitmap text (stb_easy_font, drawn at an integer
// scale), colour maps, axes with tick labels, and PNG output (stb_image_write, written atomically).
// Coordinates are pixels, x to the right, y down, (0, 0) the top-left pixel. Everything is clipped
// to the canvas.
#include <cstdint>
#include <string>
#include <vector>

namespace moe::viz {

struct Rgb {
    uint8_t r = 0, g = 0, b = 0;
    bool operator==(const Rgb&) const = default;
};

constexpr Rgb kWhite{255, 255, 255};
constexpr Rgb kBlack{0, 0, 0};
constexpr Rgb kText{30, 30, 30};
constexpr Rgb kGrid{228, 228, 228};
constexpr Rgb kAxis{90, 90, 90};

Rgb hex_rgb(uint32_t rrggbb);
Rgb mix(Rgb a, Rgb b, double t);  // (1-t)·a + t·b

// Categorical colour of expert `i` out of `n` (n <= 64 stays distinct): a tab20-like table for
// n <= 20, evenly spread hues with alternating saturation/brightness beyond.
Rgb categorical(int i, int n);
// Sequential colour map (viridis), t in [0, 1] (clamped).
Rgb viridis(double t);

enum class Align { start, center, end };

class Canvas {
public:
    Canvas(int width, int height, Rgb background = kWhite);

    int width() const { return w_; }
    int height() const { return h_; }
    const std::vector<uint8_t>& pixels() const { return px_; }  // (height, width, 3) RGB

    Rgb get(int x, int y) const;
    void set(int x, int y, Rgb c);
    void blend(int x, int y, Rgb c, double alpha);  // alpha in [0, 1]

    // Pixels [x, x+w) x [y, y+h).
    void fill_rect(int x, int y, int w, int h, Rgb c);
    void outline_rect(int x, int y, int w, int h, Rgb c, int thickness = 1);
    // Diagonal hatch lines (spacing px apart) inside the rectangle.
    void hatch_rect(int x, int y, int w, int h, Rgb c, int spacing = 4);
    // Anti-aliased segment of the given width (pixel centres are at integer + 0.5).
    void line(double x0, double y0, double x1, double y1, Rgb c, double width = 1.5);
    // Connected segments through the points (xs[i], ys[i]).
    void polyline(const std::vector<double>& xs, const std::vector<double>& ys, Rgb c, double width = 1.5);
    void dot(double x, double y, double radius, Rgb c);

    // Text with its top-left corner at (x, y) (before alignment), `scale` pixels per font unit.
    // Printable ASCII only; any other byte is drawn as '?'. '\n' starts a new line.
    // Returns the drawn width in pixels.
    int text(int x, int y, const std::string& s, Rgb c, int scale = 2, Align ha = Align::start,
             Align va = Align::start);
    // Text turned 90 degrees counter-clockwise (reads bottom to top), centred on (cx, cy).
    void text_vertical(int cx, int cy, const std::string& s, Rgb c, int scale = 2);

    std::string encode_png() const;
    // Writes the PNG atomically (temp file + rename); throws moe::error naming the path.
    void write_png(const std::string& path) const;

private:
    int w_, h_;
    std::vector<uint8_t> px_;
};

// Size of `s` drawn at `scale`: width of the longest line, and the line height
// (text_height: 12 font units per line; a capital letter is 7 units tall, a descender 2 more).
int text_width(const std::string& s, int scale = 2);
int text_height(const std::string& s, int scale = 2);
int glyph_height(int scale = 2);  // 9 units: cap height + descender of one line

// "Nice" tick values (1, 2, 2.5 or 5 times a power of ten) covering [lo, hi], about `target` of them.
std::vector<double> nice_ticks(double lo, double hi, int target);
// A tick label with as many decimals as the tick spacing needs ("0.5", "1200", "1e-05").
std::string tick_label(double v, double spacing);

// A plot area: pixel rectangle [x0, x1] x [y0, y1] showing data [xmin, xmax] x [ymin, ymax]
// (y grows upwards in data space).
struct Axes {
    int x0 = 0, y0 = 0, x1 = 0, y1 = 0;
    double xmin = 0, xmax = 1, ymin = 0, ymax = 1;
    double px(double x) const;
    double py(double y) const;
};

// Grid lines, the frame, ticks with labels on the left and bottom, axis labels and a title above.
// Ticks are computed by nice_ticks; the data range is widened to whole ticks first when `snap`.
void draw_axes(Canvas& c, Axes& a, const std::string& title, const std::string& xlabel,
               const std::string& ylabel, bool integer_x = false, bool snap = true);

}  // namespace moe::viz
