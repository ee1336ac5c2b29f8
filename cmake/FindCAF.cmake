# FindCAF
# -------
# Finds the C++ Actor Framework as packaged by Debian (libcaf-dev ships no CMake package).
#
# Components: core, io (searched when none are given), openssl (optional).
#
# Imported targets:
#   CAF::core      libcaf_core, its headers and Threads::Threads
#   CAF::io        libcaf_io, depends on CAF::core
#   CAF::openssl   libcaf_openssl, depends on CAF::io (only if requested and found)
#
# Result variables:
#   CAF_FOUND, CAF_<component>_FOUND, CAF_INCLUDE_DIR, CAF_VERSION (e.g. 0.17.6),
#   CAF_VERSION_INT (CAF_VERSION macro of caf/config.hpp, e.g. 1706)
#
# Hints: CAF_ROOT (CMake's <PackageName>_ROOT) or CMAKE_PREFIX_PATH.

include(FindPackageHandleStandardArgs)

if(NOT CAF_FIND_COMPONENTS)
  set(CAF_FIND_COMPONENTS core io)
  set(CAF_FIND_REQUIRED_core TRUE)
  set(CAF_FIND_REQUIRED_io TRUE)
endif()
if("io" IN_LIST CAF_FIND_COMPONENTS AND NOT "core" IN_LIST CAF_FIND_COMPONENTS)
  list(APPEND CAF_FIND_COMPONENTS core)
  set(CAF_FIND_REQUIRED_core TRUE)
endif()

find_path(CAF_INCLUDE_DIR NAMES caf/all.hpp)
mark_as_advanced(CAF_INCLUDE_DIR)

if(CAF_INCLUDE_DIR AND EXISTS "${CAF_INCLUDE_DIR}/caf/config.hpp")
  file(STRINGS "${CAF_INCLUDE_DIR}/caf/config.hpp" _caf_version_line
       REGEX "^#[ \t]*define[ \t]+CAF_VERSION[ \t]+[0-9]+")
  if(_caf_version_line MATCHES "CAF_VERSION[ \t]+([0-9]+)")
    set(CAF_VERSION_INT "${CMAKE_MATCH_1}")
    math(EXPR _caf_major "${CAF_VERSION_INT} / 10000")
    math(EXPR _caf_minor "(${CAF_VERSION_INT} / 100) % 100")
    math(EXPR _caf_patch "${CAF_VERSION_INT} % 100")
    set(CAF_VERSION "${_caf_major}.${_caf_minor}.${_caf_patch}")
  endif()
  unset(_caf_version_line)
endif()

foreach(_caf_comp IN LISTS CAF_FIND_COMPONENTS)
  if(NOT _caf_comp MATCHES "^(core|io|openssl)$")
    message(FATAL_ERROR "FindCAF: unknown component '${_caf_comp}'")
  endif()
  find_library(CAF_${_caf_comp}_LIBRARY NAMES caf_${_caf_comp})
  mark_as_advanced(CAF_${_caf_comp}_LIBRARY)
  if(CAF_INCLUDE_DIR AND CAF_${_caf_comp}_LIBRARY)
    set(CAF_${_caf_comp}_FOUND TRUE)
  else()
    set(CAF_${_caf_comp}_FOUND FALSE)
  endif()
endforeach()

set(_caf_threads_args)
if(CAF_FIND_QUIETLY)
  list(APPEND _caf_threads_args QUIET)
endif()
find_package(Threads ${_caf_threads_args})
unset(_caf_threads_args)

find_package_handle_standard_args(CAF
  REQUIRED_VARS CAF_INCLUDE_DIR Threads_FOUND
  VERSION_VAR CAF_VERSION
  HANDLE_COMPONENTS)

if(CAF_FOUND)
  if(CAF_core_FOUND AND NOT TARGET CAF::core)
    add_library(CAF::core UNKNOWN IMPORTED)
    set_target_properties(CAF::core PROPERTIES
      IMPORTED_LOCATION "${CAF_core_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${CAF_INCLUDE_DIR}"
      INTERFACE_LINK_LIBRARIES Threads::Threads
      INTERFACE_COMPILE_FEATURES cxx_std_17)
  endif()
  if(CAF_io_FOUND AND NOT TARGET CAF::io)
    add_library(CAF::io UNKNOWN IMPORTED)
    set_target_properties(CAF::io PROPERTIES
      IMPORTED_LOCATION "${CAF_io_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${CAF_INCLUDE_DIR}"
      INTERFACE_LINK_LIBRARIES "CAF::core;Threads::Threads")
  endif()
  if(CAF_openssl_FOUND AND NOT TARGET CAF::openssl)
    add_library(CAF::openssl UNKNOWN IMPORTED)
    set_target_properties(CAF::openssl PROPERTIES
      IMPORTED_LOCATION "${CAF_openssl_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${CAF_INCLUDE_DIR}"
      INTERFACE_LINK_LIBRARIES "CAF::io;Threads::Threads")
  endif()
endif()
