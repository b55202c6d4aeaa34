// What the fuzz targets (test/fuzz/*_fuzz.cc) share: a check that, when it fails, crashes the
// process with its condition, so libFuzzer keeps the input (and the corpus replay test fails).
// A target crashes only on a broken property; bad input is every parser's normal business.
#ifndef KVTIER_TEST_FUZZ_FUZZ_CHECK_H_
#define KVTIER_TEST_FUZZ_FUZZ_CHECK_H_

#include <cstdio>
#include <cstdlib>

#define KVTIER_FUZZ_CHECK(cond)                                                          \
  do {                                                                                   \
    if (!(cond)) {                                                                       \
      std::fprintf(stderr, "%s:%d: fuzz check failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                      \
    }                                                                                    \
  } while (0)

#endif  // KVTIER_TEST_FUZZ_FUZZ_CHECK_H_
