# Runs kvtier-replay with bad arguments: each must exit 2 with the expected message on stderr.
# cmake -DREPLAY=path/to/kvtier-replay -DWORK_DIR=dir -P replay_cli_test.cmake
set(trace ${WORK_DIR}/replay_cli_test.jsonl)
file(WRITE ${trace} "{\"timestamp\": 0, \"input_length\": 1024, \"output_length\": 1, \"hash_ids\": [0, 1]}\n")
set(bad ${WORK_DIR}/replay_cli_bad.jsonl)
file(WRITE ${bad} "{\"timestamp\": 0, \"input_length\": 512, \"hash_ids\": [0]}\n{\"timestamp\": 1, \"hash_ids\": [0, x]}\n")

function(expect_exit2 pattern)
  execute_process(COMMAND ${REPLAY} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out
                  ERROR_VARIABLE err)
  if(NOT rc EQUAL 2)
    message(FATAL_ERROR "kvtier-replay ${ARGN}: exit ${rc}, expected 2\n${out}${err}")
  endif()
  if(NOT err MATCHES "${pattern}")
    message(FATAL_ERROR "kvtier-replay ${ARGN}: stderr lacks '${pattern}':\n${err}")
  endif()
endfunction()

expect_exit2("--trace FILE is required")
expect_exit2("No such file" --trace ${WORK_DIR}/no-such-trace.jsonl)
expect_exit2("replay_cli_bad.jsonl:2: .*hash_ids\\[1\\]" --trace ${bad})
expect_exit2("is not a capacity" --trace ${trace} --capacity 5x)
expect_exit2("is 0 blocks" --trace ${trace} --capacity 0.001%)
expect_exit2("no policy named 'nope' \\(registered: .*lru" --trace ${trace} --policy nope)
expect_exit2("unknown argument" --trace ${trace} --frobnicate)
expect_exit2("--mode: 'fast'" --trace ${trace} --mode fast)
expect_exit2("--plugin: " --trace ${trace} --plugin ${WORK_DIR}/no-such-plugin.so)
expect_exit2("--disk-capacity needs --host-capacity" --trace ${trace} --disk-capacity 4)
expect_exit2("--option: 'remote.nodes' is not PATH=VALUE" --trace ${trace} --option remote.nodes)
expect_exit2("--option: Options.remote.nodez: no such option" --trace ${trace}
             --option remote.nodez=x)
expect_exit2("--option: Options.remote.publish: 'x' is not write-through, write-back or never"
             --trace ${trace} --option remote.publish=x)
expect_exit2("--option apply to --mode cache only" --trace ${trace} --mode flat
             --option host.policy=fifo)
# --option reaches the cache: a policy name the registry lacks fails the run (exit 1, in its row).
execute_process(COMMAND ${REPLAY} --trace ${trace} --capacity 2 --quiet
                        --option device.policy=no-such-policy
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 1 OR NOT "${out}${err}" MATCHES "no-such-policy")
  message(FATAL_ERROR "kvtier-replay --option device.policy=no-such-policy: exit ${rc}\n${out}${err}")
endif()
execute_process(COMMAND ${REPLAY} --list-options RESULT_VARIABLE rc OUTPUT_VARIABLE out)
if(NOT rc EQUAL 0 OR NOT out MATCHES "remote.publish +write-through\\|write-back\\|never +write-through")
  message(FATAL_ERROR "kvtier-replay --list-options: exit ${rc}\n${out}")
endif()
execute_process(COMMAND ${REPLAY} --trace ${trace} --capacity 2 --mode flat,cache --quiet
                        --option demote_on_evict=false --option=host.policy=fifo
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT out MATCHES "flat +lru")
  message(FATAL_ERROR "kvtier-replay on a 1-request trace: exit ${rc}\n${out}${err}")
endif()
