// Chat-template renderer (the Jinja interpreter): the input is NUL-separated fields: flags byte,
// template text (or, with flag 0x02, a byte choosing a built-in name), then role / content pairs.
// Any template text must render or give es::Error (syntax errors, limits), never crash; a
// built-in template must render any messages.
#include <cstdint>
#include <string>
#include <vector>

#include "edgeshard/error.h"
#include "fuzz_util.h"
#include "tokenizer/tokenizer_chat.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t flags = data[0];
  const std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  const auto parts = es::fuzz::Split(rest, '\0', 34);
  std::string tmpl(parts[0]);
  if ((flags & 0x02) && !tmpl.empty()) {
    const auto& names = es::tok::ChatTemplateNames();
    tmpl = names[static_cast<uint8_t>(tmpl[0]) % names.size()];
  }
  std::vector<es::tok::ChatMessage> msgs;
  for (size_t i = 1; i + 1 < parts.size(); i += 2)
    msgs.push_back({std::string(parts[i]), std::string(parts[i + 1])});
  // Flag 0x04: the vocabulary's BOS/EOS texts are unknown (the renderer's defaults apply).
  const std::string bos = (flags & 0x04) ? "" : "<s>", eos = (flags & 0x04) ? "" : "</s>";
  try {
    es::tok::ChatTemplateName(tmpl);
    es::tok::ApplyChatTemplate(tmpl, msgs, flags & 0x01, bos, eos);
  } catch (const es::Error& e) {
    if ((flags & 0x02) && !parts[0].empty())
      es::fuzz::Fail("built-in template '" + tmpl + "' failed: " + e.what());
  }
  return 0;
}
