// The `kvtier` Python module: the C++ lifecycle (kvtier/cache.h) for engines written in Python.
//
// Wraps the C++ API directly (not the C API). Every call into the cache releases the GIL, so a
// thread blocked in Transfer.wait() lets other Python threads run. Memory: on the emulated device
// the KV tensors are host memory, either owned by the Cache (Options.bytes_per_block and friends)
// or borrowed from the engine's tensors in Options.layers: writable buffers (numpy arrays,
// bytearrays) or torch tensors (duck-typed, torch is never imported: data_ptr(), element_size(),
// stride(), shape, device.type; CPU tensors are host memory, CUDA tensors raw device addresses;
// kvtier holds a reference, and the engine must not resize_() or set_() them); lease.block()
// returns a numpy view into host memory that keeps it alive. With raw addresses
// (kvtier.Segment(base=tensor.data_ptr(), ...), CUDA tensors) only integer addresses are exposed.
//
// Connector mode (kvtier/connector.h): kvtier.Connector(options) over the same Options, for an
// engine that owns its GPU blocks; its loads are kvtier.Transfer objects, its stores kvtier.Store.
// Block ids are accepted as a list of ints, a numpy integer array or a torch integer tensor.
//
// Close: Cache.close() (Connector.close()) waits for the transfers, empties the leases (abandons
// the stores with layers unsaved and waits for the others) and destroys the C++ object; every
// later call through it or its handles raises kvtier.Error. The KV memory itself lives until the
// last Python object referring to it is gone.
//
// Options: the layout keywords (num_slots, layers, dtype, ...) are this module's own; every other
// keyword is a row of the shared option table (lib/options_fields.h), named by its path with '.'
// replaced by '_' (host.capacity_bytes -> host_capacity_bytes, remote.nodes -> remote_nodes), so
// a field added to the table is a keyword here with no change to this file. A value of the wrong
// Python type raises TypeError; one the table rejects (out of range, not an enum's name) ValueError
// naming the path, when the Options is built.
//
// Memory: the KV tensors the Cache allocates are anonymous mappings, zero pages until written; a
// layout larger than the machine's physical memory raises MemoryError before anything is mapped.
// dtype: numeric element types only (bool, int, uint, float, complex): a view of any other kind
// (object, str, datetime, structured) over raw KV bytes would be meaningless, or, for object,
// pointers numpy would follow.
//
// Cached blocks are read-only: lease blocks [0, transfer.blocks_loaded()) of a Load (all of
// [0, transfer.blocks()) when it did not fail) are cached blocks (shared with every request that
// loads their keys), and so are [0, len(keys)) after commit(keys, lease). write_block raises
// kvtier.Error (FAILED_PRECONDITION) on them and block() returns a read-only view (a view taken
// before they became cached is still writable: do not write through it). Only the blocks the engine
// computes, [transfer.blocks(), n), are written.
//
// Errors: a non-OK absl::Status becomes ValueError (kInvalidArgument), KeyError (kNotFound),
// IndexError (kOutOfRange) or kvtier.Error (a RuntimeError; every other code); each carries the
// Status message and a `code` attribute ("INVALID_ARGUMENT", ...). Wrong Python types raise
// TypeError (pybind11's conversions), a buffer of the wrong dtype TypeError, of the wrong size
// ValueError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "kvtier/block_key.h"
#include "kvtier/cache.h"
#include "kvtier/connector.h"
#include "kvtier/events.h"
#include "kvtier/options.h"
#include "kvtier/stats.h"
#include "lib/codec/codec.h"
#include "lib/options_fields.h"

namespace py = pybind11;

namespace kvtier::python {

struct PyLease;
struct PyTransfer;
struct PyStore;

namespace {

class StatusError : public std::exception {
 public:
  explicit StatusError(absl::Status status)
      : status_(std::move(status)), message_(status_.message()) {}
  const char* what() const noexcept override { return message_.c_str(); }
  const absl::Status& status() const { return status_; }

 private:
  absl::Status status_;
  std::string message_;
};

void ThrowIfError(const absl::Status& status) {
  if (!status.ok()) throw StatusError(status);
}

PyObject* g_error_type = nullptr;  // kvtier.Error

const char* CodeName(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return "OK";
    case absl::StatusCode::kInvalidArgument:
      return "INVALID_ARGUMENT";
    case absl::StatusCode::kNotFound:
      return "NOT_FOUND";
    case absl::StatusCode::kAlreadyExists:
      return "ALREADY_EXISTS";
    case absl::StatusCode::kResourceExhausted:
      return "RESOURCE_EXHAUSTED";
    case absl::StatusCode::kFailedPrecondition:
      return "FAILED_PRECONDITION";
    case absl::StatusCode::kOutOfRange:
      return "OUT_OF_RANGE";
    case absl::StatusCode::kUnimplemented:
      return "UNIMPLEMENTED";
    case absl::StatusCode::kInternal:
      return "INTERNAL";
    case absl::StatusCode::kUnavailable:
      return "UNAVAILABLE";
    case absl::StatusCode::kDataLoss:
      return "DATA_LOSS";
    case absl::StatusCode::kDeadlineExceeded:
      return "DEADLINE_EXCEEDED";
    case absl::StatusCode::kCancelled:
      return "CANCELLED";
    case absl::StatusCode::kAborted:
      return "ABORTED";
    case absl::StatusCode::kPermissionDenied:
      return "PERMISSION_DENIED";
    case absl::StatusCode::kUnauthenticated:
      return "UNAUTHENTICATED";
    default:
      return "UNKNOWN";
  }
}

void RaiseStatus(const absl::Status& status) {
  PyObject* type = g_error_type;
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
      type = PyExc_ValueError;
      break;
    case absl::StatusCode::kNotFound:
      type = PyExc_KeyError;
      break;
    case absl::StatusCode::kOutOfRange:
      type = PyExc_IndexError;
      break;
    default:
      break;
  }
  const std::string message(status.message());
  PyObject* instance = PyObject_CallFunction(type, "s", message.c_str());
  if (instance == nullptr) return;  // that call's error is set
  PyObject* code = PyUnicode_FromString(CodeName(status.code()));
  if (code != nullptr) {
    PyObject_SetAttrString(instance, "code", code);
    Py_DECREF(code);
  }
  PyErr_SetObject(type, instance);
  Py_DECREF(instance);
}

absl::Status Closed(const char* call) {
  return absl::FailedPreconditionError(absl::StrCat(call, ": the cache is closed"));
}

// ---- options ----

// A raw segment: a device (or host) address as an integer, e.g. tensor.data_ptr().
struct PySegment {
  uint64_t base = 0;
  uint64_t bytes_per_block = 0;
  uint64_t stride_bytes = 0;  // 0 = bytes_per_block
};

struct PyOptions {
  // layout
  uint32_t tokens_per_block = 16;
  uint32_t num_slots = 0;
  uint32_t num_layers = 0;          // with bytes_per_block: the Cache allocates the KV memory
  uint32_t segments_per_layer = 2;  // 2 (K, V) or 1 (MLA)
  uint64_t bytes_per_block = 0;     // per segment
  py::object layers = py::none();   // or: per layer a list of buffers / kvtier.Segment
  std::string dtype = "uint8";      // element type of the KV tensors, for lease.block()
  // Per position in a layer, its segment's role ("k", "v", "latent" or ""), for host_codec
  // int8/int4; empty: unspecified.
  std::vector<std::string> segment_roles;
  // Everything else, set through the option table's keywords; its layout is unused.
  Options tree;
};

// The Python value of a table row's value.
py::object ToPython(const internal::OptionValue& value) {
  struct Convert {
    py::object operator()(bool b) const { return py::bool_(b); }
    py::object operator()(int64_t v) const { return py::int_(v); }
    py::object operator()(uint64_t v) const { return py::int_(v); }
    py::object operator()(const std::string& s) const { return py::str(s); }
    py::object operator()(const PolicyParams& p) const { return py::cast(p); }
  };
  return std::visit(Convert{}, value);
}

// Stores a Python value in row `field` of `options`: TypeError for a value of the wrong Python
// type (as pybind11's own conversions would raise), the table's ValueError for one it rejects.
void SetFromPython(Options& options, const internal::OptionField& field, const py::object& value) {
  using internal::OptionType;
  auto type_error = [&](const char* expected) {
    return py::type_error(
        absl::StrCat("Options.", field.path, ": ", expected, " vs a ",
                     py::str(py::type::of(value).attr("__name__")).cast<std::string>()));
  };
  internal::OptionValue v;
  switch (field.type) {
    case OptionType::kBool: {
      py::detail::make_caster<bool> c;
      if (!c.load(value, true)) throw type_error("a bool");
      v = py::detail::cast_op<bool>(c);
      break;
    }
    case OptionType::kInt:
    case OptionType::kUint: {
      // Any int (numpy's too), range-checked by the table: its text form says which range.
      if (PyFloat_Check(value.ptr()) || !PyIndex_Check(value.ptr())) throw type_error("an int");
      PyObject* index = PyNumber_Index(value.ptr());
      if (index == nullptr) throw py::error_already_set();
      const std::string text = py::str(py::reinterpret_steal<py::object>(index));
      absl::StatusOr<internal::OptionValue> parsed = internal::ParseOptionValue(field, text);
      ThrowIfError(parsed.status());
      v = std::move(*parsed);
      break;
    }
    case OptionType::kString:
    case OptionType::kEnum: {
      py::detail::make_caster<std::string> c;
      if (!c.load(value, true)) throw type_error("a str");
      v = py::detail::cast_op<std::string>(std::move(c));
      break;
    }
    case OptionType::kParams: {
      py::detail::make_caster<PolicyParams> c;
      if (!c.load(value, true)) throw type_error("a dict of str to str");
      v = py::detail::cast_op<PolicyParams>(std::move(c));
      break;
    }
  }
  ThrowIfError(internal::SetOptionValue(options, field, v));
}

// Unmaps a KV tensor the Cache allocated (an anonymous mapping of `bytes`).
struct Unmap {
  size_t bytes = 0;
  void operator()(uint8_t* p) const { munmap(p, bytes); }
};

// Raises MemoryError with `message` (pybind11 has no class for it).
[[noreturn]] void ThrowMemoryError(const std::string& message) {
  PyErr_SetString(PyExc_MemoryError, message.c_str());
  throw py::error_already_set();
}

std::string DtypeName(const py::dtype& dtype) { return py::str(py::object(dtype)); }

// A dtype lease.block() and Cache.kv() may view raw KV bytes as: numeric, no Python objects.
bool IsNumeric(const py::dtype& dtype) {
  const std::string kind = py::str(dtype.attr("kind"));
  return kind.size() == 1 && std::string_view("biufc").find(kind[0]) != std::string_view::npos &&
         !dtype.attr("hasobject").cast<bool>();
}

std::string TypeName(const py::handle& obj) {
  return py::str(py::type::of(obj).attr("__name__")).cast<std::string>();
}

// How IntegersFromPython reports a value outside its range.
struct IntRange {
  int64_t lo;
  int64_t hi;              // >= 0
  const char* name;        // "an int32", "a block id (uint32)"
  bool type_error = true;  // TypeError (a token that is no int32), else ValueError
};

// Integers from a sequence of ints, a numpy integer array, or a tensor: an object numpy can view
// (__array__, on the CPU: a torch CPU tensor, without a copy) or with tolist() (a torch CUDA
// tensor). Each is checked into `range`. A float (or bool, or any non-integer) is a TypeError,
// never truncated: 1.7 would become 1. An array of more than one dimension is a ValueError.
std::vector<int64_t> IntegersFromPython(const char* call, const char* what, const py::handle& obj,
                                        const IntRange& range) {
  py::object seq = py::reinterpret_borrow<py::object>(obj);
  if (!py::isinstance<py::array>(seq) && !py::isinstance<py::list>(seq) &&
      !py::isinstance<py::tuple>(seq) && !py::isinstance<py::str>(seq)) {
    bool host = true;  // numpy can view it: no `device`, or device.type == "cpu"
    if (py::hasattr(seq, "device") && py::hasattr(seq.attr("device"), "type")) {
      host = py::str(seq.attr("device").attr("type")).cast<std::string>() == "cpu";
    }
    if (host && py::hasattr(seq, "__array__")) {
      seq = py::module_::import("numpy").attr("asarray")(seq);
    } else if (py::hasattr(seq, "tolist")) {
      seq = seq.attr("tolist")();
    }
  }
  auto out_of_range = [&](size_t i, const std::string& value) {
    const std::string message =
        absl::StrCat(call, ": ", what, "[", i, "] = ", value, " is not ", range.name);
    if (range.type_error) throw py::type_error(message);
    throw StatusError(absl::InvalidArgumentError(message));
  };
  std::vector<int64_t> out;
  if (py::isinstance<py::array>(seq)) {
    const auto arr = py::reinterpret_borrow<py::array>(seq);
    const std::string kind = py::str(arr.dtype().attr("kind"));
    if (kind != "i" && kind != "u") {
      throw py::type_error(absl::StrCat(call, ": ", what, " of dtype ", DtypeName(arr.dtype()),
                                        " vs an integer dtype"));
    }
    if (arr.ndim() != 1) {
      throw StatusError(absl::InvalidArgumentError(
          absl::StrCat(call, ": ", what, " has ", arr.ndim(), " dimensions vs 1")));
    }
    out.reserve(static_cast<size_t>(arr.size()));
    // Every integer dtype converts exactly into one of the two 64-bit ones.
    if (kind == "u") {
      const auto u = py::array_t<uint64_t, py::array::c_style | py::array::forcecast>::ensure(arr);
      if (!u) throw py::type_error(absl::StrCat(call, ": ", what, " does not convert to uint64"));
      for (py::ssize_t i = 0; i < u.size(); ++i) {
        const uint64_t v = u.data()[i];
        if (v > static_cast<uint64_t>(range.hi)) {
          out_of_range(static_cast<size_t>(i), std::to_string(v));
        }
        out.push_back(static_cast<int64_t>(v));
      }
    } else {
      const auto v64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(arr);
      if (!v64) throw py::type_error(absl::StrCat(call, ": ", what, " does not convert to int64"));
      for (py::ssize_t i = 0; i < v64.size(); ++i) {
        const int64_t v = v64.data()[i];
        if (v < range.lo || v > range.hi) {
          out_of_range(static_cast<size_t>(i), std::to_string(v));
        }
        out.push_back(v);
      }
    }
    return out;
  }
  if (!py::isinstance<py::sequence>(seq) || py::isinstance<py::str>(seq) ||
      py::isinstance<py::bytes>(seq)) {
    throw py::type_error(
        absl::StrCat(call, ": ", what, " must be a sequence of int vs a ", TypeName(seq)));
  }
  out.reserve(py::len(seq));
  for (py::handle item : seq) {
    if (PyFloat_Check(item.ptr()) || PyBool_Check(item.ptr()) || !PyIndex_Check(item.ptr())) {
      throw py::type_error(
          absl::StrCat(call, ": ", what, "[", out.size(), "] is a ", TypeName(item), " vs an int"));
    }
    auto index = py::reinterpret_steal<py::object>(PyNumber_Index(item.ptr()));
    if (!index) throw py::error_already_set();
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
    if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
    if (overflow != 0 || v < range.lo || v > range.hi) {
      out_of_range(out.size(), py::str(index).cast<std::string>());
    }
    out.push_back(v);
  }
  return out;
}

// Token ids, each an int32 (TypeError otherwise).
std::vector<int32_t> TokensFromPython(const char* call, const py::handle& tokens) {
  const std::vector<int64_t> v =
      IntegersFromPython(call, "tokens", tokens, {INT32_MIN, INT32_MAX, "an int32"});
  return std::vector<int32_t>(v.begin(), v.end());
}

// Engine block ids, each a uint32 (ValueError otherwise; the C++ call checks < num_slots).
std::vector<uint32_t> BlockIdsFromPython(const char* call, const char* what,
                                         const py::handle& blocks) {
  const std::vector<int64_t> v = IntegersFromPython(
      call, what, blocks, {0, UINT32_MAX, "a block id (uint32)", /*type_error=*/false});
  return std::vector<uint32_t>(v.begin(), v.end());
}

// Everything a Cache (or a Connector) and its handles share. Members are destroyed in reverse
// order: the Cache (whose destructor may flush blocks out of device memory) before the memory it
// reads. Destroyed with the GIL held (the last reference is a Python object's or a handle's,
// whose destructor re-takes the GIL before its members go).
struct CacheState {
  std::vector<std::unique_ptr<uint8_t, Unmap>> owned;      // KV tensors the Cache allocated
  std::vector<std::unique_ptr<py::buffer_info>> borrowed;  // the engine's buffers, held exported
  std::vector<py::object> tensors;  // the engine's torch tensors, referenced (data_ptr() inside)
  std::vector<std::vector<bool>> host_visible;  // [layer][segment]: host memory Python may view
  py::dtype dtype;
  BlockLayout layout;
  std::shared_mutex life_mu;             // shared: a call in progress; exclusive: close
  std::unique_ptr<Cache> cache;          // nullptr once closed, and for a connector's state
  std::unique_ptr<Connector> connector;  // a connector's: nullptr once closed
  bool is_connector = false;
  std::mutex reg_mu;  // after life_mu
  std::unordered_set<PyLease*> leases;
  std::unordered_set<PyTransfer*> transfers;
  std::unordered_set<PyStore*> stores;

  bool open() const { return cache != nullptr || connector != nullptr; }
};

absl::Status Closed(const char* call, const CacheState& st) {
  return absl::FailedPreconditionError(
      absl::StrCat(call, ": the ", st.is_connector ? "connector" : "cache", " is closed"));
}

}  // namespace

struct PyLease {
  std::shared_ptr<CacheState> state;
  DeviceLease lease;
  bool released = false;
  // Lease blocks [0, committed) were published by commit(); [0, t->transfer.blocks_loaded()) of
  // each finished load hold cached blocks. Both are read-only (the module's header comment).
  uint32_t committed = 0;
  std::vector<std::shared_ptr<PyTransfer>> loads;
  ~PyLease();
};

struct PyTransfer {
  std::shared_ptr<CacheState> state;
  Transfer transfer;
  ~PyTransfer() {
    py::gil_scoped_release nogil;
    std::shared_lock life(state->life_mu);
    {
      std::lock_guard reg(state->reg_mu);
      state->transfers.erase(this);
    }
    transfer = Transfer();  // waits for the copies
  }
};

// A Connector's store (kvtier::StoreHandle).
struct PyStore {
  std::shared_ptr<CacheState> state;
  StoreHandle store;  // empty once the connector closed
  ~PyStore() {
    py::gil_scoped_release nogil;
    std::shared_lock life(state->life_mu);
    {
      std::lock_guard reg(state->reg_mu);
      state->stores.erase(this);
    }
    store = StoreHandle();  // abandons unsaved layers, waits for the copies enqueued
  }
};

PyLease::~PyLease() {
  loads.clear();  // first: a transfer's destructor takes life_mu itself
  py::gil_scoped_release nogil;
  std::shared_lock life(state->life_mu);
  {
    std::lock_guard reg(state->reg_mu);
    state->leases.erase(this);
  }
  lease = DeviceLease();
}

struct PyCache {
  std::shared_ptr<CacheState> state;
};

struct PyConnector {
  std::shared_ptr<CacheState> state;
};

// A load or store Connector.take_finished() reports.
struct PyFinished {
  uint64_t request_id = 0;
  std::string kind;  // "load" or "store"
  bool ok = false;
  std::string code;     // "OK", "CANCELLED", ...
  std::string message;  // "" when ok
  uint32_t blocks = 0;
  uint32_t blocks_loaded = 0;
};

namespace {

// A torch tensor, by duck typing (torch is not imported; torch 1.13 tensors have no buffer
// protocol).
bool IsTensorLike(const py::handle& obj) {
  for (const char* attr :
       {"data_ptr", "element_size", "numel", "is_contiguous", "stride", "shape", "device"}) {
    if (!py::hasattr(obj, attr)) return false;
  }
  return true;
}

// The segment of a torch tensor in Options.layers: its first dimension is the slots, each slot's
// elements contiguous, slots stride(0) elements apart (a contiguous tensor, or a slice such as
// kv[:, 0] of a [num_slots, 2, ...] tensor). A CPU tensor is host memory (*host = true); a CUDA
// tensor a raw device address, which makes backend auto mean cuda (the emulated device would read
// it as host memory). Anything else is a ValueError naming what is wrong.
Segment TensorSegment(const py::handle& t, const PyOptions& o, Options* opt, bool* host) {
  auto invalid = [](const std::string& what) {
    return StatusError(absl::InvalidArgumentError(absl::StrCat("Options.layers: ", what)));
  };
  const std::string device = py::str(t.attr("device").attr("type"));
  if (device != "cpu" && device != "cuda") {
    throw invalid(absl::StrCat("a tensor on device '", device, "' vs cpu or cuda"));
  }
  std::vector<int64_t> shape;
  for (py::handle d : t.attr("shape")) shape.push_back(d.cast<int64_t>());
  std::vector<int64_t> stride;
  for (py::handle d : t.attr("stride")()) stride.push_back(d.cast<int64_t>());
  const auto esize = t.attr("element_size")().cast<int64_t>();
  const auto describe = [&] {
    std::string text = " (shape [";
    for (size_t i = 0; i < shape.size(); ++i) absl::StrAppend(&text, i ? ", " : "", shape[i]);
    absl::StrAppend(&text, "], stride [");
    for (size_t i = 0; i < stride.size(); ++i) absl::StrAppend(&text, i ? ", " : "", stride[i]);
    return text + "])";
  };
  if (shape.empty() || stride.size() != shape.size() || esize <= 0) {
    throw invalid(
        absl::StrCat("a tensor of ", shape.size(), " dimensions vs [num_slots, ...]", describe()));
  }
  if (shape[0] != static_cast<int64_t>(o.num_slots)) {
    throw invalid(absl::StrCat("a tensor's first dimension is ", shape[0],
                               " vs num_slots=", o.num_slots, describe()));
  }
  // Each slot's elements: row-major over dimensions 1.., with no gaps.
  int64_t per_slot = 1;
  bool rows = true;
  for (size_t d = shape.size(); d-- > 1;) {
    if (shape[d] != 1 && stride[d] != per_slot) rows = false;
    per_slot *= shape[d];
  }
  const int64_t slot_stride = shape[0] == 1 ? per_slot : stride[0];
  if (!t.attr("is_contiguous")().cast<bool>() && (!rows || slot_stride < per_slot)) {
    throw invalid(absl::StrCat("a tensor is not contiguous: each slot's elements must be, slots ",
                               "at least a slot apart", describe()));
  }
  if (per_slot == 0) throw invalid(absl::StrCat("an empty tensor", describe()));
  const uint64_t bytes_per_block = static_cast<uint64_t>(per_slot * esize);
  if (o.bytes_per_block != 0 && o.bytes_per_block != bytes_per_block) {
    throw invalid(absl::StrCat("a tensor holds ", bytes_per_block, " bytes per block vs ",
                               "bytes_per_block=", o.bytes_per_block));
  }
  *host = device == "cpu";
  if (!*host) {
    if (opt->backend == DeviceBackend::kEmulated) {
      throw invalid(
          "a CUDA tensor with backend=emulated, which reads the KV memory as host memory (use "
          "backend auto or cuda)");
    }
    if (opt->backend == DeviceBackend::kAuto) opt->backend = DeviceBackend::kCuda;
  }
  const auto base = t.attr("data_ptr")().cast<uint64_t>();
  return {reinterpret_cast<void*>(static_cast<uintptr_t>(base)), bytes_per_block,
          static_cast<uint64_t>(slot_stride * esize)};
}

// kvtier.codec_roundtrip: `x` [tokens, channels] of float16, float32 or uint16 (bf16 bits)
// through `codec` as one segment of role `role`; the decoded array (same dtype and shape) and the
// encoded bytes (header included).
std::pair<py::array, uint64_t> CodecRoundTrip(const std::string& codec, uint32_t group_size,
                                              const py::array& x, const std::string& role) {
  if (x.ndim() != 2 || x.shape(0) <= 0 || x.shape(1) <= 0) {
    throw StatusError(absl::InvalidArgumentError(
        "codec_roundtrip: x must be a non-empty 2-D array [tokens, channels]"));
  }
  internal::ElementType element;
  const char kind = x.dtype().kind();
  if (kind == 'f' && x.itemsize() == 2) {
    element = internal::ElementType::kF16;
  } else if (kind == 'f' && x.itemsize() == 4) {
    element = internal::ElementType::kF32;
  } else if (kind == 'u' && x.itemsize() == 2) {
    element = internal::ElementType::kBf16;
  } else {
    throw StatusError(
        absl::InvalidArgumentError(absl::StrCat("codec_roundtrip: dtype ", DtypeName(x.dtype()),
                                                " vs float16, float32 or uint16 (bfloat16 bits)")));
  }
  const absl::StatusOr<internal::CodecId> id =
      internal::ParseCodec("codec_roundtrip: codec", codec);
  ThrowIfError(id.status());
  const py::array in = py::array::ensure(x, py::array::c_style);
  const uint64_t bytes = static_cast<uint64_t>(in.nbytes());
  py::array out(in.dtype(), std::vector<py::ssize_t>{in.shape(0), in.shape(1)});
  if (*id == internal::CodecId::kNone) {
    std::memcpy(out.mutable_data(), in.data(), bytes);
    return {out, bytes};
  }
  BlockLayout layout;
  layout.tokens_per_block = static_cast<uint32_t>(in.shape(0));
  layout.num_slots = 1;
  layout.layers = {
      LayerLayout{.segments = {Segment{.bytes_per_block = bytes, .stride_bytes = bytes}}}};
  ThrowIfError(layout.SetSegmentRoles({role}, "codec_roundtrip: role"));
  absl::StatusOr<internal::BlockCodec> c = internal::BlockCodec::Create(
      "codec_roundtrip: codec", {.id = *id, .group_size = group_size, .element = element}, layout);
  ThrowIfError(c.status());
  std::vector<uint8_t> encoded(c->encoded_bytes());
  {
    py::gil_scoped_release release;
    c->Encode(in.data(), encoded.data());
    ThrowIfError(c->Decode(encoded.data(), out.mutable_data()));
  }
  return {out, encoded.size()};
}

// Builds the C++ options and the memory they describe into `state`. Needs the GIL.
Options BuildOptions(const PyOptions& o, CacheState* state) {
  Options opt = o.tree;
  opt.layout = BlockLayout{};
  opt.layout.tokens_per_block = o.tokens_per_block;
  opt.layout.num_slots = o.num_slots;
  state->dtype = py::dtype(o.dtype);  // TypeError for an unknown dtype
  if (!IsNumeric(state->dtype)) {
    throw StatusError(absl::InvalidArgumentError(absl::StrCat(
        "Options.dtype: ", o.dtype, " is not a numeric dtype (kind '",
        py::str(state->dtype.attr("kind")).cast<std::string>(), "' vs one of b, i, u, f, c)")));
  }
  const auto itemsize = static_cast<uint64_t>(state->dtype.itemsize());
  if (o.layers.is_none()) {
    if (o.num_layers == 0 || o.segments_per_layer == 0 || o.bytes_per_block == 0) {
      throw StatusError(absl::InvalidArgumentError(
          "Options: give layers=[[segment, ...], ...] or num_layers, segments_per_layer and "
          "bytes_per_block (all > 0) for the Cache to allocate the KV memory"));
    }
    if (opt.backend == DeviceBackend::kCuda) {
      throw StatusError(absl::InvalidArgumentError(
          "Options.layers: the cuda backend needs the engine's device tensors (kvtier.Segment)"));
    }
    const uint64_t bytes = uint64_t{o.num_slots} * o.bytes_per_block;
    if (o.num_slots == 0 || bytes / o.num_slots != o.bytes_per_block || bytes > (1ull << 40)) {
      throw StatusError(absl::InvalidArgumentError(
          absl::StrCat("Options: num_slots=", o.num_slots, " x bytes_per_block=", o.bytes_per_block,
                       " is not a tensor size kvtier allocates")));
    }
    const bool no_bytes = opt.backend == DeviceBackend::kMetadataOnly;
    // Every tensor together against the machine's memory, before any is mapped: each alone may
    // fit where all of them do not, and memory touched past that ends in the OOM killer, not in
    // an exception. The mappings are lazy (zero pages until written).
    const uint64_t rounded = (bytes + 4095) / 4096 * 4096;
    const uint64_t tensors = uint64_t{o.num_layers} * o.segments_per_layer;
    const long pages = sysconf(_SC_PHYS_PAGES);
    const long page_bytes = sysconf(_SC_PAGESIZE);
    if (!no_bytes && pages > 0 && page_bytes > 0 &&
        (tensors > UINT64_MAX / rounded ||
         tensors * rounded > static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_bytes))) {
      ThrowMemoryError(absl::StrCat(
          "Options: num_layers=", o.num_layers, " x segments_per_layer=", o.segments_per_layer,
          " tensors of num_slots=", o.num_slots, " x bytes_per_block=", o.bytes_per_block,
          " bytes exceed the machine's memory (",
          static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_bytes), " bytes)"));
    }
    for (uint32_t l = 0; l < o.num_layers; ++l) {
      LayerLayout layer;
      state->host_visible.emplace_back(o.segments_per_layer, !no_bytes);
      for (uint32_t s = 0; s < o.segments_per_layer; ++s) {
        void* base = nullptr;
        if (!no_bytes) {
          void* p =
              mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
          if (p == MAP_FAILED) {
            ThrowMemoryError(absl::StrCat("Options: mapping a KV tensor of ", rounded,
                                          " bytes failed: ", std::strerror(errno)));
          }
          state->owned.emplace_back(static_cast<uint8_t*>(p), Unmap{rounded});
          base = p;
        }
        layer.segments.push_back({base, o.bytes_per_block, o.bytes_per_block});
      }
      opt.layout.layers.push_back(std::move(layer));
    }
  } else {
    for (py::handle layer_obj : o.layers) {
      LayerLayout layer;
      std::vector<bool>& visible = state->host_visible.emplace_back();
      for (py::handle seg : layer_obj) {
        if (py::isinstance<PySegment>(seg)) {
          visible.push_back(false);
          const auto& s = seg.cast<const PySegment&>();
          layer.segments.push_back({reinterpret_cast<void*>(static_cast<uintptr_t>(s.base)),
                                    s.bytes_per_block,
                                    s.stride_bytes == 0 ? s.bytes_per_block : s.stride_bytes});
          continue;
        }
        if (!PyObject_CheckBuffer(seg.ptr()) && IsTensorLike(seg)) {
          bool host = false;
          layer.segments.push_back(TensorSegment(seg, o, &opt, &host));
          visible.push_back(host);
          state->tensors.push_back(py::reinterpret_borrow<py::object>(seg));
          continue;
        }
        visible.push_back(true);
        if (!PyObject_CheckBuffer(seg.ptr())) {
          throw py::type_error(
              "Options.layers: a segment must be a kvtier.Segment, a writable buffer (numpy "
              "array, bytearray) or a tensor (torch, CPU or CUDA) vs a " +
              TypeName(seg));
        }
        // Writable, C-contiguous, held exported for the Cache's life (no resize under it).
        auto info = std::make_unique<py::buffer_info>(
            py::reinterpret_borrow<py::buffer>(seg).request(/*writable=*/true));
        if (const py::dtype given(*info); !IsNumeric(given)) {
          throw StatusError(absl::InvalidArgumentError(absl::StrCat(
              "Options.layers: a segment buffer of dtype ", DtypeName(given), " is not numeric")));
        }
        const uint64_t nbytes = static_cast<uint64_t>(info->size) * info->itemsize;
        int64_t expect = info->itemsize;
        for (int64_t d = info->ndim - 1; d >= 0; --d) {
          if (info->shape[d] != 1 && info->strides[d] != expect) {
            throw StatusError(
                absl::InvalidArgumentError("Options.layers: a segment buffer is not C-contiguous"));
          }
          expect *= info->shape[d];
        }
        if (o.num_slots == 0 || nbytes == 0 || nbytes % o.num_slots != 0) {
          throw StatusError(absl::InvalidArgumentError(
              absl::StrCat("Options.layers: a segment buffer of ", nbytes,
                           " bytes is not num_slots=", o.num_slots, " equal blocks")));
        }
        const uint64_t per_block = nbytes / o.num_slots;
        if (o.bytes_per_block != 0 && o.bytes_per_block != per_block) {
          throw StatusError(absl::InvalidArgumentError(
              absl::StrCat("Options.layers: a segment buffer holds ", per_block,
                           " bytes per block vs ", "bytes_per_block=", o.bytes_per_block)));
        }
        layer.segments.push_back({info->ptr, per_block, per_block});
        state->borrowed.push_back(std::move(info));
      }
      opt.layout.layers.push_back(std::move(layer));
    }
  }
  if (!o.segment_roles.empty()) {
    ThrowIfError(opt.layout.SetSegmentRoles(o.segment_roles, "Options.segment_roles"));
  }
  for (const LayerLayout& layer : opt.layout.layers) {
    for (const Segment& s : layer.segments) {
      if (s.bytes_per_block % itemsize != 0) {
        throw StatusError(absl::InvalidArgumentError(
            absl::StrCat("Options.dtype: ", o.dtype, " (", itemsize, " bytes) does not divide ",
                         "bytes_per_block=", s.bytes_per_block)));
      }
    }
  }
  return opt;
}

PyCache CreateCache(const PyOptions& o) {
  auto state = std::make_shared<CacheState>();
  const Options opt = BuildOptions(o, state.get());
  absl::StatusOr<std::unique_ptr<Cache>> cache;
  {
    py::gil_scoped_release nogil;
    cache = Cache::Create(opt);
  }
  ThrowIfError(cache.status());
  state->layout = opt.layout;
  state->cache = std::move(*cache);
  return PyCache{std::move(state)};
}

PyConnector CreateConnector(const PyOptions& o) {
  auto state = std::make_shared<CacheState>();
  state->is_connector = true;
  const Options opt = BuildOptions(o, state.get());
  absl::StatusOr<std::unique_ptr<Connector>> connector;
  {
    py::gil_scoped_release nogil;
    connector = Connector::Create(opt);
  }
  ThrowIfError(connector.status());
  state->layout = opt.layout;
  state->connector = std::move(*connector);
  return PyConnector{std::move(state)};
}

// Runs `f` with the GIL released and the state's life_mu held shared: a closed cache or connector
// raises kvtier.Error (FAILED_PRECONDITION) naming `call`. `f` returns a C++ value (never a Python
// object: the GIL is not held) and may throw StatusError.
template <typename F>
auto CallOpen(CacheState& st, const char* call, F&& f) -> decltype(f()) {
  py::gil_scoped_release nogil;
  std::shared_lock life(st.life_mu);
  if (!st.open()) throw StatusError(Closed(call, st));
  return f();
}

// The value of a StatusOr, or its error raised.
template <typename T>
T ValueOrThrow(absl::StatusOr<T> v) {
  ThrowIfError(v.status());
  return std::move(*v);
}

// The address of (slot, layer, segment). Needs no lock: the layout is immutable.
const Segment& SegmentAt(const CacheState& st, const char* call, uint32_t layer, uint32_t segment) {
  if (layer >= st.layout.layers.size()) {
    throw StatusError(absl::OutOfRangeError(
        absl::StrCat(call, ": layer ", layer, " vs num_layers=", st.layout.layers.size())));
  }
  const auto& segs = st.layout.layers[layer].segments;
  if (segment >= segs.size()) {
    throw StatusError(absl::OutOfRangeError(
        absl::StrCat(call, ": segment ", segment, " vs segments=", segs.size())));
  }
  return segs[segment];
}

uint64_t SlotAddress(const CacheState& st, const char* call, uint32_t slot, uint32_t layer,
                     uint32_t segment) {
  const Segment& s = SegmentAt(st, call, layer, segment);
  if (slot >= st.layout.num_slots) {
    throw StatusError(absl::OutOfRangeError(
        absl::StrCat(call, ": slot ", slot, " vs num_slots=", st.layout.num_slots)));
  }
  return reinterpret_cast<uintptr_t>(s.base) + uint64_t{slot} * s.stride_bytes;
}

// Segment (layer, segment) is host memory that the state owns or holds exported: not a raw
// kvtier.Segment address (device memory on CUDA) and not metadata-only.
void CheckHostVisible(const CacheState& st, const char* call, uint32_t layer, uint32_t segment) {
  if (!st.host_visible[layer][segment]) {
    throw StatusError(absl::FailedPreconditionError(
        absl::StrCat(call, ": layer ", layer, " segment ", segment,
                     " is not host memory kvtier can view (a raw kvtier.Segment address or "
                     "metadata_only): use the *_address() functions")));
  }
}

// A numpy view at `address` (host memory the state keeps alive) of the cache's dtype.
py::array View(const std::shared_ptr<CacheState>& st, const char* call, uint32_t layer,
               uint32_t segment, uint64_t address, std::vector<py::ssize_t> shape,
               std::vector<py::ssize_t> strides) {
  CheckHostVisible(*st, call, layer, segment);
  auto* keep = new std::shared_ptr<CacheState>(st);
  py::capsule owner(keep, [](void* p) { delete static_cast<std::shared_ptr<CacheState>*>(p); });
  return py::array(st->dtype, std::move(shape), std::move(strides),
                   reinterpret_cast<void*>(static_cast<uintptr_t>(address)), owner);
}

void CheckLease(const PyLease& l, const char* call) {
  if (l.state->cache == nullptr) throw StatusError(Closed(call));
  if (l.released) {
    throw StatusError(
        absl::FailedPreconditionError(absl::StrCat(call, ": the lease was released")));
  }
}

void CheckSame(const PyCache& c, const PyLease& l, const char* call) {
  if (c.state != l.state) {
    throw StatusError(
        absl::FailedPreconditionError(absl::StrCat(call, ": the lease is another cache's")));
  }
}

uint64_t LeaseBlockAddress(PyLease& l, const char* call, uint32_t block, uint32_t layer,
                           uint32_t segment) {
  uint32_t slot = 0;
  {
    std::shared_lock life(l.state->life_mu);
    CheckLease(l, call);
    if (block >= l.lease.size()) {
      throw StatusError(absl::OutOfRangeError(
          absl::StrCat(call, ": block ", block, " vs lease size ", l.lease.size())));
    }
    slot = l.lease.slots()[block];
  }
  return SlotAddress(*l.state, call, slot, layer, segment);
}

// Why lease block `block` may not be written (empty: it may): it holds a cached block (committed,
// or loaded: before a Load's blocks_loaded()) or a Load is still copying into it. Holds life_mu.
std::string WhyReadOnly(PyLease& l, const char* call, uint32_t block) {
  std::shared_lock life(l.state->life_mu);
  CheckLease(l, call);
  if (block < l.committed) {
    return absl::StrCat(call, ": block ", block, " is cached (committed: lease blocks [0, ",
                        l.committed, ")); writing it would change it for every request");
  }
  if (block < l.lease.shared()) {
    return absl::StrCat(call, ": block ", block,
                        " is cached (shared by allocate_device(n, match): ", "lease.shared=",
                        l.lease.shared(), "); writing it would change it for ", "every request");
  }
  for (const std::shared_ptr<PyTransfer>& t : l.loads) {
    const uint32_t blocks = t->transfer.blocks();
    if (block >= blocks) continue;
    const absl::Status status = t->transfer.status();
    if (absl::IsUnavailable(status)) {
      return absl::StrCat(call, ": block ", block, " is being loaded (transfer.blocks()=", blocks,
                          "); its copies still write into it");
    }
    // A failed load keeps its blocks before the first failed one (transfer.blocks_loaded()).
    const uint32_t loaded = t->transfer.blocks_loaded();
    if (block < loaded) {
      return absl::StrCat(call, ": block ", block,
                          " is cached (loaded: transfer.blocks_loaded()=", loaded,
                          "); writing it would change it for every request");
    }
  }
  return "";
}

// stats() has every field of kvtier/stats.h (test_stats_have_every_field reads the header): a
// field added there changes these sizes, and the dicts below must get it too.
static_assert(sizeof(TierStats) == 19 * sizeof(uint64_t), "a TierStats field: add it to TierDict");
static_assert(sizeof(RemoteStats) == 14 * sizeof(uint64_t),
              "a RemoteStats field: add it to RemoteDict");
static_assert(sizeof(CacheStats) == 3 * sizeof(TierStats) + sizeof(RemoteStats) +
                                        30 * sizeof(uint64_t) + 6 * sizeof(LatencyHistogram),
              "a CacheStats field: add it to StatsDict");

py::dict ResultDict(const ManageResult& r) {
  py::dict d;
  d["done"] = r.done;
  d["not_found"] = r.not_found;
  d["busy"] = r.busy;
  d["kept_for_children"] = r.kept_for_children;
  return d;
}

// Seconds (a Python float) as a Duration; NaN becomes a duration the cache rejects.
absl::Duration Seconds(double seconds) {
  return std::isnan(seconds) ? absl::ZeroDuration() : absl::Seconds(seconds);
}

py::dict TierDict(const TierStats& t) {
  py::dict d;
  d["capacity_blocks"] = t.capacity_blocks;
  d["used_blocks"] = t.used_blocks;
  d["pinned_blocks"] = t.pinned_blocks;
  d["in_flight_blocks"] = t.in_flight_blocks;
  d["queue_depth"] = t.queue_depth;
  d["hits"] = t.hits;
  d["misses"] = t.misses;
  d["inserts"] = t.inserts;
  d["evictions"] = t.evictions;
  d["drops"] = t.drops;
  d["blocks_stored"] = t.blocks_stored;
  d["blocks_store_skipped"] = t.blocks_store_skipped;
  d["demotions"] = t.demotions;
  d["promotions"] = t.promotions;
  d["bytes_in"] = t.bytes_in;
  d["bytes_out"] = t.bytes_out;
  d["fill_failures"] = t.fill_failures;
  d["corrupt_reads"] = t.corrupt_reads;
  d["io_errors"] = t.io_errors;
  return d;
}

py::dict RemoteDict(const RemoteStats& r) {
  py::dict d;
  d["hits"] = r.hits;
  d["lookups"] = r.lookups;
  d["lookup_timeouts"] = r.lookup_timeouts;
  d["reads"] = r.reads;
  d["read_misses"] = r.read_misses;
  d["corrupt_reads"] = r.corrupt_reads;
  d["read_errors"] = r.read_errors;
  d["writes"] = r.writes;
  d["write_errors"] = r.write_errors;
  d["writes_skipped"] = r.writes_skipped;
  d["bytes_read"] = r.bytes_read;
  d["bytes_written"] = r.bytes_written;
  d["redirects"] = r.redirects;
  d["connects"] = r.connects;
  return d;
}

// {"buckets": [25 counts, not cumulative; the last is +Inf], "count", "sum_nanos"}; the bounds
// are kvtier.LATENCY_BUCKET_UPPER_BOUNDS_NANOS.
py::dict HistogramDict(const LatencyHistogram& h) {
  py::dict d;
  d["buckets"] = std::vector<uint64_t>(h.buckets.begin(), h.buckets.end());
  d["count"] = h.count;
  d["sum_nanos"] = h.sum_nanos;
  return d;
}

// Every field of a CacheStats (kvtier/stats.h), by its C++ name; hit_ratio is HitRatio().
py::dict StatsDict(const CacheStats& s) {
  py::dict d;
  d["device"] = TierDict(s.device);
  d["host"] = TierDict(s.host);
  d["disk"] = TierDict(s.disk);
  d["remote"] = RemoteDict(s.remote);
  d["match_calls"] = s.match_calls;
  d["blocks_queried"] = s.blocks_queried;
  d["blocks_missed"] = s.blocks_missed;
  d["blocks_loaded"] = s.blocks_loaded;
  d["blocks_committed"] = s.blocks_committed;
  d["blocks_commit_shared"] = s.blocks_commit_shared;
  d["events_dropped"] = s.events_dropped;
  d["blocks_stored"] = s.blocks_stored;
  d["blocks_store_skipped"] = s.blocks_store_skipped;
  d["demotions"] = s.demotions;
  d["promotions"] = s.promotions;
  d["bytes_h2d"] = s.bytes_h2d;
  d["bytes_d2h"] = s.bytes_d2h;
  d["transfer_failures"] = s.transfer_failures;
  d["loads_failed"] = s.loads_failed;
  d["loads_partial"] = s.loads_partial;
  d["blocks_load_lost"] = s.blocks_load_lost;
  d["codec_lossy_blocks_loaded"] = s.codec_lossy_blocks_loaded;
  d["codec_refused_blocks"] = s.codec_refused_blocks;
  d["codec_lossy_blocks_replaced"] = s.codec_lossy_blocks_replaced;
  d["bytes_disk_read"] = s.bytes_disk_read;
  d["bytes_disk_written"] = s.bytes_disk_written;
  d["disk_corrupt_reads"] = s.disk_corrupt_reads;
  d["disk_io_errors"] = s.disk_io_errors;
  d["disk_recovered_blocks"] = s.disk_recovered_blocks;
  d["disk_recovery_dropped"] = s.disk_recovery_dropped;
  d["disk_buffered_io"] = s.disk_buffered_io;
  d["leases_live"] = s.leases_live;
  d["transfers_in_flight"] = s.transfers_in_flight;
  d["index_work"] = s.index_work;
  d["load_latency"] = HistogramDict(s.load_latency);
  d["demotion_latency"] = HistogramDict(s.demotion_latency);
  d["disk_write_latency"] = HistogramDict(s.disk_write_latency);
  d["disk_read_latency"] = HistogramDict(s.disk_read_latency);
  d["remote_read_latency"] = HistogramDict(s.remote_read_latency);
  d["remote_write_latency"] = HistogramDict(s.remote_write_latency);
  d["hit_ratio"] = s.HitRatio();
  return d;
}

// What Cache and Connector share: the layout and views of the KV memory.
template <typename T>
void DefLayout(py::class_<T>& cls, const char* name) {
  const std::string prefix = std::string(name) + ".";
  cls.def_property_readonly("block_bytes", [](const T& c) { return c.state->layout.block_bytes(); })
      .def_property_readonly("num_slots", [](const T& c) { return c.state->layout.num_slots; })
      .def_property_readonly("num_layers", [](const T& c) { return c.state->layout.layers.size(); })
      .def_property_readonly("tokens_per_block",
                             [](const T& c) { return c.state->layout.tokens_per_block; })
      .def_property_readonly("dtype", [](const T& c) { return c.state->dtype; })
      .def(
          "slot_address",
          [call = prefix + "slot_address"](const T& c, uint32_t slot, uint32_t layer,
                                           uint32_t segment) {
            return SlotAddress(*c.state, call.c_str(), slot, layer, segment);
          },
          py::arg("slot"), py::arg("layer"), py::arg("segment"))
      .def(
          "kv",
          [call = prefix + "kv"](const T& c, uint32_t layer, uint32_t segment) {
            const Segment& s = SegmentAt(*c.state, call.c_str(), layer, segment);
            const auto itemsize = static_cast<py::ssize_t>(c.state->dtype.itemsize());
            return View(c.state, call.c_str(), layer, segment, reinterpret_cast<uintptr_t>(s.base),
                        {static_cast<py::ssize_t>(c.state->layout.num_slots),
                         static_cast<py::ssize_t>(s.bytes_per_block) / itemsize},
                        {static_cast<py::ssize_t>(s.stride_bytes), itemsize});
          },
          py::arg("layer"), py::arg("segment"),
          "A numpy view [num_slots, elements per block] of one KV tensor (host memory only)");
}

}  // namespace
}  // namespace kvtier::python

PYBIND11_MODULE(kvtier, m) {
  using namespace kvtier;          // NOLINT: the module body names most of the API
  using namespace kvtier::python;  // NOLINT
  m.doc() = "kvtier: tiered KV-cache management (GPU HBM <-> pinned host DRAM <-> NVMe)";

  g_error_type = PyErr_NewException("kvtier.Error", PyExc_RuntimeError, nullptr);
  m.add_object("Error", py::handle(g_error_type));
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const StatusError& e) {
      RaiseStatus(e.status());
    }
  });

  py::enum_<Tier>(m, "Tier")
      .value("DEVICE", Tier::kDevice)
      .value("HOST", Tier::kHost)
      .value("DISK", Tier::kDisk)
      .value("REMOTE", Tier::kRemote);

  {
    std::vector<uint64_t> bounds;
    for (int i = 0; i < LatencyHistogram::kFinite; ++i) {
      bounds.push_back(LatencyHistogram::UpperBoundNanos(i));
    }
    m.attr("LATENCY_BUCKET_UPPER_BOUNDS_NANOS") = py::tuple(py::cast(bounds));
  }

  py::class_<BlockKey>(m, "BlockKey", "128-bit key of a block and everything before it")
      .def(py::init<>())
      .def(py::init([](uint64_t hi, uint64_t lo) {
             return BlockKey{hi, lo};
           }),
           py::arg("hi"), py::arg("lo"))
      .def_readonly("hi", &BlockKey::hi)
      .def_readonly("lo", &BlockKey::lo)
      .def("hex", &BlockKey::ToHex)
      .def("__eq__", [](const BlockKey& a, const BlockKey& b) { return a == b; })
      .def("__hash__", [](const BlockKey& k) { return py::hash(py::make_tuple(k.hi, k.lo)); })
      .def("__repr__", [](const BlockKey& k) { return "BlockKey(" + k.ToHex() + ")"; });

  py::class_<KvEvent>(m, "KvEvent",
                      "a KV event for routers (kvtier/events.h): type is 'stored', 'removed' or "
                      "'all_cleared'")
      .def_readonly("seq", &KvEvent::seq)
      .def_property_readonly("type", [](const KvEvent& e) { return KvEventTypeName(e.type); })
      .def_readonly("tier", &KvEvent::tier)
      .def_readonly("tokens_per_block", &KvEvent::tokens_per_block)
      .def_readonly("key", &KvEvent::key)
      .def_readonly("parent", &KvEvent::parent)
      .def("__repr__", [](const KvEvent& e) {
        return absl::StrCat("KvEvent(seq=", e.seq, ", ", KvEventTypeName(e.type), ", ",
                            TierName(e.tier), ", key=", e.key.ToHex(),
                            ", parent=", e.parent.ToHex(), ")");
      });

  py::class_<BlockHasher>(m, "Hasher", "Chained, salted block keys (kvtier::BlockHasher)")
      .def(py::init([](const std::string& model_id, const std::string& lora_id,
                       const std::string& tenant) {
             return BlockHasher(NamespaceSalt{model_id, lora_id, tenant});
           }),
           py::arg("model_id") = "", py::arg("lora_id") = "", py::arg("tenant") = "")
      .def(
          "chain",
          [](const BlockHasher& h, const std::optional<BlockKey>& parent,
             const py::object& tokens) {
            return h.Chain(parent.value_or(kRootKey), TokensFromPython("Hasher.chain", tokens));
          },
          py::arg("parent"), py::arg("tokens"),
          "Key of one block of token ids chained from parent (None = the root)")
      .def(
          "chain_tokens",
          [](const BlockHasher& h, const py::array_t<int32_t, py::array::c_style>& tokens,
             uint32_t tokens_per_block) {
            // An int32 numpy array: hashed in place, without a Python object per token.
            if (tokens.ndim() != 1) {
              throw StatusError(absl::InvalidArgumentError(absl::StrCat(
                  "Hasher.chain_tokens: tokens has ", tokens.ndim(), " dimensions vs 1")));
            }
            const std::span<const int32_t> span(tokens.data(), static_cast<size_t>(tokens.size()));
            absl::StatusOr<std::vector<BlockKey>> keys;
            {
              py::gil_scoped_release nogil;
              keys = h.ChainTokens(span, tokens_per_block);
            }
            ThrowIfError(keys.status());
            return std::move(*keys);
          },
          // noconvert: only an int32 array takes this path; anything else is converted token by
          // token below, which range-checks (numpy would wrap 2**40 into an int32 silently) and
          // refuses floats (numpy and pybind11 would truncate them).
          py::arg("tokens").noconvert(), py::arg("tokens_per_block"))
      .def(
          "chain_tokens",
          [](const BlockHasher& h, const py::object& tokens, uint32_t tokens_per_block) {
            auto keys =
                h.ChainTokens(TokensFromPython("Hasher.chain_tokens", tokens), tokens_per_block);
            ThrowIfError(keys.status());
            return std::move(*keys);
          },
          py::arg("tokens"), py::arg("tokens_per_block"),
          "Keys of every block of a token sequence from the root (whole blocks only)");

  m.def(
      "codec_roundtrip",
      [](const std::string& codec, uint32_t group_size, const py::array& x,
         const std::string& role) { return CodecRoundTrip(codec, group_size, x, role).first; },
      py::arg("codec"), py::arg("group_size"), py::arg("x"), py::arg("role") = "v",
      "x [tokens, channels] (float16, float32, or uint16 holding bfloat16 bits) encoded with "
      "codec (none, fp8_e4m3, int8, int4; group_size elements per scale group) as one K ('k': "
      "scales per channel) or V ('v', 'latent': per token) block segment, then decoded: the "
      "decoded array, same dtype and shape");
  m.def(
      "codec_encoded_bytes",
      [](const std::string& codec, uint32_t group_size, const py::array& x,
         const std::string& role) { return CodecRoundTrip(codec, group_size, x, role).second; },
      py::arg("codec"), py::arg("group_size"), py::arg("x"), py::arg("role") = "v",
      "Bytes of x encoded as codec_roundtrip encodes it (16-byte header included)");

  py::class_<PySegment>(m, "Segment", "A raw segment: an integer address (tensor.data_ptr())")
      .def(py::init([](uint64_t base, uint64_t bytes_per_block, uint64_t stride_bytes) {
             return PySegment{base, bytes_per_block, stride_bytes};
           }),
           py::arg("base"), py::arg("bytes_per_block"), py::arg("stride_bytes") = 0)
      .def_readwrite("base", &PySegment::base)
      .def_readwrite("bytes_per_block", &PySegment::bytes_per_block)
      .def_readwrite("stride_bytes", &PySegment::stride_bytes);

  py::class_<PyOptions> options(m, "Options",
                                "Cache options; keyword arguments, as kvtier::Options");
  options.def(py::init([](const py::kwargs& kwargs) {
    PyOptions o;
    py::object self = py::cast(&o, py::return_value_policy::reference);
    for (auto item : kwargs) {
      const std::string key = py::str(item.first);
      if (key.empty() || key[0] == '_' || !py::hasattr(self, key.c_str())) {
        throw py::type_error("Options: unknown option '" + key + "'");
      }
      self.attr(key.c_str()) = item.second;
    }
    return o;
  }));
#define KVTIER_PY_FIELD(name) options.def_readwrite(#name, &PyOptions::name)
  KVTIER_PY_FIELD(tokens_per_block);
  KVTIER_PY_FIELD(num_slots);
  KVTIER_PY_FIELD(num_layers);
  KVTIER_PY_FIELD(segments_per_layer);
  KVTIER_PY_FIELD(bytes_per_block);
  KVTIER_PY_FIELD(layers);
  KVTIER_PY_FIELD(dtype);
  KVTIER_PY_FIELD(segment_roles);
#undef KVTIER_PY_FIELD
  // Every other option: one property per row of the shared table.
  for (const internal::OptionField& field : internal::OptionFields()) {
    std::string name(field.path);
    std::replace(name.begin(), name.end(), '.', '_');
    const internal::OptionField* row = &field;  // the table is static
    options.def_property(
        name.c_str(), [row](const PyOptions& o) { return ToPython(row->get(o.tree)); },
        [row](PyOptions& o, const py::object& value) { SetFromPython(o.tree, *row, value); },
        row->help.data());  // a string literal: NUL-terminated
  }

  py::class_<MatchResult>(m, "Match", "The cached prefix of a key sequence (a snapshot)")
      .def("__len__", &MatchResult::size)
      .def_property_readonly("size", &MatchResult::size)
      .def_readonly("keys", &MatchResult::keys)
      .def_readonly("tiers", &MatchResult::tiers)
      .def("blocks_in", &MatchResult::blocks_in, py::arg("tier"));

  py::class_<PyLease>(m, "Lease", "Device slots reserved for one sequence (kvtier::DeviceLease)")
      .def("__len__",
           [](PyLease& l) {
             std::shared_lock life(l.state->life_mu);
             CheckLease(l, "Lease.__len__");
             return l.lease.size();
           })
      .def_property_readonly("released",
                             [](const PyLease& l) { return l.released || !l.state->cache; })
      .def_property_readonly(
          "shared",
          [](PyLease& l) {
            std::shared_lock life(l.state->life_mu);
            CheckLease(l, "Lease.shared");
            return l.lease.shared();
          },
          "leading positions allocate_device(n, match) shared at once: cached blocks, never "
          "written")
      .def_property_readonly("slots",
                             [](PyLease& l) {
                               std::shared_lock life(l.state->life_mu);
                               CheckLease(l, "Lease.slots");
                               auto s = l.lease.slots();
                               return std::vector<uint32_t>(s.begin(), s.end());
                             })
      .def(
          "block_address",
          [](PyLease& l, uint32_t block, uint32_t layer, uint32_t segment) {
            return LeaseBlockAddress(l, "Lease.block_address", block, layer, segment);
          },
          py::arg("block"), py::arg("layer"), py::arg("segment"),
          "Address (int) of segment `segment` of layer `layer` of the lease's block `block`")
      .def(
          "block",
          [](PyLease& l, uint32_t block, uint32_t layer, uint32_t segment) {
            const uint64_t address = LeaseBlockAddress(l, "Lease.block", block, layer, segment);
            const Segment& s = SegmentAt(*l.state, "Lease.block", layer, segment);
            const auto itemsize = static_cast<py::ssize_t>(l.state->dtype.itemsize());
            py::array view =
                View(l.state, "Lease.block", layer, segment, address,
                     {static_cast<py::ssize_t>(s.bytes_per_block) / itemsize}, {itemsize});
            if (!WhyReadOnly(l, "Lease.block", block).empty()) {
              view.attr("flags").attr("writeable") = false;
            }
            return view;
          },
          py::arg("block"), py::arg("layer"), py::arg("segment"),
          "A numpy view (the cache's dtype) of one block's segment in device memory (emulated "
          "device only); read-only when the block is cached (loaded or committed)")
      .def(
          "write_block",
          [](PyLease& l, uint32_t block, uint32_t layer, uint32_t segment, const py::buffer& data) {
            const uint64_t address =
                LeaseBlockAddress(l, "Lease.write_block", block, layer, segment);
            const Segment& s = SegmentAt(*l.state, "Lease.write_block", layer, segment);
            py::buffer_info info = data.request();
            const py::dtype given(info);
            if (!given.attr("__eq__")(l.state->dtype).cast<bool>()) {
              throw py::type_error(absl::StrCat(
                  "Lease.write_block: data of dtype ", given.attr("name").cast<std::string>(),
                  " vs the cache's ", l.state->dtype.attr("name").cast<std::string>()));
            }
            const uint64_t nbytes = static_cast<uint64_t>(info.size) * info.itemsize;
            if (nbytes != s.bytes_per_block) {
              throw StatusError(absl::InvalidArgumentError(absl::StrCat(
                  "Lease.write_block: ", nbytes, " bytes vs bytes_per_block=", s.bytes_per_block)));
            }
            int64_t expect = info.itemsize;
            for (int64_t d = info.ndim - 1; d >= 0; --d) {
              if (info.shape[d] != 1 && info.strides[d] != expect) {
                throw StatusError(
                    absl::InvalidArgumentError("Lease.write_block: data is not C-contiguous"));
              }
              expect *= info.shape[d];
            }
            CheckHostVisible(*l.state, "Lease.write_block", layer, segment);
            if (std::string why = WhyReadOnly(l, "Lease.write_block", block); !why.empty()) {
              throw StatusError(absl::FailedPreconditionError(why));
            }
            std::memcpy(reinterpret_cast<void*>(static_cast<uintptr_t>(address)), info.ptr, nbytes);
          },
          py::arg("block"), py::arg("layer"), py::arg("segment"), py::arg("data"),
          "Copies `data` (the cache's dtype, exactly bytes_per_block bytes) into a block the "
          "engine computes: kvtier.Error (FAILED_PRECONDITION) for a cached (loaded or committed) "
          "block or one a Load is still copying into");

  // Held by shared_ptr: the lease keeps its loads, to know which of its blocks are cached.
  // Held by shared_ptr: the lease keeps its loads, to know which of its blocks are cached.
  py::class_<PyTransfer, std::shared_ptr<PyTransfer>>(
      m, "Transfer",
      "An asynchronous load into a lease, or into engine blocks by Connector.load "
      "(kvtier::Transfer)")
      .def_property_readonly("blocks",
                             [](PyTransfer& t) {
                               return CallOpen(*t.state, "Transfer.blocks",
                                               [&] { return t.transfer.blocks(); });
                             })
      .def_property_readonly("blocks_promoted",
                             [](PyTransfer& t) {
                               return CallOpen(*t.state, "Transfer.blocks_promoted",
                                               [&] { return t.transfer.blocks_promoted(); });
                             })
      .def_property_readonly(
          "blocks_loaded",
          [](PyTransfer& t) {
            return CallOpen(*t.state, "Transfer.blocks_loaded",
                            [&] { return t.transfer.blocks_loaded(); });
          },
          "once done: blocks [0, blocks_loaded) hold data, also after a failure (the engine "
          "recomputes from there); == blocks when it succeeded; 0 while running")
      .def_property_readonly(
          "blocks_lossy",
          [](PyTransfer& t) {
            return CallOpen(*t.state, "Transfer.blocks_lossy",
                            [&] { return t.transfer.blocks_lossy(); });
          },
          "once done: how many loaded blocks were decoded from a lossy host codec (0 without)")
      .def_property_readonly("done",
                             [](PyTransfer& t) {
                               return CallOpen(*t.state, "Transfer.done",
                                               [&] { return t.transfer.Poll(); });
                             })
      .def(
          "poll",
          [](PyTransfer& t) {
            return CallOpen(*t.state, "Transfer.poll", [&] { return t.transfer.Poll(); });
          },
          "True once finished (as `done`); never blocks")
      .def(
          "wait",
          [](PyTransfer& t) {
            ThrowIfError(CallOpen(*t.state, "Transfer.wait", [&] { return t.transfer.Wait(); }));
          },
          "Blocks (GIL released) until every copy finished; raises if the transfer failed")
      .def(
          "wait_layer",
          [](PyTransfer& t, uint32_t layer) {
            ThrowIfError(CallOpen(*t.state, "Transfer.wait_layer",
                                  [&] { return t.transfer.WaitLayer(layer); }));
          },
          py::arg("layer"), "Blocks (GIL released) until layer `layer` of every block arrived")
      .def_property_readonly("error",
                             [](PyTransfer& t) -> std::optional<std::string> {
                               const absl::Status s = CallOpen(*t.state, "Transfer.error",
                                                               [&] { return t.transfer.status(); });
                               if (s.ok() || absl::IsUnavailable(s)) return std::nullopt;
                               return std::string(s.message());
                             })
      .def(
          "layer_ready_event",
          [](PyTransfer& t, uint32_t layer) {
            auto e = CallOpen(*t.state, "Transfer.layer_ready_event",
                              [&] { return t.transfer.LayerReadyEvent(layer); });
            return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(ValueOrThrow(std::move(e))));
          },
          py::arg("layer"),
          "The cudaEvent_t (as an int) recorded after layer `layer`; 0 when there is nothing to "
          "wait for and always on the emulated device");

  py::class_<PyCache> cache_class(m, "Cache",
                                  "A tiered KV-block cache for one GPU (kvtier::Cache)");
  DefLayout(cache_class, "Cache");
  cache_class.def_static("create", &CreateCache, py::arg("options"))
      .def_static(
          "open",
          [](PyOptions o, const std::string& directory, uint64_t disk_capacity_bytes) {
            o.tree.disk.directory = directory;
            o.tree.disk.capacity_bytes = disk_capacity_bytes;
            return CreateCache(o);
          },
          py::arg("options"), py::arg("directory"), py::arg("disk_capacity_bytes"),
          "create() with a disk tier in `directory` (served again after a restart)")
      .def("close",
           [](PyCache& c) {
             py::gil_scoped_release nogil;
             CacheState& st = *c.state;
             std::unique_lock life(st.life_mu);
             if (st.cache == nullptr) return;
             {
               std::lock_guard reg(st.reg_mu);
               for (PyTransfer* t : st.transfers) t->transfer = Transfer();
               for (PyLease* l : st.leases) l->lease = DeviceLease();
             }
             st.cache.reset();
           })
      .def_property_readonly("closed", [](const PyCache& c) { return c.state->cache == nullptr; })
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](py::object self, py::args) { self.attr("close")(); })
      .def(
          "match",
          [](PyCache& c, const std::vector<BlockKey>& keys) {
            absl::StatusOr<MatchResult> r;
            {
              py::gil_scoped_release nogil;
              std::shared_lock life(c.state->life_mu);
              r = c.state->cache ? c.state->cache->Match(keys)
                                 : absl::StatusOr<MatchResult>(Closed("Cache.match"));
            }
            ThrowIfError(r.status());
            return std::move(*r);
          },
          py::arg("keys"))
      .def(
          "allocate_device",
          [](PyCache& c, uint32_t n, const MatchResult* match) {
            auto handle = std::make_unique<PyLease>();
            handle->state = c.state;
            absl::Status s;
            {
              py::gil_scoped_release nogil;
              std::shared_lock life(c.state->life_mu);
              if (!c.state->cache) {
                s = Closed("Cache.allocate_device");
              } else {
                auto lease = match != nullptr ? c.state->cache->AllocateDevice(*match, n)
                                              : c.state->cache->AllocateDevice(n);
                s = lease.status();
                if (s.ok()) {
                  handle->lease = std::move(*lease);
                  std::lock_guard reg(c.state->reg_mu);
                  c.state->leases.insert(handle.get());
                }
              }
            }
            ThrowIfError(s);
            return handle;
          },
          py::arg("n"), py::arg("match") = nullptr,
          "n device slots; with `match` (this sequence's Match), its device blocks are shared at "
          "once so that making room cannot evict them")
      .def(
          "grow",
          [](PyCache& c, PyLease& l, uint32_t n) {
            CheckSame(c, l, "Cache.grow");
            py::gil_scoped_release nogil;
            std::shared_lock life(c.state->life_mu);
            CheckLease(l, "Cache.grow");
            ThrowIfError(c.state->cache->Grow(l.lease, n));
          },
          py::arg("lease"), py::arg("n"))
      .def(
          "load",
          [](PyCache& c, const MatchResult& match, PyLease& l) {
            CheckSame(c, l, "Cache.load");
            auto handle = std::make_shared<PyTransfer>();
            handle->state = c.state;
            {
              py::gil_scoped_release nogil;
              std::shared_lock life(c.state->life_mu);
              CheckLease(l, "Cache.load");
              auto x = c.state->cache->Load(match, l.lease);
              ThrowIfError(x.status());
              handle->transfer = std::move(*x);
              std::lock_guard reg(c.state->reg_mu);
              c.state->transfers.insert(handle.get());
            }
            l.loads.push_back(handle);
            return handle;
          },
          py::arg("match"), py::arg("lease"))
      .def(
          "commit",
          [](PyCache& c, const std::vector<BlockKey>& keys, PyLease& l) {
            CheckSame(c, l, "Cache.commit");
            {
              py::gil_scoped_release nogil;
              std::shared_lock life(c.state->life_mu);
              CheckLease(l, "Cache.commit");
              ThrowIfError(c.state->cache->Commit(keys, l.lease));
            }
            l.committed = std::max(l.committed, static_cast<uint32_t>(keys.size()));
          },
          py::arg("keys"), py::arg("lease"))
      .def(
          "set_tenant",
          [](PyCache& c, PyLease& l, const std::string& tenant) {
            CheckSame(c, l, "Cache.set_tenant");
            py::gil_scoped_release nogil;
            std::shared_lock life(c.state->life_mu);
            CheckLease(l, "Cache.set_tenant");
            ThrowIfError(c.state->cache->SetTenant(l.lease, tenant));
          },
          py::arg("lease"), py::arg("tenant"),
          "the tenant (named in host_tenant_shares or disk_tenant_shares; '' the default one) "
          "whose request the lease serves: its blocks count against that tenant's shares")
      .def(
          "release",
          [](PyCache& c, PyLease& l) {
            CheckSame(c, l, "Cache.release");
            py::gil_scoped_release nogil;
            std::shared_lock life(c.state->life_mu);
            CheckLease(l, "Cache.release");
            l.released = true;
            ThrowIfError(c.state->cache->Release(l.lease));
          },
          py::arg("lease"))
      .def(
          "hint",
          [](PyCache& c, const std::vector<BlockKey>& keys, const std::vector<double>& scores,
             std::optional<double> duration) {
            py::gil_scoped_release nogil;
            std::shared_lock life(c.state->life_mu);
            if (!c.state->cache) throw StatusError(Closed("Cache.hint"));
            ThrowIfError(duration ? c.state->cache->Hint(keys, scores, Seconds(*duration))
                                  : c.state->cache->Hint(keys, scores));
          },
          py::arg("keys"), py::arg("scores"), py::arg("duration") = py::none(),
          "the engine's score of each cached block; with duration (seconds, up to 86400) the "
          "scores revert to the policy's default once it has passed")
      .def(
          "remove",
          [](PyCache& c, const std::vector<BlockKey>& keys) {
            absl::StatusOr<ManageResult> r;
            {
              py::gil_scoped_release nogil;
              std::shared_lock life(c.state->life_mu);
              if (!c.state->cache) throw StatusError(Closed("Cache.remove"));
              r = c.state->cache->Remove(keys);
            }
            ThrowIfError(r.status());
            return ResultDict(*r);
          },
          py::arg("keys"),
          "drops these blocks from every tier, leaves first (Cache::Remove); returns a dict of "
          "done, not_found, busy and kept_for_children")
      .def(
          "clear",
          [](PyCache& c, Tier tier) {
            absl::StatusOr<ManageResult> r;
            {
              py::gil_scoped_release nogil;
              std::shared_lock life(c.state->life_mu);
              if (!c.state->cache) throw StatusError(Closed("Cache.clear"));
              r = c.state->cache->Clear(tier);
            }
            ThrowIfError(r.status());
            return ResultDict(*r);
          },
          py::arg("tier"),
          "drops every block of a tier not in use (Cache::Clear); a dict as remove")
      .def(
          "pin",
          [](PyCache& c, const std::vector<BlockKey>& keys, double duration) {
            absl::StatusOr<ManageResult> r;
            {
              py::gil_scoped_release nogil;
              std::shared_lock life(c.state->life_mu);
              if (!c.state->cache) throw StatusError(Closed("Cache.pin"));
              r = c.state->cache->Pin(keys, Seconds(duration));
            }
            ThrowIfError(r.status());
            return ResultDict(*r);
          },
          py::arg("keys"), py::arg("duration"),
          "keeps the cached blocks of keys from eviction for duration seconds (0 < d <= 86400) "
          "or until unpin (Cache::Pin); a dict as remove")
      .def(
          "unpin",
          [](PyCache& c, const std::vector<BlockKey>& keys) {
            absl::StatusOr<ManageResult> r;
            {
              py::gil_scoped_release nogil;
              std::shared_lock life(c.state->life_mu);
              if (!c.state->cache) throw StatusError(Closed("Cache.unpin"));
              r = c.state->cache->Unpin(keys);
            }
            ThrowIfError(r.status());
            return ResultDict(*r);
          },
          py::arg("keys"), "ends the holds of pin (Cache::Unpin); a dict as remove")
      .def(
          "prefetch",
          [](PyCache& c, const std::vector<BlockKey>& keys) {
            auto handle = std::make_shared<PyTransfer>();
            handle->state = c.state;
            {
              py::gil_scoped_release nogil;
              std::shared_lock life(c.state->life_mu);
              if (!c.state->cache) throw StatusError(Closed("Cache.prefetch"));
              auto x = c.state->cache->Prefetch(keys);
              ThrowIfError(x.status());
              handle->transfer = std::move(*x);
              std::lock_guard reg(c.state->reg_mu);
              c.state->transfers.insert(handle.get());
            }
            return handle;
          },
          py::arg("keys"),
          "brings the chain's blocks only on disk (or in the remote store) up to the host, "
          "asynchronously (Cache::Prefetch); a Transfer without layers")
      .def(
          "take_events",
          [](PyCache& c, std::optional<size_t> max_events) {
            std::vector<KvEvent> events;
            {
              py::gil_scoped_release nogil;
              std::shared_lock life(c.state->life_mu);
              if (!c.state->cache) throw StatusError(Closed("Cache.take_events"));
              events = c.state->cache->TakeEvents(max_events.value_or(SIZE_MAX));
            }
            return events;
          },
          py::arg("max_events") = py::none(),
          "removes and returns the oldest queued KV events (all, or at most max_events), as "
          "KvEvent objects; [] unless the cache was made with events_capacity > 0")
      .def("check_invariants",
           [](PyCache& c) {
             py::gil_scoped_release nogil;
             std::shared_lock life(c.state->life_mu);
             if (!c.state->cache) throw StatusError(Closed("Cache.check_invariants"));
             ThrowIfError(c.state->cache->CheckInvariants());
           })
      .def("stats", [](PyCache& c) {
        CacheStats s;
        {
          py::gil_scoped_release nogil;
          std::shared_lock life(c.state->life_mu);
          if (!c.state->cache) throw StatusError(Closed("Cache.stats"));
          s = c.state->cache->Stats();
        }
        return StatsDict(s);
      });

  // ---- connector mode ----

  py::class_<LookupResult>(m, "LookupResult", "Connector.lookup's answer")
      .def_readonly("blocks", &LookupResult::blocks,
                    "keys [first, first + blocks) are cached (here, or in the store past them)")
      .def_readonly("tiers", &LookupResult::tiers, "the tier of each of them")
      .def_readonly("pending", &LookupResult::pending,
                    "the store's answer is not in yet (wait_for_store=False): blocks counts the "
                    "local tiers only; ask again")
      .def("__repr__", [](const LookupResult& r) {
        return absl::StrCat("LookupResult(blocks=", r.blocks,
                            ", pending=", r.pending ? "True" : "False", ")");
      });

  py::class_<PyFinished>(
      m, "Finished",
      "A load or store that ended (Connector.take_finished): request_id, kind ('load' or "
      "'store'), ok, message ('' when ok), blocks, blocks_loaded (a load: dst blocks "
      "[0, blocks_loaded) hold data) and code ('OK', 'CANCELLED', ...). Unpacks as "
      "(request_id, kind, ok, message, blocks)")
      .def_readonly("request_id", &PyFinished::request_id)
      .def_readonly("kind", &PyFinished::kind)
      .def_readonly("ok", &PyFinished::ok)
      .def_readonly("code", &PyFinished::code)
      .def_readonly("message", &PyFinished::message)
      .def_readonly("blocks", &PyFinished::blocks)
      .def_readonly("blocks_loaded", &PyFinished::blocks_loaded,
                    "a load: dst blocks [0, blocks_loaded) hold data, the rest are the blocks "
                    "with load errors")
      .def("__len__", [](const PyFinished&) { return 5; })
      .def("__iter__",
           [](const PyFinished& f) {
             return py::iter(py::make_tuple(f.request_id, f.kind, f.ok, f.message, f.blocks));
           })
      .def("__repr__", [](const PyFinished& f) {
        return absl::StrCat("Finished(request_id=", f.request_id, ", kind='", f.kind,
                            "', ok=", f.ok ? "True" : "False", ", code='", f.code,
                            "', blocks=", f.blocks, ", blocks_loaded=", f.blocks_loaded, ")");
      });

  py::class_<PyStore>(m, "Store",
                      "A connector's store of engine blocks (kvtier::StoreHandle); dropping it "
                      "abandons layers left unsaved and waits for the copies enqueued")
      .def_property_readonly(
          "blocks",
          [](PyStore& st) {
            return CallOpen(*st.state, "Store.blocks", [&] { return st.store.blocks(); });
          },
          "blocks copied: keys past `first` not cached already, as far as host room allowed")
      .def_property_readonly(
          "unstored",
          [](PyStore& st) {
            return CallOpen(*st.state, "Store.unstored", [&] { return st.store.unstored(); });
          },
          "keys past `first` not stored for want of host room")
      .def_property_readonly("layers_saved",
                             [](PyStore& st) {
                               return CallOpen(*st.state, "Store.layers_saved",
                                               [&] { return st.store.layers_saved(); });
                             })
      .def(
          "save_layer",
          [](PyStore& st, uint32_t layer, uint64_t event) {
            ThrowIfError(CallOpen(*st.state, "Store.save_layer", [&] {
              return st.store.SaveLayer(layer,
                                        reinterpret_cast<void*>(static_cast<uintptr_t>(event)));
            }));
          },
          py::arg("layer"), py::arg("event") = 0,
          "Enqueues the copies of layer `layer` once `event` (a cudaEvent_t as an int; 0: the "
          "bytes are complete now) completed. Layers in order, each once: kvtier.Error "
          "(FAILED_PRECONDITION) otherwise, IndexError past the last")
      .def(
          "save_all",
          [](PyStore& st, uint64_t event) {
            ThrowIfError(CallOpen(*st.state, "Store.save_all", [&] {
              return st.store.SaveAll(reinterpret_cast<void*>(static_cast<uintptr_t>(event)));
            }));
          },
          py::arg("event") = 0, "save_layer of every layer not saved yet")
      .def(
          "wait",
          [](PyStore& st) {
            ThrowIfError(CallOpen(*st.state, "Store.wait", [&] { return st.store.Wait(); }));
          },
          "Blocks (GIL released) until every layer is copied; raises if the store failed, or "
          "(FAILED_PRECONDITION) while layers are unsaved")
      .def(
          "poll",
          [](PyStore& st) {
            return CallOpen(*st.state, "Store.poll", [&] { return st.store.Poll(); });
          },
          "True once finished; never blocks")
      .def_property_readonly("done",
                             [](PyStore& st) {
                               return CallOpen(*st.state, "Store.done",
                                               [&] { return st.store.Poll(); });
                             })
      .def_property_readonly("error", [](PyStore& st) -> std::optional<std::string> {
        const absl::Status s =
            CallOpen(*st.state, "Store.error", [&] { return st.store.status(); });
        if (s.ok() || absl::IsUnavailable(s)) return std::nullopt;
        return std::string(s.message());
      });

  py::class_<PyConnector> connector_class(
      m, "Connector",
      "kvtier for an engine that owns its GPU blocks (kvtier::Connector): Options as for Cache "
      "(layers = the engine's KV tensors, num_slots = its block pool; a host tier is required)");
  DefLayout(connector_class, "Connector");
  connector_class.def(py::init(&CreateConnector), py::arg("options"))
      .def_static("create", &CreateConnector, py::arg("options"))
      .def("close",
           [](PyConnector& c) {
             py::gil_scoped_release nogil;
             CacheState& st = *c.state;
             std::unique_lock life(st.life_mu);
             if (st.connector == nullptr) return;
             {
               std::lock_guard reg(st.reg_mu);
               // Handles die before their Connector: a store with layers unsaved is abandoned.
               for (PyStore* s : st.stores) s->store = StoreHandle();
               for (PyTransfer* t : st.transfers) t->transfer = Transfer();
             }
             st.connector.reset();
           })
      .def_property_readonly("closed",
                             [](const PyConnector& c) { return c.state->connector == nullptr; })
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](py::object self, py::args) { self.attr("close")(); })
      .def(
          "lookup",
          [](PyConnector& c, const std::vector<BlockKey>& keys, uint32_t first, bool touch,
             bool wait_for_store) {
            return ValueOrThrow(CallOpen(*c.state, "Connector.lookup", [&] {
              return c.state->connector->Lookup(keys, first,
                                                {.touch = touch, .wait_for_store = wait_for_store});
            }));
          },
          py::arg("keys"), py::arg("first") = 0, py::arg("touch") = true,
          py::arg("wait_for_store") = true,
          "How many blocks past the engine's `first` hits (keys[:first]) are cached, and where")
      .def(
          "load",
          [](PyConnector& c, const std::vector<BlockKey>& keys, uint32_t first,
             const py::object& dst_blocks, uint64_t request_id) {
            const std::vector<uint32_t> dst =
                BlockIdsFromPython("Connector.load", "dst_blocks", dst_blocks);
            auto handle = std::make_shared<PyTransfer>();
            handle->state = c.state;
            CallOpen(*c.state, "Connector.load", [&] {
              handle->transfer =
                  ValueOrThrow(c.state->connector->Load(keys, first, dst, request_id));
              std::lock_guard reg(c.state->reg_mu);
              c.state->transfers.insert(handle.get());
              return 0;
            });
            return handle;
          },
          py::arg("keys"), py::arg("first"), py::arg("dst_blocks"), py::arg("request_id") = 0,
          "Copies the cached keys[first:] into the engine's blocks dst_blocks (one each), layer "
          "by layer; a kvtier.Transfer (its blocks: how many dst blocks get data)")
      .def(
          "store",
          [](PyConnector& c, const std::vector<BlockKey>& keys, uint32_t first,
             const py::object& src_blocks, uint64_t ready_event, uint64_t request_id) {
            const std::vector<uint32_t> src =
                BlockIdsFromPython("Connector.store", "src_blocks", src_blocks);
            auto handle = std::make_unique<PyStore>();
            handle->state = c.state;
            CallOpen(*c.state, "Connector.store", [&] {
              handle->store = ValueOrThrow(c.state->connector->Store(
                  keys, first, src, reinterpret_cast<void*>(static_cast<uintptr_t>(ready_event)),
                  request_id));
              std::lock_guard reg(c.state->reg_mu);
              c.state->stores.insert(handle.get());
              return 0;
            });
            return handle;
          },
          py::arg("keys"), py::arg("first"), py::arg("src_blocks"), py::arg("ready_event") = 0,
          py::arg("request_id") = 0,
          "Stores the engine's blocks src_blocks (holding keys[first:]) once ready_event (a "
          "cudaEvent_t as an int; 0: now) completed; a kvtier.Store")
      .def(
          "begin_store",
          [](PyConnector& c, const std::vector<BlockKey>& keys, uint32_t first,
             const py::object& src_blocks, uint64_t request_id) {
            const std::vector<uint32_t> src =
                BlockIdsFromPython("Connector.begin_store", "src_blocks", src_blocks);
            auto handle = std::make_unique<PyStore>();
            handle->state = c.state;
            CallOpen(*c.state, "Connector.begin_store", [&] {
              handle->store =
                  ValueOrThrow(c.state->connector->BeginStore(keys, first, src, request_id));
              std::lock_guard reg(c.state->reg_mu);
              c.state->stores.insert(handle.get());
              return 0;
            });
            return handle;
          },
          py::arg("keys"), py::arg("first"), py::arg("src_blocks"), py::arg("request_id") = 0,
          "store(), layer by layer: host slots reserved now; then Store.save_layer(l, event) as "
          "the forward pass writes each layer")
      .def(
          "take_finished",
          [](PyConnector& c) {
            const std::vector<Finished> done = CallOpen(*c.state, "Connector.take_finished", [&] {
              return c.state->connector->TakeFinished();
            });
            std::vector<PyFinished> out;
            out.reserve(done.size());
            for (const Finished& f : done) {
              out.push_back({.request_id = f.request_id,
                             .kind = f.kind == Finished::Kind::kLoad ? "load" : "store",
                             .ok = f.status.ok(),
                             .code = CodeName(f.status.code()),
                             .message = std::string(f.status.message()),
                             .blocks = f.blocks,
                             .blocks_loaded = f.blocks_loaded});
            }
            return out;
          },
          "The loads and stores with a request id that ended since the last call, each once: a "
          "list of kvtier.Finished")
      .def(
          "hint",
          [](PyConnector& c, const std::vector<BlockKey>& keys, const std::vector<double>& scores) {
            ThrowIfError(CallOpen(*c.state, "Connector.hint",
                                  [&] { return c.state->connector->Hint(keys, scores); }));
          },
          py::arg("keys"), py::arg("scores"))
      .def("check_invariants",
           [](PyConnector& c) {
             ThrowIfError(CallOpen(*c.state, "Connector.check_invariants",
                                   [&] { return c.state->connector->CheckInvariants(); }));
           })
      .def("stats", [](PyConnector& c) {
        return StatsDict(
            CallOpen(*c.state, "Connector.stats", [&] { return c.state->connector->Stats(); }));
      });
}
