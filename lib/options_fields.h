// OptionFields: every field of kvtier::Options a binding can set, by its dotted path, with its
// type and typed access. The C API (kvtier_options_set), the Python module (one keyword per row:
// the path with '.' replaced by '_') and kvtier-replay (--option PATH=VALUE) map options through
// this one table, so a field added here reaches all three.
//
// Covered: every scalar, string, enum and policy-parameter field of Options and of its shard, tier
// and CUDA sub-structs ("shard.tp_rank", "host.capacity_bytes", "remote.publish",
// "disk.policy_params", "backend", "demote_on_evict", ...). Not covered: Options.layout, which
// each binding describes its own way (the C struct's segments, Python's buffers, the replay's
// block shape); test/options_fields_test.cc fails when Options gains a field that is neither in
// the table nor listed there as excluded.
//
// Text values (SetOption, GetOption):
//   bool    true/false (also yes/no, 1/0, as absl::SimpleAtob)
//   int     decimal, within the field's C++ type
//   string  as given (may be empty)
//   enum    one of the row's names: backend auto|emulated|cuda|metadata_only, cuda.copy_method
//           auto|kernel|batch_memcpy|memcpy_async, remote.publish write-through|write-back|never
//   params  key=value[,key=value...] (a policy's parameters; "" = none; replaces the whole map;
//           a value cannot hold ',': set such a parameter through the typed path)
//
// Thread safety: the table is immutable; the functions touch only the Options they are given.
// Errors: kInvalidArgument whose message names the field's path ("Options.remote.publish: 'x' is
//   not write-through or write-back"); values are checked for type and range only: what a field
//   means (a policy name, a node list) is checked by Options::Validate and Cache::Create.
#ifndef KVTIER_LIB_OPTIONS_FIELDS_H_
#define KVTIER_LIB_OPTIONS_FIELDS_H_

#include <cstdint>
#include <span>
#include <string>
#include <variant>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kvtier/options.h"
#include "kvtier/policy.h"

namespace kvtier::internal {

enum class OptionType {
  kBool,
  kInt,     // a signed integer field (int)
  kUint,    // an unsigned integer field (uint32_t, uint64_t)
  kString,  // std::string
  kEnum,    // an enum class, by name (OptionField::names)
  kParams,  // PolicyParams
};

// A field's value, typed by its OptionType: kBool bool, kInt int64_t, kUint uint64_t, kString
// and kEnum std::string (kEnum: one of the row's names), kParams PolicyParams.
using OptionValue = std::variant<bool, int64_t, uint64_t, std::string, PolicyParams>;

struct OptionField {
  absl::string_view path;  // "host.capacity_bytes"; no "Options." prefix
  OptionType type = OptionType::kBool;
  absl::string_view help;                    // one line: unit, effect
  std::span<const absl::string_view> names;  // kEnum: the enumerators' names, by value
  int64_t min = 0;                           // kInt, kUint: the field's range (kUint: min 0)
  uint64_t max = 0;
  OptionValue (*get)(const Options& options) = nullptr;  // the field's value
  // Unchecked: stores a value of the row's type (set through SetOptionValue, which checks it).
  void (*store)(Options& options, const OptionValue& value) = nullptr;
};

// Every row, in the order of options.h. O(1).
std::span<const OptionField> OptionFields();

// The row of `path`, or nullptr. O(rows).
const OptionField* FindOptionField(absl::string_view path);

// Parses `value` as the text form of path's type and stores it in `options`. kInvalidArgument for
// an unknown path (the message lists the known ones) or a value that does not parse or fit:
// "Options.<path>: '<value>' is not ...".
absl::Status SetOption(Options& options, absl::string_view path, absl::string_view value);

// The text form of path's value in `options` (SetOption(o, path, *GetOption(o, path)) changes
// nothing). kInvalidArgument for an unknown path.
absl::StatusOr<std::string> GetOption(const Options& options, absl::string_view path);

// Stores a typed value (the bindings' path from their own types): kInvalidArgument naming the path
// when `value` is not of field.type's alternative, is out of the field's range or is not one of an
// enum's names.
absl::Status SetOptionValue(Options& options, const OptionField& field, const OptionValue& value);

// Parses the text form of field.type (range and enum names are SetOptionValue's to check).
// kInvalidArgument naming the path when it does not parse.
absl::StatusOr<OptionValue> ParseOptionValue(const OptionField& field, absl::string_view text);

// The text form of `value` (as GetOption prints it).
std::string FormatOptionValue(const OptionValue& value);

// "bool", "int", "string", "enum", "params": for help texts and messages.
const char* OptionTypeName(OptionType type);

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_OPTIONS_FIELDS_H_
