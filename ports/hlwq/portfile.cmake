# vcpkg port for hlwq (header-only).
#
# Overlay use from a local checkout (no download; the sources are this repository):
#     vcpkg install hlwq --overlay-ports=<path-to-hlwq>/ports
# When this port directory sits inside an hlwq checkout (<repo>/ports/hlwq), the checkout is
# used as SOURCE_PATH. Copied into a registry on its own, it falls back to the GitHub
# release tarball below (fill in REPO and SHA512 when publishing).
set(VCPKG_BUILD_TYPE release) # header-only: no debug configuration

get_filename_component(_hlwq_checkout "${CMAKE_CURRENT_LIST_DIR}/../.." ABSOLUTE)
if(EXISTS "${_hlwq_checkout}/include/hlwq" AND EXISTS "${_hlwq_checkout}/CMakeLists.txt")
    set(SOURCE_PATH "${_hlwq_checkout}")
else()
    vcpkg_from_github(
        OUT_SOURCE_PATH SOURCE_PATH
        REPO hlwq/hlwq            # placeholder: the published repository
        REF "v${VERSION}"
        SHA512 0                  # placeholder: replace with the tarball's SHA512 when publishing
        HEAD_REF main
    )
endif()

vcpkg_cmake_configure(
    SOURCE_PATH "${SOURCE_PATH}"
    OPTIONS
        -DHLWQ_BUILD_TESTS=OFF
        -DHLWQ_BUILD_EXAMPLES=OFF
        -DHLWQ_BUILD_BENCH=OFF
        -DHLWQ_BUILD_DOCS=OFF
        -DHLWQ_ENABLE_CUDA=OFF
        -DHLWQ_NATIVE=OFF
)
vcpkg_cmake_install()
vcpkg_cmake_config_fixup(CONFIG_PATH share/cmake/hlwq)

# Header-only: nothing per-configuration; the license goes to share/hlwq/copyright instead.
file(REMOVE_RECURSE
    "${CURRENT_PACKAGES_DIR}/debug"
    "${CURRENT_PACKAGES_DIR}/lib"
    "${CURRENT_PACKAGES_DIR}/share/doc")

file(INSTALL "${CMAKE_CURRENT_LIST_DIR}/usage" DESTINATION "${CURRENT_PACKAGES_DIR}/share/${PORT}")
vcpkg_install_copyright(FILE_LIST "${SOURCE_PATH}/LICENSE")
