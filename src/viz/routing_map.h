#pragma once
// `moe routing`: which experts each token of a text went to, in every layer.
//
// Picture layout (all sizes in pixels, see routing_map_size):
//   title and a one-line description at the top; the text's tokens across (one kCellW-wide
//   column per token, the token's character drawn above and below the map, token indices every 10
//   below); one row per layer down, labelled "layer l" on the left. An MoE row holds K stripes,
//   slot 1 (first choice, highest router logit) on top, each coloured by the expert that served
//   the slot (with shade_by_weight, `moe routing --weights`, the colour fades towards white as the
//   combine weight falls; weight 1 = full colour). A dropped slot is black with a grey hatch; a dense layer is a grey row labelled
//   "dense". A legend of expert colours (plus dense / dropped / weight shades) closes the picture.
//
// Text longer than the model's context is an error naming both lengths: the picture shows one
// forward pass, and a token's routing depends on the tokens before it in the same pass.
#include <cstdint>
#include <string>
#include <vector>

#include <moe/viz.h>  // RoutingMapOptions, write_routing_map(LoadedModel&, ...)

#include "io/checkpoint.h"
#include "model/model.h"
#include "viz/canvas.h"

namespace moe::viz {

// One forward pass over a text, kept for drawing.
struct RoutingTrace {
    int64_t T = 0, L = 0, E = 0, K = 0;
    std::vector<bool> moe_layer;      // (L)
    std::vector<int32_t> expert;      // (L, T, K) expert of each (layer, token, slot), -1 = dropped
    std::vector<float> weight;        // (L, T, K) combine weight
    std::vector<std::string> glyphs;  // (T) what to print for each token (see token_glyph)
};

// The label drawn for a token: the character itself for printable ASCII (a space stays " " and is
// drawn as a small open box), "\n" / "\t" for newline / tab, otherwise hex: "E9" for a byte or a
// code point below 256, "2014" for a larger code point.
std::string token_glyph(const Tokenizer& tok, int32_t id);

// Runs the model on `ids` (1 <= ids.size() <= n_ctx) and records the routing of every MoE layer.
RoutingTrace trace_routing(Model& model, const Tokenizer& tok, const std::vector<int32_t>& ids);

// Layout constants (public so that tests can predict the image size).
constexpr int kCellW = 16;       // pixels per token
constexpr int kMapLeft = 150;    // left margin: layer labels and slot numbers
constexpr int kMapRight = 24;
constexpr int kMinMapWidth = 820;
constexpr int kMapTop = 112;     // title, description, top glyph row
constexpr int kLayerGap = 8;     // between layer rows
constexpr int kMapBelow = 64;    // bottom glyph row and token indices
constexpr int kLegendEntryW = 80;
constexpr int kLegendRowH = 26;
constexpr int kLegendTop = 40;   // "experts" heading and spacing above the legend entries
constexpr int kLegendBottom = 54;  // the row of special entries (dense, dropped, weights) + margin
int routing_row_height(int64_t K);  // 24 for K = 1, 12 per slot otherwise
struct Size {
    int width = 0, height = 0;
};
// width  = max(kMinMapWidth, kMapLeft + T·kCellW + kMapRight)
// height = kMapTop + L·row_height(K) + (L-1)·kLayerGap + kMapBelow + kLegendTop
//          + ceil(E / per_row)·kLegendRowH + kLegendBottom,  per_row = (width - 2·24) / kLegendEntryW
Size routing_map_size(int64_t T, int64_t L, int64_t K, int64_t E);

Canvas draw_routing_map(const RoutingTrace& tr, const RoutingMapOptions& opt);

// Encodes `text` with the checkpoint's tokenizer (its error for characters outside the vocabulary),
// checks it fits the context, runs the model and writes the PNG to `out_png`.
void write_routing_map(Checkpoint& ck, const std::string& text, const std::string& out_png,
                       const RoutingMapOptions& opt);

}  // namespace moe::viz
