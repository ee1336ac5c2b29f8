# Static assets of eventsd: the OpenAPI document, Swagger UI (from the npm package
# swagger-ui-dist, never a CDN) and the /ui event browser.
#
# include()d by http/CMakeLists.txt. Defines:
#   eventsd_assets         target (ALL): fills ${EVENTSD_STATIC_DIR}
#   EVENTSD_STATIC_DIR     ${CMAKE_BINARY_DIR}/static, served by the server from beside its executable
#   EVENTSD_NODE_MODULES   node_modules of http/assets/package.json (for tests: NODE_PATH)
#   EVENTSD_NPM, EVENTSD_NODE  the npm and node programs
# The three EVENTSD_* paths are INTERNAL cache entries so that tests/ (a sibling directory
# scope) sees them.
#
# npm ci runs in a build-tree copy of package.json + package-lock.json, only when one of them
# (or .npmrc) changes; the sources are re-copied whenever they change.

find_program(EVENTSD_NPM npm)
find_program(EVENTSD_NODE node)
if(NOT EVENTSD_NPM OR NOT EVENTSD_NODE)
  message(FATAL_ERROR
    "eventsd needs Node.js (>= 20) and npm to build its web assets (Swagger UI, /ui) and to "
    "validate its OpenAPI document, but `npm` or `node` was not found on PATH. Install them "
    "(e.g. `apt-get install nodejs npm`) or point -DEVENTSD_NPM=/path/to/npm "
    "-DEVENTSD_NODE=/path/to/node at them.")
endif()

set(_eventsd_assets_src ${CMAKE_CURRENT_LIST_DIR})
set(_eventsd_npm_dir ${CMAKE_BINARY_DIR}/assets-npm)
set(_eventsd_npm_stamp ${_eventsd_npm_dir}/npm-ci.stamp)
set(EVENTSD_STATIC_DIR ${CMAKE_BINARY_DIR}/static CACHE INTERNAL "eventsd static files (served beside the executable)")
set(EVENTSD_NODE_MODULES ${_eventsd_npm_dir}/node_modules CACHE INTERNAL "node_modules of http/assets")

# 1. npm ci in the build tree, re-run only when the manifest or lock file changes.
file(MAKE_DIRECTORY ${_eventsd_npm_dir})
add_custom_command(
  OUTPUT ${_eventsd_npm_stamp}
  COMMAND ${CMAKE_COMMAND} -E copy_if_different
          ${_eventsd_assets_src}/package.json ${_eventsd_assets_src}/package-lock.json
          ${_eventsd_assets_src}/.npmrc ${_eventsd_npm_dir}/
  COMMAND ${EVENTSD_NPM} ci --no-audit --no-fund --ignore-scripts --prefer-offline
  COMMAND ${CMAKE_COMMAND} -E touch ${_eventsd_npm_stamp}
  WORKING_DIRECTORY ${_eventsd_npm_dir}
  DEPENDS ${_eventsd_assets_src}/package.json ${_eventsd_assets_src}/package-lock.json
          ${_eventsd_assets_src}/.npmrc
  COMMENT "npm ci (swagger-ui-dist, swagger-parser, playwright-core) in ${_eventsd_npm_dir}"
  VERBATIM)

set(_eventsd_static_outputs)

# 2. Our own files, each re-copied when it changes.
set(_eventsd_asset_files
  openapi.json
  ui/index.html
  ui/app.js
  ui/style.css
  swagger/index.html
  swagger/swagger-init.js)
foreach(_f IN LISTS _eventsd_asset_files)
  add_custom_command(
    OUTPUT ${EVENTSD_STATIC_DIR}/${_f}
    COMMAND ${CMAKE_COMMAND} -E copy ${_eventsd_assets_src}/${_f} ${EVENTSD_STATIC_DIR}/${_f}
    DEPENDS ${_eventsd_assets_src}/${_f}
    COMMENT "static/${_f}"
    VERBATIM)
  list(APPEND _eventsd_static_outputs ${EVENTSD_STATIC_DIR}/${_f})
endforeach()

# 3. Swagger UI from swagger-ui-dist, re-copied after each npm ci.
set(_eventsd_swagger_dist_files
  swagger-ui.css
  swagger-ui-bundle.js
  swagger-ui-standalone-preset.js
  favicon-16x16.png
  favicon-32x32.png
  # what the files above point to: the CSS source map, the bundles' licences
  swagger-ui.css.map
  swagger-ui-bundle.js.LICENSE.txt
  swagger-ui-standalone-preset.js.LICENSE.txt
  LICENSE)
set(_eventsd_swagger_outputs)
foreach(_f IN LISTS _eventsd_swagger_dist_files)
  list(APPEND _eventsd_swagger_outputs ${EVENTSD_STATIC_DIR}/swagger/${_f})
endforeach()
list(TRANSFORM _eventsd_swagger_dist_files PREPEND ${EVENTSD_NODE_MODULES}/swagger-ui-dist/
     OUTPUT_VARIABLE _eventsd_swagger_sources)
add_custom_command(
  OUTPUT ${_eventsd_swagger_outputs}
  COMMAND ${CMAKE_COMMAND} -E make_directory ${EVENTSD_STATIC_DIR}/swagger
  COMMAND ${CMAKE_COMMAND} -E copy_if_different ${_eventsd_swagger_sources} ${EVENTSD_STATIC_DIR}/swagger/
  COMMAND ${CMAKE_COMMAND} -E touch ${_eventsd_swagger_outputs}
  DEPENDS ${_eventsd_npm_stamp}
  COMMENT "static/swagger/ from swagger-ui-dist"
  VERBATIM)
list(APPEND _eventsd_static_outputs ${_eventsd_swagger_outputs})

add_custom_target(eventsd_assets ALL DEPENDS ${_eventsd_npm_stamp} ${_eventsd_static_outputs})
