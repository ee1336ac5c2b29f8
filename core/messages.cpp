#include "core/messages.hpp"

namespace eventsd::core {

const char* to_string(runtime_errc x) {
  switch (x) {
    case runtime_errc::precondition_failed:
      return "precondition_failed";
    case runtime_errc::shutting_down:
      return "shutting_down";
    case runtime_errc::invalid_id:
      return "invalid_id";
    case runtime_errc::deadline_passed:
      return "deadline_passed";
  }
  return "unknown";
}


void configure_messages(caf::actor_system_config& cfg) {
  cfg.add_message_types<caf::id_block::eventsd>();
  add_error_category<storage::storage_errc>(cfg, "storage");
  add_error_category<runtime_errc>(cfg, "runtime");
}

caf::error make_error(const storage::storage_error& err) {
  return caf::make_error(err.code, err.detail);
}

} // namespace eventsd::core
