# `moe serve` driven by PyPI's openai client and prometheus-client (tests/serve/test_openai_client.py)
# from the pinned venv of scripts/oracle_venv.sh (scripts/test.sh creates it). Without that venv, or
# without the packages in it, the test is skipped (exit 77), not failed.
set(MOE_ORACLE_PYTHON "$ENV{HOME}/.cache/moe/venv-oracle/bin/python" CACHE FILEPATH
    "Python of the oracle venv (scripts/oracle_venv.sh) with openai and prometheus-client")
add_test(NAME serve.openai_client
  COMMAND sh -c "test -x \"$0\" || { echo \"skipped: no $0 (scripts/oracle_venv.sh)\"; exit 77; }; exec \"$0\" \"$@\""
          ${MOE_ORACLE_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/serve/test_openai_client.py
          $<TARGET_FILE:moe> ${CMAKE_CURRENT_SOURCE_DIR}/data)
set_tests_properties(serve.openai_client PROPERTIES TIMEOUT 300 SKIP_RETURN_CODE 77
                     ENVIRONMENT OMP_WAIT_POLICY=passive)

# The chat page (GET /) in Debian's chromium, headless (tests/serve/test_chat_page.py, stdlib only):
# a streamed reply and its token x layer map in the dumped DOM. Skipped (exit 77) without chromium.
add_test(NAME serve.chat_page
  COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/serve/test_chat_page.py
          $<TARGET_FILE:moe> ${CMAKE_CURRENT_SOURCE_DIR}/data)
set_tests_properties(serve.chat_page PROPERTIES TIMEOUT 400 SKIP_RETURN_CODE 77
                     ENVIRONMENT OMP_WAIT_POLICY=passive)

# 64 concurrent openai clients x 4 requests (tests/serve/test_load.py): 0 failures, greedy replies
# equal to alone, p50/p99 time to first token printed
add_test(NAME serve.load
  COMMAND sh -c "test -x \"$0\" || { echo \"skipped: no $0 (scripts/oracle_venv.sh)\"; exit 77; }; exec \"$0\" \"$@\""
          ${MOE_ORACLE_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/serve/test_load.py
          $<TARGET_FILE:moe> ${CMAKE_CURRENT_SOURCE_DIR}/data)
set_tests_properties(serve.load PROPERTIES TIMEOUT 240 SKIP_RETURN_CODE 77
                     ENVIRONMENT OMP_WAIT_POLICY=passive)
