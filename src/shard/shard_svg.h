// A picture of a plan: each device's layer range, and the timeline of one token through the
// stages (compute bars, transfer bars, the token id going back to the source).
#pragma once
#include <string>
#include <vector>

#include "shard/shard_planner.h"

namespace es::shard {

std::string PlanSvg(const Problem& p, const std::vector<Stage>& stages, const std::string& title);

}  // namespace es::shard
