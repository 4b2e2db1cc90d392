#pragma once
// `moe plot`: pictures of a training run from its JSONL log (`moe train --log FILE`).
//
// The log has one JSON object per line, each with an integer "step":
//   step lines  {"step": 10, "loss": 2.31, "lr": ..., "tokens_per_sec": ..., "grad_norm": ...}
//               (may also carry loss terms such as "lm_loss", "aux_loss", "z_loss")
//   eval lines  {"step": 200, "val_loss": 1.93, "routing": [{"layer": 0, "load": [512, 498, ...],
//               "max_share": 1.12, "cv": 0.08, "entropy": 1.9, "rerouted": 0.01, "dropped": 0.0,
//               "dead": 0}, ...]}   ("routing" is optional; any stats key in it is optional)
// Every numeric key whose name ends in "loss" is a curve. Other keys and other kinds of lines
// (with a "step" but no loss) are ignored, so the log may grow new fields.
//
// A line that is not a JSON object with an integer "step", or whose loss / routing fields have the
// wrong type, is an error naming the file and line number. The one exception is an unparsable
// last line without a final newline (a run still writing it): it is skipped with a note.
// Several runs appended to one log (the step goes back): the later run wins from the step where it
// starts, with a note.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <moe/viz.h>  // PlotResult, plot_train_log, plot_compare

#include "viz/canvas.h"

namespace moe::viz {

struct Series {
    std::string key;            // e.g. "loss", "val_loss", "aux_loss"
    std::vector<double> x, y;   // step, value
};

struct LoadRecord {
    int64_t step = 0;
    std::vector<double> load;              // (E) tokens routed to each expert
    std::map<std::string, double> stats;   // max_share, cv, entropy, rerouted, dropped, dead, ...
};

struct TrainLog {
    std::string path;
    std::vector<Series> train;  // per-step loss keys, "loss" first
    std::vector<Series> eval;   // per-eval loss keys, "val_loss" first
    std::map<int64_t, std::vector<LoadRecord>> routing;  // layer -> evaluations in step order
    std::vector<std::string> notes;
};

// Throws moe::error naming the file (and line) for a missing, unreadable or malformed log.
TrainLog read_train_log(const std::string& path);
TrainLog parse_train_log(const std::string& text, const std::string& path);

// Loss curves: one panel with the training loss (raw and smoothed) and the validation loss (dots),
// plus "lm_loss" when present; one more panel per other loss term (aux_loss, z_loss, ...), each
// with its own y range.
Canvas draw_loss_plot(const TrainLog& log);
// Expert load over time for one layer: x = evaluation (labelled by step), y = expert, colour =
// the expert's share of the layer's routed tokens; the colour bar marks the fair share 1/E.
Canvas draw_load_heatmap(const TrainLog& log, int64_t layer);

// PlotResult, plot_train_log (loss.png, load_layer{l}.png) and plot_compare (compare.png) are
// declared in moe/viz.h.

// Several runs on one panel (train loss smoothed, val loss as dots; one colour per run, labelled by
// the log's file stem), as plot_compare writes it. For MoE-vs-dense or ablation comparisons.
Canvas draw_compare_plot(const std::vector<TrainLog>& logs);

}  // namespace moe::viz
