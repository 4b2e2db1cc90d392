#include <gtest/gtest.h>

#include "model/config.h"
#include "model/params.h"

using namespace moe;

TEST(Params, MixtralCountsExactly) {
    Config c = load_config(std::string(MOE_SOURCE_DIR) + "/configs/mixtral-8x7b.json");
    ParamCount pc = count_params(c.model);
    EXPECT_EQ(pc.total, 46702792704LL);
    EXPECT_EQ(pc.active, 12879925248LL);
}
