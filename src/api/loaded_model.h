#pragma once
// What a moe::LoadedModel (include/moe/moe.h) holds: the facade files of src/api/ reach the
// internals through it.
#include <string>

#include <moe/moe.h>

#include "io/checkpoint.h"

namespace moe {

struct LoadedModel::Impl {
    std::string dir;  // the checkpoint directory it was loaded from
    Checkpoint ck;    // config, tokenizer, model (weights), training state
    std::string dtype;  // the matmul weight type the model runs in
};

}  // namespace moe
