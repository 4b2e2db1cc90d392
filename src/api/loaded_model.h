#pragma once
// What a moe::LoadedModel (include/moe/moe.h) holds: the facade files of src/api/ reach the
// internals through it.
#include <memory>
#include <string>

#include <moe/moe.h>

#include "io/chat_template.h"
#include "infer/ep_infer.h"
#include "io/checkpoint.h"

namespace moe {

struct LoadedModel::Impl {
    std::string dir;  // the checkpoint directory it was loaded from
    Checkpoint ck;    // config, tokenizer, model (weights), training state
    std::string dtype;  // the matmul weight type the model runs in
    // the chat template, parsed on first use (src/api/chat.cc); null until then
    std::shared_ptr<const ChatTemplate> chat;
    bool chat_own = false;  // the model's own or set_chat_template's (not the plain fallback)
    // expert-parallel inference (set_expert_parallel): rank 0's runner, stopped before ck goes
    std::unique_ptr<EpLeader> ep;
    double repacked_bytes = 0, repack_seconds = 0;  // Model::repack_for_inference at the load
};

}  // namespace moe
