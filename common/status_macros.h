#ifndef OFFSITE_COMMON_STATUS_MACROS_H_
#define OFFSITE_COMMON_STATUS_MACROS_H_

// Abseil 20220623 has neither RETURN_IF_ERROR nor ASSIGN_OR_RETURN; these are ours.

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Returns from the enclosing function when `expr` (an absl::Status) is not OK.
#define OFFSITE_RETURN_IF_ERROR(expr)                  \
  do {                                                 \
    ::absl::Status offsite_status_ = (expr);           \
    if (!offsite_status_.ok()) return offsite_status_; \
  } while (0)

#define OFFSITE_CONCAT_INNER_(a, b) a##b
#define OFFSITE_CONCAT_(a, b) OFFSITE_CONCAT_INNER_(a, b)

// `OFFSITE_ASSIGN_OR_RETURN(auto x, ComputeX());` declares x from an
// absl::StatusOr, or returns its error.
#define OFFSITE_ASSIGN_OR_RETURN(lhs, expr) \
  OFFSITE_ASSIGN_OR_RETURN_IMPL_(OFFSITE_CONCAT_(offsite_statusor_, __LINE__), lhs, expr)

#define OFFSITE_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                   \
  if (!statusor.ok()) return statusor.status();             \
  lhs = std::move(statusor).value()

#endif  // OFFSITE_COMMON_STATUS_MACROS_H_
