// KVTIER_RETURN_IF_ERROR / KVTIER_ASSIGN_OR_RETURN: Debian's Abseil 20220623 has no public version.
#ifndef KVTIER_LIB_COMMON_STATUS_MACROS_H_
#define KVTIER_LIB_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define KVTIER_RETURN_IF_ERROR(expr)                     \
  do {                                                   \
    if (::absl::Status s_ = (expr); !s_.ok()) return s_; \
  } while (0)

#define KVTIER_STATUS_CONCAT_INNER_(a, b) a##b
#define KVTIER_STATUS_CONCAT_(a, b) KVTIER_STATUS_CONCAT_INNER_(a, b)
#define KVTIER_ASSIGN_OR_RETURN(lhs, expr) \
  KVTIER_ASSIGN_OR_RETURN_IMPL_(KVTIER_STATUS_CONCAT_(statusor_, __LINE__), lhs, expr)
#define KVTIER_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return std::move(tmp).status();      \
  lhs = std::move(*tmp)

#endif  // KVTIER_LIB_COMMON_STATUS_MACROS_H_
