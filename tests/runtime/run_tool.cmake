# SPDX-License-Identifier: MIT
# ctest helper: run a command with a file on stdin, check its exit status and output.
#   cmake -DCOMMAND=prog|arg1|arg2 [-DINPUT=<file>] -DEXPECT_RC=<n> [-DEXPECT_STDOUT=<regex>]
#         [-DEXPECT_STDERR=<regex>] [-DEXPECT_STDOUT_FILE=<file>] -P run_tool.cmake
# A crash reports a signal name instead of a number, so it never matches EXPECT_RC.
string(REPLACE "|" ";" _cmd "${COMMAND}")
if(DEFINED INPUT)
    execute_process(COMMAND ${_cmd} INPUT_FILE "${INPUT}" RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
else()
    execute_process(COMMAND ${_cmd} RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
endif()
message(STATUS "exit status: ${_rc}\nstdout:\n${_out}\nstderr:\n${_err}")
if(NOT _rc STREQUAL "${EXPECT_RC}")
    message(FATAL_ERROR "expected exit status ${EXPECT_RC}, got '${_rc}'")
endif()
if(DEFINED EXPECT_STDERR AND NOT _err MATCHES "${EXPECT_STDERR}")
    message(FATAL_ERROR "stderr does not match '${EXPECT_STDERR}'")
endif()
if(DEFINED EXPECT_STDOUT AND NOT _out MATCHES "${EXPECT_STDOUT}")
    message(FATAL_ERROR "stdout does not match '${EXPECT_STDOUT}'")
endif()
if(DEFINED EXPECT_STDOUT_FILE)
    file(READ "${EXPECT_STDOUT_FILE}" _want)
    if(NOT _out STREQUAL _want)
        message(FATAL_ERROR "stdout differs from ${EXPECT_STDOUT_FILE}:\n${_want}")
    endif()
endif()
