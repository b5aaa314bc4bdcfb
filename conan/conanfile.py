"""Conan 2 recipe for libdelegate.

Its components are the CMake targets of `cmake --install` (delegate::core,
delegate::http, delegate::docker, delegate::aws, delegate::runner, delegate::ecs,
delegate::harness, delegate::grpc, delegate::delegate, delegate::proto), with
the same links between them, and delegate::c, the C API: libdelegate_c.so,
always shared, with the whole library inside it. The requirements' version ranges hold the
Debian 12 versions this project is built and tested with, where Conan Center
has them.
"""
import os

from conan import ConanFile
from conan.tools.cmake import CMake, CMakeDeps, CMakeToolchain, cmake_layout
from conan.tools.files import copy
from conan.tools.gnu import PkgConfigDeps

# What each layer links, as in libdelegate/CMakeLists.txt: (libraries of
# this package, requirements of other packages).
LAYERS = {
    "core": ([], ["abseil::abseil", "libyaml::libyaml"]),
    "http": (["core"], ["libcurl::libcurl", "openssl::openssl"]),
    "docker": (["core", "http"], []),
    "aws": (["core", "http"], ["openssl::openssl"]),
    "runner": (["core", "proto"], ["openssl::openssl"]),
    "ecs": (["core", "http", "aws", "runner"], []),
    "harness": (["core", "http"], ["openssl::openssl"]),
    "proto": ([], ["protobuf::libprotobuf", "grpc::grpc++"]),
    "grpc": (["core", "http", "proto"], []),
    "delegate": (["core", "http", "docker", "aws", "runner", "ecs", "harness",
                  "grpc"], []),
    # libdelegate_c.so holds every layer; the shared libraries of the other
    # packages are what it loads at run time.
    "c": ([], ["abseil::abseil", "libyaml::libyaml", "libcurl::libcurl",
               "openssl::openssl", "protobuf::libprotobuf", "grpc::grpc++"]),
}


class LibdelegateConan(ConanFile):
    name = "libdelegate"
    version = "0.1.0"
    description = ("An embeddable CI delegate: stage scheduling, host, Docker "
                   "and ECS executors, Harness and gRPC manager connections")
    topics = ("ci", "cd", "delegate", "executor", "ecs", "grpc")
    package_type = "library"
    settings = "os", "arch", "compiler", "build_type"
    options = {"shared": [True, False]}
    default_options = {"shared": False}
    exports_sources = ("CMakeLists.txt", "libdelegate/*", "proto/*",
                       "bindings/c/*", "scripts/check-layers.py")

    def layout(self):
        cmake_layout(self)

    def requirements(self):
        # Debian 12: abseil 20220623.1, gRPC 1.51.1, protobuf 3.21.12,
        # curl 7.88.1, OpenSSL 3.0, libyaml 0.2.5, RapidJSON 1.1.0.
        self.requires("abseil/[>=20220623.1 <20230000]", transitive_headers=True)
        self.requires("protobuf/[>=3.21.12 <3.22]", transitive_headers=True)
        self.requires("grpc/[>=1.50.1 <1.52]", transitive_headers=True)
        self.requires("libcurl/[>=7.88.1 <9]")
        self.requires("openssl/[>=3.0 <4]")
        self.requires("libyaml/[>=0.2.5 <0.3]")
        # Conan Center has RapidJSON 1.1.0 only as this pinned revision.
        self.requires("rapidjson/1.1.0")

    def build_requirements(self):
        # protoc and grpc_cpp_plugin run at build time.
        self.tool_requires("protobuf/<host_version>")
        self.tool_requires("grpc/<host_version>")

    def generate(self):
        toolchain = CMakeToolchain(self)
        toolchain.cache_variables["DELEGATE_BUILD_APPS"] = False
        toolchain.cache_variables["DELEGATE_BUILD_TESTS"] = False
        toolchain.cache_variables["DELEGATE_BUILD_BENCH"] = False
        toolchain.cache_variables["DELEGATE_BUILD_C"] = True
        # The Python module is for pip or Debian's python3, not a Conan
        # package.
        toolchain.cache_variables["DELEGATE_BUILD_PYTHON"] = False
        toolchain.generate()
        CMakeDeps(self).generate()
        # libdelegate finds libyaml through pkg-config (yaml-0.1.pc).
        PkgConfigDeps(self).generate()

    def build(self):
        cmake = CMake(self)
        cmake.configure()
        cmake.build()

    def package(self):
        CMake(self).install()
        copy(self, "LICENSE*", self.source_folder,
             os.path.join(self.package_folder, "licenses"))

    def package_info(self):
        self.cpp_info.set_property("cmake_file_name", "libdelegate")
        self.cpp_info.set_property("pkg_config_name", "libdelegate")
        for layer, (own, others) in LAYERS.items():
            component = self.cpp_info.components[layer]
            component.set_property("cmake_target_name", f"delegate::{layer}")
            if layer == "c":
                component.libs = ["delegate_c"]
                component.requires = others
            elif self.options.shared:
                # One libdelegate.so: every layer names it.
                component.libs = ["delegate"] if layer == "delegate" else []
                component.requires = [] if layer == "delegate" else ["delegate"]
            else:
                component.libs = [
                    "delegate_proto" if layer == "proto" else f"delegate_{layer}"
                ]
                component.requires = own + others
            if layer == "core":
                component.system_libs = ["pthread"]
