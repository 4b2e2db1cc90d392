// The pictures (src/viz): the canvas draws into the expected pixels, PNGs decode back to the same
// pixels, the training-log parser accepts what the trainer writes (and the coming "routing"
// records) and names file and line for bad input, and the `moe plot` / `moe routing` commands
// write images of the documented size or fail with one clean error line.
#include <stb/stb_image.h>

#include <set>

#include "cli_util.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "viz/canvas.h"
#include "viz/plot.h"
#include "viz/routing_map.h"

using namespace moe_test;
using namespace moe::viz;

namespace {

struct Image {
    int w = 0, h = 0;
    std::vector<uint8_t> px;  // RGB
    Rgb at(int x, int y) const {
        const uint8_t* p = &px[((size_t)y * w + x) * 3];
        return Rgb{p[0], p[1], p[2]};
    }
};

Image decode_png(const std::string& bytes) {
    Image im;
    int n = 0;
    unsigned char* d = stbi_load_from_memory(reinterpret_cast<const unsigned char*>(bytes.data()), (int)bytes.size(),
                                             &im.w, &im.h, &n, 3);
    EXPECT_NE(d, nullptr) << "not a decodable PNG (" << bytes.size() << " bytes)";
    if (!d) return im;
    im.px.assign(d, d + (size_t)im.w * im.h * 3);
    stbi_image_free(d);
    return im;
}

int count_not(const Canvas& c, Rgb bg, int x0 = 0, int y0 = 0, int x1 = -1, int y1 = -1) {
    if (x1 < 0) x1 = c.width();
    if (y1 < 0) y1 = c.height();
    int n = 0;
    for (int y = y0; y < y1; ++y)
        for (int x = x0; x < x1; ++x) n += !(c.get(x, y) == bg);
    return n;
}

}  // namespace

// --- canvas ---

TEST(Canvas, FillRectCoversExactlyItsPixels) {
    Canvas c(20, 10);
    const Rgb red{255, 0, 0};
    c.fill_rect(2, 3, 4, 5, red);  // [2, 6) x [3, 8)
    for (int y = 0; y < 10; ++y)
        for (int x = 0; x < 20; ++x) {
            const bool in = x >= 2 && x < 6 && y >= 3 && y < 8;
            EXPECT_EQ(c.get(x, y), in ? red : kWhite) << x << "," << y;
        }
    // clipped, never out of bounds
    c.fill_rect(-5, -5, 100, 6, kBlack);
    EXPECT_EQ(c.get(19, 0), kBlack);
    EXPECT_EQ(c.get(0, 1), kWhite);
    c.fill_rect(30, 30, 5, 5, kBlack);
    c.outline_rect(0, 0, 20, 10, Rgb{0, 0, 255});
    EXPECT_EQ(c.get(0, 5), (Rgb{0, 0, 255}));
    EXPECT_EQ(c.get(10, 9), (Rgb{0, 0, 255}));
}

TEST(Canvas, TextDrawsInsideItsBox) {
    Canvas c(120, 40);
    const int w = c.text(10, 5, "Hi 42", kBlack, 2);
    EXPECT_EQ(w, text_width("Hi 42", 2));
    EXPECT_GT(w, 30);
    EXPECT_GT(count_not(c, kWhite), 40);
    // everything inside [10, 10+w) x [5, 5+glyph_height)
    EXPECT_EQ(count_not(c, kWhite), count_not(c, kWhite, 10, 5, 10 + w, 5 + glyph_height(2)));
    // scale 1 is half as wide; non-ASCII bytes are drawn as '?', not out of the font table
    EXPECT_EQ(text_width("Hi 42", 1) * 2, w);
    Canvas d(60, 20);
    d.text(0, 0, "caf\xC3\xA9\x01", kBlack, 1);
    EXPECT_GT(count_not(d, kWhite), 0);
    // centred and vertical text stay on the canvas and draw something
    Canvas v(40, 120);
    v.text_vertical(20, 60, "loss", kBlack, 2);
    EXPECT_GT(count_not(v, kWhite), 20);
    EXPECT_EQ(count_not(v, kWhite, 0, 0, 40, 30), 0);  // "loss" is 48 px tall around y = 60
}

TEST(Canvas, LinesAndDots) {
    Canvas c(40, 20);
    c.line(2, 10.5, 37, 10.5, kBlack, 2);
    EXPECT_EQ(c.get(20, 10), kBlack);
    EXPECT_EQ(c.get(20, 2), kWhite);
    c.dot(10, 4, 2, Rgb{255, 0, 0});
    EXPECT_EQ(c.get(9, 3), (Rgb{255, 0, 0}));
    c.polyline({0, 39}, {0, 19}, Rgb{0, 128, 0}, 1.5);
    EXPECT_FALSE(c.get(20, 9) == kWhite);
}

TEST(Canvas, PngRoundTrip) {
    Canvas c(37, 23, Rgb{10, 20, 30});
    for (int y = 0; y < 23; ++y)
        for (int x = 0; x < 37; ++x) c.set(x, y, Rgb{(uint8_t)(x * 7), (uint8_t)(y * 11), (uint8_t)((x + y) * 3)});
    Image im = decode_png(c.encode_png());
    ASSERT_EQ(im.w, 37);
    ASSERT_EQ(im.h, 23);
    EXPECT_TRUE(im.px == c.pixels());

    char tmpl[] = "/tmp/moe_viz_test_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    const std::string dir = tmpl, p = dir + "/a.png";
    c.write_png(p);
    Image back = decode_png(read_file(p));
    EXPECT_TRUE(back.px == c.pixels());
    size_t files = 0;
    for (auto& e : fs::directory_iterator(dir)) files += !e.path().empty();
    EXPECT_EQ(files, 1u) << "a temp file was left behind";
    EXPECT_THROW(c.write_png(dir + "/no/such/dir/a.png"), moe::error);
    fs::remove_all(dir);
}

TEST(Canvas, PalettesAndTicks) {
    for (int n : {4, 8, 16, 20, 32, 64}) {
        std::set<std::tuple<int, int, int>> seen;
        for (int i = 0; i < n; ++i) {
            Rgb c = categorical(i, n);
            seen.insert({c.r, c.g, c.b});
            EXPECT_FALSE(c == kWhite || c == kBlack) << i;
        }
        EXPECT_EQ((int)seen.size(), n) << "colours repeat for n = " << n;
    }
    EXPECT_EQ(viridis(0), hex_rgb(0x440154));
    EXPECT_EQ(viridis(1), hex_rgb(0xfde725));
    EXPECT_EQ(viridis(-3), viridis(0));
    EXPECT_EQ(nice_ticks(0, 600, 6), (std::vector<double>{0, 100, 200, 300, 400, 500, 600}));
    const std::vector<double> t = nice_ticks(1.3, 2.1, 4), want{1.4, 1.6, 1.8, 2.0};
    ASSERT_EQ(t.size(), want.size());
    for (size_t i = 0; i < t.size(); ++i) EXPECT_NEAR(t[i], want[i], 1e-12);
    EXPECT_EQ(tick_label(0.25, 0.25), "0.25");
    EXPECT_EQ(tick_label(2, 0.5), "2.0");
    EXPECT_EQ(tick_label(1200, 200), "1200");
}

// --- log parsing ---

TEST(TrainLogParse, StepsEvalsAuxKeysAndRouting) {
    const std::string text =
        "{\"step\": 1, \"loss\": 4.2, \"lr\": 0.001, \"tokens_per_sec\": 100, \"grad_norm\": 1}\n"
        "{\"step\": 2, \"loss\": 3.9, \"lm_loss\": 3.8, \"aux_loss\": 0.01, \"z_loss\": 0.002, \"lr\": 0.001}\n"
        "\n"
        "{\"step\": 2, \"val_loss\": 3.7, \"routing\": [{\"layer\": 0, \"load\": [3, 1], \"max_share\": 1.5, \"dead\": 0},"
        " {\"layer\": 2, \"load\": [2, 2]}]}\n"
        "{\"step\": 3, \"event\": \"something new\"}\n"
        "{\"step\": 4, \"val_loss\": null}\n";
    TrainLog log = parse_train_log(text, "x.jsonl");
    ASSERT_GE(log.train.size(), 4u);
    EXPECT_EQ(log.train[0].key, "loss");
    EXPECT_EQ(log.train[0].x, (std::vector<double>{1, 2}));
    std::set<std::string> keys;
    for (auto& s : log.train) keys.insert(s.key);
    EXPECT_EQ(keys, (std::set<std::string>{"loss", "lm_loss", "aux_loss", "z_loss"}));
    ASSERT_EQ(log.eval.size(), 1u);
    EXPECT_EQ(log.eval[0].key, "val_loss");
    EXPECT_EQ(log.eval[0].y, (std::vector<double>{3.7}));
    ASSERT_EQ(log.routing.size(), 2u);
    EXPECT_EQ(log.routing.at(0)[0].load, (std::vector<double>{3, 1}));
    EXPECT_EQ(log.routing.at(0)[0].stats.at("max_share"), 1.5);
    EXPECT_EQ(log.routing.at(2)[0].step, 2);
    // the pictures of this log
    Canvas loss = draw_loss_plot(log);
    EXPECT_EQ(loss.width(), 1100);
    Canvas heat = draw_load_heatmap(log, 0);
    EXPECT_GT(count_not(heat, kWhite), 1000);
}

TEST(TrainLogParse, AppendedRunsAndIncompleteLastLine) {
    const std::string text =
        "{\"step\": 1, \"loss\": 4}\n{\"step\": 2, \"loss\": 3}\n{\"step\": 2, \"val_loss\": 3.5}\n"
        "{\"step\": 3, \"loss\": 2.5}\n"
        "{\"step\": 1, \"loss\": 5}\n"  // a second run appended to the same log
        "{\"step\": 2, \"loss\": 4.5}\n"
        "{\"step\": 3, \"lo";  // still being written
    TrainLog log = parse_train_log(text, "x.jsonl");
    ASSERT_EQ(log.train.size(), 1u);
    EXPECT_EQ(log.train[0].x, (std::vector<double>{1, 2}));
    EXPECT_EQ(log.train[0].y, (std::vector<double>{5, 4.5}));
    EXPECT_TRUE(log.eval.empty());
    ASSERT_EQ(log.notes.size(), 2u);
    EXPECT_NE(log.notes[0].find("line 5"), std::string::npos) << log.notes[0];
    EXPECT_NE(log.notes[1].find("line 7"), std::string::npos) << log.notes[1];
}

TEST(TrainLogParse, ErrorsNameFileAndLine) {
    auto err = [](const std::string& text) {
        try {
            parse_train_log(text, "run.jsonl");
        } catch (const moe::error& e) {
            return std::string(e.what());
        }
        return std::string("(no error)");
    };
    const std::string ok = "{\"step\": 1, \"loss\": 4}\n";
    auto expect_has = [](const std::string& msg, std::vector<std::string> needles) {
        for (auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "missing '" << n << "' in: " << msg;
    };
    expect_has(err(ok + "{\"step\": 2, \"loss\": 3,,}\n"), {"run.jsonl", "line 2", "not valid JSON"});
    expect_has(err(ok + "[1, 2]\n"), {"run.jsonl", "line 2", "JSON object"});
    expect_has(err(ok + "{\"loss\": 3}\n"), {"line 2", "'step'"});
    expect_has(err(ok + "{\"step\": 2.5, \"loss\": 3}\n"), {"line 2", "'step'"});
    expect_has(err(ok + "{\"step\": 2, \"loss\": \"3\"}\n"), {"line 2", "'loss'"});
    expect_has(err(ok + "{\"step\": 2, \"val_loss\": [1]}\n"), {"line 2", "'val_loss'"});
    expect_has(err(ok + "{\"step\": 2, \"val_loss\": 1, \"routing\": {}}\n"), {"line 2", "'routing'"});
    expect_has(err(ok + "{\"step\": 2, \"routing\": [{\"load\": [1]}]}\n"), {"line 2", "'layer'"});
    expect_has(err(ok + "{\"step\": 2, \"routing\": [{\"layer\": 0, \"load\": [1, -1]}]}\n"), {"line 2", "'load'", "-1"});
    expect_has(err(ok + "{\"step\": 2, \"routing\": [{\"layer\": 0}]}\n"), {"line 2", "'load'"});
    expect_has(err(ok + "{\"step\": 2, \"routing\": [{\"layer\": 0, \"load\": [1], \"cv\": \"x\"}]}\n"), {"line 2", "'cv'"});
    expect_has(err(ok + "{\"step\": 2, \"routing\": [{\"layer\": 0, \"load\": [1, 1]}]}\n"
                        "{\"step\": 3, \"routing\": [{\"layer\": 0, \"load\": [1, 1, 1]}]}\n"),
               {"line 3", "3 experts", "2", "line 2"});
    expect_has(err(""), {"run.jsonl", "no loss values"});
    expect_has(err("{\"step\": 1, \"lr\": 0.1}\n"), {"run.jsonl", "no loss values"});
    EXPECT_THROW(read_train_log("/nonexistent/run.jsonl"), moe::error);
}

// --- moe plot ---

class VizCli : public CliTest {};

static std::string small_log(bool routing) {
    std::string s;
    for (int step = 1; step <= 20; ++step) {
        s += json{{"step", step}, {"loss", 4.0 - 0.1 * step}, {"aux_loss", 0.01}, {"lr", 1e-3}}.dump() + "\n";
        if (step % 5 == 0) {
            json j{{"step", step}, {"val_loss", 3.9 - 0.1 * step}};
            if (routing)
                j["routing"] = json::array({json{{"layer", 0}, {"load", {10, 20 + step, 30, 40}}, {"cv", 0.3}},
                                            json{{"layer", 1}, {"load", {25, 25, 25, 25}}, {"dead", 0}}});
            s += j.dump() + "\n";
        }
    }
    return s;
}

TEST_F(VizCli, PlotWritesLossAndLoadPictures) {
    write_file(path("run.jsonl"), small_log(true));
    RunResult r = moe("plot --log run.jsonl --out pics");
    ASSERT_EQ(r.code(), 0) << r.describe();
    for (const char* f : {"loss.png", "load_layer0.png", "load_layer1.png"}) {
        const std::string p = path(std::string("pics/") + f);
        ASSERT_TRUE(fs::exists(p)) << p;
        Image im = decode_png(read_file(p));
        EXPECT_EQ(im.w, 1100) << f;
        EXPECT_GT(im.h, 300) << f;
        EXPECT_NE(r.out.find(std::string("pics/") + f), std::string::npos) << "path not printed\n" << r.out;
    }
    EXPECT_TRUE(r.err.empty()) << r.err;
}

TEST_F(VizCli, PlotWithoutRoutingWritesOnlyTheLossPlot) {
    write_file(path("run.jsonl"), small_log(false));
    RunResult r = moe("plot --log run.jsonl --out pics");
    ASSERT_EQ(r.code(), 0) << r.describe();
    EXPECT_TRUE(fs::exists(path("pics/loss.png")));
    EXPECT_FALSE(fs::exists(path("pics/load_layer0.png")));
    EXPECT_NE(r.out.find("no 'routing'"), std::string::npos) << r.out;
}

TEST_F(VizCli, PlotOfARealTrainingLog) {
    train_ok("out", "--log train.jsonl");
    RunResult r = moe("plot --log train.jsonl --out pics");
    ASSERT_EQ(r.code(), 0) << r.describe();
    EXPECT_TRUE(fs::exists(path("pics/loss.png")));
}

TEST_F(VizCli, PlotComparesSeveralRuns) {
    write_file(path("moe.jsonl"), small_log(true));
    write_file(path("dense.jsonl"), small_log(false));
    RunResult r = moe("plot --log moe.jsonl --log dense.jsonl --out pics");
    ASSERT_EQ(r.code(), 0) << r.describe();
    ASSERT_TRUE(fs::exists(path("pics/compare.png")));
    Image im = decode_png(read_file(path("pics/compare.png")));
    EXPECT_EQ(im.w, 1100);
    EXPECT_NE(r.out.find("compare.png"), std::string::npos) << r.out;
    expect_clean_error(moe("plot --log moe.jsonl --log missing.jsonl --out pics2"), {"missing.jsonl"});
}

TEST_F(VizCli, PlotFailsCleanly) {
    std::string text = small_log(true);
    const size_t second = text.find('\n') + 1;
    const size_t third = text.find('\n', second) + 1;
    text.insert(third, "{\"step\": 3, \"loss\": oops}\n");  // line 3
    write_file(path("bad.jsonl"), text);
    expect_clean_error(moe("plot --log bad.jsonl --out pics"), {"bad.jsonl", "line 3", "not valid JSON"});
    EXPECT_FALSE(fs::exists(path("pics/loss.png")));
    write_file(path("bad2.jsonl"), "{\"step\": 1, \"loss\": 2}\n{\"step\": 2, \"val_loss\": 1, \"routing\": 5}\n");
    expect_clean_error(moe("plot --log bad2.jsonl --out pics"), {"bad2.jsonl", "line 2", "'routing'"});
    expect_clean_error(moe("plot --log missing.jsonl --out pics"), {"missing.jsonl"});
    write_file(path("empty.jsonl"), "");
    expect_clean_error(moe("plot --log empty.jsonl --out pics"), {"empty.jsonl", "no loss values"});
    write_file(path("run.jsonl"), small_log(false));
    write_file(path("afile"), "x");
    expect_clean_error(moe("plot --log run.jsonl --out afile/sub"), {"afile/sub"});
    expect_clean_error(moe("plot --out pics"), {"--log"});
}

// --- moe routing ---

TEST_F(VizCli, RoutingWritesAPictureOfTheDocumentedSize) {
    train_ok("out");
    const std::string text = "the quick fox.";  // 14 tokens (char-level), n_ctx is 16
    RunResult r = moe("routing --checkpoint out --text " + q(text) + " --out map.png --threads 1");
    ASSERT_EQ(r.code(), 0) << r.describe();
    EXPECT_NE(r.out.find("map.png"), std::string::npos) << r.out;
    Image im = decode_png(read_file(path("map.png")));
    // tiny config: 1 layer, E = 4, K = 2 (cli_util.h); the formula of routing_map.h
    const int T = 14, L = 1, K = 2, E = 4;
    const int width = std::max(kMinMapWidth, kMapLeft + T * kCellW + kMapRight);
    const int per_row = (width - 2 * 24) / kLegendEntryW;
    const int height = kMapTop + L * 12 * K + (L - 1) * kLayerGap + kMapBelow + kLegendTop +
                       (E + per_row - 1) / per_row * kLegendRowH + kLegendBottom;
    EXPECT_EQ(im.w, width);
    EXPECT_EQ(im.h, height);
    EXPECT_EQ(routing_map_size(T, L, K, E).width, width);
    EXPECT_EQ(routing_map_size(T, L, K, E).height, height);
    // a longer picture grows by kCellW per token and one row per layer
    EXPECT_EQ(routing_map_size(100, 3, 2, 8).width, kMapLeft + 100 * kCellW + kMapRight);
    EXPECT_EQ(routing_map_size(10, 3, 2, 8).height - routing_map_size(10, 2, 2, 8).height, 24 + kLayerGap);

    // every slot cell has the colour of the expert the model chose (same checkpoint, in process)
    moe::Checkpoint ck = moe::load_checkpoint(path("out"));
    std::vector<int32_t> ids = ck.tokenizer.encode(text, "text");
    RoutingTrace tr = trace_routing(*ck.model, ck.tokenizer, ids);
    ASSERT_EQ(tr.T, T);
    ASSERT_EQ(tr.K, K);
    for (int t = 0; t < T; ++t)
        for (int k = 0; k < K; ++k) {
            const int32_t e = tr.expert[(size_t)t * K + k];
            ASSERT_TRUE(e >= 0 && e < E);
            EXPECT_EQ(im.at(kMapLeft + t * kCellW + 4, kMapTop + k * 12 + 4), categorical(e, E)) << t << "," << k;
        }
}

TEST_F(VizCli, RoutingDrawsDenseAndDroppedSlots) {
    RoutingTrace tr;
    tr.T = 5;
    tr.L = 2;
    tr.E = 4;
    tr.K = 2;
    tr.moe_layer = {false, true};
    tr.expert = {-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 2, 3, -1, 0, 1, 1, 2, 2};
    tr.weight.assign(20, 0.5f);
    tr.glyphs = {"a", " ", "\\n", "E9", "2014"};
    RoutingMapOptions o;
    Canvas c = draw_routing_map(tr, o);
    EXPECT_EQ(c.width(), routing_map_size(5, 2, 2, 4).width);
    EXPECT_EQ(c.height(), routing_map_size(5, 2, 2, 4).height);
    const Rgb dense = c.get(kMapLeft + 2, kMapTop + 2);
    EXPECT_EQ(dense.r, dense.g);  // grey
    EXPECT_GT(dense.r, 150);
    const int y1 = kMapTop + 24 + kLayerGap;  // layer 1
    EXPECT_EQ(c.get(kMapLeft + 2 * kCellW + 5, y1 + 4), kBlack);  // token 2, slot 1: dropped
    EXPECT_EQ(c.get(kMapLeft + 2 * kCellW + 5, y1 + 12 + 4), categorical(0, 4));
    EXPECT_EQ(c.get(kMapLeft + 0 * kCellW + 5, y1 + 4), categorical(0, 4));
    EXPECT_EQ(c.get(kMapLeft + 1 * kCellW + 5, y1 + 12 + 4), categorical(3, 4));
    // token labels are drawn above the map
    EXPECT_GT(count_not(c, kWhite, kMapLeft, kMapTop - 26, kMapLeft + 5 * kCellW, kMapTop - 4), 10);
    // with weights: lighter than the full colour
    o.shade_by_weight = true;
    Canvas s = draw_routing_map(tr, o);
    const Rgb full = categorical(0, 4), faded = s.get(kMapLeft + 5, y1 + 4);
    EXPECT_GT((int)faded.r + faded.g + faded.b, (int)full.r + full.g + full.b);
}

TEST_F(VizCli, RoutingFailsCleanly) {
    expect_clean_error(moe("routing --checkpoint nowhere --text abc --out m.png"), {"nowhere"});
    train_ok("out");
    expect_clean_error(moe("routing --checkpoint out --text " + q(std::string(17, 'a')) + " --out m.png"),
                       {"17 tokens", "16"});
    expect_clean_error(moe("routing --checkpoint out --text 'the Zebra' --out m.png"), {"--text", "'Z'"});
    expect_clean_error(moe("routing --checkpoint out --text '' --out m.png"), {"--text", "empty"});
    expect_clean_error(moe("routing --checkpoint out --text abc --out no/such/dir/m.png"), {"no/such/dir/m.png"});
    expect_clean_error(moe("routing --checkpoint out --text abc --out m.png --threads -1"), {"--threads"});
    expect_clean_error(moe("routing --checkpoint out --out m.png"), {"--text"});
    EXPECT_FALSE(fs::exists(path("m.png")));
}
