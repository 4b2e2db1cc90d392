#include "viz/routing_map.h"

#include <algorithm>
#include <cstdio>

#include "core/error.h"

namespace moe::viz {

namespace {

constexpr int kPad = 24;  // outer margin left/right of the legend
const Rgb kDense{205, 205, 205};
const Rgb kDenseText{120, 120, 120};
const Rgb kEscape{70, 100, 170};  // labels of tokens that are not a printable character

int legend_per_row(int width) { return std::max(1, (width - 2 * kPad) / kLegendEntryW); }

// Draws a token label centred in the cell [x, x+kCellW) at vertical centre cy.
void draw_glyph(Canvas& c, int x, int cy, const std::string& g) {
    const int cx = x + kCellW / 2;
    if (g == " ") {  // an open box: a space that can be seen
        const Rgb k{150, 150, 150};
        c.fill_rect(cx - 5, cy + 5, 10, 2, k);
        c.fill_rect(cx - 5, cy + 1, 2, 5, k);
        c.fill_rect(cx + 3, cy + 1, 2, 5, k);
        return;
    }
    if (g.size() == 1) {
        c.text(cx, cy, g, kText, 2, Align::center, Align::center);
        return;
    }
    std::string s = g;
    if (s.size() == 4) s = s.substr(0, 2) + "\n" + s.substr(2);  // a 4-digit code point: two lines
    c.text(cx, cy, s, kEscape, 1, Align::center, Align::center);
}

// Shade of an expert colour for a combine weight w in [0, 1].
Rgb shade(Rgb col, float w, bool on) { return on ? mix(kWhite, col, 0.3 + 0.7 * std::clamp(w, 0.f, 1.f)) : col; }

std::string fit(const std::string& s, int width, int scale) {
    if (text_width(s, scale) <= width) return s;
    std::string r = s;
    while (!r.empty() && text_width("..." + r, scale) > width) r.erase(0, 1);
    return "..." + r;
}

}  // namespace

int routing_row_height(int64_t K) { return K <= 1 ? 24 : (int)(12 * K); }

Size routing_map_size(int64_t T, int64_t L, int64_t K, int64_t E) {
    Size s;
    s.width = (int)std::max<int64_t>(kMinMapWidth, kMapLeft + T * kCellW + kMapRight);
    const int per_row = legend_per_row(s.width);
    const int64_t legend_rows = (std::max<int64_t>(E, 1) + per_row - 1) / per_row;
    s.height = (int)(kMapTop + L * routing_row_height(K) + (L - 1) * kLayerGap + kMapBelow + kLegendTop +
                     legend_rows * kLegendRowH + kLegendBottom);
    return s;
}

std::string token_glyph(const Tokenizer& tok, int32_t id) {
    uint32_t cp;
    if (tok.kind() == Tokenizer::Kind::byte) {
        cp = (uint32_t)id;
    } else if (tok.kind() == Tokenizer::Kind::bpe || tok.kind() == Tokenizer::Kind::hf) {
        // one glyph per cell: the piece's first character after its leading space (a BPE piece
        // may end inside a UTF-8 character; then its first byte, in hex)
        std::string piece = tok.decode_one(id);
        if (piece.size() > 1 && piece[0] == ' ') piece.erase(0, 1);
        const auto* p = reinterpret_cast<const unsigned char*>(piece.data());
        int len;
        if (utf8_next(p, piece.size(), cp, len) != Utf8::ok) cp = p[0];
    } else {
        std::vector<uint32_t> cps = utf8_decode(tok.decode_one(id), "tokenizer");
        cp = cps.empty() ? 0 : cps[0];
    }
    if (cp >= 32 && cp < 127) return std::string(1, (char)cp);
    if (cp == '\n') return "\\n";
    if (cp == '\t') return "\\t";
    char b[16];
    if (cp < 256) std::snprintf(b, sizeof b, "%02X", cp);
    else if (cp < 0x10000) std::snprintf(b, sizeof b, "%04X", cp);
    else return "?";
    return b;
}

RoutingTrace trace_routing(Model& model, const Tokenizer& tok, const std::vector<int32_t>& ids) {
    const ModelConfig& m = model.config();
    MOE_ASSERT(!ids.empty() && (int64_t)ids.size() <= m.n_ctx);
    RoutingTrace tr;
    tr.T = (int64_t)ids.size();
    tr.L = m.n_layer;
    tr.E = m.any_moe() ? m.n_expert : 0;
    tr.K = m.any_moe() ? m.n_expert_used : 1;
    tr.moe_layer.assign(tr.L, false);
    tr.expert.assign(tr.L * tr.T * tr.K, -1);
    tr.weight.assign(tr.L * tr.T * tr.K, 0.f);
    model.forward(ids.data(), nullptr, 1, tr.T);
    for (int64_t l = 0; l < tr.L; ++l) {
        const layers::FfnCache* c = model.ffn_cache(l);
        if (!c) continue;
        tr.moe_layer[l] = true;
        std::copy(c->route.topk_expert, c->route.topk_expert + tr.T * tr.K, tr.expert.begin() + l * tr.T * tr.K);
        std::copy(c->route.topk_weight, c->route.topk_weight + tr.T * tr.K, tr.weight.begin() + l * tr.T * tr.K);
    }
    for (int32_t id : ids) tr.glyphs.push_back(token_glyph(tok, id));
    return tr;
}

Canvas draw_routing_map(const RoutingTrace& tr, const RoutingMapOptions& opt) {
    const Size sz = routing_map_size(tr.T, tr.L, tr.K, tr.E);
    Canvas c(sz.width, sz.height);
    const int row_h = routing_row_height(tr.K);
    const int stripe_h = tr.K <= 1 ? row_h : 12;
    const int x0 = kMapLeft;

    // title and description
    c.text(kPad, 12, fit(opt.title.empty() ? std::string("routing map") : opt.title, sz.width - 2 * kPad, 2),
           kText, 2);
    std::string desc = str(tr.T, " tokens across, ", tr.L, " layers down");
    if (tr.E > 0)
        desc += str("; ", tr.E, " experts, top-", tr.K, tr.K > 1 ? str(": stripes = choices 1..", tr.K) : "");
    c.text(kPad, 40, fit(desc, sz.width - 2 * kPad, 2), Rgb{90, 90, 90}, 2);

    // token glyphs above and below the map, token indices below
    const int map_top = kMapTop;
    const int map_bottom = map_top + (int)(tr.L * row_h + (tr.L - 1) * kLayerGap);
    for (int64_t t = 0; t < tr.T; ++t) {
        const int x = x0 + (int)t * kCellW;
        draw_glyph(c, x, map_top - 20, tr.glyphs[t]);
        draw_glyph(c, x, map_bottom + 18, tr.glyphs[t]);
        if (t % 10 == 0) {
            c.fill_rect(x + kCellW / 2, map_bottom + 32, 1, 5, kAxis);
            c.text(x + kCellW / 2, map_bottom + 40, std::to_string(t), Rgb{110, 110, 110}, 2, Align::center);
        }
    }
    c.text(x0 - 12, map_bottom + 40, "token", Rgb{110, 110, 110}, 2, Align::end);

    // layer rows
    for (int64_t l = 0; l < tr.L; ++l) {
        const int y = map_top + (int)l * (row_h + kLayerGap);
        c.text(kPad, y + row_h / 2, str("layer ", l), kText, 2, Align::start, Align::center);
        if (!tr.moe_layer[l]) {
            c.fill_rect(x0, y, (int)tr.T * kCellW, row_h, kDense);
            const int sc = row_h >= 20 ? 2 : 1;
            // "dense" once per 40 tokens, where the segment is wide enough
            for (int64_t t0 = 0; t0 < tr.T; t0 += 40) {
                const int64_t n = std::min<int64_t>(40, tr.T - t0);
                if (n * kCellW < text_width("dense", sc) + 8) continue;
                c.text(x0 + (int)((2 * t0 + n) * kCellW / 2), y + row_h / 2, "dense", kDenseText, sc, Align::center,
                       Align::center);
            }
            continue;
        }
        if (tr.K > 1)
            for (int64_t k = 0; k < tr.K; ++k)
                c.text(x0 - 6, y + (int)k * stripe_h + stripe_h / 2, std::to_string(k + 1), Rgb{130, 130, 130}, 1,
                       Align::end, Align::center);
        for (int64_t t = 0; t < tr.T; ++t)
            for (int64_t k = 0; k < tr.K; ++k) {
                const size_t i = (size_t)((l * tr.T + t) * tr.K + k);
                const int cx = x0 + (int)t * kCellW, cy = y + (int)k * stripe_h;
                const int w = kCellW - 1, h = stripe_h - (tr.K > 1 && k + 1 < tr.K ? 1 : 0);
                const int32_t e = tr.expert[i];
                if (e < 0 || e >= tr.E) {
                    c.fill_rect(cx, cy, w, h, kBlack);
                    c.hatch_rect(cx, cy, w, h, Rgb{110, 110, 110}, 4);
                } else {
                    c.fill_rect(cx, cy, w, h, shade(categorical(e, (int)tr.E), tr.weight[i], opt.shade_by_weight));
                }
            }
    }

    // legend
    int ly = map_bottom + kMapBelow + 8;
    c.text(kPad, ly, tr.E > 0 ? "experts (colour = expert serving the slot)" : "experts: none (dense model)", kText, 2);
    ly = map_bottom + kMapBelow + kLegendTop;
    const int per_row = legend_per_row(sz.width);
    for (int64_t e = 0; e < tr.E; ++e) {
        const int lx = kPad + (int)(e % per_row) * kLegendEntryW;
        const int y = ly + (int)(e / per_row) * kLegendRowH;
        c.fill_rect(lx, y, 20, 18, categorical((int)e, (int)tr.E));
        c.text(lx + 26, y + 9, str("e", e), kText, 2, Align::start, Align::center);
    }
    const int64_t rows = (std::max<int64_t>(tr.E, 1) + per_row - 1) / per_row;
    int y = ly + (int)rows * kLegendRowH + 6;
    int lx = kPad;
    c.fill_rect(lx, y, 20, 18, kDense);
    lx += 26 + c.text(lx + 26, y + 9, "dense layer", kText, 2, Align::start, Align::center) + 24;
    c.fill_rect(lx, y, 20, 18, kBlack);
    c.hatch_rect(lx, y, 20, 18, Rgb{110, 110, 110}, 4);
    lx += 26 + c.text(lx + 26, y + 9, "dropped", kText, 2, Align::start, Align::center) + 24;
    if (opt.shade_by_weight && tr.E > 0) {
        lx += c.text(lx, y + 9, "weight", kText, 2, Align::start, Align::center) + 8;
        for (float w : {1.f, 0.5f, 0.1f}) {
            c.fill_rect(lx, y, 20, 18, shade(categorical(0, (int)tr.E), w, true));
            lx += 26 + c.text(lx + 26, y + 9, w == 1.f ? "1" : w == 0.5f ? ".5" : ".1", kText, 2, Align::start,
                              Align::center) + 12;
        }
    }
    return c;
}

void write_routing_map(Checkpoint& ck, const std::string& text, const std::string& out_png,
                       const RoutingMapOptions& opt) {
    if (text.empty()) fail("--text is empty: give at least one character");
    std::vector<int32_t> ids = ck.tokenizer.encode(text, "--text");
    const int64_t n_ctx = ck.config.model.n_ctx;
    if ((int64_t)ids.size() > n_ctx)
        fail("--text has ", ids.size(), " tokens but the model's context (n_ctx) is ", n_ctx,
             " tokens; shorten the text (the picture shows one forward pass)");
    RoutingTrace tr = trace_routing(*ck.model, ck.tokenizer, ids);
    draw_routing_map(tr, opt).write_png(out_png);
}

}  // namespace moe::viz
