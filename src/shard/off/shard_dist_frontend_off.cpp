// `run|chat|bench --cluster` in a build without distributed inference (EDGESHARD_DISTRIBUTED off,
// as the aarch64 cross build): the options parse as usual and then say why they cannot run.
#include "edgeshard/error.h"
#include "shard/shard_dist_frontend.h"

namespace es::shard {
namespace {
[[noreturn]] void NotBuilt() {
  throw Error(
      "--cluster: this edgeshard was built without distributed inference "
      "(EDGESHARD_DISTRIBUTED=OFF)");
}
}  // namespace

int ClusterRun(const ClusterCliOptions&, const ClusterModelArgs&, const GenerateParams&,
               const std::string&, bool) {
  NotBuilt();
}
int ClusterChat(const ClusterCliOptions&, const ClusterModelArgs&, const GenerateParams&,
                const std::string&, const std::string&, bool) {
  NotBuilt();
}
int ClusterBench(const ClusterCliOptions&, const std::string&, int, int, int, int, int, bool) {
  NotBuilt();
}

}  // namespace es::shard
