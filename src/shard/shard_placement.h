// Manual placement, in the spirit of KTransformers' optimize rules: a YAML list of rules, each a
// regular expression on layer-unit names and the device those units go to. First match wins.
#pragma once
#include <string>
#include <vector>

#include "shard/shard_planner.h"

namespace es::shard {

// Validates (file:line in every error) and turns the rules into stages of `p`.
std::vector<Stage> ParsePlacement(const std::string& text, const std::string& file,
                                  const Problem& p);
std::vector<Stage> LoadPlacement(const std::string& path, const Problem& p);

}  // namespace es::shard
