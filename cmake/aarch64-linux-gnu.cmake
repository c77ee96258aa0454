# Cross build for 64-bit ARM Linux with Debian's cross compiler (g++-aarch64-linux-gnu) against
# the multiarch :arm64 -dev packages. Test binaries run through qemu-aarch64 (Debian qemu-user):
# CMake prefixes it to gtest discovery and to every ctest command; QEMU_CPU picks the CPU.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
# Multiarch: headers are shared in /usr/include, libraries and CMake configs live under
# /usr/lib/aarch64-linux-gnu, which this makes find_package/find_library search.
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
# No -L /usr/aarch64-linux-gnu (QEMU_LD_PREFIX): the :arm64 packages bring the multiarch libc
# (/lib/ld-linux-aarch64.so.1), and under the cross toolchain's own libc in that prefix qemu 7.2
# never returns from the first std::thread start.
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64)
# pkg-config must not hand out the x86-64 .pc files.
set(ENV{PKG_CONFIG_LIBDIR} /usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig)
