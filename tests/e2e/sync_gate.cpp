// An LD_PRELOAD shim for the e2e durability test (faults_test.cpp, "[durability]"):
// while the file named by EVENTSD_TEST_SYNC_GATE exists, fdatasync and fsync
// do not begin — as a disk that has not confirmed a write yet. A server that
// answered a write before its sync returned would answer while the gate is
// closed; one that keeps DESIGN.md's durability rule answers only after the
// gate opens. Without the variable the calls pass straight through.
#include <cerrno>
#include <cstdlib>
#include <ctime>

#include <dlfcn.h>
#include <sys/stat.h>

namespace {

void wait_for_gate() {
  static const char* gate = std::getenv("EVENTSD_TEST_SYNC_GATE");
  if (gate == nullptr)
    return;
  int saved = errno;
  struct stat st;
  while (::stat(gate, &st) == 0) {
    timespec ms{0, 1'000'000};
    ::nanosleep(&ms, nullptr);
  }
  errno = saved;
}

using sync_fn = int (*)(int);

sync_fn real(const char* name) {
  return reinterpret_cast<sync_fn>(::dlsym(RTLD_NEXT, name));
}

} // namespace

extern "C" int fdatasync(int fd) {
  static const sync_fn next = real("fdatasync");
  wait_for_gate();
  return next(fd);
}

extern "C" int fsync(int fd) {
  static const sync_fn next = real("fsync");
  wait_for_gate();
  return next(fd);
}
