# The public API stands alone: each header of include/moe/ compiles with only include/ on the
# include path and includes nothing but standard headers and its siblings (no src/, no
# nlohmann); tools/moe.cc compiles without src/ on the path (public headers, CLI11, std only).
foreach(h error moe viz server)
  set(_src ${CMAKE_CURRENT_BINARY_DIR}/public_header_${h}.cc)
  file(WRITE ${_src} "#include <moe/${h}.h>\n")
  add_test(NAME public_api.header_${h}
    COMMAND ${CMAKE_CXX_COMPILER} -std=c++20 -Wall -Wextra -Werror -fsyntax-only -I${CMAKE_SOURCE_DIR}/include ${_src})
endforeach()
add_test(NAME public_api.header_includes
  COMMAND sh -c "! grep -h '^#include' ${CMAKE_SOURCE_DIR}/include/moe/*.h | grep -v -e '^#include <[a-z_]*>' -e '^#include \"moe/[a-z_]*[.]h\"'")
add_test(NAME public_api.tool_includes
  COMMAND ${CMAKE_CXX_COMPILER} -std=c++20 -fsyntax-only -I${CMAKE_SOURCE_DIR}/include ${CMAKE_SOURCE_DIR}/tools/moe.cc)
