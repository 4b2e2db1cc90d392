// The pictures of include/moe/viz.h that need a loaded model. plot_train_log and plot_compare are
// declared there and defined in viz/plot.cc (nothing to convert: they take paths).
#include <moe/viz.h>

#include "api/loaded_model.h"
#include "viz/routing_map.h"

namespace moe::viz {

void write_routing_map(LoadedModel& model, const std::string& text, const std::string& out_png,
                       const RoutingMapOptions& opt) {
    write_routing_map(model.impl().ck, text, out_png, opt);
}

}  // namespace moe::viz
