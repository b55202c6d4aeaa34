#include "kvtier/events.h"

namespace kvtier {

const char* KvEventTypeName(KvEventType type) {
  switch (type) {
    case KvEventType::kStored:
      return "stored";
    case KvEventType::kRemoved:
      return "removed";
    case KvEventType::kAllCleared:
      return "all_cleared";
  }
  return "unknown";
}

}  // namespace kvtier
