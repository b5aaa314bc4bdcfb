"""Stand-ins for conan.tools.cmake: they record, they build nothing."""
generated = []


def cmake_layout(conanfile, *args, **kwargs):
    conanfile.layout_called = True


class CMakeToolchain:
    def __init__(self, conanfile):
        self.cache_variables = {}
        self.variables = {}
        conanfile.toolchain = self

    def generate(self):
        generated.append("CMakeToolchain")


class CMakeDeps:
    def __init__(self, conanfile):
        pass

    def generate(self):
        generated.append("CMakeDeps")


class CMake:
    def __init__(self, conanfile):
        pass

    def configure(self):
        raise RuntimeError("the stand-in builds nothing")

    build = install = configure
