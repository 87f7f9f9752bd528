# SPDX-License-Identifier: MIT
# ctest helper: runs a command and checks its exit status, and optionally its stderr/stdout.
#   cmake -DCOMMAND=prog|arg1|arg2 -DEXPECT_RC=2 [-DEXPECT_STDERR=<regex>] [-DEXPECT_STDOUT=<regex>]
#         -P expect_exit.cmake
# (arguments separated by '|'). A crash reports a signal name instead of a number, so it
# never matches EXPECT_RC.
string(REPLACE "|" ";" _cmd "${COMMAND}")
execute_process(COMMAND ${_cmd} RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
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
