# ctest -P script: the #includes follow the layering (STYLE.md §8, DESIGN.md §4). The CMake
# components keep each one's link dependencies and the CUDA include directory apart, but the
# project root (for "lib/...") and /usr/include (liburing, xxHash, hiredis) are visible to all of
# them; this check covers what include directories cannot. Argument: -DSOURCE_DIR=
# It globs (unlike the build's source lists) so that a new file is checked without being listed.

set(third_party_io [[<(liburing\.h|hiredis/|xxhash\.h|xxh_)]])
set(cuda_headers [[<(cuda|cuda_runtime|cuda_runtime_api|cuda_fp16)\.h>]])
set(violations "")

# check(<why> <forbidden regex> <exempt regex> <glob>...): every #include line of the globbed files
# (but those whose path relative to SOURCE_DIR matches the exempt regex; "" for none) must not
# match the forbidden regex.
function(check why forbidden exempt)
  file(GLOB files RELATIVE "${SOURCE_DIR}" ${ARGN})
  foreach(file IN LISTS files)
    if(NOT exempt STREQUAL "" AND file MATCHES "${exempt}")
      continue()
    endif()
    file(STRINGS "${SOURCE_DIR}/${file}" lines REGEX "^[ \t]*#[ \t]*include")
    foreach(line IN LISTS lines)
      if(line MATCHES "${forbidden}")
        string(STRIP "${line}" line)
        string(APPEND violations "  ${file}: ${line}  (${why})\n")
      endif()
    endforeach()
  endforeach()
  set(violations "${violations}" PARENT_SCOPE)
endfunction()

set(S "${SOURCE_DIR}")
check("public headers expose no internal or third-party header"
      "\"(lib|cuda)/|${third_party_io}|${cuda_headers}" "" "${S}/include/kvtier/*.h")
check("lib/common is the bottom: no other component"
      "\"(lib/(index|movers|policies|tiers|transfer|python)|cuda)/|\"lib/cache_" ""
      "${S}/lib/common/*.h" "${S}/lib/common/*.cc")
check("a policy only ranks entries: no index, tier, device or CUDA"
      "\"(lib/(index|movers|tiers|transfer)|cuda)/|\"kvtier/(cache|transfer)\\.h|${third_party_io}|${cuda_headers}"
      "" "${S}/lib/policies/*.h" "${S}/lib/policies/*.cc")
check("the index does no I/O and knows no tier, device or CUDA"
      "\"(lib/(movers|tiers|transfer)|cuda)/|\"lib/cache_|\"kvtier/(cache|transfer)\\.h|${third_party_io}|${cuda_headers}"
      "" "${S}/lib/index/*.h" "${S}/lib/index/*.cc")
check("a codec is a pure function of a block's bytes: no index, tier, device, I/O or CUDA"
      "\"(lib/(index|movers|policies|tiers|transfer)|cuda)/|\"lib/cache_|\"kvtier/(cache|transfer)\\.h|${third_party_io}|${cuda_headers}"
      "" "${S}/lib/codec/*.h" "${S}/lib/codec/*.cc")
check("the transfer layer knows no index, policy or tier"
      "\"(lib/(index|movers|policies|tiers)|cuda)/|\"kvtier/cache\\.h|${third_party_io}|${cuda_headers}" ""
      "${S}/lib/transfer/*.h" "${S}/lib/transfer/*.cc")
check("a tier knows no index or policy and moves bytes through the Device"
      "\"(lib/(index|movers|policies)|cuda)/|\"kvtier/cache\\.h|${cuda_headers}" ""
      "${S}/lib/tiers/*.h" "${S}/lib/tiers/*.cc")
check("cuda/ implements the Device: no index, policy or tier"
      "\"lib/(index|movers|policies|tiers)/|\"kvtier/cache\\.h" ""
      "${S}/cuda/*.h" "${S}/cuda/*.cc" "${S}/cuda/*.cuh" "${S}/cuda/*.cu")
check("the movers carry out the Index's moves: no policy, facade or third-party I/O"
      "\"(lib/policies|cuda)/|\"lib/cache_|\"kvtier/cache\\.h|${third_party_io}|${cuda_headers}" ""
      "${S}/lib/movers/*.h" "${S}/lib/movers/*.cc")
check("only the io ring includes liburing" "<liburing\\.h>" "^lib/tiers/io_ring\\.cc$"
      "${S}/lib/*.h" "${S}/lib/*.cc" "${S}/lib/*/*.h" "${S}/lib/*/*.cc" "${S}/cuda/*")
check("only the Redis client (and its reply reader) includes hiredis" "<hiredis/"
      "^lib/tiers/(redis_cluster|resp_reader)\\.cc$"
      "${S}/lib/*.h" "${S}/lib/*.cc" "${S}/lib/*/*.h" "${S}/lib/*/*.cc" "${S}/cuda/*")
check("only cuda/ includes the CUDA runtime" "${cuda_headers}" ""
      "${S}/lib/*.h" "${S}/lib/*.cc" "${S}/lib/*/*.h" "${S}/lib/*/*.cc")
check("examples use the public API only" "\"(lib|cuda)/" "" "${S}/examples/*.cc")

if(violations)
  message(FATAL_ERROR "layering: #includes against STYLE.md §8 / DESIGN.md §4:\n${violations}")
endif()
message(STATUS "layering: ok")
