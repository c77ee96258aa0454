#version 450
// What the device's arithmetic does, read once when it is opened: whether fma() rounds once
// (operands from push constants, so that the compiler cannot fold them).
layout(local_size_x = 1) in;
layout(std430, binding = 0) writeonly buffer Out { float o[]; };
layout(push_constant) uniform Params {
  float a, b, c;
} p;

void main() {
  o[0] = fma(p.a, p.b, p.c);
}
