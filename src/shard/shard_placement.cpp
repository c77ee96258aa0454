#include "shard/shard_placement.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <yaml-cpp/yaml.h>

#include <fstream>
#include <memory>
#include <sstream>

namespace es::shard {
namespace {

struct Regex {
  std::unique_ptr<pcre2_code, decltype(&pcre2_code_free)> code{nullptr, pcre2_code_free};
  // Unanchored search, as grep does: anchor with ^ and $ to match whole names.
  bool Search(const std::string& s) const {
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
        pcre2_match_data_create_from_pattern(code.get(), nullptr), pcre2_match_data_free);
    const int rc = pcre2_match(code.get(), reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), 0, 0,
                               md.get(), nullptr);
    return rc >= 0;
  }
};

}  // namespace

std::vector<Stage> ParsePlacement(const std::string& text, const std::string& file,
                                  const Problem& p) {
  auto fail = [&](const YAML::Node& n, const std::string& msg) -> void {
    throw Error(file + ":" + std::to_string(n.Mark().line + 1) + ": " + msg);
  };
  YAML::Node loaded;
  try {
    loaded = YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    throw Error(file + ":" + std::to_string(e.mark.line + 1) + ": YAML syntax error: " + e.msg);
  }
  const YAML::Node& root = loaded;
  if (!root.IsMap() || !root["rules"])
    throw Error(file + ":1: expected a mapping with 'rules' (a list)");
  for (const auto& kv : root)
    if (kv.first.Scalar() != "rules")
      fail(kv.first, "unknown key '" + kv.first.Scalar() + "' (expected 'rules')");
  const YAML::Node rules = root["rules"];
  if (!rules.IsSequence() || rules.size() == 0) fail(rules, "rules: expected a non-empty list");

  struct Rule {
    Regex re;
    int device;
    int line;
  };
  std::vector<Rule> parsed;
  for (const auto& r : rules) {
    if (!r.IsMap()) fail(r, "rule: expected a mapping with 'match' and 'device'");
    for (const auto& kv : r)
      if (kv.first.Scalar() != "match" && kv.first.Scalar() != "device")
        fail(kv.first, "rule: unknown key '" + kv.first.Scalar() + "' (expected match, device)");
    if (!r["match"] || !r["match"].IsScalar())
      fail(r, "rule: missing 'match' (a regular expression)");
    if (!r["device"] || !r["device"].IsScalar()) fail(r, "rule: missing 'device'");
    Rule rule;
    rule.line = r.Mark().line + 1;
    const std::string pat = r["match"].Scalar();
    int err = 0;
    PCRE2_SIZE off = 0;
    rule.re.code.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pat.data()), pat.size(), 0, &err,
                                     &off, nullptr));
    if (!rule.re.code) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(err, buf, sizeof buf);
      fail(r["match"], "match '" + pat + "': " + reinterpret_cast<char*>(buf) + " at offset " +
                           std::to_string(off));
    }
    const std::string dev = r["device"].Scalar();
    rule.device = -1;
    for (int d = 0; d < p.n_devices(); ++d)
      if (p.devices[d] == dev) rule.device = d;
    if (rule.device < 0) fail(r["device"], "no device named '" + dev + "' in the cluster");
    parsed.push_back(std::move(rule));
  }

  std::vector<int> owner(p.n_units()), rule_of(p.n_units());
  std::vector<bool> rule_used(parsed.size(), false);
  for (int u = 0; u < p.n_units(); ++u) {
    int k = 0;
    while (k < int(parsed.size()) && !parsed[k].re.Search(p.units[u])) ++k;
    if (k == int(parsed.size())) throw Error(file + ": unit '" + p.units[u] + "' matches no rule");
    owner[u] = parsed[k].device, rule_of[u] = k, rule_used[k] = true;
  }
  for (size_t k = 0; k < parsed.size(); ++k)
    if (!rule_used[k])
      throw Error(file + ":" + std::to_string(parsed[k].line) +
                  ": rule matches no unit (earlier rules took them, or the pattern has a typo)");
  std::vector<Stage> st;
  for (int u = 0; u < p.n_units(); ++u) {
    if (!st.empty() && st.back().device == owner[u]) {
      st.back().last = u + 1;
      continue;
    }
    for (const Stage& s : st)
      if (s.device == owner[u])
        throw Error(file + ":" + std::to_string(parsed[rule_of[u]].line) + ": device '" +
                    p.devices[owner[u]] + "' would hold two ranges (" + p.units[s.first] + ".." +
                    p.units[s.last - 1] + " and " + p.units[u] +
                    "...); each device holds one contiguous range");
    st.push_back({owner[u], u, u + 1});
  }
  if (st[0].device != p.source)
    throw Error(file + ":" + std::to_string(parsed[rule_of[0]].line) + ": unit '" + p.units[0] +
                "' must stay on the source '" + p.devices[p.source] + "'");
  CheckStages(p, st);
  return st;
}

std::vector<Stage> LoadPlacement(const std::string& path, const Problem& p) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path + ": cannot open placement rules");
  std::stringstream ss;
  ss << f.rdbuf();
  return ParsePlacement(ss.str(), path, p);
}

}  // namespace es::shard
