// Errors edgeshard reports to its callers: what was wrong with the input, and what to do.
#pragma once
#include <stdexcept>
#include <string>

namespace es {

// Bad input data (a model file, a request, a configuration): the message names the thing at fault.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace es
