# Tests of the static assets (http/assets/). include()d from tests/http/CMakeLists.txt,
# after http/assets/assets.cmake has set EVENTSD_NODE, EVENTSD_NODE_MODULES and
# EVENTSD_STATIC_DIR (INTERNAL cache entries).

if(NOT EVENTSD_NODE OR NOT EVENTSD_NODE_MODULES OR NOT EVENTSD_STATIC_DIR)
  message(FATAL_ERROR "tests/http/assets_test.cmake: include http/assets/assets.cmake first")
endif()

# The document served at /openapi.json is valid OpenAPI 3 and lists every route of API.md.
add_test(NAME openapi_document_is_valid_openapi3
  COMMAND ${EVENTSD_NODE} ${CMAKE_CURRENT_LIST_DIR}/validate_openapi.js ${EVENTSD_STATIC_DIR}/openapi.json)
set_tests_properties(openapi_document_is_valid_openapi3 PROPERTIES
  ENVIRONMENT "NODE_PATH=${EVENTSD_NODE_MODULES}"
  LABELS "assets")
