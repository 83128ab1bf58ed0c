# Build segfast_ros against ROS 2 from PyPI wheels (the development and CI machines).
#
# Pass it as -DCMAKE_PROJECT_INCLUDE=<this file> (the Makefile does; colcon takes it through
# --cmake-args). A robot with ROS 2 from apt or source does not need it.
#
# The wheels' exported *__rosidl_generator_py targets name the include folders of the machine
# that built them (/opt/python/cp311-cp311/include/python3.11 and its numpy headers). They do not
# exist here, and CMake refuses to generate. This file defers a fix-up to the end of the
# configure step: every such missing folder of an imported target is replaced by this Python's
# include folder or numpy's, and any other missing folder is dropped. Nothing is written outside
# the build folder.

function(_segfast_fix_imported_include_dirs)
  find_package(Python3 REQUIRED COMPONENTS Interpreter Development NumPy)
  get_directory_property(_targets DIRECTORY "${CMAKE_SOURCE_DIR}" IMPORTED_TARGETS)
  foreach(_target IN LISTS _targets)
    get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _dirs)
      continue()
    endif()
    set(_fixed "")
    set(_changed FALSE)
    foreach(_dir IN LISTS _dirs)
      if(_dir MATCHES "^\\$<" OR EXISTS "${_dir}")
        list(APPEND _fixed "${_dir}")
      elseif(_dir MATCHES "numpy")
        list(APPEND _fixed ${Python3_NumPy_INCLUDE_DIRS})
        set(_changed TRUE)
      elseif(_dir MATCHES "include/python3")
        list(APPEND _fixed ${Python3_INCLUDE_DIRS})
        set(_changed TRUE)
      else()
        message(STATUS "segfast pip-wheel fix-up: ${_target}: dropping missing ${_dir}")
        set(_changed TRUE)
      endif()
    endforeach()
    if(_changed)
      list(REMOVE_DUPLICATES _fixed)
      set_target_properties(${_target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_fixed}")
    endif()
  endforeach()
endfunction()

cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _segfast_fix_imported_include_dirs)
