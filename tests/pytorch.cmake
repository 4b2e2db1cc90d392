# Whole-model parity with PyTorch autograd (tests/ref/). For each tiny config a CTest fixture runs
# the PyTorch reference (tests/ref/make_parity.py) into ${CMAKE_BINARY_DIR}/parity/CONFIG.bin, and
# the test torch_parity.CONFIG (moe_test_torch_parity, tests/torch_parity.cc) checks the engine
# against that dump. torch is Debian's python3-torch (scripts/setup.sh), importable from the
# system interpreter only: a python3 earlier on PATH (pyenv, venv) usually lacks it.
set(MOE_TORCH_PYTHON /usr/bin/python3 CACHE FILEPATH
    "Python interpreter with torch for the PyTorch parity reference (tests/ref/)")
set(MOE_PARITY_CONFIGS tiny-dense tiny-moe tiny-moe-relu tiny-moe-shexp
    tiny-moe-noisy tiny-moe-reroute tiny-moe-drop tiny-moe-bias tiny-moe-qknorm tiny-moe-qwen2 tiny-moe-qwen3)
set(MOE_PARITY_DIR ${CMAKE_BINARY_DIR}/parity)

# Not a test_*.cc: registered by hand below, not by gtest_discover_tests, so that each test can
# require its fixture.
add_executable(moe_test_torch_parity ${CMAKE_CURRENT_SOURCE_DIR}/torch_parity.cc)
target_link_libraries(moe_test_torch_parity PRIVATE moe_all GTest::gtest GTest::gtest_main)
string(REPLACE ";" "," _moe_parity_list "${MOE_PARITY_CONFIGS}")
target_compile_definitions(moe_test_torch_parity PRIVATE
  MOE_PARITY_DIR="${MOE_PARITY_DIR}"
  MOE_PARITY_CONFIGS="${_moe_parity_list}")

foreach(cfg ${MOE_PARITY_CONFIGS})
  string(REPLACE "-" "_" id ${cfg})
  add_test(NAME torch_parity_ref.${cfg}
    COMMAND ${MOE_TORCH_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/ref/make_parity.py
            ${CMAKE_CURRENT_SOURCE_DIR}/ref/configs/${cfg}.json --out ${MOE_PARITY_DIR}/${cfg}.bin)
  set_tests_properties(torch_parity_ref.${cfg} PROPERTIES
    FIXTURES_SETUP torch_parity_${id} TIMEOUT 300)
  # gtest names: Configs/TorchParity.<Test>/<id>
  add_test(NAME torch_parity.${cfg} COMMAND moe_test_torch_parity --gtest_filter=*/${id})
  # passive OpenMP waits: results are the same, and 2-thread runs don't crawl on a busy machine
  set_tests_properties(torch_parity.${cfg} PROPERTIES
    FIXTURES_REQUIRED torch_parity_${id} TIMEOUT 300 ENVIRONMENT OMP_WAIT_POLICY=passive)
endforeach()
