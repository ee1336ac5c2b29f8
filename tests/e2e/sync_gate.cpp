// An LD_PRELOAD shim for e2e tests (faults_test.cpp, "[sync-gate]"): while the
// file named by EVENTSD_TEST_SYNC_GATE exists, fdatasync and fsync do not
// begin — as a disk that has not confirmed a write yet — and a file of the
// same name plus ".held" says a call is waiting. A server that answered a
// write before its sync returned would answer while the gate is closed; one
// that keeps DESIGN.md's durability rule answers only after the gate opens.
// Without the variable the calls pass straight through.
#include <cerrno>
#include <cstdlib>
#include <ctime>
#include <string>

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace {

void wait_for_gate() {
  static const char* gate = std::getenv("EVENTSD_TEST_SYNC_GATE");
  if (gate == nullptr)
    return;
  int saved = errno;
  struct stat st;
  if (::stat(gate, &st) == 0) {
    static const std::string held = std::string{gate} + ".held";
    if (int fd = ::open(held.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644); fd >= 0)
      ::close(fd);
    while (::stat(gate, &st) == 0) {
      timespec ms{0, 1'000'000};
      ::nanosleep(&ms, nullptr);
    }
  }
  errno = saved;
}

using sync_fn = int (*)(int);

sync_fn real(const char* name) {
  return reinterpret_cast<sync_fn>(::dlsym(RTLD_NEXT, name));
}

/// True (errno EIO) while the file named by EVENTSD_TEST_SYNC_FAIL exists:
/// the disk reports the sync failed.
bool sync_fails() {
  static const char* fail = std::getenv("EVENTSD_TEST_SYNC_FAIL");
  struct stat st;
  if (fail == nullptr || ::stat(fail, &st) != 0)
    return false;
  errno = EIO;
  return true;
}

} // namespace

extern "C" int fdatasync(int fd) {
  static const sync_fn next = real("fdatasync");
  wait_for_gate();
  return sync_fails() ? -1 : next(fd);
}

extern "C" int fsync(int fd) {
  static const sync_fn next = real("fsync");
  wait_for_gate();
  return sync_fails() ? -1 : next(fd);
}
