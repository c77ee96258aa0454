// What a file asks for that edgeshard does not compute. A file whose tensors or metadata call for
// arithmetic the engine lacks (RoPE scaling, QK-norm outside qwen3, soft-capping, experts, ...) is
// refused with the name of the tensor or key, instead of running with the wrong math and printing
// plausible text.
#pragma once
#include "gguf/gguf_file.h"
#include "model/model_config.h"

namespace es::model {

// Throws es::Error naming the first tensor the architecture's family (c.spec, model_arch.h) does
// not declare, or the first metadata key under "<arch>." that changes the arithmetic in a way
// edgeshard does not implement, or that edgeshard does not know (a key it cannot tell is
// informational). Keys outside the architecture's namespace (general.*, tokenizer.*, ...) never
// change the math and are not checked here.
void RefuseUncomputed(const gguf::File& f, const ModelConfig& c);

}  // namespace es::model
