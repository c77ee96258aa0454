// A Jinja interpreter for chat templates: renders a model's tokenizer.chat_template the way
// Hugging Face's apply_chat_template does (Python jinja2 with trim_blocks, lstrip_blocks, the
// loopcontrols extension, tojson keeping non-ASCII text, raise_exception and strftime_now).
#pragma once
#include <ctime>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

namespace es::tok::jinja {

struct Node;

class Template {
 public:
  // Parses `source`. Throws es::Error naming the line and column of a syntax error, an unknown
  // tag, filter or test.
  explicit Template(const std::string& source);

  // Renders with `context`'s keys as variables. `now` is what strftime_now formats (0: the
  // current time). Throws es::Error for the template's raise_exception() and for runtime errors
  // (undefined attribute access, type errors, recursion or output limits), naming the position.
  std::string Render(const nlohmann::ordered_json& context, std::time_t now = 0) const;

 private:
  std::shared_ptr<const std::vector<std::unique_ptr<Node>>> body_;
};

}  // namespace es::tok::jinja
