# kvtier_replay: the trace parser and replay driver behind kvtier-replay, shared with the tests.
# Included by bench/CMakeLists.txt, and by test/CMakeLists.txt when bench/ is not built.
add_library(kvtier_replay STATIC ${PROJECT_SOURCE_DIR}/bench/trace.cc
                                 ${PROJECT_SOURCE_DIR}/bench/replay.cc)
target_include_directories(kvtier_replay PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(kvtier_replay PUBLIC kvtier::kvtier PRIVATE kvtier_warnings kvtier_sanitizers)
