#pragma once
// moe's public API: what a tool (tools/moe.cc) or an embedding program needs from the engine,
// without any header of src/. Standard library only.
//
//   errors       moe::error (moe/error.h): every user-facing problem, message names file/field/value
//   environment  apply_environment (the MOE_* switches), set_threads
//   models       LoadedModel: a checkpoint (config, tokenizer, weights) behind an opaque handle
//   generation   SampleOptions, generate_text (streaming, stop strings, cancel)
//   chat         ChatMessage, LoadedModel::apply_chat_template, ChatSession (history, /reset)
//   training     TrainOptions, train
//   bench        BenchOptions, bench, to_json
//   quantize     quantize
//   export       ExportOptions, export_model (a Hugging Face directory)
//   params       param_report, to_json
// Pictures (routing map, training-log plots): moe/viz.h.
//
// The option structs below are the engine's own: the internals (src/infer/generate.h,
// src/infer/bench.h, src/train/trainer.h) include this header instead of defining a copy, so
// nothing is converted between a public and an internal twin.
//
// Error messages name the command-line flag where one exists ("--max-tokens must be >= 1, got
// 0"), as everywhere in moe.
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "moe/error.h"

namespace moe {

// ------------------------------------------------------------------ environment

// Reads the environment switches once and fails (moe::error) on a value they do not accept:
// MOE_ISA=ref|avx2|avx512 (caps the SIMD kernels), MOE_GEMM=onednn|packed (the fp32 GEMM),
// MOE_PROFILE=1 (wall time per region, see print_profile), MOE_FUSED_EXPERT_ADAMW=0|1 (the
// experts' AdamW inside the backward). Call it at start-up, before any other call.
void apply_environment();

// Threads for everything that follows (0 = all cores). Throws for a value outside [0, 4096].
void set_threads(int threads);
int threads();

// Data-parallel training (`mpirun -np W moe train ...`, docs/distributed.md): this process's rank
// and the number of ranks, 0 and 1 outside mpirun. Read from the launcher's environment until
// train() starts the communicator. Only rank 0 prints progress and errors every rank shares.
int world_rank();
int world_size();

// Expert-parallel inference (`mpirun -np P moe generate|bench|serve --expert-parallel P`,
// docs/distributed.md): call before loading a model. P must equal the number of ranks (P > 1 needs
// mpirun; under mpirun, P = 1 is refused too): moe::error naming the values, the same on every
// rank. After it, models load only this rank's experts of every MoE layer (E % P != 0: moe::error
// at the load); rank 0 loads and runs the model as ever (LoadedModel, bench), its MoE layers
// sending the routed rows to the experts' ranks; every other rank calls follow_expert_parallel.
// P = 1 outside mpirun: nothing changes.
void set_expert_parallel(int P);
int expert_parallel();
// true on the ranks other than 0 of an expert-parallel run
bool expert_parallel_follower();
// A rank other than 0: loads its experts of the model rank 0 loads (model_path, or random weights of
// `config` with `seed`; dtype and n_ctx as rank 0's) and runs them for rank 0 until rank 0 is done
// (its model destroyed). SIGTERM / SIGINT are ignored meanwhile: rank 0 ends the loop.
void follow_expert_parallel(const std::string& model_path, const std::string& config, uint64_t seed,
                            const std::string& dtype, int64_t n_ctx = 0);

// MOE_PROFILE=1: prints the table of where the time went (nothing otherwise).
void print_profile(std::FILE* out);

// ------------------------------------------------------------------ option structs

struct SampleOptions {
    int64_t max_tokens = 200;        // >= 1
    double temperature = 1.0;        // 0 = greedy (argmax)
    int64_t top_k = 0;               // keep the k most likely tokens (0 = all)
    double top_p = 1.0;              // nucleus: the smallest set with probability >= top_p (1 = all)
    double repetition_penalty = 1.0; // > 0; tokens already in the sequence: logit / p if > 0, * p if < 0
    uint64_t seed = 0;
};

// Throws moe::error naming the option (prefix + "max-tokens", "temperature", "top-k", "top-p",
// "repetition-penalty"; the CLI passes "--") when a value is out of range.
void check_sample_options(const SampleOptions& opt, const char* prefix = "");

// Throws moe::error (prefix + "stop: ...") for an empty stop string, which would stop at once.
void check_stop_strings(const std::vector<std::string>& stop, const char* prefix = "");

struct TrainOptions {
    std::string out_dir = "runs/default";
    std::string resume_dir;     // continue from this checkpoint
    // Fine-tune: start from the weights (as fp32 master weights) and tokenizer of this model (Hugging
    // Face directory or moe checkpoint) with a fresh optimizer; its architecture replaces the
    // config's model section (the config then holds "train" and the training-only router fields).
    std::string init_path;
    bool config_from_checkpoint = false;  // resuming: take the training section from the checkpoint too
    std::string log_path;       // JSONL log (one object per logged step / eval)
    std::string data_override;  // --data
    int64_t steps = -1;         // total steps (also when resuming); -1 = the config's
    // --grad-accum: micro-batches per optimizer step (-1 = train.grad_accum). Under mpirun with W
    // ranks it is per rank: a step is W times as many micro-batches (docs/distributed.md)
    int64_t grad_accum = -1;
    // --expert-parallel P: under mpirun, each MoE layer's experts split over groups of P ranks
    // (P divides the ranks and the experts; 1 = data parallel only). docs/distributed.md
    int expert_parallel = 1;
    int64_t seed = -1;          // -1 = the config's (resuming: the checkpoint's)
    int threads = 0;            // 0 = all cores
    std::string precision;      // --precision: "fp32" | "bf16" ("" = the config's train.precision)
    bool summary = true;        // print a sample and the expert table at the end
    // The routed experts' AdamW inside the backward where nothing needs the whole gradient first
    // (no clipping, no accumulation, no gradient sync): the same bits, less memory traffic.
    // MOE_FUSED_EXPERT_ADAMW=0 (read by apply_environment) turns it off for A/B runs.
    bool fused_expert_adamw = true;
    int64_t sample_tokens = 300;
};

struct TrainResult {
    double final_train_loss = 0, final_val_loss = 0, unigram_entropy = 0;
    int64_t steps_done = 0;
    double seconds = 0;
};

struct BenchOptions {
    std::string mode = "decode";  // "decode" | "prefill"
    std::string cache_type = "f32";  // the KV cache's elements: f32 | f16 | bf16 (--cache-type)
    int64_t batch = 1;            // sequences decoding together (decode)
    int64_t tokens = 64;          // decode steps timed (decode)
    int64_t context = 16;         // prompt tokens before the timed decode steps
    int64_t prompt = 512;         // prefill length (clamped to n_ctx)
    int64_t repeats = 3;          // prefill: timed passes (the best is reported)
    double min_seconds = 1.0;     // decode: keep stepping (new sequences) until this much time
    uint64_t seed = 1;
    // decode: after every timed run of `tokens` steps, a read-only pass over as many bytes as those
    // steps read of weights (build/bench/stream's loop and threads, a 512 MB buffer), timed apart:
    // the read bandwidth of the same moments (BenchResult::probe_gbytes_per_sec); its buffer counts
    // in peak_rss_mb
    bool read_probe = false;
};

struct BenchResult {
    double tokens_per_sec = 0, seconds = 0;
    int64_t tokens = 0;
    double weight_bytes_per_token = 0;  // decode: bytes of weights a token reads (active, fp32)
    double gbytes_per_sec = 0;          // decode: weight_bytes_per_token * tokens/s / 1e9
    double probe_gbytes_per_sec = 0;    // decode with read_probe: the passes' read bandwidth (GB/s)
    double gflops = 0;                  // prefill: model FLOP/s / 1e9
    double parallel_regions_per_step = 0;  // decode: thread forks per decode step (0 for small models)
    // memory (MB = 2^20 bytes): the process's peak resident set, the inference weights as stored
    // (matmul weights in the weight type, routers/norms/embedding fp32), the KV cache
    double peak_rss_mb = 0, weights_mb = 0, kv_mb = 0;
    // expert-parallel inference (set_expert_parallel): P, and per rank the expert weights held
    // (bytes, as stored) and the peak RSS (MB); one entry with P = 1
    int expert_parallel = 1;
    std::vector<double> expert_bytes_rank, peak_rss_mb_rank;
};

// ------------------------------------------------------------------ models

// A model loaded for inference: its config, tokenizer and weights, with the matmul weights in one
// type for life (bf16 / int8 stored in that type are used in place from the mapped file).
struct ChatMessage;  // chat, below

class LoadedModel {
public:
    // path: a moe checkpoint directory or a Hugging Face model directory (config.json,
    // safetensors, tokenizer.json). Throws moe::error naming the file for a missing, truncated or
    // corrupted model. dtype: "fp32" | "bf16" | "int8" for the matmul weights, "" = as stored
    // (routers, norms and the embedding stay fp32). `what` names the option in the error for
    // another value. n_ctx: the context for a Hugging Face model (0: its max_position_embeddings,
    // at most 4096); a moe checkpoint keeps its own.
    explicit LoadedModel(const std::string& path, const std::string& dtype = "", const char* what = "--dtype",
                         int64_t n_ctx = 0);
    // A model of random weights (Model::init(seed)) of a config file's "model" section with the
    // byte-level tokenizer: benchmarks of a shape without a checkpoint (`moe serve --config`).
    // n_ctx > 0 replaces the config's context.
    static LoadedModel random(const std::string& config, const std::string& dtype, uint64_t seed, int64_t n_ctx = 0);
    ~LoadedModel();
    LoadedModel(LoadedModel&&) noexcept;
    LoadedModel& operator=(LoadedModel&&) noexcept;

    const std::string& dir() const;
    const std::string& stored_weight_type() const;  // "fp32" | "bf16" | "int8"
    int64_t context_length() const;                 // n_ctx, in tokens

    // Routes each token to K experts (0 = keep the checkpoint's K); throws for K outside [1, E].
    void set_experts_per_token(int64_t K);
    // Element type of the KV cache of generation, chat, serving and bench: "f32" (default), "f16"
    // or "bf16" (half the cache's memory and of what a decode step reads from it; docs/inference.md);
    // moe::error naming `what` for another name.
    void set_cache_type(const std::string& type, const char* what = "--cache-type");
    static void check_cache_type(const std::string& type, const char* what);  // the same check, before a load
    std::string cache_type() const;
    const std::string& weight_type() const;         // the type the model runs in
    // On AVX-512 VNNI hosts without AMX, Q8_0 / Q4_0 / Q4_K / int8 matrices are repacked at the load
    // into the tiles of this CPU's kernels, on AVX2-only hosts too (docs/serving.md;
    // MOE_REPACK=0: not): a line saying how
    // many bytes and how long it took, or "" where nothing was repacked.
    std::string repack_note() const;
    // Encodes a prompt with the model's tokenizer (a Hugging Face tokenizer adds its BOS as
    // transformers does); throws naming the character for text outside its vocabulary, and for
    // more tokens than the context holds.
    std::vector<int32_t> encode_prompt(const std::string& text) const;
    // The tokenizer's ids for text (add_special: the post-processor's BOS / EOS, as
    // Tokenizer.encode(text).ids; false: add_special_tokens=False).
    std::vector<int32_t> tokenize(const std::string& text, bool add_special = true) const;
    // Logits (ids, vocab) of one plain forward over the ids (no BOS added), row-major.
    std::vector<float> logits(const std::vector<int32_t>& ids);
    int64_t vocab_size() const;

    // Chat template: the model's own (chat_template.jinja, tokenizer_config.json's
    // "chat_template", GGUF's tokenizer.chat_template) or one set here; without either, a plain
    // "role: content" template (has_chat_template() is then false).
    bool has_chat_template() const;
    // Parses `source` (Jinja) now: moe::error naming line and column for a syntax error.
    void set_chat_template(const std::string& source);
    // What transformers' apply_chat_template(messages, add_generation_prompt, tokenize=False)
    // renders, with the tokenizer's BOS / EOS strings; moe::error for a template that raises.
    std::string apply_chat_template(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;

    struct Impl;  // defined in src/api/ (the facade's own access to the internals)
    Impl& impl() { return *impl_; }

private:
    LoadedModel();  // random()
    std::unique_ptr<Impl> impl_;
};

// The token ids of `text` by the tokenizer of the model at `path` (moe checkpoint or Hugging Face
// directory; only the tokenizer is read for the latter). add_special: as LoadedModel::tokenize.
std::vector<int32_t> tokenize(const std::string& path, const std::string& text, bool add_special = true);

// Writes `data` to `path` atomically (temp file, fsync, rename); moe::error naming the path.
void write_file(const std::string& path, std::string_view data);
// The bytes of a file; moe::error naming `what` and the path when it cannot be read.
std::string read_text(const std::string& path, const char* what);

// ------------------------------------------------------------------ generation

struct GenerateResult {
    std::string text;     // the generated text (no prompt; cut before a stop string)
    int64_t tokens = 0;   // tokens sampled
    bool stopped = false; // a stop string or an end-of-sequence token ended it (else max_tokens did)
};

// Continues `prompt` (from encode_prompt) by up to opt.max_tokens tokens. on_text, when given,
// receives the text as it is produced, piece by piece; text that could still be the start of a
// stop string is held back until it is not, and nothing from a stop string on is passed.
// cancel, when given, is read before each token: set (e.g. by a SIGINT handler) it ends the
// generation there, with the text so far.
GenerateResult generate_text(LoadedModel& model, const std::vector<int32_t>& prompt, const SampleOptions& opt,
                             const std::vector<std::string>& stop = {},
                             const std::function<void(std::string_view)>& on_text = nullptr,
                             const std::atomic<bool>* cancel = nullptr);

// ------------------------------------------------------------------ chat

struct ChatMessage {
    std::string role;  // "system" | "user" | "assistant" (what the template knows)
    std::string content;
};

// A conversation with a model: each reply renders the whole history with the chat template, encodes
// it (no extra BOS: the template writes its own, as apply_chat_template(tokenize=True) does) and
// samples the assistant's answer, which joins the history. When the history and max_tokens no
// longer fit the context, the oldest turns (after the system message) are left out.
class ChatSession {
public:
    ChatSession(LoadedModel& model, const SampleOptions& opt, const std::string& system = "",
                const std::vector<std::string>& stop = {});
    struct Reply {
        GenerateResult result;
        int64_t prompt_tokens = 0;  // the rendered conversation, in tokens
        int64_t dropped = 0;        // messages left out of this prompt to fit the context
        bool cancelled = false;     // `cancel` ended it
    };
    // Adds the user's message and answers it, streaming the text to on_text. A reply that is
    // cancelled keeps the text it has in the history. Reply i (from 0 after a reset) samples with
    // seed opt.seed + i. moe::error when the message alone does not fit the context (it is then
    // not kept).
    Reply reply(const std::string& user, const std::function<void(std::string_view)>& on_text = nullptr,
                const std::atomic<bool>* cancel = nullptr);
    void reset();  // forgets everything but the system message
    const std::vector<ChatMessage>& history() const { return history_; }
    const std::string& last_prompt() const { return last_prompt_; }  // the text rendered for the last reply

private:
    LoadedModel& model_;
    SampleOptions opt_;
    std::vector<std::string> stop_;
    std::vector<ChatMessage> history_;  // system message first when there is one
    std::string last_prompt_;
    int64_t turn_ = 0;
};

// ------------------------------------------------------------------ training

// configs/default.json of the working directory if there is one, else of the source tree.
std::string default_config_path();

// Trains (or resumes, opt.resume_dir) the model of the config file `config_path` (not read when
// opt.config_from_checkpoint), printing progress to stdout; saves the checkpoint in opt.out_dir.
TrainResult train(const std::string& config_path, const TrainOptions& opt);

// ------------------------------------------------------------------ bench

struct BenchReport {
    std::string model;  // the config file or the checkpoint directory
    std::string mode, dtype;
    std::string cache_type;  // the KV cache's elements
    int threads = 0;
    int64_t batch = 0;
    int64_t total_params = 0, active_params = 0;
    BenchResult result;
};

// Inference speed of the model of a config file (random weights) or of a checkpoint: exactly one
// of the two is non-empty. dtype "" = fp32, or the checkpoint's weight type.
BenchReport bench(const std::string& config_path, const std::string& checkpoint_dir, const std::string& dtype,
                  const BenchOptions& opt);

// One JSON object (one line, no newline): model, mode, dtype, threads, batch, total_params,
// active_params, tokens, seconds, tokens_per_sec, weight_bytes_per_token, weight_gbytes_per_sec,
// read_probe_gbytes_per_sec (0 without BenchOptions::read_probe), gflops, parallel_regions_per_step, peak_rss_mb, weights_mb, kv_mb, expert_parallel,
// expert_bytes_total, expert_bytes_rank [P], peak_rss_mb_rank [P]. bench/*.py parse it.
std::string to_json(const BenchReport& r);

// ------------------------------------------------------------------ quantize

struct QuantizeResult {
    std::string file;              // the checkpoint file written
    std::string dtype;             // "bf16" | "int8"
    int64_t bytes = 0;             // its size
    int64_t input_bytes = 0;       // the input checkpoint file's size (with optimizer state)
    double fp32_weight_bytes = 0;  // the weights alone in fp32
};

// Writes an inference checkpoint of the fp32 checkpoint in checkpoint_dir with bf16 or int8
// (Q8_0) matmul weights into out_dir (another directory).
QuantizeResult quantize(const std::string& checkpoint_dir, const std::string& dtype, const std::string& out_dir);

// ------------------------------------------------------------------ export

struct ExportOptions {
    std::string format = "hf";           // "hf": a Hugging Face model directory (safetensors); "gguf"; "moe": one
                                         // checkpoint.bin (gathers a sharded checkpoint, keeps optimizer state)
    std::string max_shard_size = "5GB";  // hf: a new safetensors shard above this much data (5GB, 500MB, 2GiB)
    std::string type;                    // reserved for --format gguf (its tensor type); an error with hf
    bool force = false;                  // write into a non-empty output directory
    std::function<void(std::string_view)> progress;  // one line per file written
};

struct ExportResult {
    std::string format;                 // "hf"
    std::string family;                 // hf: the model_type written ("mixtral", "qwen3_moe", "llama", ...)
    std::string dtype;                  // hf: config.json's dtype ("float32", "bfloat16", "float16")
    std::vector<std::string> files;     // written, in order
    std::vector<std::string> warnings;  // what was dropped or converted (docs/formats.md "Export")
    int64_t tensors = 0, tensor_bytes = 0;
};

// Writes the model at `model_path` (moe checkpoint or Hugging Face directory) to `out_dir` in
// opt.format. hf: a directory transformers' AutoModelForCausalLM.from_pretrained loads and that
// gives moe's logits; a model no Hugging Face family expresses is a moe::error naming the field.
ExportResult export_model(const std::string& model_path, const std::string& out_dir, const ExportOptions& opt);
// Writes the model at model_path (anything --model accepts) as a GGUF file llama.cpp reads:
// architecture, hyper-parameters, tensors in `type` ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_k",
// "q5_k", "q6_k"; 1-D tensors and routers of a block type stay F32; a block that does not divide a
// matrix's rows falls back to Q8_0 / F16 with a warning on stderr),
// tokenizer and chat template (docs/formats.md, "GGUF"). Atomic; moe::error for what GGUF cannot
// express.
void export_gguf(const std::string& model_path, const std::string& type, const std::string& out_path);

// ------------------------------------------------------------------ params

struct ParamReport {
    std::string config;          // the config file
    int64_t total = 0;           // every parameter
    int64_t active = 0;          // used per token (K of E experts)
    int64_t seq_len = 0;         // sequence length of the FLOP count: train.block_size, else n_ctx
    double forward_flops_per_token = 0, training_flops_per_token = 0;
    struct Weights {
        std::string dtype;       // "fp32" | "bf16" | "int8", then the GGUF types "f16" | "q8_0" | "q6_k" |
                                 // "q5_k" | "q4_k" | "q4_0" (the matmul weights; the rest fp32)
        double bytes_total = 0;  // stored
        double bytes_per_token = 0;  // read per decoded token
    };
    std::vector<Weights> weights;  // fp32, bf16, int8, f16, q8_0, q6_k, q5_k, q4_k, q4_0
};

// Counts the parameters, FLOPs and weight bytes of a config (a config without model.vocab_size
// takes it from its train.data).
ParamReport param_report(const std::string& config_path);

// One JSON object (one line, no newline): total, active, seq_len, forward_flops_per_token,
// training_flops_per_token, then {dtype}_bytes_total and {dtype}_bytes_per_token per weight type.
std::string to_json(const ParamReport& r);

}  // namespace moe
