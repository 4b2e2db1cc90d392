#pragma once
// moe's public API for pictures (PNG): the routing map of a text (`moe routing`) and the plots of a
// training log (`moe plot`). Standard library only; the engine part is moe/moe.h.
//
// The option and result structs below are the engine's own: src/viz/routing_map.h and
// src/viz/plot.h include this header instead of defining a copy. Errors are moe::error naming
// the file (and line) or the option.
#include <string>
#include <vector>

#include "moe/moe.h"

namespace moe::viz {

struct RoutingMapOptions {
    std::string title;             // first line, e.g. the checkpoint path
    bool shade_by_weight = false;  // fade each slot's colour by its combine weight
};

// One forward pass over `text` (1 to n_ctx tokens of the model's tokenizer; longer is an error
// naming both lengths): tokens across, layers down, one stripe per routing slot coloured by the
// expert that served it. Writes the PNG to out_png.
void write_routing_map(LoadedModel& model, const std::string& text, const std::string& out_png,
                       const RoutingMapOptions& opt);

struct PlotResult {
    std::vector<std::string> written;  // paths of the PNGs
    std::vector<std::string> notes;
};

// Reads a JSONL log of `moe train --log` and writes out_dir/loss.png and out_dir/load_layer{l}.png
// for every layer with routing records (none, with a note, when the log has no "routing").
// Creates out_dir.
PlotResult plot_train_log(const std::string& log_path, const std::string& out_dir);

// Several runs on one panel (one colour per run, labelled by the log's file stem):
// out_dir/compare.png. Returns the paths written.
std::vector<std::string> plot_compare(const std::vector<std::string>& log_paths, const std::string& out_dir);

}  // namespace moe::viz
