// Stop strings over a stream of decoded token pieces. Text is released only when it can no
// longer turn into a stop string and never ends inside a UTF-8 sequence, so a stop string split
// across tokens is never printed, and neither is half a character.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace es::runtime {

class StopMatcher {
 public:
  struct Result {
    std::string text;      // safe to print now
    bool stopped = false;  // a stop string was completed; `text` is what preceded it
  };

  // Empty stop strings are ignored.
  explicit StopMatcher(std::vector<std::string> stops);

  // Appends a decoded piece. After a stop every further call returns {"", true}.
  Result Feed(std::string_view piece);
  // End of generation: releases everything still held (nothing after a stop).
  std::string Flush();
  bool stopped() const { return stopped_; }
  // Bytes currently held back.
  size_t held() const { return held_.size(); }
  void Reset();

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace es::runtime
