// Names the calling thread (as `top -H`, perf and scripts/bench show it).
#pragma once

#include <pthread.h>

namespace eventsd::core {

/// Names the calling thread; `name` is cut to 15 characters by the kernel.
/// Detached actors call it from their behavior's set-up, which CAF runs on
/// the actor's own thread: otherwise they all show as `caf.actor`.
inline void name_this_thread(const char* name) {
  pthread_setname_np(pthread_self(), name);
}

} // namespace eventsd::core
