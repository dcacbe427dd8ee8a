# Builds and runs tests/consumer against unimem, in one of two modes:
#   MODE=find_package      install the build tree to a prefix, then find_package(unimem)
#   MODE=add_subdirectory  add unimem's source tree to the consumer's build
file(REMOVE_RECURSE ${WORK_DIR})
set(consumer_args -S ${CMAKE_CURRENT_LIST_DIR} -B ${WORK_DIR}/build -DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER})
if(MODE STREQUAL "find_package")
  execute_process(COMMAND ${CMAKE_COMMAND} --install ${UNIMEM_BINARY_DIR} --prefix ${WORK_DIR}/prefix
                  COMMAND_ERROR_IS_FATAL ANY)
  list(APPEND consumer_args -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix)
else()
  list(APPEND consumer_args -DUNIMEM_SOURCE_DIR=${UNIMEM_SOURCE_DIR})
endif()
execute_process(COMMAND ${CMAKE_COMMAND} ${consumer_args} COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK_DIR}/build COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${WORK_DIR}/build/consumer COMMAND_ERROR_IS_FATAL ANY)
