#pragma once
// Checkpoint = one directory holding checkpoint.bin (a moe tensor file: config, tokenizer, training
// state, every parameter by name, AdamW moments) and config.json (a readable copy). Both are
// written atomically, so a crash or a failed save leaves the previous good checkpoint intact.
//
// Or, from an expert-parallel run (docs/distributed.md "Sharded checkpoints"), a sharded set:
// manifest.json (format "moe-sharded-checkpoint": world size, P, n_expert, step, and per file its
// kind, expert range, size and CRC-32), replicated.TAG.bin (config, tokenizer, state and every tensor
// outside the expert stacks, with its AdamW moments "optim.adam_m/NAME", "optim.adam_v/NAME") and one
// experts-A-B.TAG.bin per expert range [A, B) (every MoE layer's stacks cut to those experts, with
// their moments). The shard files are written first (each atomically, new names per save), the
// manifest is renamed into place last: a crash before that leaves the previous manifest and the
// files it names. Every reader (load_checkpoint, load_model, export) gathers a set into one model;
// load_checkpoint_experts reads any expert range of either format (resharding).
#include <memory>
#include <string>
#include <vector>

#include "io/tokenizer.h"
#include "model/config.h"
#include "model/model.h"

namespace moe {

struct TrainState {
    int64_t step = 0;         // optimizer steps done
    int64_t tokens_seen = 0;
    double val_loss = -1;     // last evaluation (-1 = none)
};

struct Checkpoint {
    Config config;
    Tokenizer tokenizer;
    TrainState state;
    std::unique_ptr<Model> model;
    std::vector<float> adam_m, adam_v;  // empty if the checkpoint has no optimizer state
    std::string weight_type = "fp32";   // as stored: "fp32" | "bf16" | "int8" (Hugging Face: also "f16")
    bool tokenizer_missing = false;     // a Hugging Face directory without tokenizer.json: ids only
    // The Jinja chat template source a model file carries (Hugging Face: chat_template.jinja, else
    // tokenizer_config.json's "chat_template"); empty when none. A moe checkpoint whose tokenizer
    // came from Hugging Face finds it in the tokenizer_config.json it keeps.
    std::string chat_template;
};

// Writes an inference checkpoint with the matmul weights (attention, experts / dense FFN, untied
// head) stored as bf16 or int8 (Q8_0: int8 values + "NAME.scales" fp32 per 32-block); norms, routers
// and the embedding stay fp32. No optimizer state. Atomic like save_checkpoint.
void save_checkpoint_quantized(const std::string& dir, const Config& config, const Tokenizer& tok, Model& model,
                               const std::string& weight_type, const TrainState& st);

std::string checkpoint_file(const std::string& dir);

// Creates `dir` if needed. adam_m / adam_v (Model::n_params() floats each) may be null.
void save_checkpoint(const std::string& dir, const Config& config, const Tokenizer& tok,
                     Model& model, const float* adam_m, const float* adam_v, const TrainState& st);

// Throws moe::error naming the file for a missing, truncated or corrupted checkpoint, or one
// whose tensors disagree with its config. weight_type: the model's matmul weights ("fp32",
// "bf16", "int8"; empty: as stored). fp32 gives a trainable model (a copy of the weights, typed
// ones dequantized); bf16 / int8 give an inference model whose matrices stored in that type are
// used in place from the mapped file (the model keeps the mapping) and others are converted.
// verify: check the CRC-32 of the whole file (one sequential pass over the mapping); without it the
// structure (magic, sizes, header, tensor bounds) is still checked, and pages are read on use.
// A sharded set (below) is gathered; weight_type converts it.
// experts: a model holding only that range of every MoE layer's experts (Model(cfg, t, experts);
// expert-parallel inference, infer/ep_infer.h), from either format: the other experts are neither
// copied nor kept (a single file is mapped, and verify's CRC pass is its only read of them; a
// sharded set's rows come from the expert files that overlap the range). A range's model comes
// without the optimizer state (load_checkpoint_experts resumes a training rank).
Checkpoint load_checkpoint(const std::string& dir, const std::string& weight_type = "", bool verify = true,
                           ExpertRange experts = {});

// ---- sharded sets (expert-parallel training)

// One file of a sharded set, as the manifest lists it
struct ShardRecord {
    std::string file;      // name inside the directory
    std::string kind;      // "replicated" | "experts"
    int64_t first = 0, count = 0;  // experts: the range [first, first + count)
    uint64_t bytes = 0;    // file size
    uint32_t crc32 = 0;    // the CRC-32 the tensor file's trailer stores (of every byte before it)
};

std::string manifest_file(const std::string& dir);
bool is_sharded_checkpoint(const std::string& dir);  // dir/manifest.json exists

// Writes one file of the set tagged `tag` (unique per save, e.g. "s00000010-<nonce>") into dir:
// replicated: every tensor of `model` outside the expert stacks, with config, tokenizer and state;
// else the model's expert stacks (its ExpertRange; the model may hold all experts). adam_m / adam_v:
// the moments in model's table layout. Atomic (temp file, fsync, rename). Returns the record.
ShardRecord write_checkpoint_shard(const std::string& dir, const std::string& tag, bool replicated,
                                   const Config& config, const Tokenizer& tok, Model& model, const float* adam_m,
                                   const float* adam_v, const TrainState& st);
// The commit of a set: checks that the expert files cover [0, E) once, writes config.json, then
// manifest.json atomically (the commit point), then removes the files of older sets and any
// checkpoint.bin. world / P: the run's ranks and expert-parallel degree (recorded).
void commit_sharded_checkpoint(const std::string& dir, const Config& config, const std::vector<ShardRecord>& files,
                               int world, int P, const TrainState& st);

// fp32 model holding experts `range` of every MoE layer (all: a whole model), with the optimizer
// state (empty when the checkpoint has none) in its table layout, from a single-file checkpoint or a
// sharded set of any expert split. verify: CRC-32 of every file read.
Checkpoint load_checkpoint_experts(const std::string& dir, ExpertRange range, bool verify = true);
// The config of a checkpoint (either format), read from its metadata without loading tensors
Config checkpoint_config(const std::string& dir);

// Creates `dir` (and parents) or throws naming it; checks it is writable.
void ensure_writable_dir(const std::string& dir);

}  // namespace moe
