#include "runtime/runtime_stop.h"

#include <algorithm>

namespace es::runtime {
namespace {

// Length of the UTF-8 sequence a lead byte starts; 0 for continuation or invalid bytes.
size_t SeqLen(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0) return c >= 0xC2 ? 2 : 0;
  if ((c & 0xF0) == 0xE0) return 3;
  if ((c & 0xF8) == 0xF0) return c <= 0xF4 ? 4 : 0;
  return 0;
}

// Where s[0, end) would be cut so that it does not end inside an incomplete UTF-8 sequence.
// Invalid bytes are not held (they could never complete and would block the stream).
size_t Utf8SafeEnd(const std::string& s, size_t end) {
  const size_t lim = end >= 3 ? end - 3 : 0;  // a partial sequence is at most 3 bytes long
  for (size_t i = end; i > lim;) {
    --i;
    const auto c = static_cast<unsigned char>(s[i]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
    const size_t len = SeqLen(c);
    return (len > 1 && end - i < len) ? i : end;
  }
  return end;
}

}  // namespace

StopMatcher::StopMatcher(std::vector<std::string> stops) {
  for (auto& s : stops)
    if (!s.empty()) stops_.push_back(std::move(s));
}

void StopMatcher::Reset() {
  held_.clear();
  stopped_ = false;
}

StopMatcher::Result StopMatcher::Feed(std::string_view piece) {
  Result r;
  if (stopped_) {
    r.stopped = true;
    return r;
  }
  held_.append(piece);

  // The stop string that completes first in the stream wins (then the longer one), so the
  // result does not depend on how the text was cut into pieces. Held text never contains a
  // stop string from an earlier call, so searching the (short) held text is enough.
  size_t hit = std::string::npos, hit_end = std::string::npos;
  for (const auto& s : stops_) {
    const size_t pos = held_.find(s);
    if (pos == std::string::npos) continue;
    const size_t end = pos + s.size();
    if (end < hit_end || (end == hit_end && pos < hit)) hit = pos, hit_end = end;
  }
  if (hit != std::string::npos) {
    r.text = held_.substr(0, hit);
    r.stopped = true;
    stopped_ = true;
    held_.clear();
    return r;
  }

  // Hold the longest suffix that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const auto& s : stops_) {
    const size_t max_len = std::min(s.size() - 1, held_.size());
    for (size_t len = max_len; len > hold; --len) {
      if (held_.compare(held_.size() - len, len, s, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  const size_t cut = Utf8SafeEnd(held_, held_.size() - hold);
  r.text = held_.substr(0, cut);
  held_.erase(0, cut);
  return r;
}

std::string StopMatcher::Flush() {
  std::string out;
  if (!stopped_) out.swap(held_);
  held_.clear();
  return out;
}

}  // namespace es::runtime
