/*
 * Stand-in for the macOS SDK's TargetConditionals.h, so that ring's C code can be compiled
 * for aarch64-apple-darwin on Linux (with clang, -nostdlibinc and RING_CORE_NOSTDLIBINC) for
 * `cargo clippy --target aarch64-apple-darwin`. The objects are never linked or run.
 */
#ifndef WSMUX_TARGET_CONDITIONALS_STUB_H
#define WSMUX_TARGET_CONDITIONALS_STUB_H
#define TARGET_OS_MAC 1
#define TARGET_OS_OSX 1
#define TARGET_OS_IPHONE 0
#define TARGET_OS_IOS 0
#define TARGET_OS_TV 0
#define TARGET_OS_WATCH 0
#define TARGET_OS_SIMULATOR 0
#define TARGET_CPU_ARM64 1
#endif
