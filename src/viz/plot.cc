#include "viz/plot.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/checkpoint.h"

namespace moe::viz {

using nlohmann::json;

namespace {

bool ends_with(const std::string& s, const std::string& suf) {
    return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

std::string base_key(const std::string& k) { return k.rfind("val_", 0) == 0 ? k.substr(4) : k; }

std::string excerpt(const std::string& line) {
    std::string s = line.size() > 60 ? line.substr(0, 60) + "..." : line;
    for (char& c : s)
        if ((unsigned char)c < 32) c = ' ';
    return s;
}

Series& series(std::vector<Series>& v, const std::string& key) {
    for (Series& s : v)
        if (s.key == key) return s;
    v.push_back(Series{key, {}, {}});
    return v.back();
}

// Drops every point at a step >= `step` (a later run restarts there).
void truncate_from(std::vector<Series>& v, double step) {
    for (Series& s : v) {
        size_t n = 0;
        while (n < s.x.size() && s.x[n] < step) ++n;
        s.x.resize(n);
        s.y.resize(n);
    }
}

void truncate_routing(std::map<int64_t, std::vector<LoadRecord>>& r, int64_t step) {
    for (auto& [l, recs] : r)
        recs.erase(std::remove_if(recs.begin(), recs.end(), [&](const LoadRecord& x) { return x.step >= step; }),
                   recs.end());
}

// "loss" / "val_loss" first, then by name
void order(std::vector<Series>& v, const std::string& first) {
    std::stable_sort(v.begin(), v.end(), [&](const Series& a, const Series& b) {
        if ((a.key == first) != (b.key == first)) return a.key == first;
        return a.key < b.key;
    });
    v.erase(std::remove_if(v.begin(), v.end(), [](const Series& s) { return s.x.empty(); }), v.end());
}

std::string fmt(double v, int prec = 3) {
    char b[32];
    std::snprintf(b, sizeof b, "%.*g", prec, v);
    return b;
}

}  // namespace

TrainLog parse_train_log(const std::string& text, const std::string& path) {
    TrainLog log;
    log.path = path;
    std::istringstream in(text);
    std::string line;
    int64_t n = 0;
    int64_t last_train = -1, last_eval = -1;
    std::map<int64_t, std::pair<size_t, int64_t>> n_expert;  // layer -> (E, line where first seen)
    size_t consumed = 0;
    while (std::getline(in, line)) {
        ++n;
        consumed += line.size() + 1;
        const bool last_unterminated = consumed > text.size();
        auto where = [&]() { return str(path, ", line ", n, ": "); };
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        json j;
        try {
            j = json::parse(line);
        } catch (const json::exception&) {
            if (last_unterminated) {
                log.notes.push_back(str(where(), "incomplete last line (no newline; is a run still writing it?): skipped"));
                break;
            }
            fail(where(), "not valid JSON: ", excerpt(line));
        }
        if (!j.is_object()) fail(where(), "expected a JSON object, got: ", excerpt(line));
        if (!j.contains("step") || !j["step"].is_number_integer() || j["step"].get<int64_t>() < 0)
            fail(where(), "no integer 'step' >= 0 in: ", excerpt(line));
        const int64_t step = j["step"].get<int64_t>();
        const bool is_eval = j.contains("val_loss") || j.contains("routing");

        // loss keys: numbers (null = not finite when logged: skipped)
        std::vector<std::pair<std::string, double>> values;
        for (auto it = j.begin(); it != j.end(); ++it) {
            if (!ends_with(it.key(), "loss")) continue;
            if (it->is_null()) continue;
            if (!it->is_number()) fail(where(), "field '", it.key(), "' is not a number: ", it->dump());
            values.emplace_back(it.key(), it->get<double>());
        }

        if (is_eval) {
            if (step <= last_eval) {
                log.notes.push_back(str(where(), "evaluation at step ", step, " after step ", last_eval,
                                        ": a later run; its records replace the earlier ones from there"));
                truncate_from(log.eval, (double)step);
                truncate_routing(log.routing, step);
            }
            last_eval = step;
            for (auto& [k, v] : values) {
                Series& s = series(log.eval, k);
                s.x.push_back((double)step);
                s.y.push_back(v);
            }
            if (j.contains("routing")) {
                const json& r = j["routing"];
                if (!r.is_array()) fail(where(), "'routing' is not an array");
                std::vector<int64_t> seen;
                for (size_t i = 0; i < r.size(); ++i) {
                    const json& e = r[i];
                    const std::string at = str("routing[", i, "]");
                    if (!e.is_object()) fail(where(), at, " is not an object");
                    if (!e.contains("layer") || !e["layer"].is_number_integer() || e["layer"].get<int64_t>() < 0)
                        fail(where(), at, " has no integer 'layer' >= 0");
                    const int64_t layer = e["layer"].get<int64_t>();
                    if (std::find(seen.begin(), seen.end(), layer) != seen.end())
                        fail(where(), "layer ", layer, " appears twice in 'routing'");
                    seen.push_back(layer);
                    if (!e.contains("load") || !e["load"].is_array() || e["load"].empty())
                        fail(where(), at, " (layer ", layer, ") has no 'load' array");
                    LoadRecord rec;
                    rec.step = step;
                    for (const json& x : e["load"]) {
                        if (!x.is_number() || x.get<double>() < 0 || !std::isfinite(x.get<double>()))
                            fail(where(), "layer ", layer, ": 'load' holds ", x.dump(), ", not a count >= 0");
                        rec.load.push_back(x.get<double>());
                    }
                    auto [it, fresh] = n_expert.try_emplace(layer, rec.load.size(), n);
                    if (!fresh && it->second.first != rec.load.size())
                        fail(where(), "layer ", layer, " has ", rec.load.size(), " experts in 'load' but ",
                             it->second.first, " at line ", it->second.second);
                    for (auto s = e.begin(); s != e.end(); ++s) {
                        if (s.key() == "layer" || s.key() == "load" || s->is_null()) continue;
                        if (!s->is_number()) fail(where(), "layer ", layer, ": '", s.key(), "' is not a number: ", s->dump());
                        rec.stats[s.key()] = s->get<double>();
                    }
                    log.routing[layer].push_back(std::move(rec));
                }
            }
            continue;
        }
        if (values.empty()) continue;  // some other kind of record
        if (step <= last_train) {
            log.notes.push_back(str(where(), "step ", step, " after step ", last_train,
                                    ": a later run; its records replace the earlier ones from there"));
            truncate_from(log.train, (double)step);
            truncate_from(log.eval, (double)step);
            truncate_routing(log.routing, step);
            last_eval = std::min(last_eval, step - 1);
        }
        last_train = step;
        for (auto& [k, v] : values) {
            Series& s = series(log.train, k);
            s.x.push_back((double)step);
            s.y.push_back(v);
        }
    }
    order(log.train, "loss");
    order(log.eval, "val_loss");
    for (auto it = log.routing.begin(); it != log.routing.end();)
        it = it->second.empty() ? log.routing.erase(it) : std::next(it);
    if (log.train.empty() && log.eval.empty() && log.routing.empty())
        fail(path, ": no loss values found (expected JSONL lines like {\"step\": 10, \"loss\": 2.3} from moe train --log)");
    return log;
}

TrainLog read_train_log(const std::string& path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (fs::is_directory(path, ec)) fail("log '", path, "' is a directory, not a JSONL file");
    std::ifstream f(path, std::ios::binary);
    if (!f) fail("cannot open log '", path, "': ", std::strerror(errno));
    std::stringstream ss;
    ss << f.rdbuf();
    if (f.bad()) fail("cannot read log '", path, "'");
    return parse_train_log(ss.str(), path);
}

// --- loss figure ---

namespace {

constexpr int kW = 1100;
constexpr int kLeft = 120, kRight = 30;

const Rgb kTrain = hex_rgb(0x1f77b4), kVal = hex_rgb(0xff7f0e);
const Rgb kOther[] = {hex_rgb(0x2ca02c), hex_rgb(0x9467bd), hex_rgb(0xd62728), hex_rgb(0x8c564b),
                      hex_rgb(0xe377c2), hex_rgb(0x17becf)};

std::vector<double> moving_average(const std::vector<double>& y, int w) {
    std::vector<double> out(y.size());
    const int h = w / 2;
    for (size_t i = 0; i < y.size(); ++i) {
        const size_t a = i >= (size_t)h ? i - h : 0, b = std::min(y.size(), i + h + 1);
        double s = 0;
        for (size_t k = a; k < b; ++k) s += y[k];
        out[i] = s / (double)(b - a);
    }
    return out;
}

struct Curve {
    const Series* s;
    Rgb colour;
    std::string label;
    bool dots;
};

struct LegendEntry {
    Rgb colour;
    std::string label;
    bool dots;
    double width;
};

void draw_legend(Canvas& c, const Axes& a, const std::vector<LegendEntry>& items) {
    int w = 0;
    for (const auto& it : items) w = std::max(w, text_width(it.label, 2));
    const int bw = w + 64, bh = (int)items.size() * 24 + 12;
    const int x = a.x1 - bw - 10, y = a.y0 + 10;
    c.fill_rect(x, y, bw, bh, kWhite);
    c.outline_rect(x, y, bw, bh, Rgb{200, 200, 200});
    for (size_t i = 0; i < items.size(); ++i) {
        const int cy = y + 18 + (int)i * 24;
        c.line(x + 10, cy, x + 42, cy, items[i].colour, items[i].width);
        if (items[i].dots) c.dot(x + 26, cy, 4, items[i].colour);
        c.text(x + 52, cy, items[i].label, kText, 2, Align::start, Align::center);
    }
}

// One panel of curves sharing a y range, in the band [top, top + h) of the canvas.
void draw_panel(Canvas& c, int top, int h, double xmax, const std::vector<Curve>& curves, const std::string& title,
                const std::string& ylabel, bool smooth_train) {
    Axes a;
    a.x0 = kLeft;
    a.x1 = kW - kRight;
    a.y0 = top + 44;
    a.y1 = top + h - 70;
    a.xmin = 0;
    a.xmax = std::max(xmax, 1.0);
    double lo = 1e300, hi = -1e300;
    for (const Curve& cv : curves)
        for (double v : cv.s->y)
            if (std::isfinite(v)) {
                lo = std::min(lo, v);
                hi = std::max(hi, v);
            }
    if (lo > hi) lo = 0, hi = 1;
    const double pad = (hi - lo) * 0.05;
    a.ymin = lo - pad;
    a.ymax = hi + pad;
    draw_axes(c, a, title, "step", ylabel, true, true);
    // Curves without dots (per-step training values) with >= 100 points are drawn twice: raw in a
    // light tint first (under everything), then a moving average in full colour. Curves with dots
    // (evaluations) go on top.
    std::vector<LegendEntry> legend;
    std::vector<std::vector<double>> X(curves.size()), Y(curves.size());
    std::vector<bool> smooth(curves.size());
    for (size_t i = 0; i < curves.size(); ++i) {
        const Series& s = *curves[i].s;
        std::vector<double> raw;
        for (size_t k = 0; k < s.x.size(); ++k) {
            if (!std::isfinite(s.y[k])) continue;
            X[i].push_back(a.px(s.x[k]));
            Y[i].push_back(a.py(s.y[k]));
            raw.push_back(s.y[k]);
        }
        smooth[i] = smooth_train && !curves[i].dots && X[i].size() >= 100;
        if (smooth[i]) {
            c.polyline(X[i], Y[i], mix(curves[i].colour, kWhite, 0.6), 1.2);
            Y[i] = moving_average(raw, std::max(3, (int)raw.size() / 30) | 1);
            for (double& v : Y[i]) v = a.py(v);
        }
    }
    for (int pass = 0; pass < 2; ++pass)
        for (size_t i = 0; i < curves.size(); ++i) {
            const Curve& cv = curves[i];
            if (cv.dots != (pass == 1)) continue;
            // the first curve a bit wider: a nearly equal later one (lm_loss over loss) leaves it visible
            c.polyline(X[i], Y[i], cv.colour, (smooth[i] ? 2.5 : 2.0) + (i == 0 && curves.size() > 1 ? 1.5 : 0));
            if (cv.dots)
                for (size_t k = 0; k < X[i].size(); ++k) c.dot(X[i][k], Y[i][k], 4, cv.colour);
        }
    for (size_t i = 0; i < curves.size(); ++i) {
        if (smooth[i]) {
            legend.push_back({mix(curves[i].colour, kWhite, 0.6), curves[i].label, false, 1.5});
            legend.push_back({curves[i].colour, curves[i].label + " (smoothed)", false, 2.5});
        } else {
            legend.push_back({curves[i].colour, curves[i].label, curves[i].dots, 2.0});
        }
    }
    if (!legend.empty()) draw_legend(c, a, legend);
}

}  // namespace

Canvas draw_loss_plot(const TrainLog& log) {
    // group the keys by their base name (val_X goes with X): "loss" and "lm_loss" share the main
    // panel, every other term gets its own
    std::vector<std::string> bases;
    auto add_base = [&](const std::string& b) {
        if (b != "loss" && b != "lm_loss" && std::find(bases.begin(), bases.end(), b) == bases.end()) bases.push_back(b);
    };
    for (const Series& s : log.train) add_base(base_key(s.key));
    for (const Series& s : log.eval) add_base(base_key(s.key));
    std::sort(bases.begin(), bases.end());

    double xmax = 0;
    for (const auto* v : {&log.train, &log.eval})
        for (const Series& s : *v)
            for (double x : s.x) xmax = std::max(xmax, x);

    const int main_h = 520, aux_h = 300, title_h = 50;
    Canvas c(kW, title_h + main_h + (int)bases.size() * aux_h);
    c.text(24, 16, "training run: " + log.path, kText, 2);

    auto find = [](const std::vector<Series>& v, const std::string& k) -> const Series* {
        for (const Series& s : v)
            if (s.key == k) return &s;
        return nullptr;
    };
    std::vector<Curve> main;
    int other = 0;
    if (const Series* s = find(log.train, "loss")) main.push_back({s, kTrain, "train loss", false});
    if (const Series* s = find(log.train, "lm_loss")) main.push_back({s, kOther[other++], "train lm_loss", false});
    if (const Series* s = find(log.eval, "val_loss")) main.push_back({s, kVal, "val loss", true});
    if (const Series* s = find(log.eval, "val_lm_loss")) main.push_back({s, kOther[other++], "val lm_loss", true});
    draw_panel(c, title_h, main_h, xmax, main, "loss (nats per token)", "loss", true);
    int top = title_h + main_h;
    int ci = 0;
    for (const std::string& b : bases) {
        std::vector<Curve> cv;
        if (const Series* s = find(log.train, b)) cv.push_back({s, kOther[ci % 6], "train " + b, false});
        if (const Series* s = find(log.eval, "val_" + b)) cv.push_back({s, kVal, "val " + b, true});
        ++ci;
        draw_panel(c, top, aux_h, xmax, cv, b, b, true);
        top += aux_h;
    }
    return c;
}

// --- load heatmap ---

Canvas draw_load_heatmap(const TrainLog& log, int64_t layer) {
    auto it = log.routing.find(layer);
    MOE_ASSERT(it != log.routing.end() && !it->second.empty());
    const std::vector<LoadRecord>& recs = it->second;
    const int E = (int)recs[0].load.size();
    const int n = (int)recs.size();
    const double fair = 1.0 / E;

    // shares, and the colour scale: 0 .. a nice value above the largest share (at least 1.5/E so
    // that the fair share sits inside the scale)
    std::vector<double> share((size_t)n * E, 0);
    double mx = 0;
    for (int i = 0; i < n; ++i) {
        double tot = 0;
        for (double v : recs[i].load) tot += v;
        for (int e = 0; e < E; ++e) {
            share[(size_t)i * E + e] = tot > 0 ? recs[i].load[e] / tot : 0;
            mx = std::max(mx, share[(size_t)i * E + e]);
        }
    }
    double vmax = std::max(mx, 1.5 * fair);
    {
        std::vector<double> t = nice_ticks(0, vmax, 5);
        const double st = t.size() > 1 ? t[1] - t[0] : vmax;
        vmax = std::min(1.0, std::ceil(vmax / st - 1e-9) * st);
    }

    const int cell_h = std::clamp(400 / E, 8, 44);
    const int plot_h = cell_h * E;
    const int top = 136;
    Canvas c(kW, top + plot_h + 80);
    const int x0 = 110, x1 = kW - 190;
    const int plot_w = x1 - x0;

    c.text(24, 16, str("layer ", layer, ": share of the layer's routed tokens per expert (fair share 1/E = ",
                       fmt(100 * fair), "%)"), kText, 2);
    const LoadRecord& last = recs.back();
    std::string st = str("at step ", last.step, ":");
    for (const char* k : {"max_share", "cv", "entropy", "rerouted", "dropped", "dead"}) {
        auto s = last.stats.find(k);
        if (s != last.stats.end()) st += str(" ", k, "=", fmt(s->second));
    }
    if (last.stats.empty()) st += str(" max/fair=", fmt(mx > 0 ? (*std::max_element(share.end() - E, share.end())) / fair : 0));
    c.text(24, 44, st, Rgb{90, 90, 90}, 2);
    c.text(24, 72, log.path, Rgb{130, 130, 130}, 2);

    // cells
    for (int i = 0; i < n; ++i) {
        const int xa = x0 + (int)std::lround((double)i * plot_w / n), xb = x0 + (int)std::lround((double)(i + 1) * plot_w / n);
        for (int e = 0; e < E; ++e) c.fill_rect(xa, top + e * cell_h, xb - xa, cell_h, viridis(share[(size_t)i * E + e] / vmax));
    }
    c.outline_rect(x0 - 1, top - 1, plot_w + 2, plot_h + 2, kAxis);
    // y labels: experts (thinned to fit)
    const int ystep = std::max(1, (int)std::ceil(20.0 / cell_h));
    for (int e = 0; e < E; e += ystep) {
        const int y = top + e * cell_h + cell_h / 2;
        c.fill_rect(x0 - 6, y, 5, 1, kAxis);
        c.text(x0 - 10, y, str("e", e), kText, 2, Align::end, Align::center);
    }
    c.text_vertical(28, top + plot_h / 2, "expert", kText, 2);
    // x labels: the step of every k-th evaluation
    const double col = (double)plot_w / n;
    int xstep = 1;
    int widest = 0;
    for (const LoadRecord& r : recs) widest = std::max(widest, text_width(std::to_string(r.step), 2));
    while (col * xstep < widest + 16) ++xstep;
    for (int i = 0; i < n; i += xstep) {
        const int x = x0 + (int)std::lround((i + 0.5) * col);
        c.fill_rect(x, top + plot_h + 1, 1, 5, kAxis);
        c.text(x, top + plot_h + 10, std::to_string(recs[i].step), kText, 2, Align::center);
    }
    c.text((x0 + x1) / 2, top + plot_h + 40, str("step (", n, " evaluations)"), kText, 2, Align::center);

    // colour bar with the fair share marked
    const int bx = x1 + 30, bw = 24;
    for (int y = 0; y < plot_h; ++y) c.fill_rect(bx, top + y, bw, 1, viridis(1.0 - (y + 0.5) / plot_h));
    c.outline_rect(bx - 1, top - 1, bw + 2, plot_h + 2, kAxis);
    std::vector<double> ticks = nice_ticks(0, vmax, std::max(2, plot_h / 60));
    const double tsp = ticks.size() > 1 ? ticks[1] - ticks[0] : vmax;
    auto bar_y = [&](double v) { return top + (int)std::lround((1.0 - v / vmax) * (plot_h - 1)); };
    const int fy = bar_y(fair);
    for (double v : ticks) {
        c.fill_rect(bx + bw + 1, bar_y(v), 5, 1, kAxis);
        if (std::abs(bar_y(v) - fy) < 18) continue;  // the fair-share label goes there
        c.text(bx + bw + 10, bar_y(v), tick_label(100 * v, 100 * tsp) + "%", kText, 2, Align::start, Align::center);
    }
    const Rgb red = hex_rgb(0xd62728);
    c.fill_rect(bx - 4, fy - 1, bw + 12, 3, red);
    c.text(bx + bw + 10, fy, "1/E", red, 2, Align::start, Align::center);
    c.text(bx + bw / 2, top - 40, "share", kText, 2, Align::center);
    return c;
}

Canvas draw_compare_plot(const std::vector<TrainLog>& logs) {
    const int main_h = 560, title_h = 50;
    Canvas c(kW, title_h + main_h);
    std::string names;
    for (const TrainLog& l : logs) names += (names.empty() ? "" : " vs ") + std::filesystem::path(l.path).stem().string();
    c.text(24, 16, "runs: " + names, kText, 2);
    double xmax = 0;
    std::vector<Curve> curves;
    int i = 0;
    const Rgb colours[] = {kTrain, kVal, kOther[0], kOther[1], kOther[2], kOther[3]};
    for (const TrainLog& l : logs) {
        const std::string stem = std::filesystem::path(l.path).stem().string();
        const Rgb col = colours[i++ % 6];
        for (const auto* v : {&l.train, &l.eval})
            for (const Series& s : *v)
                for (double x : s.x) xmax = std::max(xmax, x);
        for (const Series& s : l.train)
            if (s.key == "loss") curves.push_back({&s, col, stem + " train", false});
        for (const Series& s : l.eval)
            if (s.key == "val_loss") curves.push_back({&s, col, stem + " val", true});
    }
    draw_panel(c, title_h, main_h, xmax, curves, "loss (nats per token)", "loss", true);
    return c;
}

std::vector<std::string> plot_compare(const std::vector<std::string>& log_paths, const std::string& out_dir) {
    std::vector<TrainLog> logs;
    for (const std::string& p : log_paths) logs.push_back(read_train_log(p));
    ensure_writable_dir(out_dir);
    const std::string png = (std::filesystem::path(out_dir) / "compare.png").string();
    draw_compare_plot(logs).write_png(png);
    return {png};
}

PlotResult plot_train_log(const std::string& log_path, const std::string& out_dir) {
    TrainLog log = read_train_log(log_path);
    PlotResult res;
    res.notes = log.notes;
    ensure_writable_dir(out_dir);
    namespace fs = std::filesystem;
    const std::string loss_png = (fs::path(out_dir) / "loss.png").string();
    draw_loss_plot(log).write_png(loss_png);
    res.written.push_back(loss_png);
    if (log.routing.empty())
        res.notes.push_back(str(log_path, " has no 'routing' records: wrote only the loss plot"));
    for (const auto& [layer, recs] : log.routing) {
        const std::string p = (fs::path(out_dir) / str("load_layer", layer, ".png")).string();
        draw_load_heatmap(log, layer).write_png(p);
        res.written.push_back(p);
    }
    return res;
}

}  // namespace moe::viz
