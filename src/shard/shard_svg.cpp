#include "shard/shard_svg.h"

#include <fmt/format.h>

#include <algorithm>

namespace es::shard {
namespace {

std::string Escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<')
      o += "&lt;";
    else if (c == '>')
      o += "&gt;";
    else if (c == '&')
      o += "&amp;";
    else if (c == '"')
      o += "&quot;";
    else
      o += c;
  }
  return o;
}

}  // namespace

std::string PlanSvg(const Problem& p, const std::vector<Stage>& st, const std::string& title) {
  const Evaluation ev = Evaluate(p, st);
  const int n = int(st.size()), U = p.n_units();
  const double left = 170, width = 760, row = 28, gap = 8;
  const double top1 = 60, top2 = top1 + n * (row + gap) + 70;
  const double height = top2 + n * (row + gap) + 70;
  std::string s = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0f}\" height=\"{:.0f}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" "
      "fill=\"white\"/>\n"
      "<text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{}</text>\n",
      left + width + 30, height, Escape(title));
  auto text = [&](double x, double y, const std::string& t, const char* anchor = "start") {
    s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"{}\">{}</text>\n", x, y, anchor,
                     Escape(t));
  };
  auto bar = [&](double x, double y, double w, const char* fill, const std::string& tip) {
    s += fmt::format(
        "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.2f}\" height=\"{:.0f}\" fill=\"{}\" "
        "stroke=\"#333\" "
        "stroke-width=\"0.5\"><title>{}</title></rect>\n",
        x, y, std::max(w, 0.5), row, fill, Escape(tip));
  };
  auto gib = [](double b) { return b / (1024.0 * 1024 * 1024); };

  // Panel 1: layer ranges on a unit axis.
  text(10, top1 - 14,
       "Layer units per device (" + std::to_string(U) + " units: embedding, blocks, head)");
  const double uw = width / U;
  for (int i = 0; i < n; ++i) {
    const Stage& x = st[i];
    const double y = top1 + i * (row + gap);
    const int d = x.device;
    text(left - 8, y + row / 2 + 4, p.devices[d] + (d == p.source ? " (source)" : ""), "end");
    const std::string range =
        x.last - x.first == 1 ? p.units[x.first] : p.units[x.first] + " .. " + p.units[x.last - 1];
    bar(left + x.first * uw, y, (x.last - x.first) * uw, ev.over_bytes[i] > 0 ? "#e66" : "#6a9fd8",
        fmt::format("{}: {} ({} units), {:.2f} GiB of {:.2f} GiB", p.devices[d], range,
                    x.last - x.first, gib(ev.weight_bytes[i] + ev.kv_bytes[i]),
                    gib(p.budget_bytes[d])));
    text(left + x.first * uw + 4, y + row / 2 + 4,
         fmt::format("{} ({:.1f}/{:.1f} GiB)", range, gib(ev.weight_bytes[i] + ev.kv_bytes[i]),
                     gib(p.budget_bytes[d])));
  }

  // Panel 2: one token through the stages.
  text(10, top2 - 14,
       fmt::format("One token: {:.2f} ms end to end; slowest stage {:.2f} ms (pipeline period)",
                   ev.step_ms, ev.bottleneck_ms));
  const double scale = ev.step_ms > 0 ? width / ev.step_ms : 0;
  double t = 0;
  for (int i = 0; i < n; ++i) {
    const double y = top2 + i * (row + gap);
    const int d = st[i].device;
    text(left - 8, y + row / 2 + 4, p.devices[d], "end");
    const bool slow_c = ev.comp_ms[i] == ev.bottleneck_ms,
               slow_l = ev.link_ms[i] == ev.bottleneck_ms;
    bar(left + t * scale, y, ev.comp_ms[i] * scale, slow_c ? "#2f6db5" : "#6a9fd8",
        fmt::format("compute {} units: {:.3f} ms", st[i].last - st[i].first, ev.comp_ms[i]));
    if (ev.comp_ms[i] * scale > 60)
      text(left + t * scale + 4, y + row / 2 + 4, fmt::format("{:.2f} ms", ev.comp_ms[i]));
    t += ev.comp_ms[i];
    if (ev.link_ms[i] > 0) {
      const std::string to =
          i + 1 < n ? p.devices[st[i + 1].device] : p.devices[p.source] + " (token id)";
      bar(left + t * scale, y, ev.link_ms[i] * scale, slow_l ? "#d9822b" : "#f2b66d",
          fmt::format("send to {}: {:.3f} ms", to, ev.link_ms[i]));
    }
    t += ev.link_ms[i];
  }
  // Time axis under the timeline.
  const double ay = top2 + n * (row + gap);
  s += fmt::format(
      "<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{2:.1f}\" y2=\"{1:.1f}\" stroke=\"#333\"/>\n", left,
      ay, left + width);
  for (int k = 0; k <= 4; ++k)
    text(left + width * k / 4, ay + 14, fmt::format("{:.1f} ms", ev.step_ms * k / 4),
         k == 0   ? "start"
         : k == 4 ? "end"
                  : "middle");
  const double ly = height - 10;
  bar(left, ly - row + 8, 14, "#6a9fd8", "compute");
  text(left + 20, ly, "compute");
  bar(left + 100, ly - row + 8, 14, "#f2b66d", "transfer");
  text(left + 120, ly, "transfer (darker: the slowest stage)");
  s += "</svg>\n";
  return s;
}

}  // namespace es::shard
