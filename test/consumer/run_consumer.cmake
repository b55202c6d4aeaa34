# ctest -P script: install the build tree into a fresh prefix, then configure, build and run the
# consumer project against it; then run the installed kvtier-replay (when the build has it,
# REPLAY=ON) with no LD_LIBRARY_PATH: it must find libkvtier through its install RPATH.
# Arguments: -DBUILD_DIR= -DSOURCE_DIR= -DWORK_DIR= -DREPLAY=ON|OFF
file(REMOVE_RECURSE "${WORK_DIR}")
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
endfunction()
run(${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${WORK_DIR}/prefix")
run(${CMAKE_COMMAND} -S "${SOURCE_DIR}/test/consumer" -B "${WORK_DIR}/build"
    "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix" -DCMAKE_BUILD_TYPE=Release)
run(${CMAKE_COMMAND} --build "${WORK_DIR}/build")
run(${CMAKE_COMMAND} -E env "LD_LIBRARY_PATH=${WORK_DIR}/prefix/lib:${WORK_DIR}/prefix/lib64"
    "${WORK_DIR}/build/consumer")
if(REPLAY)
  set(replay "${WORK_DIR}/prefix/bin/kvtier-replay")
  if(NOT EXISTS "${replay}")
    message(FATAL_ERROR "${replay} was not installed")
  endif()
  run(${CMAKE_COMMAND} -E env --unset=LD_LIBRARY_PATH "${replay}" --help)
endif()
