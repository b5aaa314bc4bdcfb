from conan.tools.cmake import generated


class PkgConfigDeps:
    def __init__(self, conanfile):
        pass

    def generate(self):
        generated.append("PkgConfigDeps")
