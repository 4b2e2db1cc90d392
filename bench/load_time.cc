// Load time of a checkpoint through the memory mapping against one sequential read of its file.
//
//   load_time --config configs/bench-infer-moe.json --dtype bf16|int8|fp32 [--dir DIR] [--reps R]
//   load_time --model HF_DIR [--dtype bf16] [--reps R]
//
// Makes DIR/<dtype> once (random weights of the config, saved as moe would: fp32, or quantized),
// then for each of: cold (the file's pages dropped from the page cache with
// posix_fadvise(DONTNEED), which needs no privileges) and warm (just read), it times
//   read     one read() of the whole file into a buffer: the floor of any loader that copies
//   mmap     load_checkpoint(dir, dtype): structure checks + CRC-32 over the mapping, typed
//            matrices used in place (fp32: copied into the trainable buffer)
//   mmap-nv  the same without the CRC pass (pages are read on first use)
//   ttft     mmap-nv + the first decode step (prefill of one token), which touches every
//            weight a token needs
// and prints one line per case, the host ISA first.
//
// With --model (a Hugging Face directory, e.g. one from scripts/gen_random_hf_model.py), `read` is
// one read() of each of its safetensors files in turn, `mmap` is load_model(dir, dtype) (the header
// checks; BF16 matrices, the experts included, used in place; norms, routers and the embedding
// converted to fp32), and `ttft` adds the first decode step.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/checkpoint.h"
#include "io/hf_model.h"
#include "kernels/cpu.h"
#include "model/config.h"

namespace fs = std::filesystem;

namespace {

double now_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void drop_cache(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) return;
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
}

double read_once(const std::string& path, std::vector<char>& buf) {
    const double t0 = now_ms();
    const int fd = ::open(path.c_str(), O_RDONLY);
    const size_t n = fs::file_size(path);
    buf.resize(n);
    size_t off = 0;
    while (off < n) {
        const ssize_t r = ::read(fd, buf.data() + off, n - off);
        if (r <= 0) break;
        off += (size_t)r;
    }
    ::close(fd);
    return now_ms() - t0;
}

}  // namespace

int main(int argc, char** argv) {
    std::string config = "configs/bench-infer-moe.json", dtype = "bf16", dir = "/tmp/moe_load_time", model;
    int reps = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i];
        if (a == "--config") config = argv[i + 1];
        else if (a == "--dtype") dtype = argv[i + 1];
        else if (a == "--dir") dir = argv[i + 1];
        else if (a == "--reps") reps = std::atoi(argv[i + 1]);
        else if (a == "--model") model = argv[i + 1];
        else { std::fprintf(stderr, "unknown option %s\n", a.c_str()); return 2; }
    }
    try {
        std::printf("host: %s\n", moe::kernels::host_description().c_str());
        std::vector<std::string> files;
        std::function<moe::Checkpoint(bool)> load;  // (verify)
        const bool hf = !model.empty();
        if (hf) {
            for (const auto& e : fs::directory_iterator(model))
                if (e.path().extension() == ".safetensors") files.push_back(e.path().string());
            std::sort(files.begin(), files.end());
            if (files.empty()) throw moe::error("'" + model + "' has no .safetensors files");
            load = [&](bool) { return moe::load_model(model, dtype, 64); };
        } else {
            const std::string ck_dir = dir + "/" + dtype;
            if (!fs::exists(moe::checkpoint_file(ck_dir))) {
                std::fprintf(stderr, "load_time: writing %s (random weights of %s)\n", ck_dir.c_str(), config.c_str());
                moe::Config cfg = moe::load_config(config);
                moe::Model m(cfg.model);
                m.init(1);
                const moe::Tokenizer tok = moe::Tokenizer::byte_level();
                if (dtype == "fp32") moe::save_checkpoint(ck_dir, cfg, tok, m, nullptr, nullptr, {});
                else moe::save_checkpoint_quantized(ck_dir, cfg, tok, m, dtype, {});
            }
            files.push_back(moe::checkpoint_file(ck_dir));
            load = [ck_dir, &dtype](bool verify) { return moe::load_checkpoint(ck_dir, dtype, verify); };
        }
        double bytes = 0;
        for (const auto& f : files) bytes += (double)fs::file_size(f);
        const double mb = bytes / 1048576.0;
        std::printf("%s %s: %.0f MB in %zu file(s), weights %s\n", hf ? "model" : "checkpoint",
                    hf ? model.c_str() : files[0].c_str(), mb, files.size(), dtype.c_str());
        std::vector<char> buf;
        auto drop = [&] {
            for (const auto& f : files) drop_cache(f);
        };
        for (bool cold : {true, false}) {
            double best[4] = {1e30, 1e30, 1e30, 1e30};
            for (int r = 0; r < reps; ++r) {
                if (cold) drop();
                double t = 0;
                for (const auto& f : files) t += read_once(f, buf);
                best[0] = std::min(best[0], t);
                if (cold) drop();
                double t0 = now_ms();
                { moe::Checkpoint ck = load(true); }
                best[1] = std::min(best[1], now_ms() - t0);
                if (cold) drop();
                t0 = now_ms();
                { moe::Checkpoint ck = load(false); }
                best[2] = std::min(best[2], now_ms() - t0);
                if (cold) drop();
                t0 = now_ms();
                {
                    moe::Checkpoint ck = load(false);
                    auto cache = ck.model->make_cache(1);
                    const int32_t tok = 1, seq = 0, pos = 0;
                    ck.model->forward_cached(&tok, &seq, &pos, 1, cache, true);
                }
                best[3] = std::min(best[3], now_ms() - t0);
            }
            const char* names[4] = {"read", hf ? "mmap" : "mmap", hf ? "mmap" : "mmap-nv", "ttft"};
            for (int k = 0; k < 4; ++k) {
                if (hf && k == 2) continue;  // no CRC pass to leave out
                std::printf("%-5s %-8s %9.1f ms  %6.2f x read  %7.0f MB/s\n", cold ? "cold" : "warm", names[k], best[k],
                            best[k] / best[0], mb / (best[k] / 1000.0));
            }
        }
    } catch (const moe::error& e) {
        std::fprintf(stderr, "load_time: %s\n", e.what());
        return 1;
    }
    return 0;
}
