// The page GET /cluster serves: it polls /cluster.json every second and draws the devices, links,
// the plan's picture, measured against planned costs per stage, tokens/s and events.
#pragma once

namespace es::server {

const char* ClusterPageHtml();

}  // namespace es::server
